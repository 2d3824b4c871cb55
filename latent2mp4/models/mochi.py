"""Mochi 1 VAE decoder, weight-compatible with diffusers' `AutoencoderKLMochi`.

Every layer of the decoder is causal in time or works on one frame at a time: causal 3x3x3 convs
(replicate-padded in space and in front, diffusers' default "replicate" mode), GroupNorms whose
statistics come from a single frame (`MochiChunkedGroupNorm3D`), per-pixel linear projections and
depth-to-space-time up-sampling; the decoder has no attention. So decoding one latent frame at a
time, with the last two input frames of every conv carried in a `MochiState`, equals diffusers'
whole-clip `decode()` exactly (only float rounding differs). diffusers' framewise mode is not
followed: it switches the convs to zero padding in space, which changes the output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.layers import padded_buffer

GROUPS = 32  # MochiChunkedGroupNorm3D builds nn.GroupNorm with 32 groups whatever the config
NORM_EPS = 1e-5  # nn.GroupNorm's default, which diffusers keeps
HISTORY = 2  # input frames a kernel-3 causal conv keeps between chunks


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


@dataclass
class MochiState:
    """Causal state of one spatial tile: per causal conv, its last two padded input frames."""

    frames: dict[nn.Module, Tensor] = field(default_factory=dict)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame (diffusers `MochiChunkedGroupNorm3D`; its chunks of
    8 frames only batch the work)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        # (B*T, C, H, W) frames: a view of channels-last activations, normed channels-last.
        y = self.norm_layer(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Module):
    """3x3x3 conv on an input replicate-padded by one pixel in space and two frames in front.

    Chunked calls equal one whole-clip call: the two frames in front are the previous chunk's
    last (padded) inputs, kept in the state, or copies of the clip's first frame.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # diffusers' CogVideoXSafeConv3d splits > 2 GiB inputs along time: the same sums.
        self.conv = nn.Conv3d(cin, cout, 3)

    def padded(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """A channels-last buffer with the padding around room for `like`'s frames.

        Returns the buffer and the view to write the input into, so the layer before writes
        straight there and nothing is concatenated.
        """
        return padded_buffer(like, HISTORY)

    def run(self, buf: Tensor, state: MochiState) -> Tensor:
        """Replicate the filled room's edges, put the history in front and convolve."""
        new = buf[:, :, HISTORY:]
        replicate_edges(new[..., 1:-1], dim=3)
        replicate_edges(new, dim=4)  # columns after rows: the corners follow
        past = state.frames.get(self)
        if past is None:
            past = new[:, :, :1].expand(-1, -1, HISTORY, -1, -1)
        buf[:, :, :HISTORY].copy_(past)
        state.frames[self] = buf[:, :, -HISTORY:].clone()
        return self.conv(buf)


def replicate_edges(x: Tensor, dim: int) -> None:
    """Copy positions 1 and n-2 of `dim` onto 0 and n-1, in place (both edges in one copy)."""
    n = x.shape[dim]
    lead = (slice(None),) * dim
    # Rows 1 and n-2 as one strided slice; a single interior row is broadcast to both edges.
    src = x[lead + (slice(1, n - 1, n - 3),)] if n > 3 else x.narrow(dim, 1, 1)
    x[lead + (slice(0, n, n - 1),)].copy_(src)


def norm_silu_conv(
    norm: FrameGroupNorm, conv: CausalConv3d, x: Tensor, state: MochiState
) -> Tensor:
    """conv(silu(norm(x))) with the activation written straight into the conv's buffer."""
    buf, room = conv.padded(x)
    torch.ops.aten.silu.out(norm(x), out=room)
    return conv.run(buf, state)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(channels)
        self.conv1 = CausalConv3d(channels, channels)
        self.norm2 = FrameGroupNorm(channels)
        self.conv2 = CausalConv3d(channels, channels)

    def forward(self, x: Tensor, state: MochiState) -> Tensor:
        h = norm_silu_conv(self.norm1, self.conv1, x, state)
        h = norm_silu_conv(self.norm2, self.conv2, h, state)
        return h.add_(x)  # h is the conv's fresh output


class MidBlock(nn.Module):
    """Residual blocks at one width (diffusers `MochiMidBlock3D` without attention)."""

    def __init__(self, channels: int, n: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels) for _ in range(n)])

    def forward(self, x: Tensor, state: MochiState) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, state)
        return x


