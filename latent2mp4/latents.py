"""Read, validate, select and (de-)normalise latents from files or from memory.

Nothing here holds a whole clip: a file's latents stay where they are stored (`arrays.py`) and
a `LatentView` reads one video's frames `[start, stop)` at a time, for the decoder's chunk plan
and for the streamed NaN/Inf scan.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from latent2mp4.arrays import StoredArray, count_nonfinite, dtype_name, in_memory, open_arrays
from latent2mp4.errors import InputError, UsageError
from latent2mp4.normalization import Normalization
from latent2mp4.packed import VideoSize, unpack
from latent2mp4.presets import LAYOUT_AXES, Preset

LatentSpace = Literal["model", "vae", "auto"]
PREFERRED_KEYS = ("latents", "latent", "samples", "latent_tensor")
COMFY_MARKER = (
    "latent_format_version_0"  # empty tensor ComfyUI's SaveLatent writes beside the latents
)
META_PREFIX = "latent2mp4."
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCAN_BYTES = 8 * 1024**2  # the NaN/Inf scan reads this much at a time (flat, and still fast)
IN_MEMORY = Path("<latents>")  # the name in-memory latents go by in messages

Latents = Tensor | np.ndarray | Sequence[Tensor]


@dataclass(frozen=True)
class LatentFile:
    """A latent array as stored (not read yet), with what the file says about itself."""

    path: Path
    key: str
    array: StoredArray
    metadata: dict[str, str] = field(default_factory=dict)
    comfy: bool = False  # written by ComfyUI's SaveLatent (raw VAE-space latents)

    @property
    def tensor(self) -> Tensor:
        """The whole stored tensor, read into memory (decoding never needs this)."""
        return self.array.take((slice(None),) * len(self.array.shape))

    @property
    def meta_model(self) -> str | None:
        return self.metadata.get(META_PREFIX + "model")

    @property
    def meta_fps(self) -> float | None:
        fps = self.metadata.get(META_PREFIX + "fps")
        try:
            value = float(fps) if fps else None
        except ValueError:
            value = None
        if value is not None and value > 0 and value != float("inf"):
            return value
        if fps:
            raise InputError(
                f"{self.path}: metadata {META_PREFIX}fps is {fps!r}, not a positive number; "
                "pass --fps"
            )
        return None

    @property
    def meta_latent_space(self) -> str | None:
        return self.metadata.get(META_PREFIX + "latent_space")

    @property
    def meta_size(self) -> VideoSize:
        """The generation size `save_latents` recorded (packed LTX latents need it)."""
        return recorded_size(self.metadata, self.path)


def recorded_size(metadata: Mapping[str, str], path: Path) -> VideoSize:
    """The generation size in a file's metadata (None where not recorded)."""
    values = []
    for k in ("num_frames", "height", "width"):
        v = metadata.get(META_PREFIX + k)
        try:
            values.append(int(v) if v else None)
        except ValueError:
            flag = "--" + k.replace("_", "-")
            raise InputError(
                f"{path}: metadata {META_PREFIX}{k} is {v!r}, not an integer; pass {flag}"
            ) from None
    return VideoSize(*values)


