"""Primitive layers of the Wan 2.1 / 2.2 VAE decoder, with an explicit causal state.

Attribute names equal the diffusers parameter paths (`AutoencoderKLWan`), so state dicts load
without renaming. Every module works on `(B, C, T, H, W)` tensors; temporal context lives in a
`WanState` that the caller passes in, one per spatial tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.layers import RMSNorm

CACHE_T = 2  # frames of input history a kernel-3 causal conv keeps (diffusers' CACHE_T)


@dataclass
class WanState:
    """Causal state of one spatial tile: the last input frames of every temporal conv."""

    started: bool = False  # False until the first chunk (the image-like frame) is decoded
    cache: dict[nn.Module, Tensor] = field(default_factory=dict)


class CausalConv3d(nn.Conv3d):
    """Conv3d, zero-padded in space and causally in time from the cached history.

    Chunked calls equal one call over the whole sequence with 2 zero frames in front. An absent
    cache entry means "start of sequence", which is also what the temporal upsampler's "Rep"
    marker amounts to in diffusers (`autoencoder_kl_wan.py`, `WanResample`).
    """

    def __init__(self, dim: int, out_dim: int, kernel: tuple[int, int, int]) -> None:
        super().__init__(dim, out_dim, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        assert kernel[0] == CACHE_T + 1

    def padded(self, like: Tensor, state: WanState) -> tuple[Tensor, Tensor]:
        """A buffer holding the cached history followed by room for this chunk's input.

        Returns the buffer and the view to write the input into: the layer before writes its
        output straight there, so history and input are never concatenated into a new copy.
        """
        b, c, t, h, w = like.shape
        buf = torch.empty(
            (b, c, t + CACHE_T, h, w),
            dtype=like.dtype,
            device=like.device,
            memory_format=torch.channels_last_3d,
        )
        prev = state.cache.get(self)
        if prev is None:
            buf[:, :, :CACHE_T].zero_()
        else:
            buf[:, :, :CACHE_T].copy_(prev)
        return buf, buf[:, :, CACHE_T:]

    def run(self, buf: Tensor, state: WanState) -> Tensor:
        """Convolve a filled `padded` buffer; its last frames become the history."""
        fresh = self not in state.cache
        state.cache[self] = buf[:, :, -CACHE_T:].clone()
        if fresh and buf.shape[2] == CACHE_T + 1:
            # A clip's first frame has only zero history: the history taps add nothing, so the
            # last tap alone gives the same sum for a third of the multiply-adds.
            x, weight = buf[:, :, CACHE_T:], self.weight[:, :, CACHE_T:]
            return F.conv3d(x, weight, self.bias, padding=self.padding)
        return super().forward(buf)

    def forward(self, x: Tensor, state: WanState) -> Tensor:  # type: ignore[override]
        buf, room = self.padded(x, state)
        room.copy_(x)
        return self.run(buf, state)


def norm_silu_conv(norm: RMSNorm, conv: CausalConv3d, x: Tensor, state: WanState) -> Tensor:
    """conv(silu(norm(x))) with the activation written straight into the conv's padded buffer."""
    buf, room = conv.padded(x, state)
    norm(x, silu=True, out=room)
    return conv.run(buf, state)


class ResBlock(nn.Module):
    """Pre-norm residual block: two kernel-3 causal convs, 1x1x1 shortcut when widths differ."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.conv1 = CausalConv3d(dim, out_dim, (3, 3, 3))
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, (3, 3, 3))
        self.conv_shortcut = nn.Conv3d(dim, out_dim, 1) if dim != out_dim else None

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = norm_silu_conv(self.norm1, self.conv1, x, state)
        x = norm_silu_conv(self.norm2, self.conv2, x, state)
        return x.add_(skip)  # x is the conv's fresh output


class Attention(nn.Module):
    """Single-head self-attention within each frame (no temporal mixing, so no state)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        # Tokens of one frame form one sequence; the 1x1 convs act as linear maps on channels.
        y = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)
        q, k, v = F.linear(y, self.to_qkv.weight.flatten(1), self.to_qkv.bias).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        y = F.linear(y, self.proj.weight.flatten(1), self.proj.bias)
        return x + y.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


