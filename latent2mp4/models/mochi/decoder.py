"""Mochi 1 VAE decoder, weight-compatible with diffusers' `AutoencoderKLMochi` and with Genmo's
original `decoder.safetensors` (and ComfyUI's file, which keeps Genmo's names).

Every layer of the decoder is causal in time or works on one frame at a time: causal 3x3x3 convs
(replicate-padded in space and in front), GroupNorms whose statistics come from a single frame,
per-pixel linear projections and depth-to-space-time up-sampling; the decoder has no attention.
So decoding one latent frame at a time, with the last two input frames of every conv carried in a
`MochiState`, equals a whole-clip decode exactly (only float rounding differs). diffusers'
framewise mode is not followed: it switches the convs to zero padding in space.

The two references differ in one place, the clip's first frames: Genmo's code drops each up
block's extra leading frames inside the decoder, diffusers drops them all after it
(`MochiConfig.drop_in_blocks`; the key naming of the file decides, see `naming.py`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.layers import check_latents
from latent2mp4.models.mochi.layers import GROUPS, MidBlock, MochiState, UpBlock, linear_cl
from latent2mp4.models.mochi.naming import detect, is_original, rename_keys


@dataclass(frozen=True)
class MochiConfig:
    """Decoder architecture; field names and defaults follow diffusers' `config.json`
    (`block_out_channels` is its `decoder_block_out_channels`)."""

    latent_channels: int = 12
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 768)
    layers_per_block: tuple[int, ...] = (3, 3, 4, 6, 3)
    temporal_expansions: tuple[int, ...] = (1, 2, 3)
    spatial_expansions: tuple[int, ...] = (2, 2, 2)
    # Where the clip's extra leading frames go (each latent frame decodes to 6, the first to 1):
    # True drops `t - 1` right after each up block of temporal factor `t`, as Genmo's own decode
    # (genmo/mochi_preview/vae/models.py, DepthToSpaceTime) and ComfyUI do; False decodes all 6
    # and drops 5 at the end, as diffusers' AutoencoderKLMochi does. Same frame count, different
    # first frames (the causal convs after each up block see other frames in front).
    drop_in_blocks: bool = False

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if len(self.layers_per_block) != n + 1:
            raise ValueError(
                f"layers_per_block has {len(self.layers_per_block)} entries; "
                f"expected {n + 1} for {n} block_out_channels"
            )
        if len(self.temporal_expansions) != n - 1 or len(self.spatial_expansions) != n - 1:
            raise ValueError(f"temporal/spatial_expansions need {n - 1} entries each")
        if any(c % GROUPS for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be multiples of {GROUPS}"
            )

    @property
    def temporal_ratio(self) -> int:
        return math.prod(self.temporal_expansions)

    @property
    def upscale(self) -> int:
        return math.prod(self.spatial_expansions)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> MochiConfig:
        """Read a diffusers `config.json` dict; `latent_channels` is required (KeyError), the
        rest default as in diffusers; unsupported values raise ValueError."""
        if d.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"act_fn {d['act_fn']!r} unsupported: expected 'silu'")
        return cls(
            latent_channels=int(d["latent_channels"]),
            out_channels=int(d.get("out_channels", 3)),
            block_out_channels=_ints(d.get("decoder_block_out_channels", cls.block_out_channels)),
            layers_per_block=_ints(d.get("layers_per_block", cls.layers_per_block)),
            temporal_expansions=_ints(d.get("temporal_expansions", cls.temporal_expansions)),
            spatial_expansions=_ints(d.get("spatial_expansions", cls.spatial_expansions)),
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> MochiConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names).

        An up block's projection holds `width * t * s * s` outputs, which does not tell the
        temporal factor `t` from the spatial one `s`; `s` is taken as 2, as in every released
        Mochi VAE (8x spatial), and `t` from the rest.
        """
        n_up = _count(shapes, "decoder.up_blocks.{}.proj.weight")
        if n_up < 1:
            raise KeyError("decoder.up_blocks.0.proj.weight")
        widths = [shapes["decoder.conv_in.weight"][0]]  # deepest first
        temporal = []
        for i in range(n_up):
            rows = shapes[f"decoder.up_blocks.{i}.proj.weight"][0]
            nxt = (
                f"decoder.up_blocks.{i + 1}.proj.weight"
                if i + 1 < n_up
                else "decoder.proj_out.weight"
            )
            width = shapes[nxt][1]
            if rows % (width * 4):
                raise ValueError(
                    f"decoder.up_blocks.{i}.proj has {rows} outputs, not a multiple of 4 x {width}"
                )
            widths.append(width)
            temporal.append(rows // (width * 4))
        layers = [_count(shapes, "decoder.block_out.resnets.{}.conv1.conv.weight")]
        layers += [
            _count(shapes, f"decoder.up_blocks.{i}.resnets.{{}}.conv1.conv.weight")
            for i in reversed(range(n_up))
        ]
        layers.append(_count(shapes, "decoder.block_in.resnets.{}.conv1.conv.weight"))
        return cls(
            latent_channels=shapes["decoder.conv_in.weight"][1],
            out_channels=shapes["decoder.proj_out.weight"][0],
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=tuple(layers),
            temporal_expansions=tuple(reversed(temporal)),
            spatial_expansions=(2,) * n_up,
        )


def _ints(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _count(shapes: Shapes, template: str) -> int:
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


class Decoder3D(nn.Module):
    def __init__(self, cfg: MochiConfig) -> None:
        super().__init__()
        widths = cfg.block_out_channels
        layers = cfg.layers_per_block
        self.conv_in = nn.Conv3d(cfg.latent_channels, widths[-1], 1)
        self.block_in = MidBlock(widths[-1], layers[-1])
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(
                    widths[-i - 1],
                    widths[-i - 2],
                    layers[-i - 2],
                    cfg.temporal_expansions[-i - 1],
                    cfg.spatial_expansions[-i - 1],
                    cfg.drop_in_blocks,
                )
                for i in range(len(widths) - 1)
            ]
        )
        self.block_out = MidBlock(widths[0], layers[0])
        self.proj_out = nn.Linear(widths[0], cfg.out_channels)

    def forward(self, z: Tensor, state: MochiState) -> Tensor:
        x = linear_cl(z, self.conv_in.weight.flatten(1), self.conv_in.bias)
        x = self.block_in(x, state)
        for block in self.up_blocks:
            x = block(x, state)
        x = F.silu(self.block_out(x, state), inplace=True)
        return linear_cl(x, self.proj_out.weight, self.proj_out.bias)


