"""LTX-2 vocoders: stereo mel spectrogram `(B, 2, T, 64)` → waveform `(B, 2, samples)` in [-1, 1].

`Vocoder` is weight-compatible with diffusers `LTX2Vocoder` (a HiFi-GAN/BigVGAN-style generator:
transposed-conv upsamplers, each followed by the mean of several dilated residual stacks);
`BweVocoder` with `LTX2VocoderWithBWE` (a 16 kHz vocoder, a log-mel of its output, a second
generator that adds the missing band on top of a windowed-sinc x3 resampling of it, 48 kHz).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.bigvgan import AntiAliased, Snake

__all__ = ["BweConfig", "BweVocoder", "Vocoder", "VocoderConfig", "rename_keys"]

# Original LTX-2 checkpoint names → diffusers names (convert_ltx2_to_diffusers.py).
ORIGINAL_NAMES = {"ups.": "upsamplers.", "resblocks.": "resnets.", "conv_pre.": "conv_in."}
ORIGINAL_NAMES["conv_post."] = "conv_out."


@dataclass(frozen=True)
class VocoderConfig:
    """Generator architecture. Defaults are diffusers' (the LTX-2.0 vocoder, 24 kHz)."""

    in_channels: int = 128  # mel channels x bins (2 x 64)
    hidden_channels: int = 1024
    out_channels: int = 2
    upsample_kernel_sizes: tuple[int, ...] = (16, 15, 8, 4, 4)
    upsample_factors: tuple[int, ...] = (6, 5, 2, 2, 2)  # product 240: 100 mel frames/s → 24 kHz
    resnet_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resnet_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    act_fn: str = "leaky_relu"  # or "snakebeta" / "snake" (anti-aliased)
    leaky_relu_negative_slope: float = 0.1
    antialias: bool = False
    antialias_ratio: int = 2
    antialias_kernel_size: int = 12
    final_act_fn: str | None = "tanh"  # "tanh", "clamp" or None
    final_bias: bool = True
    output_sampling_rate: int = 24000

    def __post_init__(self) -> None:
        if len(self.upsample_kernel_sizes) != len(self.upsample_factors):
            raise ValueError("upsample_kernel_sizes and upsample_factors differ in length")
        if len(self.resnet_kernel_sizes) != len(self.resnet_dilations):
            raise ValueError("resnet_kernel_sizes and resnet_dilations differ in length")
        if self.act_fn not in ("leaky_relu", "snakebeta", "snake"):
            raise ValueError(f"act_fn {self.act_fn!r} is not leaky_relu, snakebeta or snake")
        if any(k % 2 == 0 for k in self.resnet_kernel_sizes):
            raise ValueError("resnet kernel sizes must be odd ('same' padding)")

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any], prefix: str = "") -> VocoderConfig:
        """From an `LTX2Vocoder` config.json dict (or the `bwe_`-prefixed half of a BWE one)."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if prefix + f.name not in d:
                continue
            v = d[prefix + f.name]
            if f.name == "resnet_dilations":
                v = tuple(tuple(int(x) for x in row) for row in v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)

    @property
    def hop(self) -> int:
        """Output samples per mel frame."""
        return math.prod(self.upsample_factors)


@dataclass(frozen=True)
class BweConfig:
    """`LTX2VocoderWithBWE`: a vocoder at `input_sampling_rate`, then bandwidth extension."""

    vocoder: VocoderConfig
    bwe: VocoderConfig
    filter_length: int = 512
    hop_length: int = 80
    window_length: int = 512
    num_mel_channels: int = 64
    input_sampling_rate: int = 16000
    output_sampling_rate: int = 48000

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> BweConfig:
        # diffusers' defaults for this class differ from LTX2Vocoder's; start from them.
        base = {**BWE_DEFAULTS, **d}
        kw = {f.name: base[f.name] for f in fields(cls) if f.name in base}
        first = VocoderConfig.from_diffusers({**base, "output_sampling_rate": 0})
        rate = int(base["input_sampling_rate"])
        return cls(
            vocoder=VocoderConfig(**{**first.__dict__, "output_sampling_rate": rate}),
            bwe=VocoderConfig.from_diffusers(base, prefix="bwe_"),
            **kw,
        )


# diffusers LTX2VocoderWithBWE defaults (the config a release's config.json overrides).
BWE_DEFAULTS: dict[str, Any] = {
    "hidden_channels": 1536,
    "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
    "upsample_factors": [5, 2, 2, 2, 2, 2],
    "act_fn": "snakebeta",
    "antialias": True,
    "final_act_fn": None,
    "final_bias": False,
    "bwe_in_channels": 128,
    "bwe_hidden_channels": 512,
    "bwe_out_channels": 2,
    "bwe_upsample_kernel_sizes": [12, 11, 4, 4, 4],
    "bwe_upsample_factors": [6, 5, 2, 2, 2],
    "bwe_act_fn": "snakebeta",
    "bwe_antialias": True,
    "bwe_final_act_fn": None,
    "bwe_final_bias": False,
    "input_sampling_rate": 16000,
    "output_sampling_rate": 48000,
}


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Checkpoint keys → our keys. diffusers names are kept. A whole original LTX-2 checkpoint
    (`vocoder.`, `audio_vae.`, `vae.`, … prefixes) gives its `vocoder.` part, renamed."""
    keys = list(keys)
    bwe = any(k.startswith(("bwe_generator.", "mel_stft.")) for k in keys)
    if not bwe and any(k.startswith("vocoder.") for k in keys):
        keys = [k for k in keys if k.startswith("vocoder.")]
    out = {}
    for key in keys:
        name = key if bwe else key.removeprefix("vocoder.")
        head, dot, rest = name.partition(".")
        out[key] = ORIGINAL_NAMES.get(head + dot, head + dot) + rest
    return out


