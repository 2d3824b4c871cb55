"""Primitive layers of the HunyuanVideo 1.5 VAE decoder, with an explicit streaming state.

Attribute names equal the diffusers parameter paths (`AutoencoderKLHunyuanVideo15`). Every
module works on `(B, C, T, H, W)` chunks; what a chunk needs from earlier frames lives in a
`Hunyuan15State`: the last two input frames of each causal conv, and the keys and values of
every earlier latent frame for the mid-block attention. Decoding a clip chunk by chunk with one
state therefore equals decoding it in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.layers import RMSNorm, padded_buffer

HISTORY = 2  # input frames a kernel-3 causal conv needs from before the chunk


@dataclass
class Hunyuan15State:
    """Causal state of one spatial tile."""

    started: bool = False  # False until the chunk holding the clip's first frame is decoded
    history: dict[nn.Module, Tensor] = field(default_factory=dict)  # conv -> last 2 inputs
    # attention -> key and value buffers (capacity grows by doubling) and how much is filled
    keys_values: dict[nn.Module, tuple[Tensor, Tensor]] = field(default_factory=dict)
    kv_length: dict[nn.Module, int] = field(default_factory=dict)


class CausalConv3d(nn.Module):
    """Kernel-3 conv, replicate-padded by one pixel in space and by two frames in front.

    diffusers pads the whole clip with two copies of its first frame; a later chunk is padded
    with the two frames before it instead, so chunked calls equal one call over the clip.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3)

    def padded(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """A buffer for the padded input and the view the chunk's input is written into (the
        layer before writes its output straight there); `run` fills the padding."""
        return padded_buffer(like, HISTORY)

    def run(self, buf: Tensor, state: Hunyuan15State) -> Tensor:
        """Pad a `padded` buffer whose room is filled, keep its last frames, convolve."""
        inner = buf[:, :, :, 1:-1, 1:-1]
        prev = state.history.get(self)
        if prev is None:
            inner[:, :, :HISTORY] = inner[:, :, HISTORY : HISTORY + 1]
        else:
            inner[:, :, :HISTORY] = prev
        state.history[self] = inner[:, :, -HISTORY:].clone()
        # Replicate the edges: rows first, then whole columns, which also fills the corners.
        buf[:, :, :, 0, 1:-1] = buf[:, :, :, 1, 1:-1]
        buf[:, :, :, -1, 1:-1] = buf[:, :, :, -2, 1:-1]
        buf[:, :, :, :, 0] = buf[:, :, :, :, 1]
        buf[:, :, :, :, -1] = buf[:, :, :, :, -2]
        return self.conv(buf)

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        buf, room = self.padded(x)
        room.copy_(x)
        return self.run(buf, state)


def norm_silu_conv(norm: RMSNorm, conv: CausalConv3d, x: Tensor, state: Hunyuan15State) -> Tensor:
    """conv(silu(norm(x))), the activation written straight into the conv's padded buffer."""
    buf, room = conv.padded(x)
    norm(x, silu=True, out=room)
    return conv.run(buf, state)


class ResBlock(nn.Module):
    """Pre-norm residual block: two causal convs, a 1x1x1 shortcut when the widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = RMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h = norm_silu_conv(self.norm1, self.conv1, x, state)
        h = norm_silu_conv(self.norm2, self.conv2, h, state)
        return h.add_(skip)  # h is the conv's fresh output


class CausalAttention(nn.Module):
    """One head over every position of the clip; a query in frame f sees the keys of frames
    <= f (diffusers' `prepare_causal_attention_mask`).

    diffusers builds a dense (N, N) mask over all N positions of the clip. Here each frame
    attends to the keys it may see without a mask, and the keys and values of a chunk stay in
    the state for the chunks after it: the same softmax, one chunk at a time.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(channels)
        self.to_q = nn.Conv3d(channels, channels, 1)
        self.to_k = nn.Conv3d(channels, channels, 1)
        self.to_v = nn.Conv3d(channels, channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, 1, t * h * w, c)
        q, k, v = (
            F.linear(tokens, proj.weight.flatten(1), proj.bias)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        k, v, seen = self._remember(k, v, state)
        n = h * w
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[:, :, f * n : (f + 1) * n],
                    k[:, :, : seen + (f + 1) * n],
                    v[:, :, : seen + (f + 1) * n],
                )
                for f in range(t)
            ],
            dim=2,
        )
        out = F.linear(out, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)

    def _remember(self, k: Tensor, v: Tensor, state: Hunyuan15State) -> tuple[Tensor, Tensor, int]:
        """All keys and values so far (views) and how many positions came before this chunk.

        They are kept in buffers whose capacity doubles, so a long clip costs a few copies and
        allocations of a few sizes: allocations of a new size every chunk fragment the heap, and
        the process's peak memory would creep up with clip length.
        """
        new = k.shape[2]
        kept = state.keys_values.get(self)
        seen = 0 if kept is None else state.kv_length[self]
        if kept is None or seen + new > kept[0].shape[2]:
            capacity = max(2 * seen, seen + new)
            grown = tuple(k.new_empty((*k.shape[:2], capacity, k.shape[3])) for _ in range(2))
            if kept is not None:
                for old, buf in zip(kept, grown, strict=True):
                    buf[:, :, :seen] = old[:, :, :seen]
            kept = state.keys_values[self] = (grown[0], grown[1])
        kept[0][:, :, seen : seen + new] = k
        kept[1][:, :, seen : seen + new] = v
        state.kv_length[self] = seen + new
        return kept[0][:, :, : seen + new], kept[1][:, :, : seen + new], seen


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels) for _ in range(2)])
        self.attentions = nn.ModuleList([CausalAttention(channels)])

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        x = self.resnets[0](x, state)
        return self.resnets[1](self.attentions[0](x, state), state)


