"""Stable Video Diffusion's temporal VAE decoder, weight-compatible with diffusers'
`AutoencoderKLTemporalDecoder`.

The SD image decoder (its 2-D blocks come from `models.sd.layers`) with every resnet followed by
a temporal resnet — two (3,1,1) convs, zero-padded in time, GroupNorms over all the frames of
the call — mixed in by a learned factor, and a final (3,1,1) conv on the RGB output. So a frame
depends on every frame decoded in the same call and the split is part of the output: the
pipeline decodes windows of `decode_chunk_size` frames, each as its own clip, and so do we (the
preset's `segments`, one call per window). There is no `post_quant_conv`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes, has_marker
from latent2mp4.models.layers import check_latents
from latent2mp4.models.sd.layers import (
    NORM_EPS,
    Attention2D,
    ResnetBlock2D,
    Upsample2D,
    apply_rules,
    count,
    ldm_levels,
    ldm_rules,
)

# diffusers builds every SVD norm with 32 groups whatever the config (autoencoder_kl_temporal_
# decoder.py, resnet.py TemporalResnetBlock); the temporal norms use eps 1e-5.
GROUPS = 32
TEMPORAL_EPS = 1e-5


@dataclass(frozen=True)
class SVDConfig:
    """Decoder architecture; field names and defaults follow diffusers' `config.json`."""

    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2

    def __post_init__(self) -> None:
        if any(c % GROUPS for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be multiples of {GROUPS}"
            )

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> SVDConfig:
        """Read a diffusers `config.json` dict; `block_out_channels` is required (KeyError)."""
        return cls(
            latent_channels=int(d.get("latent_channels", 4)),
            out_channels=int(d.get("out_channels", 3)),
            block_out_channels=tuple(int(c) for c in d["block_out_channels"]),
            layers_per_block=int(d.get("layers_per_block", 1)),  # diffusers' default
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> SVDConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names)."""
        conv1 = "decoder.up_blocks.{}.resnets.0.spatial_res_block.conv1.weight"
        n = count(shapes, conv1)
        if n < 1:
            raise KeyError(conv1.format(0))
        widths = [shapes[conv1.format(i)][0] for i in range(n)]
        per_block = "decoder.up_blocks.0.resnets.{}.spatial_res_block.conv1.weight"
        return cls(
            latent_channels=shapes["decoder.conv_in.weight"][1],
            out_channels=shapes["decoder.conv_out.weight"][0],
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=count(shapes, per_block) - 1,
        )


class TemporalResnetBlock(nn.Module):
    """GroupNorm, SiLU, (3,1,1) conv, twice, with a residual, on `(B, C, F, H, W)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, channels, eps=TEMPORAL_EPS)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = nn.GroupNorm(GROUPS, channels, eps=TEMPORAL_EPS)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x)


class AlphaMix(nn.Module):
    """diffusers `AlphaBlender` (merge "learned", spatial and temporal switched)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix_factor = nn.Parameter(torch.zeros(1))

    def forward(self, spatial: Tensor, temporal: Tensor) -> Tensor:
        # The reference's own rounding: a = 1 - sigmoid(m), then a*spatial + (1-a)*temporal.
        a = 1.0 - torch.sigmoid(self.mix_factor).to(spatial.dtype)
        return temporal.mul_(1.0 - a).add_(spatial * a)


class SpatioTemporalResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(cin, cout, GROUPS)
        self.temporal_res_block = TemporalResnetBlock(cout)
        self.time_mixer = AlphaMix()

    def forward(self, x: Tensor, frames: int) -> Tensor:
        s = self.spatial_res_block(x)  # (B*F, C, H, W)
        bf, c, h, w = s.shape
        clip = s.view(bf // frames, frames, c, h, w).transpose(1, 2)  # (B, C, F, H, W) view
        mixed = self.time_mixer(clip, self.temporal_res_block(clip))
        return mixed.transpose(1, 2).reshape(bf, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, n: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([SpatioTemporalResBlock(channels, channels) for _ in range(n)])
        self.attentions = nn.ModuleList([Attention2D(channels, GROUPS)])

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = self.resnets[0](x, frames)
        for resnet in self.resnets[1:]:  # diffusers zips the one attention with resnets[1:]
            x = resnet(self.attentions[0](x), frames)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(cin if i == 0 else cout, cout) for i in range(n)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(cout)] if upsample else [])

    def forward(self, x: Tensor, frames: int) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, frames)
        for up in self.upsamplers:
            x = up(x)
        return x


class TemporalDecoder(nn.Module):
    def __init__(self, cfg: SVDConfig) -> None:
        super().__init__()
        widths = cfg.block_out_channels
        rev = list(reversed(widths))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], cfg.layers_per_block)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, i < len(rev) - 1)
                for i in range(len(rev))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(GROUPS, widths[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(
            cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0)
        )

    def forward(self, z: Tensor, frames: int) -> Tensor:
        """Images `(B*F, C, h, w)`, frames of one clip consecutive -> `(B, 3, F, H, W)`."""
        x = self.mid_block(self.conv_in(z), frames)
        for block in self.up_blocks:
            x = block(x, frames)
        x = self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))
        bf, c, h, w = x.shape
        return self.time_conv_out(x.view(bf // frames, frames, c, h, w).transpose(1, 2))


class SVDDecoder(nn.Module):
    """SVD VAE decoder (`decoder.*` of `AutoencoderKLTemporalDecoder`) as an engine
    StreamDecoder.

    Latents `(B, latent_channels, F, h, w)` in VAE space decode as one clip — every frame mixes
    with the others in time — to `(B, out_channels, F, up*h, up*w)` in about [-1, 1] (not
    clamped). No state is carried: a call is one of the pipeline's `decode_chunk_size` windows.
    """

    def __init__(self, cfg: SVDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = TemporalDecoder(cfg)

    @property
    def upscale(self) -> int:
        return self.cfg.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """One chunk, whatever `max_frames`: the window is the pipeline's, not a memory choice."""
        return [Chunk(0, num_frames)]

    def new_state(self) -> object:
        return None

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, C, F, h, w)` -> `(B, out_channels, F, up*h, up*w)`."""
        check_latents(z, self.cfg.latent_channels)
        b, c, t, h, w = z.shape
        images = z.transpose(1, 2).reshape(b * t, c, h, w)
        return self.decoder(images.contiguous(memory_format=torch.channels_last), t)

    def finalize(self, x: Tensor) -> Tensor:
        return x


# Stability's generative-models names (sgm `VideoDecoder`, also ComfyUI's temporal_ae.py): the
# LDM decoder names, each resnet's temporal half under `time_stack` (in_layers.0/2 and
# out_layers.0/3 are norm1/conv1/norm2/conv2) and its mixer as `mix_factor`, the last 3-D conv
# as `conv_out.time_mix_conv` (the released checkpoints' key; diffusers' conversion script
# reads `decoder.time_mix_conv`, which they do not have).
_TIME_STACK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2",
               "out_layers.3": "conv2"}  # fmt: skip
_LDM_MARK = re.compile(r"^decoder\.(up\.\d+\.|mid\.|norm_out\.|conv_out\.time_mix_conv\.)")
_RESNET = r"^(decoder\.(?:mid_block|up_blocks\.\d+)\.resnets\.\d+)\."


def _rename_ldm(key: str, levels: int) -> str:
    key = key.replace("decoder.conv_out.time_mix_conv.", "decoder.time_conv_out.")
    key = apply_rules(key, ldm_rules(levels, resnet=".spatial_res_block"))
    key = re.sub(_RESNET + r"mix_factor$", r"\1.time_mixer.mix_factor", key)
    m = re.match(_RESNET + r"time_stack\.((?:in|out)_layers\.\d)\.(.*)$", key)
    if m and m[2] in _TIME_STACK:
        key = f"{m[1]}.temporal_res_block.{_TIME_STACK[m[2]]}.{m[3]}"
    return key


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers, Stability or ComfyUI naming, prefixes stripped) to
    decoder keys; encoder and quant_conv keys are left out, other decoder keys are kept so a
    strict load names them."""
    keys = list(keys)
    levels = ldm_levels(keys)
    out: dict[str, str] = {}
    for key in keys:
        if _LDM_MARK.match(key):
            out[key] = _rename_ldm(key, levels)
        elif key.startswith("decoder."):
            out[key] = key
    return out


_MARKERS = (
    ("decoder.mid_block.resnets.0.time_mixer.mix_factor", "decoder.time_conv_out.weight"),
    ("decoder.mid.block_1.mix_factor", "decoder.conv_out.time_mix_conv.weight"),
)


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold an SVD temporal decoder (diffusers or Stability/ComfyUI naming)."""
    return has_marker(keys, _MARKERS)


FAMILY = Family(
    name="svd",
    diffusers_class="AutoencoderKLTemporalDecoder",
    config_from_diffusers=SVDConfig.from_diffusers,
    config_from_shapes=SVDConfig.from_shapes,
    build=SVDDecoder,
    rename_keys=rename_keys,
    detect=detect,
)
