"""Stable Diffusion image VAE decoder, weight-compatible with diffusers' `AutoencoderKL`.

The video pipelines built on it (AnimateDiff, AnimateDiff-SDXL, Latte, I2VGen-XL,
ModelScope/Zeroscope) decode every frame on its own: the latents become a batch of images and
`vae.decode` runs on chunks of it. So one frame's pixels depend on that frame's latent alone;
the engine may group any number of frames per call (memory decides) and the result is the
pipelines' up to float rounding.
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

UP_BLOCK_TYPE = "UpDecoderBlock2D"
# The LDM originals build every GroupNorm with 32 groups (ldm `Normalize`); a single file
# without config.json is read with that.
LDM_GROUPS = 32


@dataclass(frozen=True)
class SDConfig:
    """Decoder architecture; field names and defaults follow diffusers' `config.json`."""

    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} are not multiples of "
                f"norm_num_groups {self.norm_num_groups}"
            )

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> SDConfig:
        """Read a diffusers `config.json` dict; `block_out_channels` is required (KeyError), the
        rest default as in diffusers; unsupported values raise ValueError."""
        blocks = tuple(int(c) for c in d["block_out_channels"])
        up_types = tuple(d.get("up_block_types", (UP_BLOCK_TYPE,) * len(blocks)))
        if len(up_types) != len(blocks) or any(t != UP_BLOCK_TYPE for t in up_types):
            raise ValueError(
                f"up_block_types {up_types} unsupported: expected {len(blocks)} x {UP_BLOCK_TYPE}"
            )
        if d.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"act_fn {d['act_fn']!r} unsupported: expected 'silu'")
        return cls(
            latent_channels=int(d.get("latent_channels", 4)),
            out_channels=int(d.get("out_channels", 3)),
            block_out_channels=blocks,
            layers_per_block=int(d.get("layers_per_block", 1)),  # diffusers' default
            norm_num_groups=int(d.get("norm_num_groups", 32)),
            use_post_quant_conv=bool(d.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> SDConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names); the group
        count is not in the shapes: 32, as in every released SD VAE."""
        n = count(shapes, "decoder.up_blocks.{}.resnets.0.conv1.weight")
        if n < 1:
            raise KeyError("decoder.up_blocks.0.resnets.0.conv1.weight")
        widths = [shapes[f"decoder.up_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n)]
        return cls(
            latent_channels=shapes["decoder.conv_in.weight"][1],
            out_channels=shapes["decoder.conv_out.weight"][0],
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=count(shapes, "decoder.up_blocks.0.resnets.{}.conv1.weight") - 1,
            norm_num_groups=LDM_GROUPS,
            use_post_quant_conv="post_quant_conv.weight" in shapes,
            mid_block_add_attention="decoder.mid_block.attentions.0.to_q.weight" in shapes,
        )


class MidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in "ab"])
        self.attentions = nn.ModuleList([Attention2D(channels, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class UpBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(n)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(cout)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class Decoder2D(nn.Module):
    def __init__(self, cfg: SDConfig) -> None:
        super().__init__()
        widths, groups = cfg.block_out_channels, cfg.norm_num_groups
        rev = list(reversed(widths))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock2D(rev[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock2D(
                    rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, groups, i < len(rev) - 1
                )
                for i in range(len(rev))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


class SDDecoder(nn.Module):
    """SD VAE decoder (`post_quant_conv` + `decoder.*` of `AutoencoderKL`) as an engine
    StreamDecoder.

    Latents `(B, latent_channels, T, h, w)` in VAE space decode frame by frame to
    `(B, out_channels, T, up*h, up*w)` in about [-1, 1] (not clamped, as in diffusers). No state:
    frames are independent. dtype follows the weights and input.
    """

    def __init__(self, cfg: SDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_quant_conv = (
            nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
            if cfg.use_post_quant_conv
            else None
        )
        self.decoder = Decoder2D(cfg)

    @property
    def upscale(self) -> int:
        return self.cfg.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """Up to `max_frames` frames per chunk: the result does not depend on the split."""
        step = max(1, max_frames)
        return [Chunk(s, min(s + step, num_frames)) for s in range(0, num_frames, step)]

    def new_state(self) -> object:
        return None

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, C, t, h, w)` -> `(B, out_channels, t, up*h, up*w)`."""
        check_latents(z, self.cfg.latent_channels)
        b, c, t, h, w = z.shape
        images = z.transpose(1, 2).reshape(b * t, c, h, w)
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        images = images.contiguous(memory_format=torch.channels_last)
        if self.post_quant_conv is not None:
            images = self.post_quant_conv(images)
        x = self.decoder(images)
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)

    def finalize(self, x: Tensor) -> Tensor:
        return x


_LDM_MARK = re.compile(r"^decoder\.(up\.\d+\.|mid\.|norm_out\.)")


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers or CompVis/LDM naming, prefixes already stripped) to
    decoder keys; encoder and quant_conv keys are left out, other decoder keys are kept so a
    strict load names them."""
    keys = list(keys)
    rules = ldm_rules(ldm_levels(keys))
    out: dict[str, str] = {}
    for key in keys:
        if key.startswith("post_quant_conv."):
            out[key] = key
        elif _LDM_MARK.match(key):
            out[key] = apply_rules(key, rules)
        elif key.startswith("decoder."):
            out[key] = key
    return out


# conv_in without a `.conv` wrapper and GroupNorm `norm1.weight` (not Wan's RMS `gamma`): only
# the 2-D image VAE has both.
_MARKERS = (
    (
        "decoder.conv_in.weight",
        "decoder.up_blocks.0.resnets.0.norm1.weight",
        "decoder.up_blocks.0.resnets.0.conv1.weight",
        "decoder.conv_norm_out.weight",
    ),
    (
        "decoder.conv_in.weight",
        "decoder.up.0.block.0.norm1.weight",
        "decoder.up.0.block.0.conv1.weight",
        "decoder.norm_out.weight",
    ),
)


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold an SD image VAE decoder (diffusers or LDM naming) — not SVD's
    temporal one, whose resnets carry a time mixer."""
    if any(k.endswith("mix_factor") for k in keys):
        return False
    return has_marker(keys, _MARKERS)


FAMILY = Family(
    name="sd",
    diffusers_class="AutoencoderKL",
    config_from_diffusers=SDConfig.from_diffusers,
    config_from_shapes=SDConfig.from_shapes,
    build=SDDecoder,
    rename_keys=rename_keys,
    detect=detect,
)
