"""Read, validate, select and (de-)normalise latents from `.safetensors` / `.latent` files."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from latent2mp4.errors import InputError, UsageError
from latent2mp4.presets import Normalization, Preset

LatentSpace = Literal["model", "vae", "auto"]
PREFERRED_KEYS = ("latents", "latent", "samples", "latent_tensor")
COMFY_MARKER = (
    "latent_format_version_0"  # empty tensor ComfyUI's SaveLatent writes beside the latents
)
META_PREFIX = "latent2mp4."
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class LatentFile:
    """A latent tensor as stored, with what the file says about itself."""

    path: Path
    key: str
    tensor: Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    comfy: bool = False  # written by ComfyUI's SaveLatent (raw VAE-space latents)

    @property
    def meta_model(self) -> str | None:
        return self.metadata.get(META_PREFIX + "model")

    @property
    def meta_fps(self) -> float | None:
        fps = self.metadata.get(META_PREFIX + "fps")
        return float(fps) if fps else None

    @property
    def meta_latent_space(self) -> str | None:
        return self.metadata.get(META_PREFIX + "latent_space")


def list_tensors(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """Names → (dtype, shape) of every tensor in a safetensors file, and its metadata."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = {
                k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape()))
                for k in f.keys()
            }
            return info, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _looks_pickled(path):
            reason = "it is a PyTorch pickle; re-save it with latent2mp4.save_latents"
        raise InputError(f"{path}: not a readable safetensors file ({reason})") from None


def _looks_pickled(path: Path) -> bool:
    # torch.save writes a zip archive (PK\x03\x04) or, in the legacy format, a raw pickle (\x80).
    with path.open("rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def read_latent_file(path: Path, key: str | None = None) -> LatentFile:
    """Load the latent tensor of a `.safetensors` or ComfyUI `.latent` file.

    The tensor is chosen by `key`, else the only tensor, else the first of PREFERRED_KEYS.
    """
    info, metadata = list_tensors(path)
    names = [k for k in info if k != COMFY_MARKER]
    if key is not None:
        if key not in info:
            raise InputError(
                f"{path}: no tensor '{key}'; the file has: {', '.join(names) or 'none'}"
            )
    else:
        key = default_key(info)
        if key is None:
            found = ", ".join(names) if names else "no tensors"
            raise InputError(
                f"{path}: cannot tell which tensor holds the latents ({found}); pass --key"
            )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensor = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: cannot read tensor '{key}' ({str(e).splitlines()[0]})") from None
    comfy = written_by_comfyui(info, path)
    return LatentFile(path=path, key=key, tensor=tensor, metadata=metadata, comfy=comfy)


def default_key(tensors: Collection[str]) -> str | None:
    """The latent tensor among a file's tensor names: the only one, else a PREFERRED_KEYS one."""
    names = [k for k in tensors if k != COMFY_MARKER]
    if len(names) == 1:
        return names[0]
    return next((k for k in PREFERRED_KEYS if k in tensors), None)


def written_by_comfyui(tensors: Collection[str], path: Path) -> bool:
    """ComfyUI's SaveLatent adds its marker tensor and names files `.latent`."""
    return COMFY_MARKER in tensors or path.suffix == ".latent"


@dataclass(frozen=True)
class Selection:
    """Latents of one file ready for a decoder, plus what was done to them."""

    z: Tensor  # (S, B, C, T, h, w): S selected trajectory steps (S = 1 without a trajectory)
    steps: tuple[int | None, ...]  # the trajectory step of each of the S, None without one
    notes: tuple[str, ...]


def parse_index(spec: str | int, steps: int) -> list[int]:
    """Trajectory steps from `-1`, `0,-1`, `::10`, `5:20`, `all` (Python index semantics)."""
    text = str(spec).strip().lower()
    try:
        if text == "all":
            picked = list(range(steps))
        elif ":" in text:
            if text.count(":") > 2:
                raise ValueError
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            picked = list(range(steps))[slice(*parts)]
        else:
            picked = [int(p) for p in text.split(",")]
    except ValueError:
        raise UsageError(
            f"--index must be an integer, a list (0,-1), a slice (::10) or all, not {spec!r}"
        ) from None
    bad = [i for i in picked if not -steps <= i < steps]
    if bad:
        raise UsageError(f"--index {bad[0]} is out of range for {steps} trajectory steps")
    if not picked:
        raise UsageError(f"--index {spec} selects no steps out of {steps}")
    return list(dict.fromkeys(i % steps for i in picked))


def select_video(
    lf: LatentFile, preset: Preset, layout: str | None = None, index: str | int = -1
) -> Selection:
    """Validate the stored tensor and bring it to `(S, B, C, T, h, w)`.

    4-D tensors get a batch axis; 6-D tensors have a leading trajectory axis whose steps are
    chosen by `index` (see `parse_index`).
    """
    x, path, notes = lf.tensor, lf.path, []
    steps: tuple[int | None, ...] = (None,)
    if layout is not None and layout not in ("BCFHW", "BFCHW"):
        raise UsageError(f"--layout must be BCFHW or BFCHW, not {layout}")
    if x.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"{path}: latents are {str(x.dtype).removeprefix('torch.')}; expected a float dtype"
        )
    if x.ndim == 6:
        try:
            picked = parse_index(index, x.shape[0])
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
        steps = tuple(picked)
        x = x[picked] if len(picked) > 1 else x[picked[0]].unsqueeze(0)
        shown = ", ".join(map(str, picked[:5])) + (", …" if len(picked) > 5 else "")
        notes.append(f"trajectory steps {shown} of {lf.tensor.shape[0]} (--index {index})")
    elif x.ndim == 5:
        x = x.unsqueeze(0)
    elif x.ndim == 4:
        x = x.unsqueeze(0).unsqueeze(0)
    else:
        shape = tuple(lf.tensor.shape)
        raise InputError(
            f"{path}: latents have shape {shape}; "
            "expected (C,F,H,W), (B,C,F,H,W) or (steps,B,C,F,H,W)"
        )
    if layout is None:
        layout, why = infer_layout(tuple(x.shape), preset, lf.comfy)
        if why:
            notes.append(why)
    if layout == "BFCHW":
        x = x.permute(0, 1, 3, 2, 4, 5)
    if any(s == 0 for s in x.shape):
        raise InputError(f"{path}: latents have an empty dimension {tuple(lf.tensor.shape)}")
    channels = x.shape[2]
    if channels != preset.latent_channels:
        raise InputError(f"{path}: {channel_hint(channels, preset)}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(
            f"{path}: latents contain {bad} NaN/Inf values; the sampler likely diverged"
        )
    if preset.front_pad_multiple > 1 and x.shape[3] % preset.front_pad_multiple == 0:
        # CogVideoX 1.5 pads 2N+1 latent frames to 2N+2 at the front; its pipeline drops the pad.
        pad = preset.front_pad_multiple - 1
        x = x[:, :, :, pad:]
        notes.append(
            f"dropped {pad} leading padding latent frame(s), as the {preset.name} pipeline does"
        )
    return Selection(z=x, steps=steps, notes=tuple(notes))


