"""BigVGAN parts shared by the sound decoders: anti-aliased Snake activations (LTX-2's vocoder,
the MMAudio vocoder of Kandinsky 6, the MiniMax-H3 audio decoder), the AMP residual block and the
generator MMAudio's and H3's decoders both are, and folding `weight_norm` pairs into weights.

The generator's attribute names are the diffusers / original checkpoints' (`conv_pre`, `ups.i.0`,
`resblocks.k.convs1.j`, `activations.j`, `activation_post`, `conv_post`); only the anti-aliased
down-sampler's filter sits one level up (`downsample.filter`, stored as
`downsample.lowpass.filter`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.sound import Weights


def kaiser_sinc(ratio: int, size: int) -> Tensor:
    """Low-pass kernel for x`ratio` resampling: cutoff 0.5/ratio, transition 0.6/ratio."""
    cutoff, half_width = 0.5 / ratio, 0.6 / ratio
    half = size // 2
    att = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95  # Kaiser's attenuation formula
    if att > 50:
        beta = 0.1102 * (att - 8.7)
    elif att >= 21:
        beta = 0.5842 * (att - 21) ** 0.4 + 0.07886 * (att - 21)
    else:
        beta = 0.0
    window = torch.kaiser_window(size, periodic=False, beta=beta)
    t = torch.arange(-half, half) + 0.5 if size % 2 == 0 else torch.arange(size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (taps / taps.sum()).view(1, 1, size)


class Up(nn.Module):
    """x`ratio` upsampling by a transposed low-pass conv, edges replicated."""

    filter: Tensor

    def __init__(self, ratio: int, size: int) -> None:
        super().__init__()
        self.ratio, self.pad = ratio, size // ratio - 1
        self.crop = (
            self.pad * ratio + (size - ratio) // 2,
            self.pad * ratio + (size - ratio + 1) // 2,
        )
        self.register_buffer("filter", kaiser_sinc(ratio, size))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c)
        return (self.ratio * x)[..., self.crop[0] : x.shape[-1] - self.crop[1]]


class Down(nn.Module):
    """Low-pass then keep every `ratio`-th sample, edges replicated."""

    filter: Tensor

    def __init__(self, ratio: int, size: int) -> None:
        super().__init__()
        self.ratio, self.pad = ratio, (size // 2 + size % 2 - 1, size // 2)
        self.register_buffer("filter", kaiser_sinc(ratio, size))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c)


class Snake(nn.Module):
    """x + sin²(αx)/β with per-channel log-scale α, β (β = α when `beta` is False)."""

    def __init__(self, channels: int, beta: bool) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels)) if beta else None

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.exp()[:, None]
        amp = alpha if self.beta is None else self.beta.exp()[:, None]
        return x + torch.sin(x * alpha).square() / (amp + 1e-9)


class AntiAliased(nn.Module):
    """An activation run at `ratio` x the rate: upsample, act, downsample."""

    def __init__(self, act: nn.Module, ratio: int, size: int) -> None:
        super().__init__()
        self.upsample, self.act, self.downsample = Up(ratio, size), act, Down(ratio, size)

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.act(self.upsample(x)))


@dataclass(frozen=True)
class GeneratorConfig:
    """A BigVGAN generator: mel (or latent) channels in, `upsample_rates` x more samples out."""

    in_channels: int
    initial_channels: int  # halved after every upsampler
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample rates and kernel sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilations):
            raise ValueError("resblock kernel sizes and dilations differ in length")
        if any(
            (k - r) % 2
            for k, r in zip(self.upsample_kernel_sizes, self.upsample_rates, strict=True)
        ):
            raise ValueError("each upsample kernel minus its rate must be even (exact lengths)")

    @property
    def hop(self) -> int:
        """Output samples per input frame."""
        return math.prod(self.upsample_rates)

    @classmethod
    def parse(cls, d: Mapping[str, Any], names: Mapping[str, str]) -> GeneratorConfig:
        """From a config dict whose keys are named by `names` (field → config key); every
        listed key must be present."""
        kw: dict[str, Any] = {}
        for field, key in names.items():
            v = d[key]
            if field == "resblock_dilations":
                v = tuple(tuple(int(x) for x in row) for row in v)
            elif isinstance(v, list | tuple):
                v = tuple(int(x) for x in v)
            kw[field] = v
        return cls(**kw)


def snake_aa(channels: int) -> AntiAliased:
    """BigVGAN's activation: Snake-beta at twice the rate (12-tap Kaiser-sinc resampling)."""
    return AntiAliased(Snake(channels, beta=True), 2, 12)


