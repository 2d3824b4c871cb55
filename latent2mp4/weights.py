"""Find VAE weights (folders, single files, the Hugging Face cache) and load a decoder strictly."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from latent2mp4.arrays import all_finite
from latent2mp4.errors import UsageError, WeightsError
from latent2mp4.models.family import Family
from latent2mp4.models.registry import get_family
from latent2mp4.normalization import Normalization
from latent2mp4.presets import Preset, builtin_presets

if TYPE_CHECKING:
    from latent2mp4.models.family import StreamModule

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
CONTAINER_KEYS = ("state_dict", "model", "module")  # wrappers around .pt/.pth state dicts
PREFIXES = ("vae.", "first_stage_model.", "model.")  # stripped when they wrap a VAE's keys
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHOWN_KEYS = 5
# Where a pipeline folder keeps its (video) VAE: diffusers' layout, then original releases'.
PIPELINE_SUBFOLDERS = ("vae", "video_vae")


@dataclass(frozen=True)
class VaeSource:
    """Where the weights are: files to read and, for diffusers layouts, the parsed config.json."""

    files: tuple[Path, ...]
    config: dict[str, Any] | None
    description: str


@dataclass(frozen=True)
class LoadedVae:
    decoder: StreamModule
    family: Family
    normalization: Normalization | None  # from the weights or config.json; overrides the preset's
    description: str


def known_families() -> list[Family]:
    """Every family a built-in preset decodes with, each once: what detection chooses among."""
    names = dict.fromkeys(p.family for p in builtin_presets().values())
    return [get_family(name) for name in names]


def resolve_vae(spec: str | None, preset: Preset) -> VaeSource:
    """Turn `--vae` (or the preset's default repo when None) into files on disk."""
    if spec is None:
        return _from_hub(preset.hub_repo, preset.hub_subfolder, default=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        config = _sibling_config(path)
        return VaeSource(files=(path,), config=config, description=str(path))
    if REPO_ID.match(spec) and not spec.startswith((".", "/")):
        return _from_hub(spec, preset.hub_subfolder, default=False)
    raise WeightsError(f"{spec}: no such VAE file or folder (nor a Hugging Face repo id)")


def _from_folder(path: Path) -> VaeSource:
    if not (path / "config.json").is_file():
        # a whole pipeline folder (diffusers' vae/, or an original release's video_vae/)
        path = next((path / d for d in PIPELINE_SUBFOLDERS if (path / d).is_dir()), path)
    if (wrapped := _wrapped(path)) is not None:
        return wrapped
    files = _diffusers_files(path)
    if not files:
        singles = sorted(p for p in path.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
        if len(singles) == 1:
            return VaeSource(
                files=(singles[0],), config=_sibling_config(singles[0]), description=str(singles[0])
            )
        raise WeightsError(
            f"{path}: no VAE weights here (expected {DIFFUSERS_WEIGHTS}.safetensors, a vae/ "
            "subfolder, or a single weights file)"
        )
    config = _read_config(path / "config.json") if (path / "config.json").is_file() else None
    return VaeSource(files=files, config=config, description=str(path))


def _wrapped(folder: Path) -> VaeSource | None:
    """An original release's folder (MiniMax-H3's `video_vae/`): its config.json names the
    weights' folder and file (`source_path`, `source_safetensors_path`) and holds the latent
    statistics; the architecture is the config.json beside the weights. Both are merged, the
    wrapper's values on top."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    wrapper = _read_config(cfg_path)
    if "source_path" not in wrapper:
        return None
    source = folder / str(wrapper["source_path"])
    weights = source / str(wrapper.get("source_safetensors_path", "model.safetensors"))
    if not weights.is_file():
        raise WeightsError(f"{cfg_path}: names the weights {weights}, which do not exist")
    if not (source / "config.json").is_file():
        raise WeightsError(f"{source}: no config.json beside the weights (the architecture)")
    inner = _read_config(source / "config.json")
    config = {**inner, **{k: v for k, v in wrapper.items() if k != "_source"}}
    config["_class_name"] = inner.get("_class_name")
    return VaeSource(files=(weights,), config=config, description=str(folder))


def _diffusers_files(folder: Path) -> tuple[Path, ...]:
    index = folder / f"{DIFFUSERS_WEIGHTS}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{index}: unreadable shard index ({e})") from None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise WeightsError(f"{index}: weight_map must map tensor names to shard file names")
        if not weight_map:
            raise WeightsError(f"{index}: the shard index lists no tensors")
        shards = tuple(folder / name for name in sorted(set(weight_map.values())))
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise WeightsError(f"{index}: shard files missing: {', '.join(missing[:SHOWN_KEYS])}")
        return shards
    for suffix in (".safetensors", ".bin"):
        single = folder / f"{DIFFUSERS_WEIGHTS}{suffix}"
        if single.is_file():
            return (single,)
    return ()


def _sibling_config(path: Path) -> dict[str, Any] | None:
    """A config.json next to a weights file, if it describes a VAE class a family reads."""
    cfg_path = path.parent / "config.json"
    if not cfg_path.is_file():
        return None
    config = _read_config(cfg_path)
    known = {c for f in known_families() for c in f.config_classes}
    return config if config.get("_class_name") in known else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable config.json ({e})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: config.json is not a JSON object")
    config["_source"] = str(path)
    return config


def _from_hub(repo: str, subfolder: str, default: bool) -> VaeSource:
    hint = "pass --vae with a diffusers VAE folder, a pipeline folder or a .safetensors/.pth file"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(f"VAE '{repo}': huggingface_hub is not installed; {hint}") from None
    patterns = [f"{subfolder}/*.json", f"{subfolder}/*.safetensors"]
    # Read at call time: huggingface_hub freezes its cache location when first imported.
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        root = snapshot_download(
            repo, allow_patterns=patterns, local_files_only=True, cache_dir=cache
        )
    except Exception:  # noqa: BLE001 - any cache miss means "try the network"
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            what = "the model's default VAE" if default else "the VAE"
            raise WeightsError(
                f"{what} '{repo}' is not in the Hugging Face cache (offline); {hint}"
            ) from None
        try:
            root = snapshot_download(repo, allow_patterns=patterns, cache_dir=cache)
        except Exception as e:  # noqa: BLE001 - network and hub errors vary by version
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise WeightsError(
                f"VAE '{repo}' is not cached and could not be downloaded ({reason}); {hint}"
            ) from None
    folder = Path(root) / subfolder
    if not folder.is_dir():
        # A VAE-only repo keeps its files at the top; a pipeline without the subfolder does not
        # (its other folders must not be taken for the one asked for).
        folder = Path(root)
        if not (folder / "config.json").is_file() and not any(folder.glob("*.safetensors")):
            raise WeightsError(
                f"'{repo}' in the Hugging Face cache has no {subfolder}/ ({folder}); get it with "
                f"huggingface-cli download {repo} --include '{subfolder}/*'"
            )
    source = _from_folder(folder)
    return VaeSource(files=source.files, config=source.config, description=f"{repo} ({folder})")


# ---- reading tensors lazily -------------------------------------------------------------------

Reader = Callable[[], Tensor]


def open_tensors(files: tuple[Path, ...]) -> dict[str, tuple[tuple[int, ...], Reader]]:
    """Key → (shape, loader) over all files; nothing is read until a loader is called."""
    out: dict[str, tuple[tuple[int, ...], Reader]] = {}
    for path in files:
        if path.suffix.lower() == ".safetensors":
            out.update(_safetensors_entries(path))
        else:
            out.update(_pickle_entries(path))
    return out


def _safetensors_entries(path: Path) -> dict[str, tuple[tuple[int, ...], Reader]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})"
        ) from None

    def reader(key: str) -> Reader:
        def read() -> Tensor:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)

        return read

    return {k: (s, reader(k)) for k, s in shapes.items()}


def _pickle_entries(path: Path) -> dict[str, tuple[tuple[int, ...], Reader]]:
    try:
        # weights_only refuses arbitrary pickled objects; mmap skips reading encoder weights.
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and unpickler errors have no common base
        # torch's refusal is a page of advice; the global it refused is the useful part.
        refused = re.search(r"unsupported (?:global:? )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if refused:
            reason = f"it pickles {refused.group(1)}, not just tensors"
        else:
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WeightsError(
            f"{path}: cannot load as a weights-only PyTorch checkpoint ({reason})"
        ) from None
    for key in CONTAINER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    return {k: (tuple(v.shape), _constant(v)) for k, v in tensors.items()}


def _constant(t: Tensor) -> Reader:
    return lambda: t


def _strip_prefix(entries: dict[str, Any]) -> dict[str, Any]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "decoder.") for k in entries):
            return {k[len(prefix) :]: v for k, v in entries.items() if k.startswith(prefix)}
    return entries


def offenders(keys: set[str]) -> str:
    shown = sorted(keys)[:SHOWN_KEYS]
    more = f" (+{len(keys) - len(shown)} more)" if len(keys) > len(shown) else ""
    return ", ".join(shown) + more


def _same_shape(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    # 1x1 convs stored where a family uses Linear (ComfyUI's HunyuanVideo attention) differ only
    # by trailing singleton axes; the family's load hook reshapes them.
    while len(got) > len(want) and got[-1] == 1:
        got = got[:-1]
    return got == want


def _family_for(
    keys: list[str], config: dict[str, Any] | None, preset: Preset, where: str
) -> Family:
    family = get_family(preset.family)
    if config is not None:
        cls = config.get("_class_name")
        if cls and cls not in family.config_classes:
            other = next((f.name for f in known_families() if cls in f.config_classes), None)
            hint = f" (a {other} VAE; pick a {other} --model)" if other else ""
            raise WeightsError(
                f"{where}: config.json is {cls}{hint}, "
                f"but --model {preset.name} needs {family.diffusers_class}"
            )
        return family
    if not family.detect(keys):
        _require_decoder(keys, where)
        other = next((f.name for f in known_families() if f is not family and f.detect(keys)), None)
        hint = f"they look like a {other} VAE" if other else "no known VAE layout matches"
        raise WeightsError(
            f"{where}: not {preset.family} VAE weights for --model {preset.name} ({hint})"
        )
    return family


def _require_decoder(keys: list[str], where: str) -> None:
    """Refuse a checkpoint with no decoder tensors at all (an encoder-only or non-VAE file)."""
    if not any(k.startswith("decoder.") or ".decoder." in k for k in keys):
        shown = offenders(set(keys)) if keys else "none"
        raise WeightsError(
            f"{where}: holds no VAE decoder weights ({len(keys)} tensors: {shown}); "
            "pass the VAE's decoder (or whole VAE) weights"
        )


def normalization_from_config(config: Mapping[str, Any] | None) -> Normalization | None:
    """latents_mean/std, or scaling_factor (and shift_factor where set), from a config.json, as
    pipelines read them."""
    if not config:
        return None
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        # Mochi's pipeline divides by scaling_factor too; Wan's config has none.
        scale = {"scaling_factor": config["scaling_factor"]} if "scaling_factor" in config else {}
        return Normalization.from_mapping(
            {"latents_mean": mean, "latents_std": std, **scale},
            config.get("_source", "config.json"),
        )
    if config.get("scaling_factor") is not None:
        keys = ("scaling_factor", "shift_factor")
        return Normalization.from_mapping({k: config.get(k) for k in keys}, "config.json")
    return None


def _config_normalization(source: VaeSource, preset: Preset) -> Normalization | None:
    """The config's normalisation, refused (as a weights error) when it cannot be used."""
    where = source.config.get("_source", "config.json") if source.config else "config.json"
    try:
        norm = normalization_from_config(source.config)
    except UsageError as e:
        raise WeightsError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise WeightsError(
            f"{where}: latents_mean, latents_std and scaling_factor must be numbers ({_reason(e)})"
        ) from None
    if norm is not None and norm.channels not in (None, preset.latent_channels):
        raise WeightsError(
            f"{where}: latents_mean has {norm.channels} values; --model {preset.name} has "
            f"{preset.latent_channels} latent channels"
        )
    return norm


def _check_latent_channels(config: object, preset: Preset, family: str, where: str) -> None:
    """A VAE for other latents (Wan 2.1's 16 channels against Wan 2.2's 48) is refused at load,
    naming the weights, not at the first chunk naming the latents."""
    found = getattr(config, "latent_channels", None) or getattr(config, "z_dim", None)
    if not isinstance(found, int) or found == preset.latent_channels:
        return
    fits = [
        p.name
        for p in builtin_presets().values()
        if p.family == preset.family and p.latent_channels == found
    ]
    hint = f" (--model {' or '.join(fits)})" if fits else ""
    raise WeightsError(
        f"{where}: a {found}-channel {family} VAE{hint}; --model {preset.name} decodes "
        f"{preset.latent_channels}-channel latents"
    )


def _reason(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return text or type(e).__name__


def _refuse_nonfinite(
    where: str,
    entries: Mapping[str, tuple[tuple[int, ...], Reader]],
    mapping: Mapping[str, str],
    finite: list[Tensor],
    dtype: torch.dtype,
) -> None:
    bad = [src for src, ok in zip(mapping, finite, strict=True) if not bool(ok)]
    first = entries[bad[0]][1]()
    name = str(dtype).removeprefix("torch.")
    if bool(torch.isfinite(first).all()):  # finite as stored: the cast overflowed
        raise WeightsError(
            f"{where}: {len(bad)} weight tensor(s) overflow {name} (first: {bad[0]}); "
            "use --dtype bf16 or --dtype fp32"
        )
    raise WeightsError(
        f"{where}: {len(bad)} weight tensor(s) contain NaN/Inf (first: {bad[0]}); "
        "the checkpoint is corrupt, re-download it"
    )


def channels_last(t: Tensor) -> Tensor:
    """Conv weights channels-last: the layout oneDNN and cuDNN convolve without reordering."""
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def load_strict(
    module: torch.nn.Module,
    entries: Mapping[str, tuple[tuple[int, ...], Reader]],
    mapping: Mapping[str, str],
    where: str,
    device: torch.device | str,
    dtype: torch.dtype,
) -> None:
    """Fill `module` (built on `meta`) from checkpoint `entries` renamed by `mapping`
    (checkpoint key → module key): every key and shape must match, float weights must be floats
    and finite, or a WeightsError names the first offenders. Tensors are read one at a time onto
    `device` in `dtype`."""
    shapes = {dst: entries[src][0] for src, dst in mapping.items()}
    wanted = module.state_dict()
    expected = {k: tuple(v.shape) for k, v in wanted.items()}
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    if missing:
        raise WeightsError(
            f"{where}: checkpoint lacks {len(missing)} decoder weights: {offenders(missing)}"
        )
    if unexpected:
        raise WeightsError(
            f"{where}: checkpoint has {len(unexpected)} unexpected decoder weights: "
            + offenders(unexpected)
        )
    wrong = {f"{k} {shapes[k]}≠{v}" for k, v in expected.items() if not _same_shape(shapes[k], v)}
    if wrong:
        raise WeightsError(f"{where}: weights do not fit the config: {offenders(wrong)}")
    state, finite = {}, []
    for src, dst in mapping.items():
        # One tensor at a time, straight to its final device, dtype and layout, so the peak is
        # the decoder's weights plus one tensor (not two copies of every weight).
        t = entries[src][1]()
        if wanted[dst].is_floating_point() and not t.is_floating_point():
            kind = str(t.dtype).removeprefix("torch.")
            raise WeightsError(
                f"{where}: {src} holds {kind} values; VAE weights are floating point "
                "(a quantised or corrupt checkpoint?)"
            )
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        # NaN/Inf would decode to black or garbage frames; one flag per tensor, on the device,
        # read once after the loop (a single sync).
        finite.append(all_finite(t))
        state[dst] = channels_last(t)
        del t
    if finite and not bool(torch.stack(finite).all()):
        _refuse_nonfinite(where, entries, mapping, finite, dtype)
    module.load_state_dict(state, strict=True, assign=True)
    del state
    leftovers = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    assert not leftovers, f"decoder tensors not loaded: {leftovers[:SHOWN_KEYS]}"


def load_vae(
    source: VaeSource, preset: Preset, device: torch.device | str, dtype: torch.dtype
) -> LoadedVae:
    """Build the preset's family decoder on `meta` and load the weights strictly onto `device`."""
    where = source.description
    entries = _strip_prefix(open_tensors(source.files))
    family = _family_for(list(entries), source.config, preset, where)
    normalization = _config_normalization(source, preset)
    mapping = family.rename_keys(entries)
    if not mapping:
        _require_decoder(list(entries), where)
        raise WeightsError(
            f"{where}: none of its {len(entries)} tensors is a {family.name} decoder weight "
            f"({offenders(set(entries))})"
        )
    shapes = {dst: entries[src][0] for src, dst in mapping.items()}
    cfg_where = source.config.get("_source", where) if source.config else where
    try:
        if source.config is not None:
            config = family.config_from_diffusers(source.config)
            if family.complete_config is not None:
                config = family.complete_config(config, shapes)
        else:
            config = family.config_from_shapes(shapes)
    except KeyError as e:
        if source.config is not None:
            raise WeightsError(f"{cfg_where}: config.json lacks {e.args[0]!r}") from None
        raise WeightsError(
            f"{where}: checkpoint lacks the decoder weight {e.args[0]} (its shape tells the "
            "architecture)"
        ) from None
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:
        raise WeightsError(
            f"{cfg_where}: cannot build the {family.name} decoder config ({_reason(e)})"
        ) from None
    _check_latent_channels(config, preset, family.name, cfg_where)
    try:
        with torch.device("meta"):
            decoder = family.build(config)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, IndexError) as e:
        # e.g. a group count that does not divide a width: the config contradicts itself or the
        # tensors it was read from.
        built_from = "this config" if source.config is not None else "these weights' shapes"
        raise WeightsError(
            f"{cfg_where}: the {family.name} decoder cannot be built from {built_from} "
            f"({_reason(e)})"
        ) from None
    load_strict(decoder, entries, mapping, where, device, dtype)
    decoder.eval()
    return LoadedVae(
        # Family.build makes the family's StreamDecoder (typed as a plain nn.Module there).
        decoder=cast("StreamModule", decoder),
        family=family,
        normalization=(
            family.normalization(decoder) if family.normalization is not None else normalization
        ),
        description=where,
    )
