"""Cosmos 3's sound: its audio tokenizer's Oobleck decoder, latents `(B, 64, T)` → stereo 48 kHz.

Weight-compatible with the `decoder.*` part of diffusers `Cosmos3AVAEAudioTokenizer` (the encoder
weights in the same folder are ignored): a weight-normalised conv, then per stride a Snake,
a transposed conv and three dilated residual units, then Snake and a conv to the audio channels,
clamped to [-1, 1]. No latent normalisation (the tokenizer refuses any). Fully convolutional.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from latent2mp4.models.bigvgan import CHUNK_SECONDS, fold_weight_norm, windowed
from latent2mp4.models.sound import Loadable, Part, SoundArchitecture, Weights, hop_seconds

if TYPE_CHECKING:
    pass

DILATIONS = (1, 3, 9)  # of the three residual units of every decoder block


@dataclass(frozen=True)
class OobleckConfig:
    """Decoder architecture (config.json names; defaults diffusers', the shipped tokenizer)."""

    vocoder_input_dim: int = 64  # latent channels
    dec_dim: int = 320
    dec_c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
    dec_strides: tuple[int, ...] = (2, 4, 5, 6, 8)  # run in reverse: 8, 6, 5, 4, 2
    dec_out_channels: int = 2
    sampling_rate: int = 48000

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> OobleckConfig:
        for key in ("latent_mean", "latent_std"):
            if d.get(key) is not None:
                raise ValueError(f"{key} is set; Cosmos 3's tokenizer applies no normalisation")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("dec_c_mults", "dec_strides"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        cfg = cls(**kw)
        if len(cfg.dec_c_mults) != len(cfg.dec_strides):
            raise ValueError("dec_c_mults and dec_strides differ in length")
        return cfg

    @property
    def hop(self) -> int:
        return math.prod(self.dec_strides)

    @property
    def context(self) -> int:
        """Latent frames either side beyond which an output sample cannot see (an upper bound
        of the receptive field's radius: conv1, each block's transposed conv and units, conv2)."""
        rate, radius = 1, 3.0  # conv1, kernel 7
        for s in reversed(self.dec_strides):
            radius += 2 / rate  # kernel 2s at stride s reads 2 input samples either side
            rate *= s
            radius += sum(3 * d for d in DILATIONS) / rate  # kernel 7, dilation d
        return math.ceil(radius + 3 / rate) + 2  # conv2, kernel 7


class Snake(nn.Module):
    """x + sin²(e^α x) / (e^β + 1e-9), per channel (Oobleck's `Snake1d`, log scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.beta.exp() + 1e-9).reciprocal() * torch.sin(self.alpha.exp() * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class Block(nn.Module):
    """Snake, x`stride` transposed conv (exact length: output padding for odd strides), units."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake(cin)
        self.conv_t1 = nn.ConvTranspose1d(
            cin, cout, 2 * stride, stride, padding=math.ceil(stride / 2), output_padding=stride % 2
        )
        self.res_unit1, self.res_unit2, self.res_unit3 = (ResidualUnit(cout, d) for d in DILATIONS)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_unit3(self.res_unit2(self.res_unit1(self.conv_t1(self.snake1(x)))))


class OobleckDecoder(nn.Module):
    """Latents `(B, C, T)` → waveform `(B, dec_out_channels, T x hop)` (unclamped)."""

    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        mults = (1, *cfg.dec_c_mults)
        n = len(cfg.dec_strides)
        self.conv1 = nn.Conv1d(cfg.vocoder_input_dim, cfg.dec_dim * mults[-1], 7, padding=3)
        self.block = nn.ModuleList(
            Block(cfg.dec_dim * mults[n - i], cfg.dec_dim * mults[n - i - 1], s)
            for i, s in enumerate(reversed(cfg.dec_strides))
        )
        self.snake1 = Snake(cfg.dec_dim)
        self.conv2 = nn.Conv1d(cfg.dec_dim, cfg.dec_out_channels, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class CosmosSound(nn.Module):
    """Latents `(1, C, T)` → `(1, channels, T x hop)`, decoded in windows of `chunk_frames`
    latents with the receptive field as margin (`cfg.context`): the whole-clip waveform."""

    description = ""

    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        self.cfg, self.sample_rate = cfg, cfg.sampling_rate
        self.decoder = OobleckDecoder(cfg)
        per_second = self.sample_rate / cfg.hop
        self.chunk_frames = max(math.ceil(CHUNK_SECONDS * per_second), cfg.context)

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        want = self.cfg.vocoder_input_dim
        if shape[1] == want:
            return None
        return f"has {shape[1]} channels; the sound tokenizer decodes {want}"

    def waveform(self, z: Tensor) -> Tensor:
        wave = windowed(self.decoder, z, self.cfg.hop, self.cfg.context, self.chunk_frames)
        return wave.clamp(-1, 1)


def build(
    configs: Mapping[str, dict[str, Any] | None], weights: Mapping[str, Weights]
) -> tuple[CosmosSound, tuple[Loadable, ...]]:
    cfg = OobleckConfig.from_diffusers(configs["vae"] or {})
    with torch.device("meta"):
        sound = CosmosSound(cfg)
    entries = fold_weight_norm(weights["vae"])
    # The tokenizer's encoder (and a whole file's other prefixes) are not needed to decode.
    mapping = {k: k for k in entries if not k.startswith("encoder.")}
    return sound, (Loadable(sound, entries, mapping),)


SOUND = SoundArchitecture(
    name="cosmos3-audio",
    form="(B, C, T) or one clip's (C, T), as Cosmos 3's pipeline holds them",
    rank=3,
    unbatched=True,
    time_axis=2,
    seconds=hop_seconds,
    parts=(Part("vae", ("Cosmos3AVAEAudioTokenizer",)),),
    build=build,
)