def infer_layout(shape: tuple[int, ...], preset: Preset, comfy: bool) -> tuple[str, str | None]:
    """The layout of `(S, B, ?, ?, h, w)`, and a note when it is not the expected one.

    Expected: ComfyUI's (B, C, F, H, W) for its files, else the preset's. The other layout is taken
    only when it alone gives the model's channel count (a CogVideoX latent saved channels-first, a
    Wan latent saved frames-first), so an unambiguous file never needs --layout.
    """
    expected = "BCFHW" if comfy else preset.layout
    other = "BFCHW" if expected == "BCFHW" else "BCFHW"
    channels = {"BCFHW": shape[2], "BFCHW": shape[3]}
    c = preset.latent_channels
    if channels[expected] != c and channels[other] == c:
        return other, f"read as {other}: only that gives {c} channels (--layout to force)"
    return expected, None


def channel_hint(channels: int, preset: Preset) -> str:
    from latent2mp4.presets import builtin_presets

    fits = [p.name for p in builtin_presets().values() if p.latent_channels == channels]
    hint = f" (did you mean {' or '.join(fits)}?)" if fits else ""
    expected = preset.latent_channels
    return f"latents have {channels} channels; --model {preset.name} expects {expected}{hint}"


def resolve_latent_space(lf: LatentFile, requested: LatentSpace) -> tuple[str, str]:
    """The latent space to assume and why, as (space, reason)."""
    if requested != "auto":
        return requested, "--latent-space"
    if lf.meta_latent_space in ("model", "vae"):
        return lf.meta_latent_space, "file metadata"
    if lf.comfy:
        return "vae", "ComfyUI .latent file"
    return "model", "default for diffusers/original pipeline latents"


def _stats(norm: Normalization, z: Tensor) -> tuple[Tensor, Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(shape).to(z.dtype)
    std = torch.tensor(norm.std, dtype=torch.float32).view(shape).to(z.dtype)
    return mean, std


def denormalise(z: Tensor, norm: Normalization, dtype: torch.dtype = torch.float32) -> Tensor:
    """Model space → VAE space, with the reference pipelines' arithmetic in `dtype`.

    Wan divides by the reciprocal of std (pipeline_wan.py); HunyuanVideo and CogVideoX divide by the
    scaling factor.
    """
    z = z.to(dtype)
    if norm.scaling_factor is not None:
        return z / norm.scaling_factor
    mean, std = _stats(norm, z)
    return z / (1.0 / std) + mean


def normalise(z: Tensor, norm: Normalization, dtype: torch.dtype = torch.float32) -> Tensor:
    """VAE space → model space (what the preview factors expect)."""
    z = z.to(dtype)
    if norm.scaling_factor is not None:
        return z * norm.scaling_factor
    mean, std = _stats(norm, z)
    return (z - mean) / std


def save_latents(
    path: str | Path,
    tensor: Tensor,
    model: str | None = None,
    fps: float | None = None,
    latent_space: Literal["model", "vae"] = "model",
    key: str = "latents",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write latents to a safetensors file whose header says how to decode them.

    `latent2mp4 decode FILE` then needs no --model/--fps/--latent-space flags.
    """
    if latent_space not in ("model", "vae"):
        raise UsageError(f"latent_space must be 'model' or 'vae', not {latent_space!r}")
    meta: dict[str, str] = {META_PREFIX + "latent_space": latent_space}
    if model is not None:
        meta[META_PREFIX + "model"] = model
    if fps is not None:
        meta[META_PREFIX + "fps"] = str(fps)
    if extra:
        meta[META_PREFIX + "extra"] = json.dumps(extra)
    path = Path(path)
    save_file({key: tensor.detach().contiguous().cpu()}, str(path), metadata=meta)
    return path
