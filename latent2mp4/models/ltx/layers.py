"""Building blocks shared by the LTX-Video 0.9.x and LTX-2 video decoders.

Both decoders are one stack: conv_in, a mid block of residual blocks, up blocks made of an
optional channel-changing residual block, an optional depth-to-space up-sampler and residual
blocks, then a parameter-free RMS norm, SiLU, conv_out and a 4x4 (patch size) un-patchify.
Normalisation is per position over channels only, so nothing couples batch elements or frames
except the 3-frame time kernels. Timestep-conditioned releases add sinusoidal time embedders and
scale/shift tables. Attribute names equal diffusers' key paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# nn.Conv3d's spatial padding modes, all of which the original LTX-Video code accepts.
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
RMS_EPS = 1e-8
TIME_PROJ_DIM = 256  # sinusoidal width before the time embedder's MLP
MAX_PERIOD = 10000


def rms_norm(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Parameter-free RMS norm over channels (dim 1), statistics summed in fp32, into `out` (a
    conv's padded room) or a new tensor; either way the caller may modify the result in place."""
    # One reduction (accumulated in fp32 even for half inputs) with no squared copy; asking it
    # for an fp32 result instead would upcast all of x first (12x slower in bf16).
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).float()
    inv = torch.rsqrt(norm.square_().div_(x.shape[1]).add_(RMS_EPS)).to(x.dtype)
    return torch.mul(x, inv, out=out) if out is not None else x * inv