class MochiDecoder(nn.Module):
    """Mochi VAE decoder (`decoder.*` of `AutoencoderKLMochi`) as an engine StreamDecoder.

    Latents `(B, latent_channels, T, h, w)` in VAE space decode to
    `(B, out_channels, 6(T-1)+1, 8h, 8w)` in about [-1, 1] (not clamped, as in diffusers): each
    latent frame gives 6 frames and the clip's first gives 1: its extra 5 are dropped at the end
    as diffusers' `drop_last_temporal_frames` does, or inside the up blocks as Genmo's code does
    (`cfg.drop_in_blocks`). dtype follows the weights and input.
    """

    def __init__(self, cfg: MochiConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder3D(cfg)

    @property
    def upscale(self) -> int:
        return self.cfg.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """Up to `max_frames` latent frames per chunk (the result does not depend on it);
        the first chunk drops the `temporal_ratio - 1` leading frames, unless the up blocks
        already did."""
        step = max(1, max_frames)
        drop = 0 if self.cfg.drop_in_blocks else self.cfg.temporal_ratio - 1
        return [
            Chunk(s, min(s + step, num_frames), drop=drop if s == 0 else 0)
            for s in range(0, num_frames, step)
        ]

    def new_state(self) -> MochiState:
        return MochiState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, C, t, h, w)` -> `(B, out_channels, 6t, up*h, up*w)`; advances `state`."""
        assert isinstance(state, MochiState), type(state)
        check_latents(z, self.cfg.latent_channels)
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        return self.decoder(z.contiguous(memory_format=torch.channels_last_3d), state)

    def finalize(self, x: Tensor) -> Tensor:
        return x


def for_naming(cfg: MochiConfig, keys: Collection[str]) -> tuple[MochiConfig, str | None]:
    """A file in Genmo's naming is decoded as Genmo's code does (ComfyUI's too): its users see
    that picture, which diffusers' port changes in the first frames."""
    if not is_original(keys):
        return cfg, None
    note = (
        "Genmo-original Mochi VAE weights: decoded as Genmo's code and ComfyUI do "
        "(the first frames differ from diffusers' AutoencoderKLMochi)"
    )
    return replace(cfg, drop_in_blocks=True), note


FAMILY = Family(
    name="mochi",
    diffusers_class="AutoencoderKLMochi",
    config_from_diffusers=MochiConfig.from_diffusers,
    config_from_shapes=MochiConfig.from_shapes,
    build=MochiDecoder,
    rename_keys=rename_keys,
    detect=detect,
    for_naming=for_naming,
)
