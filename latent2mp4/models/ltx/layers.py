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
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk

PaddingMode = Literal["zeros", "reflect"]
RMS_EPS = 1e-8
TIME_PROJ_DIM = 256  # sinusoidal width before the time embedder's MLP
MAX_PERIOD = 10000
# diffusers' framewise decoding (autoencoder_kl_ltx.py `_temporal_tiled_decode`): tiles of 16
# sample frames every 8, i.e. 16 // 8 = 2 latents (+1 overlap) every 8 // 8 = 1 latent.
TILE_LATENTS = 2
TILE_LATENT_STRIDE = 1
TILE_SAMPLE_STRIDE = 8
BLEND_FRAMES = 16 - TILE_SAMPLE_STRIDE
TILE_SEED_STRIDE = 0x9E3779B1  # 2^32 / golden ratio: tile seeds stay far from any seed + b


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


class MidBlock(nn.Module):
    def __init__(self, channels: int, n: int, make: Any, conditioned: bool) -> None:
        super().__init__()
        self.time_embedder = TimeEmbedder(channels * 4) if conditioned else None
        self.resnets = nn.ModuleList([make(channels, channels) for _ in range(n)])

    def forward(self, x: Tensor, run: Run) -> Tensor:
        emb = None
        if self.time_embedder is not None:
            assert run.temb is not None
            emb = self.time_embedder(run.temb, x.dtype)
        for block in self.resnets:
            x = block(x, run, emb)
        return x


class UpBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, n: int, make: Any, conditioned: bool, up: Upsampler | None
    ) -> None:
        super().__init__()
        self.time_embedder = TimeEmbedder(cin * 4) if conditioned else None
        self.conv_in = make(cin, cout) if cin != cout else None
        self.upsamplers = nn.ModuleList([up] if up is not None else [])
        self.resnets = nn.ModuleList([make(cout, cout) for _ in range(n)])

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


@dataclass(frozen=True)
class Layout:
    """The decoder as data: widths and layers from the input side, per up block."""

    latent_channels: int
    out_channels: int
    patch_size: int
    mid_channels: int
    mid_layers: int
    blocks: tuple[tuple[int, int, int], ...]  # (in, out, layers) per up block
    upsamplers: tuple[
        tuple[tuple[int, int, int], bool, int] | None, ...
    ]  # (stride, residual, factor)
    inject_noise: tuple[bool, ...]  # mid block first, then each up block
    conditioned: bool
    causal: bool
    padding_mode: PaddingMode
    plain_shortcut: bool
    eps: float = 1e-6


class Decoder3d(nn.Module):
    def __init__(self, lay: Layout) -> None:
        super().__init__()
        mode = lay.padding_mode

        def maker(noise: bool) -> Any:
            def make(cin: int, cout: int) -> ResnetBlock:
                return ResnetBlock(
                    cin, cout, lay.eps, mode, noise, lay.conditioned, lay.plain_shortcut
                )

            return make

        width = lay.mid_channels
        self.conv_in = CausalConv3d(lay.latent_channels, width, 3, mode)
        self.mid_block = MidBlock(
            width, lay.mid_layers, maker(lay.inject_noise[0]), lay.conditioned
        )
        ups = []
        for i, ((cin, cout, n), spec) in enumerate(zip(lay.blocks, lay.upsamplers, strict=True)):
            up = Upsampler(cout * spec[2], *spec, mode) if spec else None
            ups.append(UpBlock(cin, cout, n, maker(lay.inject_noise[i + 1]), lay.conditioned, up))
        self.up_blocks = nn.ModuleList(ups)
        last = lay.blocks[-1][1]
        self.conv_out = CausalConv3d(last, lay.out_channels * lay.patch_size**2, 3, mode)
        self.patch_size = lay.patch_size
        self.time_embedder = TimeEmbedder(last * 2) if lay.conditioned else None
        self.scale_shift_table = nn.Parameter(torch.zeros(2, last)) if lay.conditioned else None
        self.timestep_scale_multiplier = (
            nn.Parameter(torch.tensor(1000.0)) if lay.conditioned else None
        )

    def forward(self, z: Tensor, run: Run) -> Tensor:
        x = self.conv_in(z, run.causal)
        if self.timestep_scale_multiplier is not None:
            assert run.temb is not None
            run = Run(run.causal, run.temb * self.timestep_scale_multiplier, run.generator)
        x = self.mid_block(x, run)
        for block in self.up_blocks:
            x = block(x, run)
        buf, y = self.conv_out.room(x, run.causal)
        rms_norm(x, out=y)
        if self.time_embedder is not None and self.scale_shift_table is not None:
            assert run.temb is not None
            shift, scale = _scale_shift(
                self.scale_shift_table, self.time_embedder(run.temb, x.dtype), 2
            )
            y.mul_(1 + scale).add_(shift)
        F.silu(y, inplace=True)
        x = self.conv_out.padded(buf, run.causal)
        # Un-patchify: channels (C, p_w, p_h) → pixels; diffusers pairs the second patch axis
        # with height (autoencoder_kl_ltx.py, LTXVideoDecoder3d.forward).
        b, _, f, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, -1, p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
        return x.reshape(b, -1, f, h * p, w * p)