class CausalConv3d(nn.Module):
    """Conv3d padded in time by repeating edge frames: k-1 leading frames when causal, else
    (k-1)/2 each side; space is padded by the conv itself (zeros or reflect)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, padding_mode: PaddingMode = "zeros"
    ) -> None:
        super().__init__()
        self.kernel = kernel
        pad = kernel // 2
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, pad, pad), padding_mode=padding_mode)

    def _time_pad(self, causal: bool) -> tuple[int, int]:
        k = self.kernel - 1
        return (k, 0) if causal else (k // 2, k // 2)

    def room(self, like: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
        """A buffer for this conv's time-padded input and the view where `like`'s frames go.

        The layer before writes its output straight into the view, so the padded input is never
        built by concatenation; `padded` fills the edge frames.
        """
        before, after = self._time_pad(causal)
        b, c, t, h, w = like.shape
        buf = torch.empty(
            (b, c, before + t + after, h, w),
            dtype=like.dtype,
            device=like.device,
            memory_format=torch.channels_last_3d,
        )
        return buf, buf[:, :, before : before + t]

    def padded(self, buf: Tensor, causal: bool) -> Tensor:
        """Convolve a `room` buffer whose frames are written."""
        before, after = self._time_pad(causal)
        if before:
            buf[:, :, :before] = buf[:, :, before : before + 1]
        if after:
            buf[:, :, -after:] = buf[:, :, -after - 1 : -after]
        pad = self.kernel // 2
        if pad and self.conv.padding_mode == "reflect" and min(buf.shape[-2:]) <= pad:
            # Reflection needs 2 pixels; a 1-latent edge tile (which diffusers cannot decode
            # at all) is padded by replication instead.
            buf = F.pad(buf, (pad, pad, pad, pad, 0, 0), mode="replicate")
            return F.conv3d(buf, self.conv.weight, self.conv.bias)
        return self.conv(buf)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        if self.kernel == 1:
            return self.conv(x)
        buf, view = self.room(x, causal)
        view.copy_(x)
        return self.padded(buf, causal)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIME_PROJ_DIM, dim)
        self.linear_2 = nn.Linear(dim, dim)


class TimeEmbedder(nn.Module):
    """Sinusoidal projection (cos first) of a timestep and a 2-layer SiLU MLP: `(B,)` →
    `(B, dim, 1, 1, 1)`; diffusers' PixArtAlphaCombinedTimestepSizeEmbeddings without sizes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim)

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        half = TIME_PROJ_DIM // 2
        freqs = torch.exp(
            -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        angles = t.flatten().float()[:, None] * freqs[None]
        proj = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(dtype)
        mlp = self.timestep_embedder
        emb = mlp.linear_2(F.silu(mlp.linear_1(proj)))
        return emb[:, :, None, None, None]


@dataclass
class Run:
    """Per-call settings threaded through the blocks: causality, the scaled timestep (None when
    the decoder is not conditioned) and the generator for injected noise."""

    causal: bool
    temb: Tensor | None
    generator: torch.Generator | None


def _scale_shift(table: Tensor, emb: Tensor, n: int) -> tuple[Tensor, ...]:
    # emb (B, n*C, 1, 1, 1) + table (n, C) → n tensors (B, C, 1, 1, 1)
    e = emb.unflatten(1, (n, -1)) + table[None, :, :, None, None, None]
    return e.unbind(1)


class ResnetBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        eps: float,
        padding_mode: PaddingMode,
        inject_noise: bool = False,
        conditioned: bool = False,
        plain_shortcut: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(cin, cout, 3, padding_mode)
        self.conv2 = CausalConv3d(cout, cout, 3, padding_mode)
        self.norm3: nn.Module | None = None
        self.conv_shortcut: nn.Module | None = None
        if cin != cout:
            self.norm3 = nn.LayerNorm(cin, eps=eps)
            # LTX-2 uses a plain 1x1x1 conv, LTX-Video its padded conv wrapper (same maths).
            self.conv_shortcut = (
                nn.Conv3d(cin, cout, 1) if plain_shortcut else CausalConv3d(cin, cout, 1)
            )
        self.per_channel_scale1 = nn.Parameter(torch.zeros(cin, 1, 1)) if inject_noise else None
        self.per_channel_scale2 = nn.Parameter(torch.zeros(cin, 1, 1)) if inject_noise else None
        self.scale_shift_table = nn.Parameter(torch.zeros(4, cin)) if conditioned else None

    def _noise(self, h: Tensor, scale: Tensor | None, run: Run) -> Tensor:
        if scale is None:
            return h
        spatial = torch.randn(h.shape[-2:], generator=run.generator, device=h.device, dtype=h.dtype)
        return h.add_((spatial[None] * scale)[None, :, None])

    def forward(self, x: Tensor, run: Run, emb: Tensor | None) -> Tensor:
        # Every intermediate is this block's own, so each step works in place: fewer full-size
        # buffers to allocate and stream through memory.
        mods: tuple[Tensor, ...] = ()
        if self.scale_shift_table is not None:
            assert emb is not None
            mods = _scale_shift(self.scale_shift_table, emb, 4)
        buf, h = self.conv1.room(x, run.causal)
        rms_norm(x, out=h)
        if mods:
            h.mul_(1 + mods[1]).add_(mods[0])
        F.silu(h, inplace=True)
        h = self._noise(self.conv1.padded(buf, run.causal), self.per_channel_scale1, run)
        buf, y = self.conv2.room(h, run.causal)
        rms_norm(h, out=y)
        if mods:
            y.mul_(1 + mods[3]).add_(mods[2])
        F.silu(y, inplace=True)
        h = self._noise(self.conv2.padded(buf, run.causal), self.per_channel_scale2, run)
        if self.norm3 is not None:
            x = self.norm3(x.movedim(1, -1)).movedim(-1, 1)
        if isinstance(self.conv_shortcut, CausalConv3d):
            x = self.conv_shortcut(x, run.causal)
        elif self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h.add_(x)


def depth_to_space(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """`(B, C*st*sh*sw, f, h, w)` → `(B, C, f*st, h*sh, w*sw)`, channel order (C, st, sh, sw)."""
    b, _, f, h, w = x.shape
    st, sh, sw = stride
    x = x.reshape(b, -1, st, sh, sw, f, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, -1, f * st, h * sh, w * sw)


class Upsampler(nn.Module):
    """Conv to `C*prod(stride)/factor` channels, depth-to-space, first `st-1` frames dropped;
    residual variants add the input's own depth-to-space, channel-tiled to match."""

    def __init__(
        self,
        channels: int,
        stride: tuple[int, int, int],
        residual: bool,
        factor: int,
        mode: PaddingMode,
    ) -> None:
        super().__init__()
        self.stride, self.residual = stride, residual
        self.repeats = math.prod(stride) // factor
        self.conv = CausalConv3d(channels, channels * math.prod(stride) // factor, 3, mode)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        drop = self.stride[0] - 1
        y = depth_to_space(self.conv(x, causal), self.stride)[:, :, drop:]
        if self.residual:
            # The input's channels tiled `repeats` times, added without building the tiled copy.
            r = depth_to_space(x, self.stride)[:, :, drop:]
            y.unflatten(1, (self.repeats, -1)).add_(r.unsqueeze(1))
        return y


@dataclass(frozen=True)
class UpSpec:
    """A depth-to-space up-sampler: its stride (t, h, w), whether it adds its input back
    (residual) and the factor its conv divides the channels by."""

    stride: tuple[int, int, int]
    residual: bool = False
    factor: int = 1


@dataclass(frozen=True)
class BlockSpec:
    """One block of the stack, from the input side: `cin` channels in, an optional lone
    residual block to `conv_in` channels, an optional up-sampler (its factor divides the
    channels), then `layers` residual blocks of `width` channels."""

    cin: int
    width: int
    layers: int
    conv_in: int | None = None
    up: UpSpec | None = None
    noise: bool = False  # the residual blocks inject spatial noise
    conv_in_noise: bool = False
    timed: bool = False  # the residual blocks are timestep conditioned (a time embedder)

    def check(self) -> None:
        c = self.conv_in if self.conv_in is not None else self.cin
        if self.up is not None:
            if c % self.up.factor:
                raise ValueError(f"{c} channels do not divide by upsample factor {self.up.factor}")
            c //= self.up.factor
        if c != self.width:
            raise ValueError(f"a block's layers get {c} channels, not {self.width}")


Make = Callable[[int, int, bool, bool], "ResnetBlock"]  # (cin, cout, noise, conditioned)


class MidBlock(nn.Module):
    def __init__(self, spec: BlockSpec, make: Make) -> None:
        super().__init__()
        self.time_embedder = TimeEmbedder(spec.width * 4) if spec.timed else None
        self.resnets = nn.ModuleList(
            [make(spec.width, spec.width, spec.noise, spec.timed) for _ in range(spec.layers)]
        )

    def forward(self, x: Tensor, run: Run) -> Tensor:
        emb = None
        if self.time_embedder is not None:
            assert run.temb is not None
            emb = self.time_embedder(run.temb, x.dtype)
        for block in self.resnets:
            x = block(x, run, emb)
        return x


class UpBlock(nn.Module):
    def __init__(self, spec: BlockSpec, make: Make, mode: PaddingMode) -> None:
        super().__init__()
        # The resnets' width: diffusers sizes it from its in_channels, equal to it whenever
        # the block is conditioned.
        self.time_embedder = TimeEmbedder(spec.width * 4) if spec.timed else None
        self.conv_in = (
            make(spec.cin, spec.conv_in, spec.conv_in_noise, False)
            if spec.conv_in is not None
            else None
        )
        ups = []
        if spec.up is not None:
            c = spec.conv_in if spec.conv_in is not None else spec.cin
            ups.append(Upsampler(c, spec.up.stride, spec.up.residual, spec.up.factor, mode))
        self.upsamplers = nn.ModuleList(ups)
        self.resnets = nn.ModuleList(
            [make(spec.width, spec.width, spec.noise, spec.timed) for _ in range(spec.layers)]
        )

    def forward(self, x: Tensor, run: Run) -> Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x, run, None)
        emb = None
        if self.time_embedder is not None:
            assert run.temb is not None
            emb = self.time_embedder(run.temb, x.dtype)
        for up in self.upsamplers:
            x = up(x, run.causal)
        for block in self.resnets:
            x = block(x, run, emb)
        return x
