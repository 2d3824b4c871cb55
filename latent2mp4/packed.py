"""Packed LTX latents: the token sequence `(B, F*H*W, C)` LTXPipeline(output_type="latent") returns.

The pipeline packs `(B, C, F, H, W)` with patch size 1 as tokens in (F, H, W) order
(pipeline_ltx.py `_pack_latents`). Unpacking needs the generation's size: the pipeline's own
`num_frames`, `height`, `width` (pixels), from flags or the file's metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from latent2mp4.errors import InputError, UsageError
from latent2mp4.presets import Preset

SHOWN = 6  # factorisations listed in the error
MAX_ASPECT = 4  # listed sizes are at most 4:1 either way
LIKELY = (161, 512, 704)  # LTXPipeline's default num_frames, height, width: listed nearest first


@dataclass(frozen=True)
class VideoSize:
    """The pipeline's generation size in pixels and frames (its argument names)."""

    num_frames: int | None = None
    height: int | None = None
    width: int | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.num_frames, self.height, self.width)

    def over(self, recorded: VideoSize) -> VideoSize:
        """These values where given, else `recorded`'s (flags over a file's metadata)."""
        return VideoSize(
            self.num_frames if self.num_frames is not None else recorded.num_frames,
            self.height if self.height is not None else recorded.height,
            self.width if self.width is not None else recorded.width,
        )

    def check(self) -> None:
        for flag, value in (
            ("--num-frames", self.num_frames),
            ("--height", self.height),
            ("--width", self.width),
        ):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} must be a positive integer, not {value}")


def latent_dims(size: VideoSize, preset: Preset) -> tuple[int, int, int]:
    """(F, H, W) latents of a generation, as LTXPipeline computes them."""
    assert size.num_frames and size.height and size.width
    return (
        (size.num_frames - 1) // preset.temporal_ratio + 1,
        size.height // preset.spatial_ratio,
        size.width // preset.spatial_ratio,
    )


def factorisations(tokens: int, preset: Preset) -> list[str]:
    """Generation sizes whose latents give `tokens` tokens, as --num-frames/--height/--width."""
    found = []
    r = preset.spatial_ratio
    for f in range(1, tokens + 1):
        if tokens % f:
            continue
        rest = tokens // f
        for h in range(1, rest + 1):
            w = rest // h
            if rest % h or max(h, w) > MAX_ASPECT * min(h, w):
                continue
            frames = preset.temporal_ratio * (f - 1) + 1
            size = (frames, h * r, w * r)
            distance = sum(abs(math.log(a / b)) for a, b in zip(size, LIKELY, strict=True))
            found.append((distance, f"--num-frames {frames} --height {h * r} --width {w * r}"))
    return [text for _, text in sorted(found)]


def unpack(x: Tensor, size: VideoSize, preset: Preset, where: str) -> Tensor:
    """`(B, F*H*W, C)` tokens → `(B, C, F, H, W)` latents; a one-line error when the size is
    missing or does not fit, listing sizes that would. The channel count is checked by the
    caller (against the VAE given, else the preset)."""
    b, tokens, c = x.shape
    size.check()
    if size.complete:
        f, h, w = latent_dims(size, preset)
        if f * h * w == tokens:
            return x.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)
        problem = (
            f"--num-frames {size.num_frames} --height {size.height} --width {size.width} give "
            f"{f}x{h}x{w} = {f * h * w} tokens, not {tokens}"
        )
    else:
        problem = "unpacking needs --num-frames, --height and --width (the pipeline's arguments)"
    fits = factorisations(tokens, preset)
    shown = "; ".join(fits[:SHOWN]) + (f" (+{len(fits) - SHOWN} more)" if len(fits) > SHOWN else "")
    raise InputError(
        f"{where}: packed latents {tuple(x.shape)}: {problem}; sizes that fit: {shown or 'none'}"
    )
