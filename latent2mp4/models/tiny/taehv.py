"""Tiny video decoders of madebyollin/taehv, weight-compatible with its released checkpoints.

TAEHV (HunyuanVideo), TAEW2.1 (Wan 2.1), TAECVX (CogVideoX), TAEW2.2 (Wan 2.2 5B), TAEHV1.5
(HunyuanVideo 1.5), TAELTX-2 and the wider "_super" decoders share one design: 2-D convs applied
frame by frame, three stages that each double the resolution, and three block kinds that carry
all temporal logic. A memory block convolves each frame's features together with the previous
frame's (its input one step earlier, zeros before the first frame), a temporal grow (`TGrow`)
turns one frame into `stride` frames through a 1x1 conv, and a final pixel shuffle undoes the
patch size. The checkpoint is one flat `nn.Sequential` (`decoder.N.*` keys); ours repeats it, so
the variant and its widths are read off the tensors, never the file name.

The decoder consumes model-space latents (no de-normalisation) and outputs [0, 1]. The reference
(`taehv.py` `TAEHV.decode_video`) drops the first `t_upscale - 1` frames, except for CogVideoX with
an even latent count; here the drop is whatever makes the count equal the full VAE's
(`Preset.frames_out`), which gives both rules. For MiniMax-H3 (taeh3) the reference decodes the
whole clip and then drops the first `t_upscale - 1` frames of every `chunk · t_upscale`-frame
clip (the preset's clip plan); with the pipeline's 5n+2 latents that is 17n+5 frames, the full
VAE's count. (For other latent counts the reference pads with black frames or cuts real ones to
17·⌈4T/20⌉ − 12; here the real frames are kept, which is again the full VAE's count.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.clips import ClipPlan
from latent2mp4.engine import Chunk
from latent2mp4.errors import WeightsError
from latent2mp4.presets import Preset, builtin_presets
from latent2mp4.weights import channels_last, offenders, open_tensors

if TYPE_CHECKING:
    from latent2mp4.models.family import StreamModule

__all__ = ["TinyConfig", "TinyDecoder", "TinyState", "load_tiny"]

STAGES = 3  # each doubles height and width
IMAGE_CHANNELS = 3
# Checkpoint indices of the first temporal grow and the stride between stages: base decoders
# have 6 blocks per stage after a 3-block stem, "_super" ones 7 after a 1-block stem.
BASE_TGROW, BASE_STEP = 7, 6
SUPER_TGROW, SUPER_STEP = 7, 7
OUT_INDEX = 22  # the final conv in both layouts
# Peak decode bytes per output pixel of one latent frame (fp32; measured VmHWM growth at 416x240),
# for tiling decisions; the full VAEs take 10000-45000 (their presets).
TINY_BYTES_PER_PIXEL = 4000


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
        if any(g[0] % g[1] or st not in (1, 2) for g, st in zip(grows, strides, strict=True)):
            raise ValueError(f"temporal grow shapes {[tuple(g[:2]) for g in grows]} are not x1/x2")
        out = shapes[f"decoder.{OUT_INDEX}.weight"][0]
        patch = math.isqrt(out // IMAGE_CHANNELS)
        if IMAGE_CHANNELS * patch**2 != out:
            raise ValueError(f"output conv has {out} channels, not 3 x a square patch")
        return cls(stem[1], patch, strides, widths, sup)


def conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Three 3x3 convs over (frame, previous frame) features, a residual and a ReLU."""

    def __init__(self, n: int) -> None:
        super().__init__()
        relu = nn.ReLU(inplace=True)  # on fresh conv outputs only
        self.conv = nn.Sequential(conv3(2 * n, n), relu, conv3(n, n), relu, conv3(n, n))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        y = self.conv(torch.cat([x, past], 1))
        return y.add_(x).relu_()


class SuperMemBlock(nn.Module):
    """The "_super" memory block: 7x7 depthwise conv, then an inverted 1x1 bottleneck."""

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


@dataclass
class TinyState:
    """Causal state of one spatial tile: each memory block's last input frame, by block index."""

    memory: dict[int, Tensor] = field(default_factory=dict)