def list_tensors(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """Names → (dtype, shape) of every tensor in a latent file, and its metadata."""
    arrays, metadata = open_arrays(path)
    info = {k: (dtype_name(a.dtype), list(a.shape)) for k, a in arrays.items()}
    return info, metadata


def read_latent_file(path: Path, key: str | None = None) -> LatentFile:
    """Open the latent array of a `.safetensors`, ComfyUI `.latent`, `.pt`/`.pth`/`.bin`,
    `.npy` or `.npz` file; only headers are read where the format allows.

    The tensor is chosen by `key`, else the only tensor, else the first of PREFERRED_KEYS.
    """
    arrays, metadata = open_arrays(path)
    key = choose_key(arrays, key, path)
    comfy = written_by_comfyui(arrays, path)
    return LatentFile(path=path, key=key, array=arrays[key], metadata=metadata, comfy=comfy)


def latents_in_memory(x: Latents) -> LatentFile:
    """A tensor (any device, any float dtype), NumPy array or list of tensors (a trajectory),
    shaped as a file's latents would be."""
    if not isinstance(x, Tensor | np.ndarray | list | tuple):
        raise InputError(
            f"latents must be a torch tensor, a NumPy array or a list of tensors, "
            f"not {type(x).__name__}"
        )
    return LatentFile(path=IN_MEMORY, key="latents", array=in_memory(x))


def choose_key(arrays: Collection[str], key: str | None, path: Path) -> str:
    names = [k for k in arrays if k != COMFY_MARKER]
    if key is not None:
        if key not in arrays:
            raise InputError(
                f"{path}: no tensor '{key}'; the file has: {', '.join(names) or 'none'}"
            )
        return key
    found = default_key(arrays)
    if found is None:
        shown = ", ".join(names) if names else "no tensors"
        raise InputError(
            f"{path}: cannot tell which tensor holds the latents ({shown}); pass --key"
        )
    return found


def default_key(tensors: Collection[str]) -> str | None:
    """The latent tensor among a file's tensor names: the only one, else a PREFERRED_KEYS one
    (also as the outer or inner name of a nested `outer.inner` entry, when that is unique)."""
    names = [k for k in tensors if k != COMFY_MARKER]
    if len(names) == 1:
        return names[0]
    for wanted in PREFERRED_KEYS:
        if wanted in names:
            return wanted
        nested = [n for n in names if wanted in n.split(".")]
        if len(nested) == 1:
            return nested[0]
    return None


def written_by_comfyui(tensors: Collection[str], path: Path) -> bool:
    """ComfyUI's SaveLatent adds its marker tensor and names files `.latent`."""
    return COMFY_MARKER in tensors or path.suffix.lower() == ".latent"


@dataclass(frozen=True)
class LatentView:
    """The videos of a stored array as `(S, B, C, T, h, w)`, read a time range at a time.

    `S` counts the selected trajectory steps. Indexing happens in the stored layout (4-D
    `(C,F,H,W)`, 5-D with batch, 6-D with steps; `BFCHW` stores frames before channels, `BFHWC`
    channels last), so a read touches only the frames it returns.
    """

    array: StoredArray
    steps: tuple[int, ...]  # stored trajectory index of each selected step (6-D arrays only)
    layout: str  # the stored axis order, a key of LAYOUT_AXES
    time_offset: int  # leading stored frames skipped (a pipeline's padding frames)
    shape: tuple[int, int, int, int, int, int]

    def read(self, pos: int, batch: int, start: int, stop: int) -> Tensor:
        """Latents `(1, C, stop - start, h, w)` of video (`pos`, `batch`) in the stored dtype."""
        lead = len(self.array.shape) - 4
        index: list[int | slice] = [self.steps[pos]] if lead == 2 else []
        index += [batch] if lead >= 1 else []
        frames = slice(start + self.time_offset, stop + self.time_offset)
        axes = LAYOUT_AXES[self.layout]  # e.g. "FHWC"
        index += [frames if a == "F" else slice(None) for a in axes[: axes.index("F") + 1]]
        x = self.array.take(tuple(index))
        return x.permute(*(axes.index(a) for a in "CFHW")).unsqueeze(0)

    def frame_bytes(self) -> int:
        c, h, w = self.shape[2], self.shape[4], self.shape[5]
        return c * h * w * torch.finfo(_float_dtype(self.array.dtype)).bits // 8

    def count_nonfinite(self) -> int:
        """NaN/Inf values among the selected videos, read a slice at a time (flat memory)."""
        step = max(1, SCAN_BYTES // max(self.frame_bytes(), 1))
        bad = 0
        for pos in range(self.shape[0]):
            for b in range(self.shape[1]):
                for t in range(0, self.shape[3], step):
                    x = self.read(pos, b, t, min(t + step, self.shape[3]))
                    bad += count_nonfinite(x)
        return bad


def _float_dtype(dtype: torch.dtype | str) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


@dataclass(frozen=True)
class Selection:
    """Latents of one file ready for a decoder, plus what was done to them."""

    view: LatentView  # (S, B, C, T, h, w): S selected trajectory steps (S = 1 without one)
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
    lf: LatentFile,
    preset: Preset,
    layout: str | None = None,
    index: str | int = -1,
    size: VideoSize | None = None,
) -> Selection:
    """Validate the stored array and view it as `(S, B, C, T, h, w)`.

    4-D arrays get a batch axis; 6-D arrays have a leading trajectory axis whose steps are
    chosen by `index` (see `parse_index`). Shape and dtype come from the header; the values are
    scanned for NaN/Inf a slice at a time. 3-D arrays of a packing preset are token sequences
    `(B, F*H*W, C)` (a few MB), read and unpacked with `size` (flags) or else the file's
    recorded size.
    """
    path, notes = lf.path, []
    flags, recorded = size or VideoSize(), lf.meta_size
    given = flags.over(recorded)
    if len(lf.array.shape) == 3 and preset.packed and lf.array.dtype in FLOAT_DTYPES:
        unpacked = unpack(lf.tensor, given, preset, str(path))
        origin = {flags: "flags", recorded: "file metadata"}.get(given, "flags over file metadata")
        notes.append(
            f"unpacked tokens {tuple(lf.array.shape)} to {tuple(unpacked.shape)} ({origin})"
        )
        lf = replace(lf, array=in_memory(unpacked.contiguous()))
    shape = tuple(lf.array.shape)
    steps: tuple[int | None, ...] = (None,)
    stored: tuple[int, ...] = ()
    full: tuple[int, ...]
    if layout is not None and layout not in LAYOUT_AXES:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUT_AXES)}, not {layout}")
    if lf.array.dtype not in FLOAT_DTYPES:
        found = dtype_name(lf.array.dtype)
        raise InputError(f"{path}: latents are {found}; expected a float dtype")
    if len(shape) == 6:
        try:
            picked = parse_index(index, shape[0])
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
        steps = stored = tuple(picked)
        shown = ", ".join(map(str, picked[:5])) + (", …" if len(picked) > 5 else "")
        notes.append(f"trajectory steps {shown} of {shape[0]} (--index {index})")
        full = (len(picked), *shape[1:])
    elif len(shape) in (4, 5):
        full = (1,) * (6 - len(shape)) + shape
        if str(index) != "-1":  # e.g. someone expecting it to pick a batch element
            notes.append(f"--index {index} ignored: only 6-D (steps,B,C,F,H,W) latents have steps")
    else:
        raise InputError(
            f"{path}: latents have shape {shape}; "
            "expected (C,F,H,W), (B,C,F,H,W) or (steps,B,C,F,H,W)"
        )
    if layout is None:
        layout, why = infer_layout(full, preset, lf.comfy)
        if why:
            notes.append(why)
    c, t, h, w = (full[2 + LAYOUT_AXES[layout].index(a)] for a in "CFHW")
    s, b = full[:2]
    if any(d == 0 for d in shape):
        raise InputError(f"{path}: latents have an empty dimension {shape}")
    if c != preset.latent_channels:
        raise InputError(f"{path}: {channel_hint(c, preset)}")
    offset = 0
    if preset.front_pad_multiple > 1 and not lf.comfy:  # ComfyUI pads inside its model
        offset, why = front_padding(t, preset, given.num_frames, path)
        if why:
            notes.append(why)
    view = LatentView(lf.array, stored, layout, offset, (s, b, c, t - offset, h, w))
    bad = view.count_nonfinite()
    if bad:
        raise InputError(
            f"{path}: latents contain {bad} NaN/Inf values; the sampler likely diverged"
        )
    return Selection(view=view, steps=steps, notes=tuple(notes))


