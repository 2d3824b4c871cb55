"""What `latent2mp4 info` reports about a latent file, as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latent2mp4.audio import latent_seconds
from latent2mp4.errors import InputError
from latent2mp4.latents import (
    default_key,
    front_padding,
    infer_layout,
    list_tensors,
    recorded_size,
    written_by_comfyui,
)
from latent2mp4.models.registry import get_sound
from latent2mp4.packed import VideoSize, latent_dims
from latent2mp4.presets import LAYOUT_AXES, Preset, builtin_presets


def _video_dims(shape: list[int], preset: Preset, comfy: bool) -> tuple[int, int, int, int] | None:
    """(channels, frames, h, w) of a tensor read in the layout `decode` would use, or None."""
    if len(shape) < 4 or len(shape) > 6:
        return None
    full = (1,) * (6 - len(shape)) + tuple(shape)
    layout, _ = infer_layout(full, preset, comfy)
    c, t, h, w = (full[2 + LAYOUT_AXES[layout].index(a)] for a in "CFHW")
    return c, t, h, w


def _packed_row(tokens: int, preset: Preset, size: VideoSize) -> tuple[str, ...]:
    """A packed-token tensor's row: the video the recorded size gives, or what is missing."""
    if size.complete:
        t, h, w = latent_dims(size, preset)
        if t > 0 and h > 0 and w > 0 and t * h * w == tokens:
            frames = preset.frames_out(t)
            return (
                preset.name,
                f"{t}×{h}×{w} (from {tokens} packed tokens)",
                str(frames),
                f"{w * preset.spatial_ratio}x{h * preset.spatial_ratio}",
                f"{frames / preset.fps:.2f} s @ {preset.fps:g} fps",
            )
    needs = "needs --num-frames, --height, --width"
    return (preset.name, f"{tokens} packed tokens", "?", needs, "?")


def describe_file(path: Path, own: Preset | None = None) -> dict[str, Any]:
    """Tensors `{name: (dtype, shape)}`, metadata, one row per preset that fits (built-in ones
    and `own`), and one per audio latents tensor a sound preset would decode."""
    tensors, metadata = list_tensors(path)
    presets = {**builtin_presets(), **({own.name: own} if own else {})}
    key = default_key(tensors)
    comfy = written_by_comfyui(tensors, path)
    fits = []
    empty = key is not None and 0 in tensors[key][1]
    if key is not None and not empty:
        shape, recorded = tensors[key][1], recorded_size(metadata, path)
        for p in presets.values():
            if len(shape) == 3 and p.packed and shape[2] == p.latent_channels:
                fits.append(_packed_row(shape[1], p, recorded))
                continue
            dims = _video_dims(shape, p, comfy)
            if dims is None or dims[0] != p.latent_channels:
                continue
            _, t, h, w = dims
            if p.front_pad_multiple > 1 and not comfy:  # as decode reads it
                try:
                    t -= front_padding(t, p, recorded.num_frames, path)[0]
                except InputError:
                    pass  # decode will say why; info shows the stored count
            frames = p.frames_out(t)
            fits.append(
                (
                    p.name,
                    f"{t}×{h}×{w}",
                    str(frames),
                    f"{w * p.spatial_ratio}x{h * p.spatial_ratio}",
                    f"{frames / p.fps:.2f} s @ {p.fps:g} fps",
                )
            )
    audio = []
    for p in presets.values():
        if p.audio is None or p.audio.key not in tensors:
            continue
        shape = tensors[p.audio.key][1]
        arch = get_sound(p.audio.architecture)
        short = arch.rank - len(shape)  # 1: one clip without its batch dimension
        secs = (
            f"not {arch.form.split(' as ')[0]}"
            if short not in ((0, 1) if arch.unbatched else (0,))
            else "empty"
            if 0 in shape
            else f"{latent_seconds(p.audio, shape[arch.time_axis - short]):.2f} s"
        )
        audio.append((p.name, p.audio.key, str(tuple(shape)), secs))
    return {
        "tensors": tensors,
        "metadata": metadata,
        "fits": fits,
        "key": key,
        "audio": audio,
        "empty": empty,
    }
