"""Primitive layers of the Mochi VAE decoder, with an explicit causal state.

Attribute names equal the diffusers parameter paths (`AutoencoderKLMochi`), so state dicts load
without renaming. Every module works on `(B, C, T, H, W)` tensors; temporal context lives in a
`MochiState` that the caller passes in, one per spatial tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.layers import padded_buffer

GROUPS = 32  # MochiChunkedGroupNorm3D builds nn.GroupNorm with 32 groups whatever the config
NORM_EPS = 1e-5  # nn.GroupNorm's default, which diffusers keeps
HISTORY = 2  # input frames a kernel-3 causal conv keeps between chunks


@dataclass
class MochiState:
    """Causal state of one spatial tile: per causal conv, its last two padded input frames; the
    up blocks that have already seen the clip's first frames."""

    frames: dict[nn.Module, Tensor] = field(default_factory=dict)
    started: set[nn.Module] = field(default_factory=set)


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
    space and time: every frame becomes `t` frames of `s`-times the size.

    With `drop_first`, the clip's first `t - 1` new frames are dropped right here, as Genmo's
    `DepthToSpaceTime` does (genmo/mochi_preview/vae/models.py; ComfyUI's port keeps it), so the
    causal convs after it pad with copies of the first kept frame. diffusers keeps them through
    every later layer and drops all `prod(t) - 1` at the end, which changes the first frames.
    """

    def __init__(
        self, cin: int, cout: int, n: int, temporal: int, spatial: int, drop_first: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin) for _ in range(n)])
        self.proj = nn.Linear(cin, cout * temporal * spatial**2)
        self.cout, self.temporal, self.spatial = cout, temporal, spatial
        self.drop = temporal - 1 if drop_first else 0

    def forward(self, x: Tensor, state: MochiState) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, state)
        b, _, t, h, w = x.shape
        st, s, c = self.temporal, self.spatial, self.cout
        y = F.linear(x.permute(0, 2, 3, 4, 1), self.proj.weight, self.proj.bias)
        # Projected channels are ordered (c, st, sh, sw) (diffusers MochiUpBlock3D); one copy
        # interleaves them into frames, rows and columns, leaving channels-last output.
        y = y.view(b, t, h, w, c, st, s, s).permute(0, 1, 5, 2, 6, 3, 7, 4)
        y = y.reshape(b, t * st, h * s, w * s, c).permute(0, 4, 1, 2, 3)
        if self.drop and self not in state.started:
            y = y[:, :, self.drop :]
        state.started.add(self)
        return y