def activation(cfg: VocoderConfig, channels: int) -> nn.Module:
    if cfg.act_fn == "leaky_relu":
        act: nn.Module = nn.LeakyReLU(cfg.leaky_relu_negative_slope)
        # diffusers' ResBlock reuses its leaky ReLU unwrapped for the second convs; with
        # antialias the first ones are wrapped. No release combines leaky ReLU with antialias.
    else:
        act = Snake(channels, beta=cfg.act_fn == "snakebeta")
    if cfg.antialias:
        act = AntiAliased(act, cfg.antialias_ratio, cfg.antialias_kernel_size)
    return act


class ResStack(nn.Module):
    """Pairs of (act, dilated conv, act, conv), each pair a residual step."""

    def __init__(self, cfg: VocoderConfig, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        n = len(dilations)
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding="same") for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding="same") for _ in range(n)
        )
        self.acts1 = nn.ModuleList(activation(cfg, channels) for _ in range(n))
        self.acts2 = nn.ModuleList(activation(cfg, channels) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        for a1, c1, a2, c2 in zip(self.acts1, self.convs1, self.acts2, self.convs2, strict=True):
            x = x + c2(a2(c1(a1(x))))
        return x


class Vocoder(nn.Module):
    """Mel `(B, C, T, bins)` (C x bins = in_channels) → waveform `(B, out_channels, T x hop)`."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv_in = nn.Conv1d(cfg.in_channels, cfg.hidden_channels, 7, padding=3)
        self.upsamplers = nn.ModuleList()
        self.resnets = nn.ModuleList()
        width = cfg.hidden_channels
        for factor, kernel in zip(cfg.upsample_factors, cfg.upsample_kernel_sizes, strict=True):
            pad = (kernel - factor) // 2
            self.upsamplers.append(nn.ConvTranspose1d(width, width // 2, kernel, factor, pad))
            width //= 2
            for k, dil in zip(cfg.resnet_kernel_sizes, cfg.resnet_dilations, strict=True):
                self.resnets.append(ResStack(cfg, width, k, dil))
        if cfg.act_fn == "leaky_relu":
            self.act_out: nn.Module = nn.LeakyReLU()  # slope 0.01 here, as in the original
        else:
            self.act_out = AntiAliased(
                Snake(width, beta=True), cfg.antialias_ratio, cfg.antialias_kernel_size
            )
        self.conv_out = nn.Conv1d(width, cfg.out_channels, 7, padding=3, bias=cfg.final_bias)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_in(mel.transpose(2, 3).flatten(1, 2))  # (B, C x bins, T): channel-major
        per = len(self.cfg.resnet_kernel_sizes)
        for i, up in enumerate(self.upsamplers):
            if self.cfg.act_fn == "leaky_relu":
                x = F.leaky_relu(x, self.cfg.leaky_relu_negative_slope)
            x = up(x)
            stacks = self.resnets[i * per : (i + 1) * per]
            x = torch.stack([s(x) for s in stacks]).mean(0)
        x = self.conv_out(self.act_out(x))
        if self.cfg.final_act_fn == "tanh":
            return torch.tanh(x)
        if self.cfg.final_act_fn == "clamp":
            return x.clamp(-1, 1)
        return x


class Stft(nn.Module):
    """Causal STFT magnitude with the checkpoint's windowed DFT bases (`inverse_basis` is
    stored but unused when decoding)."""

    forward_basis: Tensor

    def __init__(self, cfg: BweConfig) -> None:
        super().__init__()
        freqs = cfg.filter_length // 2 + 1
        self.hop, self.left = cfg.hop_length, max(0, cfg.window_length - cfg.hop_length)
        self.register_buffer("forward_basis", torch.zeros(2 * freqs, 1, cfg.filter_length))
        self.register_buffer("inverse_basis", torch.zeros(2 * freqs, 1, cfg.filter_length))

    def forward(self, wave: Tensor) -> Tensor:
        spec = F.conv1d(F.pad(wave[:, None], (self.left, 0)), self.forward_basis, stride=self.hop)
        re, im = spec.chunk(2, dim=1)
        return torch.sqrt(re.square() + im.square())


class MelStft(nn.Module):
    mel_basis: Tensor

    def __init__(self, cfg: BweConfig) -> None:
        super().__init__()
        self.stft_fn = Stft(cfg)
        freqs = cfg.filter_length // 2 + 1
        self.register_buffer("mel_basis", torch.zeros(cfg.num_mel_channels, freqs))

    def forward(self, wave: Tensor) -> Tensor:
        """`(N, samples)` → log-mel `(N, mels, frames)`."""
        mag = self.stft_fn(wave)
        return torch.log(torch.matmul(self.mel_basis.to(mag.dtype), mag).clamp(min=1e-5))


def hann_sinc(ratio: int) -> tuple[Tensor, int]:
    """Windowed-sinc interpolation kernel (6 zero crossings, roll-off 0.99) and its half-width."""
    rolloff, zeros = 0.99, 6
    width = math.ceil(zeros / rolloff)
    t = (torch.arange(2 * width * ratio + 1) / ratio - width) * rolloff
    window = torch.cos(t.clamp(-zeros, zeros) * math.pi / zeros / 2).square()
    return (torch.sinc(t) * window * rolloff / ratio).view(1, 1, -1), width


class Resampler(nn.Module):
    """x`ratio` upsampling by the Hann-windowed sinc. The kernel is not stored in checkpoints;
    it is computed per call (a few dozen taps), so a module built on `meta` needs nothing else."""

    def __init__(self, ratio: int) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        kernel, pad = hann_sinc(self.ratio)
        c = x.shape[1]
        x = F.pad(x, (pad, pad), mode="replicate")
        k = kernel.to(x.device, x.dtype).expand(c, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, k, stride=self.ratio, groups=c)
        return x[..., 2 * pad * self.ratio : x.shape[-1] - (kernel.shape[-1] - self.ratio)]


class BweVocoder(nn.Module):
    """`LTX2VocoderWithBWE`: mel → waveform at `output_sampling_rate` (48 kHz)."""

    def __init__(self, cfg: BweConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocoder = Vocoder(cfg.vocoder)
        self.bwe_generator = Vocoder(cfg.bwe)
        self.mel_stft = MelStft(cfg)
        self.resampler = Resampler(cfg.output_sampling_rate // cfg.input_sampling_rate)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.vocoder(mel)
        b, c, n = x.shape
        x = F.pad(x, (0, -n % self.cfg.hop_length))  # whole STFT frames
        low = self.mel_stft(x.flatten(0, 1)).unflatten(0, (b, c))  # (B, C, mels, frames)
        wave = self.bwe_generator(low.transpose(2, 3)) + self.resampler(x)
        keep = n * self.cfg.output_sampling_rate // self.cfg.input_sampling_rate
        return wave.clamp(-1, 1)[..., :keep]
