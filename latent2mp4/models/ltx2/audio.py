"""LTX-2 audio VAE decoder: audio latents `(B, 8, L, 16)` → mel spectrogram `(B, 2, 4L-3, 64)`.

Weight-compatible with the `decoder.*` part of diffusers `AutoencoderKLLTX2Audio`: a 2-D VAE over
(time, mel bin) with causal convolutions along one axis (time, "height", in LTX-2). The whole
clip is decoded at once: a clip's audio latents are a few kB per second, unlike its video.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AudioVaeConfig", "AudioVaeDecoder", "rename_keys"]

TIME_DOWNSAMPLE = 4  # latent frames → mel frames: 4L - 3 for causal models
CAUSAL_AXES = ("none", "height", "width", "width-compatibility")
ENCODER_ONLY = ("encoder.", "latents_mean", "latents_std", "per_channel_statistics.")


@dataclass(frozen=True)
class AudioVaeConfig:
    """Decoder architecture. Defaults are diffusers' (the LTX-2.0 audio VAE)."""

    base_channels: int = 128
    output_channels: int = 2  # stereo mel spectrograms
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    latent_channels: int = 8
    norm_type: str = "pixel"  # "pixel" (RMS over channels) or "group" (32 groups)
    causality_axis: str = "height"  # the axis convolutions only look back along
    mid_block_add_attention: bool = False
    mel_bins: int | None = 64
    sample_rate: int = 16000  # of the mel spectrogram's analysis, not of the vocoder output
    mel_hop_length: int = 160

    def __post_init__(self) -> None:
        if self.causality_axis not in CAUSAL_AXES:
            raise ValueError(f"causality_axis {self.causality_axis!r} is not one of {CAUSAL_AXES}")
        if self.norm_type not in ("pixel", "group"):
            raise ValueError(f"norm_type {self.norm_type!r} is not pixel or group")
        if self.norm_type == "group" and self.causality_axis != "none":
            raise ValueError("group norm needs causality_axis none (diffusers refuses the mix)")

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> AudioVaeConfig:
        """From an `AutoencoderKLLTX2Audio` config.json dict; missing keys take the defaults."""
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        for key in ("ch_mult", "attn_resolutions"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        if d.get("mel_bins", 64) is None:
            kw["mel_bins"] = None
        return cls(**kw)

    def mel_frames(self, latent_frames: int) -> int:
        """Mel frames decoded from `latent_frames` (the decoder crops or pads to this)."""
        # diffusers crops every configured axis this way, "none" included.
        return max(latent_frames * TIME_DOWNSAMPLE - (TIME_DOWNSAMPLE - 1), 1)

    def seconds(self, latent_frames: int) -> float:
        """Duration of the audio decoded from `latent_frames`."""
        return self.mel_frames(latent_frames) * self.mel_hop_length / self.sample_rate


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Checkpoint keys → decoder keys: `decoder.X` → `X`; a whole-pipeline file's `audio_vae.`
    prefix is dropped. Encoder weights and latent statistics are left out; anything else is kept
    as is, so the strict load names it."""
    keys = list(keys)
    if any(k.startswith("audio_vae.") for k in keys):  # a whole-pipeline checkpoint
        keys = [k for k in keys if k.startswith("audio_vae.")]
    out = {}
    for key in keys:
        name = key.removeprefix("audio_vae.")
        if name.startswith(ENCODER_ONLY):
            continue
        out[key] = name.removeprefix("decoder.")
    return out


class CausalConv2d(nn.Module):
    """3x3 (or 1x1) conv, zero-padded on the past side of the causal axis only."""

    def __init__(self, cin: int, cout: int, kernel: int, axis: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel)
        k = kernel - 1
        half = (k // 2, k - k // 2)  # torch pads (left, right, top, bottom)
        if axis == "height":
            self.pad = (*half, k, 0)
        elif axis in ("width", "width-compatibility"):
            self.pad = (k, 0, *half)
        else:
            self.pad = (*half, *half)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class PixelNorm(nn.Module):
    """RMS over channels at each (time, bin) position."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-6)


def make_norm(kind: str, channels: int) -> nn.Module:
    return PixelNorm() if kind == "pixel" else nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: AudioVaeConfig) -> None:
        super().__init__()
        axis = cfg.causality_axis
        self.norm1 = make_norm(cfg.norm_type, cin)
        self.conv1 = CausalConv2d(cin, cout, 3, axis)
        self.norm2 = make_norm(cfg.norm_type, cout)
        self.conv2 = CausalConv2d(cout, cout, 3, axis)
        self.nin_shortcut = CausalConv2d(cin, cout, 1, axis) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all (time, bin) positions, with 1x1-conv projections."""

    def __init__(self, channels: int, norm_type: str) -> None:
        super().__init__()
        self.norm = make_norm(norm_type, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c); scale c**-0.5
        return x + self.proj_out(a.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest x2 then a causal conv; the first row (column) is dropped along a causal time
    axis so `t` frames become `2t - 1`."""

    def __init__(self, channels: int, axis: str) -> None:
        super().__init__()
        self.conv = CausalConv2d(channels, channels, 3, axis)
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        if self.axis == "height":
            return x[:, :, 1:]
        if self.axis == "width":
            return x[:, :, :, 1:]
        return x


class Level(nn.Module):
    """One resolution of the decoder: `block`, `attn` and `upsample` as diffusers names them."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.upsample: Upsample | None = None


class Mid(nn.Module):
    def __init__(self, channels: int, cfg: AudioVaeConfig) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, cfg)
        self.attn_1: nn.Module = (
            AttnBlock(channels, cfg.norm_type) if cfg.mid_block_add_attention else nn.Identity()
        )
        self.block_2 = ResBlock(channels, channels, cfg)


class AudioVaeDecoder(nn.Module):
    """Decodes `(B, latent_channels, L, bins)` audio latents (VAE space, unpacked, as
    `LTX2Pipeline(output_type="latent")` returns them) to a mel spectrogram
    `(B, output_channels, 4L - 3, mel_bins)` (log-mel values, float)."""

    def __init__(self, cfg: AudioVaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        levels = len(cfg.ch_mult)
        width = cfg.base_channels * cfg.ch_mult[-1]
        self.conv_in = CausalConv2d(cfg.latent_channels, width, 3, cfg.causality_axis)
        self.mid = Mid(width, cfg)
        res = cfg.resolution // 2 ** (levels - 1)
        up: list[Level] = []
        for i in reversed(range(levels)):  # built deepest first; stored shallowest first
            level = Level()
            out = cfg.base_channels * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResBlock(width, out, cfg))
                width = out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(width, cfg.norm_type))
            if i != 0:
                level.upsample = Upsample(width, cfg.causality_axis)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = make_norm(cfg.norm_type, width)
        self.conv_out = CausalConv2d(width, cfg.output_channels, 3, cfg.causality_axis)

    def forward(self, z: Tensor) -> Tensor:
        _, _, frames, bins = z.shape
        x = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            assert isinstance(level, Level)
            for i, block in enumerate(level.block):
                x = block(x)
                if len(level.attn):
                    x = level.attn[i](x)
            if level.upsample is not None:
                x = level.upsample(x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        # Crop (or zero-pad) to the nominal size, as diffusers' LTX2AudioDecoder does.
        t, m = self.cfg.mel_frames(frames), self.cfg.mel_bins or bins
        x = x[:, :, :t, :m]
        return F.pad(x, (0, m - x.shape[3], 0, t - x.shape[2]))