def front_padding(
    t: int, preset: Preset, num_frames: int | None, path: Path
) -> tuple[int, str | None]:
    """Leading latent frames to drop, and why: CogVideoX 1.5's pipeline pads an odd latent count
    to even at the front (81 frames: 21 → 22 latents), returns the pad with
    output_type="latent" and drops it before decoding; an even count (85 frames: 22) is not
    padded. The generation's frame count settles it; without it an even count is taken as padded,
    as for the default 81 frames."""
    m = preset.front_pad_multiple
    if num_frames is not None:
        real = (num_frames - 1) // preset.temporal_ratio + 1
        if not 0 <= t - real < m:
            raise InputError(
                f"{path}: --num-frames {num_frames} makes {real} latent frames, "
                f"not the {t} stored (± the pipeline's padding)"
            )
        pad = t - real
        return (
            pad,
            f"dropped {pad} leading padding latent frame(s) (--num-frames {num_frames})"
            if pad
            else None,
        )
    if t % m:
        return 0, None
    return m - 1, (
        f"dropped {m - 1} leading padding latent frame(s), as the {preset.name} pipeline does for "
        "an odd count; pass --num-frames if the generation's count was even (e.g. 85)"
    )


def infer_layout(shape: tuple[int, ...], preset: Preset, comfy: bool) -> tuple[str, str | None]:
    """The layout of `(S, B, ?, ?, h, w)`, and a note when it is not the expected one.

    Expected: the preset's ComfyUI layout for ComfyUI's files (B, C, F, H, W; a batch of frames
    for image VAEs), else the preset's. The other layout is taken
    only when it alone gives the model's channel count (a CogVideoX latent saved channels-first, a
    Wan latent saved frames-first), so an unambiguous file never needs --layout.
    """
    expected = preset.comfy_layout if comfy else preset.layout
    other = "BFCHW" if expected == "BCFHW" else "BCFHW"
    channels = {name: shape[2 + axes.index("C")] for name, axes in LAYOUT_AXES.items()}
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