class AmpBlock(nn.Module):
    """Per dilation: act, dilated conv, act, conv, added to the input (BigVGAN `AMPBlock1`)."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )
        self.activations = nn.ModuleList(snake_aa(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: Tensor) -> Tensor:
        acts = self.activations
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            x = x + c2(acts[2 * i + 1](c1(acts[2 * i](x))))
        return x


class Generator(nn.Module):
    """`(B, in_channels, T)` → mono waveform `(B, 1, T x hop)` clamped to [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv_pre = nn.Conv1d(cfg.in_channels, cfg.initial_channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        width = cfg.initial_channels
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
            up = nn.ConvTranspose1d(width, width // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([up]))  # `ups.i.0`, as the checkpoints nest it
            width //= 2
            for k, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True):
                self.resblocks.append(AmpBlock(width, k, dil))
        self.activation_post = snake_aa(width)
        self.conv_post = nn.Conv1d(width, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        per = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = cast(nn.ModuleList, up)[0](x)
            blocks = self.resblocks[i * per : (i + 1) * per]
            # Summed in order then divided, as the references do (a mean reorders the rounding).
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / per
        return self.conv_post(self.activation_post(x)).clamp(-1, 1)


def generator_keys(keys: Iterable[str], prefix: str = "") -> dict[str, str]:
    """Checkpoint keys under `prefix` → Generator keys (the down-sampler's `lowpass.` level
    dropped); other keys are left out."""
    return {
        k: k.removeprefix(prefix).replace(".downsample.lowpass.", ".downsample.")
        for k in keys
        if k.startswith(prefix)
    }


def fold_weight_norm(entries: Weights) -> Weights:
    """`X.weight_g` + `X.weight_v` (torch's `weight_norm`, dim 0; or the parametrised
    `X.parametrizations.weight.original0/1`) → `X.weight`, computed when read, with torch's own
    kernel so the weight is the one the reference convolves with."""
    out = dict(entries)
    g_end = ".weight_g"
    pairs = [(k[: -len(g_end)], g_end, ".weight_v") for k in entries if k.endswith(g_end)]
    pairs += [
        (k[: -len(".parametrizations.weight.original0")],
         ".parametrizations.weight.original0", ".parametrizations.weight.original1")
        for k in entries
        if k.endswith(".parametrizations.weight.original0")
    ]  # fmt: skip
    for base, g_name, v_name in pairs:
        if base + v_name not in entries:
            continue  # left as is: the strict load names it
        g, v = out.pop(base + g_name), out.pop(base + v_name)

        def read(g: Any = g[1], v: Any = v[1]) -> Tensor:
            return torch._weight_norm(v().float(), g().float(), 0)

        out[base + ".weight"] = (v[0], read)
    return out


# ---- bounded memory: windows with the receptive field as context -------------------------------

CHUNK_SECONDS = 10.0  # of sound per window: the activations of one window bound the memory
ACT_RADIUS = 8  # samples either side an anti-aliased activation reads (2 x 12-tap filters: 6)


def generator_context(cfg: GeneratorConfig) -> int:
    """Input frames either side beyond which an output sample of `Generator(cfg)` cannot see
    (an upper bound of its receptive field's radius: convs, transposed convs, activations)."""
    rate, radius = 1, 3.0  # conv_pre, kernel 7
    for r, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
        radius += math.ceil(k / r) / rate
        rate *= r
        block = max(
            sum(2 * ACT_RADIUS + (d + 1) * (kernel - 1) / 2 for d in dil)
            for kernel, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True)
        )
        radius += block / rate
    radius += (ACT_RADIUS + 3) / rate  # activation_post, conv_post
    return math.ceil(radius) + 2


def windowed(fn: Any, x: Tensor, hop: int, context: int, chunk: int) -> Tensor:
    """`fn` (`(..., T)` → `(..., T x hop)`, local within `context` input frames) over windows
    of `chunk` frames read with `context` frames of margin each side and cropped to their own
    samples: the whole-clip result, with the memory of one window. The clip's true ends are the
    windows' ends there, so edge handling is the whole clip's."""
    n = x.shape[-1]
    if n <= chunk:
        return fn(x)
    parts = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        lo, hi = max(0, start - context), min(n, stop + context)
        parts.append(fn(x[..., lo:hi])[..., (start - lo) * hop : (stop - lo) * hop])
    return torch.cat(parts, dim=-1)
