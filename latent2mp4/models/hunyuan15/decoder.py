"""HunyuanVideo 1.5 VAE decoder, weight-compatible with diffusers' `AutoencoderKLHunyuanVideo15`.

Causal convs with replicate padding, per-position RMS norms, a mid-block attention over the
whole clip with a block-causal frame mask, and pixel-shuffle up-samplers whose first frame is
image-like. diffusers decodes the whole clip in one pass; every one of these parts is causal in
time, so the clip streams exactly: chunk 0 (the first latent frame) yields 1 frame, every later
latent frame 4, with conv histories and the attention's keys and values in a `Hunyuan15State`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes, has_marker
from latent2mp4.models.hunyuan15.layers import (
    CausalConv3d,
    Hunyuan15State,
    MidBlock,
    UpBlock,
    norm_silu_conv,
)
from latent2mp4.models.layers import RMSNorm

__all__ = ["FAMILY", "Hunyuan15Config", "Hunyuan15Decoder", "Hunyuan15State", "rename_keys"]

# The Tencent release's `vae/config.json` names its class and factors differently.
TENCENT_CLASS = "AutoencoderKLConv3D"


@dataclass(frozen=True)
class Hunyuan15Config:
    """Decoder architecture; field names and defaults follow diffusers' `config.json`."""

    latent_channels: int = 32
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)
    layers_per_block: int = 2
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4
    upsample_match_channel: bool = True

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for name, ratio in (
            ("spatial", self.spatial_compression_ratio),
            ("temporal", self.temporal_compression_ratio),
        ):
            if ratio < 1 or ratio & (ratio - 1) or ratio.bit_length() > n:
                raise ValueError(
                    f"{name} compression ratio {ratio} unsupported: a power of 2 up to "
                    f"2^{n - 1} for {n} blocks"
                )
        if self.widths[0] % self.latent_channels:
            raise ValueError(
                f"decoder width {self.widths[0]} is not a multiple of "
                f"latent_channels {self.latent_channels}"
            )

    @property
    def widths(self) -> list[int]:
        """Decoder widths, first block first (block_out_channels reversed)."""
        return list(reversed(self.block_out_channels))

    @property
    def upsamplers(self) -> list[tuple[int, bool] | None]:
        """(output width, temporal) of each up block's upsampler, None where there is none.

        diffusers' placement rule (HunyuanVideo15Decoder3D): block i up-samples space while
        i < log2(spatial ratio) and time while i < log2(temporal ratio).
        """
        n_space = self.spatial_compression_ratio.bit_length() - 1
        n_time = self.temporal_compression_ratio.bit_length() - 1
        widths = self.widths
        out: list[tuple[int, bool] | None] = []
        for i, width in enumerate(widths):
            if i < max(n_space, n_time):
                target = widths[i + 1] if self.upsample_match_channel else width
                out.append((target, i < n_time))
            else:
                out.append(None)
        return out

    @property
    def upscale(self) -> int:
        return 2 ** sum(u is not None for u in self.upsamplers)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> Hunyuan15Config:
        """Read a diffusers `config.json` dict, or the Tencent release's (`AutoencoderKLConv3D`:
        `ffactor_spatial`/`ffactor_temporal`); `latent_channels` and `block_out_channels` are
        required (KeyError), the rest default as in diffusers."""
        spatial = d.get("spatial_compression_ratio", d.get("ffactor_spatial", 16))
        temporal = d.get("temporal_compression_ratio", d.get("ffactor_temporal", 4))
        return cls(
            latent_channels=int(d["latent_channels"]),
            out_channels=int(d.get("out_channels", 3)),
            block_out_channels=tuple(int(c) for c in d["block_out_channels"]),
            layers_per_block=int(d.get("layers_per_block", 2)),
            spatial_compression_ratio=int(spatial),
            temporal_compression_ratio=int(temporal),
            upsample_match_channel=bool(d.get("upsample_match_channel", True)),
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> Hunyuan15Config:
        """Infer the architecture from decoder tensor shapes (diffusers key names)."""
        resnet = "decoder.up_blocks.{}.resnets.{}.conv1.conv.weight"
        n_blocks = _count(shapes, resnet.format("{}", 0))
        if n_blocks < 1:
            raise KeyError(resnet.format(0, 0))
        widths = [shapes[resnet.format(i, 0)][0] for i in range(n_blocks)]
        n_space = n_time = 0
        match = True
        for i in range(n_blocks - 1):
            up = shapes.get(f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.weight")
            if up is None:
                break
            # The next block's input width is this upsampler's output width.
            target = shapes[resnet.format(i + 1, 0)][1]
            match = match and target == widths[i + 1]
            n_space += 1
            n_time += up[0] == 8 * target
        return cls(
            latent_channels=shapes["decoder.conv_in.conv.weight"][1],
            out_channels=shapes["decoder.conv_out.conv.weight"][0],
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=_count(shapes, resnet.format(0, "{}")) - 1,
            spatial_compression_ratio=2**n_space,
            temporal_compression_ratio=2**n_time,
            upsample_match_channel=match,
        )


def _count(shapes: Shapes, template: str) -> int:
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


class Decoder3D(nn.Module):
    def __init__(self, cfg: Hunyuan15Config) -> None:
        super().__init__()
        widths = cfg.widths
        self.repeat = widths[0] // cfg.latent_channels
        self.conv_in = CausalConv3d(cfg.latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0])
        blocks, cin = [], widths[0]
        for width, up in zip(widths, cfg.upsamplers, strict=True):
            up_out, temporal = up if up is not None else (None, False)
            blocks.append(UpBlock(cin, width, cfg.layers_per_block + 1, up_out, temporal))
            cin = up_out or width
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(cin)
        self.conv_out = CausalConv3d(cin, cfg.out_channels)

    def forward(self, z: Tensor, state: Hunyuan15State) -> Tensor:
        x = self.conv_in(z, state).add_(z.repeat_interleave(self.repeat, dim=1))
        x = self.mid_block(x, state)
        for block in self.up_blocks:
            x = block(x, state)
        return norm_silu_conv(self.norm_out, self.conv_out, x, state)


class Hunyuan15Decoder(nn.Module):
    """HunyuanVideo 1.5 VAE decoder as an engine StreamDecoder.

    Latents `(B, latent_channels, T, h, w)` in VAE space decode to
    `(B, out_channels, 4(T-1)+1, upscale*h, upscale*w)` in about [-1, 1] (not clamped, as in
    diffusers), the same chunked or whole; dtype follows the weights and input.
    """

    def __init__(self, cfg: Hunyuan15Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder3D(cfg)

    @property
    def upscale(self) -> int:
        return self.cfg.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """The first latent frame alone, then up to `max_frames` per chunk; every split gives
        the same result (the state carries all context)."""
        step = max(1, max_frames)
        return [Chunk(0, 1)] + [
            Chunk(t, min(t + step, num_frames)) for t in range(1, num_frames, step)
        ]

    def new_state(self) -> Hunyuan15State:
        return Hunyuan15State()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, C, t, h, w)` after the frames `state` has seen -> `(B, out, f, H, W)`,
        f = 4t, or 4(t-1)+1 for the clip's first chunk."""
        assert isinstance(state, Hunyuan15State)
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        x = self.decoder(z.contiguous(memory_format=torch.channels_last_3d), state)
        state.started = True
        return x

    def finalize(self, x: Tensor) -> Tensor:
        return x


# Tencent-release and ComfyUI (LDM-style) names -> diffusers names. Both number the up blocks
# in decode order, as diffusers does. ComfyUI's convs wrap a `.conv` also for the 1x1 shortcut.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^decoder\.up\.(\d+)\.block\.", r"decoder.up_blocks.\1.resnets."),
        (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
        (r"^decoder\.mid\.block_1\.", "decoder.mid_block.resnets.0."),
        (r"^decoder\.mid\.block_2\.", "decoder.mid_block.resnets.1."),
        (r"^decoder\.mid\.attn_1\.([qkv])\.", r"decoder.mid_block.attentions.0.to_\1."),
        (r"^decoder\.mid\.attn_1\.", "decoder.mid_block.attentions.0."),
        (r"\.nin_shortcut\.(conv\.)?", ".conv_shortcut."),
    )
)

# RMS-norm gains (`.gamma`) next to the mid-block attention tell HunyuanVideo 1.5 from
# HunyuanVideo (GroupNorm weights) and from Wan (no `.conv.` wrapper, `middle` blocks).
_MARKERS = (
    ("decoder.conv_in.conv.weight", "decoder.mid_block.attentions.0.norm.gamma"),
    ("decoder.conv_in.conv.weight", "decoder.mid.attn_1.norm.gamma"),
)


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers, Tencent or ComfyUI naming) to decoder keys; encoder and
    other keys are left out."""
    out: dict[str, str] = {}
    for key in keys:
        if not key.startswith("decoder."):
            continue
        new = key
        for pattern, repl in _RULES:
            new = pattern.sub(repl, new)
        out[key] = new
    return out


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold a HunyuanVideo 1.5 VAE in diffusers, Tencent or ComfyUI naming."""
    return has_marker(keys, _MARKERS)


FAMILY = Family(
    name="hunyuan1.5",
    diffusers_class="AutoencoderKLHunyuanVideo15",
    config_from_diffusers=Hunyuan15Config.from_diffusers,
    config_from_shapes=Hunyuan15Config.from_shapes,
    build=Hunyuan15Decoder,
    rename_keys=rename_keys,
    detect=detect,
    other_classes=(TENCENT_CLASS,),
)