# Nearest x2 then a 3-tap kernel reads two source taps per output phase: even outputs see
# (k0, k1 + k2) at source offsets (-1, 0), odd outputs (k0 + k1, k2) at (0, +1).
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class Upsample(nn.Module):
    """Optional causal temporal x2 (`time_conv`), then nearest x2 in space and a 3x3 conv.

    The spatial part runs as one 2x2 conv with four output phases on the source resolution:
    4/9 of the multiply-adds of convolving the upsampled tensor, which is never materialised.
    """

    def __init__(self, dim: int, out_dim: int, temporal: bool) -> None:
        super().__init__()
        # Index 0 is the parameter-free nearest upsample in the checkpoint's `resample` Sequential.
        self.resample = nn.ModuleList([nn.Identity(), nn.Conv2d(dim, out_dim, 3, padding=1)])
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        if self.time_conv is not None:
            x = self._double_time(x, state)
        weight, bias = self._phase_weights()
        b, _, t, h, w = x.shape
        o = weight.shape[0] // 4
        # Zero padding 1 makes the 2x2 conv's (h+1, w+1) outputs cover every phase's offsets.
        y = F.conv3d(x, weight, bias, padding=(0, 1, 1))
        out = torch.empty(
            (b, o, t, 2 * h, 2 * w),
            dtype=y.dtype,
            device=y.device,
            memory_format=torch.channels_last_3d,
        )
        for k, (i, j) in enumerate(_PHASES):
            out[:, :, :, i::2, j::2] = y[:, k * o : (k + 1) * o, :, i : i + h, j : j + w]
        return out

    def _phase_weights(self) -> tuple[Tensor, Tensor | None]:
        """The 3x3 kernel folded into `(4 * out_dim, dim, 1, 2, 2)` phase kernels, summed in fp32.

        Rebuilt per call (milliseconds, against tens to hundreds for the conv) so that it can
        never go stale when the weights are loaded, moved or edited.
        """
        conv = cast(nn.Conv2d, self.resample[1])
        w, b = conv.weight, conv.bias
        taps = torch.tensor(_PHASE_TAPS, device=w.device)
        k = torch.einsum("aph,ochw,bqw->abocpq", taps, w.float(), taps)
        weight = k.reshape(-1, w.shape[1], 1, 2, 2).to(w.dtype)
        weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return weight, None if b is None else b.repeat(4)

    def _double_time(self, x: Tensor, state: WanState) -> Tensor:
        assert self.time_conv is not None
        head = None
        if not state.started:
            # The clip's first frame passes through undoubled; time_conv starts on frame 1 with
            # zero history (diffusers' "Rep" marker; `autoencoder_kl_wan.py`, `WanResample`).
            head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2] == 0:
                return head
        b, c, t, h, w = x.shape
        # Output channels [0, C) are the even frames, [C, 2C) the odd ones.
        y = self.time_conv(x, state).view(b, 2, c, t, h, w).transpose(1, 2).transpose(2, 3)
        y = y.reshape(b, c, 2 * t, h, w)
        return y if head is None else torch.cat([head, y], dim=2)


def dup_up(x: Tensor, out_dim: int, factor_t: int, factor_s: int, first: bool) -> Tensor:
    """Parameter-free shortcut of Wan 2.2 up blocks (diffusers `DupUp3D`).

    Each input channel is repeated `r` times; the repeated channel axis is read as
    `(out_dim, factor_t, factor_s, factor_s)` and those factors move into T, H and W. On the
    clip's first chunk the first `factor_t - 1` frames are dropped, as in the main path.
    """
    b, c, t, h, w = x.shape
    r = out_dim * factor_t * factor_s * factor_s // c
    y = x.repeat_interleave(r, dim=1).view(b, out_dim, factor_t, factor_s, factor_s, t, h, w)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(
        b, out_dim, t * factor_t, h * factor_s, w * factor_s
    )
    return y[:, :, factor_t - 1 :] if first else y


def unpatchify(x: Tensor, p: int) -> Tensor:
    """`(B, 3*p*p, F, H, W)` -> `(B, 3, F, H*p, W*p)`; channel `c*p*p + p*dx + dy` is colour `c`
    at pixel offset `(dy, dx)` (diffusers `unpatchify`: the width offset is the slower index)."""
    b, cp, f, h, w = x.shape
    c = cp // (p * p)
    x = x.view(b, c, p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, c, f, h * p, w * p)
