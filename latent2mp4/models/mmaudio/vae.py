"""MMAudio's mel VAE decoder (Kandinsky 6's sound): latents `(B, 40, L)` → log-mel `(B, 128, 2L)`.

Weight-compatible with the `vae.decoder.*` part of diffusers `MMAudioVAE`. MMAudio's VAE is
"magnitude preserving" (Karras et al., EDM2): no normalisation layers, convolutions whose
released weights are already unit-norm, a SiLU rescaled to keep unit variance, residual sums
that are rescaled interpolations, activations clipped at ±256. The mid block attends over the
whole clip, so the clip is decoded at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP = 256.0  # activations of the residual stacks are clipped to ±CLIP
SILU_RMS = 0.596  # RMS of SiLU(z), z ~ N(0, 1): mp_silu keeps unit RMS
RESIDUAL_T = 0.3  # weight of the residual branch in every magnitude-preserving sum


@dataclass(frozen=True)
class MelVaeConfig:
    """Decoder architecture and latent scale (`MMAudioVAE` config.json; defaults diffusers')."""

    mel_bins: int = 128
    latent_channels: int = 40
    hidden_channels: int = 512
    channel_multipliers: tuple[int, ...] = (1, 2, 4)
    layers_per_block: int = 2
    sample_rate: int = 44100
    hop_length: int = 512  # mel hop; one latent frame is 2 x hop samples
    scaling_factor: float = 0.417

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> MelVaeConfig:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "channel_multipliers" in kw:
            kw["channel_multipliers"] = tuple(int(m) for m in kw["channel_multipliers"])
        cfg = cls(**kw)
        if len(cfg.channel_multipliers) < 2:
            raise ValueError("channel_multipliers needs two levels (the upsampler sits in level 1)")
        if not cfg.scaling_factor or not math.isfinite(cfg.scaling_factor):
            raise ValueError(f"scaling_factor {cfg.scaling_factor} is not a finite non-zero number")
        return cfg

    @property
    def samples_per_latent(self) -> int:
        return 2 * self.hop_length


def unit_norm(x: Tensor, dim: int) -> Tensor:
    """`x` over its L2 norm along `dim` scaled to unit RMS (eps 1e-4, as EDM2's `normalize`)."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = 1e-4 + norm * math.sqrt(1 / x.shape[dim])
    return x / norm.to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    return F.silu(x) / SILU_RMS


def mp_sum(a: Tensor, b: Tensor) -> Tensor:
    return a.lerp(b, RESIDUAL_T) / math.sqrt((1 - RESIDUAL_T) ** 2 + RESIDUAL_T**2)


class MpConv(nn.Module):
    """A bias-free 'same' conv with the stored (already normalised) weight."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, padding=self.weight.shape[-1] // 2)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = MpConv(cin, cout, 3), MpConv(cout, cout, 3)
        self.nin_shortcut = MpConv(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        x = unit_norm(x, 1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        return mp_sum(x if self.nin_shortcut is None else self.nin_shortcut(x), h)


class Attention(nn.Module):
    """One head over the full width; q, k and v each unit-normalised per position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv, self.proj_out = MpConv(channels, 3 * channels, 1), MpConv(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        # Channels are interleaved (c, 3): q, k, v are every third channel of the projection.
        q, k, v = unit_norm(self.qkv(x).reshape(b, 1, c, 3, n), 2).unbind(3)
        out = F.scaled_dot_product_attention(
            q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)
        )
        return mp_sum(x, self.proj_out(out.transpose(2, 3).reshape(b, c, n)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MpConv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class Level(nn.Module):
    def __init__(self, blocks: list[ResBlock], upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = Upsample(blocks[-1].conv2.weight.shape[0]) if upsample else None


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1, self.attn_1 = ResBlock(channels, channels), Attention(channels)
        self.block_2 = ResBlock(channels, channels)


class MelDecoder(nn.Module):
    """Latents (already divided by the scaling factor) → standardised log-mel."""

    def __init__(self, cfg: MelVaeConfig) -> None:
        super().__init__()
        width = cfg.hidden_channels * cfg.channel_multipliers[-1]
        self.conv_in = MpConv(cfg.latent_channels, width, 3)
        self.mid = Mid(width)
        levels: list[Level] = []
        for level in reversed(range(len(cfg.channel_multipliers))):
            out = cfg.hidden_channels * cfg.channel_multipliers[level]
            blocks = []
            for _ in range(cfg.layers_per_block + 1):
                blocks.append(ResBlock(width, out))
                width = out
            levels.insert(0, Level(blocks, upsample=level == 1))
        self.up = nn.ModuleList(levels)  # up[0] is the last level run, as in the checkpoint
        self.conv_out = MpConv(width, cfg.mel_bins, 3)
        self.learnable_gain = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid.block_1(self.conv_in(z))
        x = self.mid.block_2(self.mid.attn_1(x)).clamp(-CLIP, CLIP)
        for level in reversed(self.up):
            assert isinstance(level, Level)
            for block in level.block:
                x = block(x).clamp(-CLIP, CLIP)
            if level.upsample is not None:
                x = level.upsample(x)
        gain = self.learnable_gain + 1
        return F.conv1d(mp_silu(x), self.conv_out.weight * gain, padding=1)


class MelVae(nn.Module):
    """Model-space latents `(B, C, L)` → log-mel `(B, mel_bins, 2L)` with the data statistics."""

    data_mean: Tensor
    data_std: Tensor

    def __init__(self, cfg: MelVaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("data_mean", torch.zeros(1, cfg.mel_bins, 1))
        self.register_buffer("data_std", torch.ones(1, cfg.mel_bins, 1))
        self.decoder = MelDecoder(cfg)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z / self.cfg.scaling_factor) * self.data_std + self.data_mean