@dataclass
class LtxState:
    """Per-tile run settings: the decode timestep and the noise generator (made on first use,
    on the device of the latents)."""

    timestep: float = 0.0
    seed: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)


class LtxDecoder(nn.Module):
    """LTX-Video / LTX-2 VAE decoder (`decoder` + latent statistics) as an engine StreamDecoder.

    Latents `(B, 128, T, h, w)` in VAE space decode to `(B, 3, 8(T-1)+1, up*h, up*w)` in about
    [-1, 1]. The clip is one chunk when memory allows (exactly `vae.decode`), else diffusers'
    framewise tiles of 3 latents every latent, cross-faded over 8 frames.
    """

    def __init__(self, lay: Layout, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.layout = lay
        self.scaling_factor = scaling_factor
        self.decoder = Decoder3d(lay)
        self.register_buffer("latents_mean", torch.zeros(lay.latent_channels))
        self.register_buffer("latents_std", torch.ones(lay.latent_channels))

    @property
    def upscale(self) -> int:
        spatial = sum(1 for u in self.layout.upsamplers if u is not None and u[0][1] == 2)
        return int(self.layout.patch_size * 2**spatial)

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """The whole clip when `max_frames` (what memory allows) holds it, else diffusers'
        framewise tiles; a tile of one latent decodes to a frame the reference drops."""
        if num_frames <= max(max_frames, TILE_LATENTS):
            return [Chunk(0, num_frames)]
        chunks = [Chunk(0, TILE_LATENTS + 1, emit=TILE_SAMPLE_STRIDE + 1)]
        for start in range(TILE_LATENT_STRIDE, num_frames - 1, TILE_LATENT_STRIDE):
            stop = min(start + TILE_LATENTS + 1, num_frames)
            chunks.append(Chunk(start, stop, trim=1, blend=BLEND_FRAMES, emit=TILE_SAMPLE_STRIDE))
        return chunks

    def new_state(self) -> LtxState:
        return LtxState()

    def stats(self) -> tuple[Tensor, Tensor]:
        """The latent mean and std, fp32 on the host, shaped `(1, C, 1, 1, 1)`."""
        mean, std = self.latents_mean, self.latents_std
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        return mean.float().cpu().view(1, -1, 1, 1, 1), std.float().cpu().view(1, -1, 1, 1, 1)

    def decode_chunk(self, z: Tensor, state: object = None) -> Tensor:
        """Latents `(B, 128, t, h, w)` → `(B, 3, 8(t-1)+1, up*h, up*w)`."""
        st = state if isinstance(state, LtxState) else LtxState()
        if st.generator is None and any(self.layout.inject_noise):
            st.generator = torch.Generator(device=z.device).manual_seed(st.seed)
        temb = None
        if self.layout.conditioned:
            temb = torch.full((z.shape[0],), st.timestep, device=z.device, dtype=z.dtype)
        return self.decoder(z, Run(self.layout.causal, temb, st.generator))

    def finalize(self, x: Tensor) -> Tensor:
        return x


class Conditioned:
    """A decoder bound to one decode timestep and noise seed (a StreamDecoder)."""

    def __init__(self, decoder: LtxDecoder, timestep: float, seed: int) -> None:
        self.decoder, self.timestep, self.seed = decoder, timestep, seed
        self._tiles = 0

    @property
    def upscale(self) -> int:
        return self.decoder.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        return self.decoder.time_chunks(num_frames, max_frames)

    def new_state(self) -> LtxState:
        """The engine asks once per spatial tile: each tile gets a seed of its own, since one
        seed for all would paste the same injected noise into every tile (the first tile keeps
        `seed`, so an untiled decode is unchanged). The stride is odd and large because CPU
        generators keep only a seed's low 32 bits, and batch element b already uses seed + b."""
        tile, self._tiles = self._tiles, self._tiles + 1
        return LtxState(self.timestep, self.seed + tile * TILE_SEED_STRIDE)

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        return self.decoder.decode_chunk(z, state)

    def finalize(self, x: Tensor) -> Tensor:
        return x