class TinyDecoder(nn.Module):
    """Implements the engine's StreamDecoder on model-space latents.

    Output before `finalize` is `(B, 3, f, H, W)` in the reference's [0, 1] scale (unclamped).
    `frames_out(T)` is the full VAE's frame count, which the leading drop reproduces.
    """

    input_space = "model"

    def __init__(
        self,
        config: TinyConfig,
        frames_out: Callable[[int], int] | None = None,
        clips: ClipPlan | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clips = clips
        self.decoder = nn.Sequential(*_layers(config))
        t_up = config.t_upscale
        self.frames_out = frames_out or (lambda t: 1 + t_up * (t - 1))

    @property
    def upscale(self) -> int:
        return self.config.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        # Every frame depends only on earlier ones, so any split gives the same frames.
        if self.clips is not None:  # one chunk per clip, its leading frames dropped
            n, cut = self.clips.chunk, self.config.t_upscale - 1
            return [Chunk(s, min(s + n, num_frames), cut) for s in range(0, num_frames, n)]
        drop = self.config.t_upscale * num_frames - self.frames_out(num_frames)
        assert 0 <= drop < self.config.t_upscale, (num_frames, drop)
        starts = range(0, num_frames, max_frames)
        return [Chunk(s, min(s + max_frames, num_frames), drop if s == 0 else 0) for s in starts]

    def new_state(self) -> TinyState:
        return TinyState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        assert isinstance(state, TinyState)
        b, c, t, h, w = z.shape
        x = z.transpose(1, 2).reshape(b * t, c, h, w).contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.decoder):
            if isinstance(block, MemBlock | SuperMemBlock):
                x = block(x, _past(x, b, state.memory, i))
            else:
                x = block(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)
        return x.unflatten(0, (b, -1)).transpose(1, 2)

    def finalize(self, x: Tensor) -> Tensor:
        # The reference's frames are clamp(0, 1) * 255, rounded. Rounding here onto the 256 levels
        # k / 127.5 - 1 lets our quantiser ((x + 1) * 127.5, rounded) land on exactly k.
        levels = (x.float().clamp(0.0, 1.0) * 255.0).round_()
        return levels / 127.5 - 1.0


def _past(x: Tensor, batch: int, memory: dict[int, Tensor], index: int) -> Tensor:
    """Each frame's previous frame, the first one's from the previous chunk (zeros at the start);
    keeps this chunk's last frames for the next. Frames stay `(B*t, C, H, W)` channels-last."""
    t = x.shape[0] // batch
    prev = memory.get(index)
    if prev is None:
        prev = torch.zeros_like(x[:batch])
    if t == 1:  # one frame per chunk: no copies (nothing writes into a block's input)
        memory[index] = x
        return prev
    memory[index] = x[t - 1 :: t].clone()
    parts = [p for b in range(batch) for p in (prev[b : b + 1], x[b * t : (b + 1) * t - 1])]
    return torch.cat(parts, 0)


# ---- loading ----------------------------------------------------------------------------------


def download_hint(preset: Preset) -> str:
    if preset.tiny is None:
        return f"no tiny decoder is known for {preset.name}"
    return f"download {preset.tiny.file} from {preset.tiny.url}"


def _variant_text(v: tuple[int, int, int]) -> str:
    return f"{v[0]} latent channels, patch {v[1]}, {v[2]}x time"


def _check_fit(cfg: TinyConfig, preset: Preset, where: str) -> None:
    if cfg.variant == preset.tiny_variant:
        return
    fits = [p.name for p in builtin_presets().values() if p.tiny_variant == cfg.variant]
    hint = f"use --model {' or '.join(fits)}" if fits else "no built-in preset fits it"
    raise WeightsError(
        f"{where}: a tiny decoder for {_variant_text(cfg.variant)}; --model {preset.name} needs "
        f"{_variant_text(preset.tiny_variant)} ({hint}; for {preset.name}: {download_hint(preset)})"
    )


def load_tiny(
    spec: str | None, preset: Preset, device: torch.device | str, dtype: torch.dtype
) -> tuple[StreamModule, str]:
    """Load a taehv checkpoint (`.pth` weights-only or `.safetensors`, fp16 or fp32) strictly.

    Returns the decoder on `device` in `dtype` and a description for messages and metadata.
    """
    if spec is None:
        raise WeightsError(f"--decoder tiny needs --vae FILE; {download_hint(preset)}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"{spec}: no such tiny decoder file; {download_hint(preset)}")
    where = str(path)
    entries = open_tensors((path,))
    foreign = {k for k in entries if not k.startswith(("decoder.", "encoder."))}
    if foreign or not any(k.startswith("decoder.") for k in entries):
        found = f"unexpected tensors {offenders(foreign)}" if foreign else "no decoder.* tensors"
        raise WeightsError(
            f"{where}: not a taehv tiny autoencoder ({found}); {download_hint(preset)}"
        )
    shapes = {k: s for k, (s, _) in entries.items() if k.startswith("decoder.")}
    try:
        config = TinyConfig.from_shapes(shapes)
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{where}: not a known tiny decoder layout ({e})") from None
    _check_fit(config, preset, where)
    with torch.device("meta"):
        module = TinyDecoder(config, preset.frames_out, preset.clip_plan)
    expected = {f"decoder.{k}": tuple(v.shape) for k, v in module.decoder.state_dict().items()}
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    wrong = {f"{k} {shapes[k]}≠{v}" for k, v in expected.items() if shapes.get(k, v) != v}
    if missing or unexpected or wrong:
        what = (
            f"lacks {offenders(missing)}"
            if missing
            else f"has unexpected {offenders(unexpected)}"
            if unexpected
            else f"has wrong shapes {offenders(wrong)}"
        )
        raise WeightsError(f"{where}: the {config.describe()} {what}")
    state = {}
    for key in expected:
        t = entries[key][1]().to(device=device, dtype=dtype)
        state[key] = channels_last(t)
    module.load_state_dict(state, strict=True, assign=True)
    module.eval()
    return cast("StreamModule", module), f"{where} ({config.describe()})"
