"""Tiny video decoders of madebyollin/taehv (and taem1), weight-compatible with their checkpoints.

TAEHV (HunyuanVideo), TAEW2.1 (Wan 2.1), TAECVX (CogVideoX), TAEW2.2 (Wan 2.2 5B), TAEHV1.5
(HunyuanVideo 1.5), TAELTX-2 and the wider "_super" decoders share one design: 2-D convs applied
frame by frame, three stages that each double the resolution, and three block kinds that carry
all temporal logic. A memory block convolves each frame's features together with the previous
frame's (its input one step earlier, zeros before the first frame), a temporal grow (`TGrow`)
turns one frame into `stride` frames through a 1x1 conv, and a final pixel shuffle undoes the
patch size. The checkpoint is one flat `nn.Sequential` (`decoder.N.*` keys); ours repeats it, so
the variant and its widths are read off the tensors, never the file name. TAEM1 (Mochi 1,
madebyollin/taem1) is the base layout with 12 latent channels and temporal strides (1, 2, 3).

The decoder consumes model-space latents (no de-normalisation; TAEM1 has Mochi's
latent transforms baked in) and outputs [0, 1]. The reference (`taehv.py` `TAEHV.decode_video`)
drops the first `t_upscale - 1` frames, except for CogVideoX with an even latent count, and
`taem1.py` always drops 5; here the drop is whatever makes the count equal the full VAE's
(`Preset.frames_out`), which gives all three rules. For MiniMax-H3 (taeh3) the
reference decodes the whole clip and then drops the first `t_upscale - 1` frames of every
`chunk · t_upscale`-frame clip (the preset's clip plan); with the pipeline's 5n+2 latents that is
17n+5 frames, the full VAE's count (for other latent counts the reference pads with black frames
or cuts real ones; here the real frames are kept, again the full VAE's count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latent2mp4.models.tiny.blocks import IMAGE_CHANNELS, Clamp, MemBlock, TinyDecoder, conv3

__all__ = ["TinyConfig", "TinyDecoder"]

STAGES = 3  # each doubles height and width
# Checkpoint indices of the first temporal grow and the stride between stages: base decoders
# have 6 blocks per stage after a 3-block stem, "_super" ones 7 after a 1-block stem.
BASE_TGROW, BASE_STEP = 7, 6
SUPER_TGROW, SUPER_STEP = 7, 7
OUT_INDEX = 22  # the final conv in both layouts
TIME_STRIDES = (1, 2, 3)  # a stage's temporal grow: x1, x2 (taehv) or x3 (taem1's last stage)


@dataclass(frozen=True)
class TinyConfig:
    """Decoder architecture, as the tensors of a checkpoint describe it."""

    latent_channels: int = 16
    patch_size: int = 1
    time_strides: tuple[int, ...] = (1, 2, 2)  # per stage: frames out per frame in
    widths: tuple[int, ...] = (256, 128, 64, 64)  # stem, then after each stage
    super_decoder: bool = False  # ConvNeXt-style memory blocks and pixel-shuffle upsampling

    @property
    def t_upscale(self) -> int:
        return math.prod(self.time_strides)

    @property
    def upscale(self) -> int:
        return 2**STAGES * self.patch_size

    @property
    def variant(self) -> tuple[int, int, int]:
        """(latent channels, patch size, temporal upscale), as `Preset.tiny_variant`."""
        return self.latent_channels, self.patch_size, self.t_upscale

    def describe(self) -> str:
        kind = "super" if self.super_decoder else "base"
        return (
            f"tiny {kind} decoder: {self.latent_channels} channels, patch {self.patch_size}, "
            f"{self.t_upscale}x time"
        )

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> TinyConfig:
        """Read the variant off `decoder.N.*` tensor shapes (raises KeyError/ValueError)."""
        sup = "decoder.0.weight" in shapes
        first, step = (SUPER_TGROW, SUPER_STEP) if sup else (BASE_TGROW, BASE_STEP)
        grows = [shapes[f"decoder.{first + s * step}.conv.weight"] for s in range(STAGES)]
        stem = shapes["decoder.0.weight" if sup else "decoder.1.weight"]
        if sup:  # a stage's 3x3 conv feeds a pixel shuffle; its TGrow has the stage's width
            widths = (stem[0], *(g[1] for g in grows))
        else:
            widths = (stem[0], *(shapes[f"decoder.{8 + s * step}.weight"][0] for s in range(3)))
        strides = tuple(g[0] // g[1] for g in grows)
        bad = [g[0] % g[1] or st not in TIME_STRIDES for g, st in zip(grows, strides, strict=True)]
        if any(bad):
            raise ValueError(f"temporal grow shapes {[tuple(g[:2]) for g in grows]} are not x1-x3")
        out = shapes[f"decoder.{OUT_INDEX}.weight"][0]
        patch = math.isqrt(out // IMAGE_CHANNELS)
        if IMAGE_CHANNELS * patch**2 != out:
            raise ValueError(f"output conv has {out} channels, not 3 x a square patch")
        return cls(stem[1], patch, strides, widths, sup)

    def layers(self) -> list[nn.Module]:
        return _layers(self)


class SuperMemBlock(nn.Module):
    """The "_super" memory block: 7x7 depthwise conv, then an inverted 1x1 bottleneck."""

    remembers = True  # forward takes the previous frame's input too

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * n, 2 * n, 7, padding=3, groups=2 * n, bias=False),
            nn.Conv2d(2 * n, 4 * n, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * n, n, 1, bias=False),
        )

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return self.conv(torch.cat([x, past], 1)).add_(x)


class TGrow(nn.Module):
    """One frame → `stride` frames: a 1x1 conv to `stride` channel groups, group j is frame j."""

    def __init__(self, n: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        nt, c, h, w = x.shape
        y = self.conv(x)
        if self.stride == 1:
            return y
        # One copy into channels-last frames (a plain reshape would leave them channels-first).
        shape = (nt * self.stride, c, h, w)
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        out.view(nt, self.stride, c, h, w).copy_(y.view(nt, self.stride, c, h, w))
        return out


def _layers(cfg: TinyConfig) -> list[nn.Module]:
    """The checkpoint's `decoder` sequence, index for index (taehv.py `TAEHV.__init__`)."""
    n, t = cfg.widths, cfg.time_strides
    out = conv3(n[3], IMAGE_CHANNELS * cfg.patch_size**2)
    relu = nn.ReLU(inplace=True)  # each follows a conv, whose output nothing else holds
    if cfg.super_decoder:
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, n[0], 1, bias=False)]
        for s in range(STAGES):
            layers += [SuperMemBlock(n[s]) for _ in range(3)]
            up = [conv3(n[s], 4 * n[s + 1]), relu, nn.PixelShuffle(2), TGrow(n[s + 1], t[s])]
            layers += up
        return [*layers, out]
    layers = [Clamp(), conv3(cfg.latent_channels, n[0]), relu]
    for s in range(STAGES):
        layers += [MemBlock(n[s]) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TGrow(n[s], t[s]), conv3(n[s], n[s + 1], False)]
    return [*layers, relu, out]