def resolve_latent_space(
    lf: LatentFile, requested: LatentSpace, preset: Preset | None = None
) -> tuple[str, str]:
    """The latent space to assume and why, as (space, reason)."""
    if requested != "auto":
        return requested, "--latent-space"
    if lf.meta_latent_space in ("model", "vae"):
        return lf.meta_latent_space, "file metadata"
    if lf.comfy:
        if preset is None or preset.comfy_latent_space == "vae":
            return "vae", "ComfyUI .latent file"
        return (
            "model",
            f"ComfyUI .latent file ({preset.name}: ComfyUI's VAE un-normalises internally)",
        )
    if preset is not None and preset.pipeline_latent_space == "vae":
        return "vae", f"the {preset.name} pipeline's output_type='latent' is de-normalised"
    return "model", "default for diffusers/original pipeline latents"


def _stats(norm: Normalization, z: Tensor) -> tuple[Tensor, Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(shape).to(z.dtype)
    std = torch.tensor(norm.std, dtype=torch.float32).view(shape).to(z.dtype)
    return mean, std


def denormalise(z: Tensor, norm: Normalization, dtype: torch.dtype = torch.float32) -> Tensor:
    """Model space → VAE space, with the reference pipelines' arithmetic in `dtype`.

    Wan divides by the reciprocal of std (pipeline_wan.py), Cosmos-Predict2 multiplies by std and
    divides by sigma_data (pipeline_cosmos2_video2world.py), Mochi and LTX multiply by std and
    divide by the scaling factor (pipeline_mochi.py, pipeline_ltx.py); HunyuanVideo and CogVideoX
    divide by the scaling factor (and the Tencent HunyuanVideo 1.5 pipeline adds a shift factor
    where set).
    """
    z = z.to(dtype)
    if norm.mean is None:
        assert norm.scaling_factor is not None
        z = z / norm.scaling_factor
        return z + norm.shift_factor if norm.shift_factor else z
    mean, std = _stats(norm, z)
    multiply = norm.std_op == "multiply" or norm.scaling_factor is not None
    z = z * std if multiply else z / (1.0 / std)
    for divisor in (norm.scaling_factor, norm.sigma_data):
        if divisor is not None:
            z = z / divisor
    return z + mean


def normalise(z: Tensor, norm: Normalization, dtype: torch.dtype = torch.float32) -> Tensor:
    """VAE space → model space (what the preview factors expect)."""
    z = z.to(dtype)
    if norm.mean is None:
        assert norm.scaling_factor is not None
        return (z - norm.shift_factor if norm.shift_factor else z) * norm.scaling_factor
    mean, std = _stats(norm, z)
    return (z - mean) * (norm.sigma_data or 1.0) * (norm.scaling_factor or 1.0) / std


def save_latents(
    path: str | Path,
    tensor: Tensor,
    model: str | None = None,
    fps: float | None = None,
    latent_space: Literal["model", "vae"] = "model",
    key: str = "latents",
    extra: dict[str, str] | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Path:
    """Write latents to a safetensors file whose header says how to decode them.

    `latent2mp4 decode FILE` then needs no --model/--fps/--latent-space flags; packed LTX tokens
    also need the generation's `num_frames`, `height` and `width` (the pipeline's arguments).
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
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if value is not None:
            meta[META_PREFIX + name] = str(int(value))
    path = Path(path)
    save_file({key: tensor.detach().contiguous().cpu()}, str(path), metadata=meta)
    return path