def depth_to_space(x: Tensor, rt: int, rs: int) -> Tensor:
    """`(B, rt*rs*rs*C, T, H, W)` -> `(B, C, rt*T, rs*H, rs*W)`; the factors are the leading
    (slowest) part of the channel index, time first (diffusers `_dcae_upsample_rearrange`)."""
    b, packed, t, h, w = x.shape
    c = packed // (rt * rs * rs)
    x = x.view(b, rt, rs, rs, c, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return x.reshape(b, c, t * rt, h * rs, w * rs)


class Upsample(nn.Module):
    """A causal conv to `factor` x `cout` channels moved into space (x2) and time (x2 when
    `temporal`), plus a parameter-free shortcut: the input moved the same way, its channels
    repeated to `cout`.

    With `temporal`, the clip's first frame is only doubled in space: the first half of its
    channels (per spatial offset) is kept, as diffusers' `HunyuanVideo15Upsample` does.
    """

    def __init__(self, cin: int, cout: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.factor = 8 if temporal else 4
        self.repeats = self.factor * cout // cin
        self.conv = CausalConv3d(cin, cout * self.factor)

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        y = self.conv(x, state)
        if not self.temporal:
            skip = depth_to_space(x.repeat_interleave(self.repeats, dim=1), 1, 2)
            return depth_to_space(y, 1, 2).add_(skip)
        parts = []
        if not state.started:
            b, packed, _, h, w = y.shape
            # The image-like first frame: channels read as (2, 2, 2 * cout), first half kept.
            first = y[:, :, :1].reshape(b, 4, 2, packed // 8, 1, h, w)[:, :, 0]
            first = depth_to_space(first.reshape(b, packed // 2, 1, h, w), 1, 2)
            skip = depth_to_space(x[:, :, :1], 1, 2).repeat_interleave(self.repeats // 2, dim=1)
            parts.append(first + skip)
            x, y = x[:, :, 1:], y[:, :, 1:]
        if y.shape[2]:
            skip = depth_to_space(x, 2, 2).repeat_interleave(self.repeats, dim=1)
            parts.append(depth_to_space(y, 2, 2).add_(skip))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, up_out: int | None, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout) for i in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout, up_out, temporal)] if up_out else [])

    def forward(self, x: Tensor, state: Hunyuan15State) -> Tensor:
        for block in [*self.resnets, *self.upsamplers]:
            x = block(x, state)
        return x