def linear_cl(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A per-pixel linear map over the channels of `(B, C, T, H, W)`, as one GEMM on
    channels-last pixels; the result stays channels-last `(B, C', T, H, W)`."""
    return F.linear(x.permute(0, 2, 3, 4, 1), weight, bias).permute(0, 4, 1, 2, 3)


class UpBlock(nn.Module):
    """Residual blocks, a linear projection to `cout * t * s * s` channels, then depth to
    space and time: every frame becomes `t` frames of `s`-times the size."""

    def __init__(self, cin: int, cout: int, n: int, temporal: int, spatial: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin) for _ in range(n)])
        self.proj = nn.Linear(cin, cout * temporal * spatial**2)
        self.cout, self.temporal, self.spatial = cout, temporal, spatial

    def forward(self, x: Tensor, state: MochiState) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, state)
        b, _, t, h, w = x.shape
        st, s, c = self.temporal, self.spatial, self.cout
        y = F.linear(x.permute(0, 2, 3, 4, 1), self.proj.weight, self.proj.bias)
        # Projected channels are ordered (c, st, sh, sw) (diffusers MochiUpBlock3D); one copy
        # interleaves them into frames, rows and columns, leaving channels-last output.
        y = y.view(b, t, h, w, c, st, s, s).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, t * st, h * s, w * s, c).permute(0, 4, 1, 2, 3)


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
    latent frame gives 6 frames and the clip's first 5 are dropped, as diffusers'
    `drop_last_temporal_frames` does. dtype follows the weights and input.
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
        the first chunk drops the `temporal_ratio - 1` leading frames."""
        step = max(1, max_frames)
        drop = self.cfg.temporal_ratio - 1
        return [
            Chunk(s, min(s + step, num_frames), drop=drop if s == 0 else 0)
            for s in range(0, num_frames, step)
        ]

    def new_state(self) -> MochiState:
        return MochiState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, C, t, h, w)` -> `(B, out_channels, 6t, up*h, up*w)`; advances `state`."""
        assert isinstance(state, MochiState), type(state)
        if z.ndim != 5 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}; "
                f"expected (B, {self.cfg.latent_channels}, t, h, w)"
            )
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        return self.decoder(z.contiguous(memory_format=torch.channels_last_3d), state)

    def finalize(self, x: Tensor) -> Tensor:
        return x


# Genmo's original decoder (`decoder.safetensors`: `blocks.*`, `output_proj.*`) and ComfyUI's
# Mochi VAE file (the same names under `decoder.`, plus `encoder.*`) -> diffusers names, as in
# diffusers' scripts/convert_mochi_to_diffusers.py. `blocks.0` is conv_in and the first mid
# block, `blocks.1..n` the up blocks, `blocks.{n+1}` the last mid block.
_Replacement = str | Callable[[re.Match[str]], str]
_ORIGINAL = re.compile(r"^(?:decoder\.)?(blocks\.|output_proj\.)")
_RESNET_RULES: tuple[tuple[str, str], ...] = (
    (r"\.stack\.0\.", ".norm1.norm_layer."),
    (r"\.stack\.2\.", ".conv1.conv."),
    (r"\.stack\.3\.", ".norm2.norm_layer."),
    (r"\.stack\.5\.", ".conv2.conv."),
)


def _original_rules(last: int) -> list[tuple[str, _Replacement]]:
    return [
        (r"^blocks\.0\.0\.", "decoder.conv_in."),
        (r"^blocks\.0\.(\d+)\.", lambda m: f"decoder.block_in.resnets.{int(m[1]) - 1}."),
        (rf"^blocks\.{last}\.(\d+)\.", r"decoder.block_out.resnets.\1."),
        (
            r"^blocks\.(\d+)\.blocks\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{int(m[1]) - 1}.resnets.{m[2]}.",
        ),
        (r"^blocks\.(\d+)\.proj\.", lambda m: f"decoder.up_blocks.{int(m[1]) - 1}.proj."),
        (r"^output_proj\.", "decoder.proj_out."),
        *_RESNET_RULES,
    ]


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers, Genmo original or ComfyUI naming) to decoder keys;
    encoder keys are left out, other decoder keys are kept so a strict load names them."""
    keys = list(keys)
    bodies = {k: k.removeprefix("decoder.") for k in keys if _ORIGINAL.match(k)}
    indices = [int(m[1]) for b in bodies.values() if (m := re.match(r"blocks\.(\d+)\.\d+\.", b))]
    rules = _original_rules(max(indices, default=0))
    out: dict[str, str] = {}
    for key in keys:
        if key in bodies:
            new = bodies[key]
            for pattern, repl in rules:
                new = re.sub(pattern, repl, new)
            out[key] = new
        elif key.startswith("decoder."):
            out[key] = key
    return out


_MARKERS = (
    ("decoder.block_in.resnets.0.conv1.conv.weight", "decoder.proj_out.weight"),
    ("blocks.0.0.weight", "output_proj.weight"),
    ("decoder.blocks.0.0.weight", "decoder.output_proj.weight"),
)


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold a Mochi VAE decoder in diffusers, Genmo or ComfyUI naming."""
    return any(all(k in keys for k in marker) for marker in _MARKERS)


FAMILY = Family(
    name="mochi",
    diffusers_class="AutoencoderKLMochi",
    config_from_diffusers=MochiConfig.from_diffusers,
    config_from_shapes=MochiConfig.from_shapes,
    build=MochiDecoder,
    rename_keys=rename_keys,
    detect=detect,
)
