"""The LTX decoder stack as data (`Layout`) and as the engine's StreamDecoder (`LtxDecoder`).

diffusers configs (LTX-Video 0.9.x, LTX-2) and the original LTX-Video configs in single files'
metadata are both read into one `Layout`: conv_in, a mid block, up blocks (each an optional lone
residual block, an optional up-sampler and residual blocks), the final norm and conv_out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.ltx.layers import (
    BlockSpec,
    CausalConv3d,
    MidBlock,
    PaddingMode,
    ResnetBlock,
    Run,
    TimeEmbedder,
    UpBlock,
    _scale_shift,
    rms_norm,
)

# diffusers' framewise decoding (autoencoder_kl_ltx.py `_temporal_tiled_decode`): tiles of 16
# sample frames every 8, i.e. 16 // 8 = 2 latents (+1 overlap) every 8 // 8 = 1 latent.
TILE_LATENTS = 2
TILE_LATENT_STRIDE = 1
TILE_SAMPLE_STRIDE = 8
BLEND_FRAMES = 16 - TILE_SAMPLE_STRIDE
TILE_SEED_STRIDE = 0x9E3779B1  # 2^32 / golden ratio: tile seeds stay far from any seed + b

BATCH_NORM_EPS = 1e-5  # torch's BatchNorm3d default, which the original latent norm keeps


@dataclass(frozen=True)
class Layout:
    """The decoder as data: the mid block and the up blocks from the input side."""

    latent_channels: int
    out_channels: int
    patch_size: int
    mid: BlockSpec
    blocks: tuple[BlockSpec, ...]
    conditioned: bool  # timestep conditioning: the multiplier and the final scale/shift
    causal: bool
    padding_mode: PaddingMode
    plain_shortcut: bool
    eps: float = 1e-6
    # Original LTX-Video configs only: `use_quant_conv` (a 1x1x1 conv on the latents first) and
    # `normalize_latent_channels` (BatchNorm running statistics undone before that).
    post_quant_conv: bool = False
    latent_norm: bool = False

    @property
    def inject_noise(self) -> bool:
        return any(b.noise or b.conv_in_noise for b in (self.mid, *self.blocks))

    @property
    def width(self) -> int:
        """The channels reaching the final norm and conv_out."""
        return self.blocks[-1].width if self.blocks else self.mid.width

    def check(self) -> None:
        width = self.mid.width
        for spec in self.blocks:
            if spec.cin != width:
                raise ValueError(f"a block expects {spec.cin} channels, gets {width}")
            spec.check()
            width = spec.width


class LatentUnnorm(nn.Module):
    """Undo a BatchNorm3d's normalisation with its running statistics (original configs with
    `normalize_latent_channels`): `z * sqrt(var + eps) + mean`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, z: Tensor) -> Tensor:
        mean, var = self.running_mean, self.running_var
        assert isinstance(mean, Tensor) and isinstance(var, Tensor)
        scale = torch.sqrt(var.float() + BATCH_NORM_EPS).to(z.dtype).view(1, -1, 1, 1, 1)
        return z * scale + mean.to(z.dtype).view(1, -1, 1, 1, 1)


class Decoder3d(nn.Module):
    def __init__(self, lay: Layout) -> None:
        super().__init__()
        lay.check()
        mode = lay.padding_mode

        def make(cin: int, cout: int, noise: bool, conditioned: bool) -> ResnetBlock:
            return ResnetBlock(cin, cout, lay.eps, mode, noise, conditioned, lay.plain_shortcut)

        self.conv_in = CausalConv3d(lay.latent_channels, lay.mid.width, 3, mode)
        self.mid_block = MidBlock(lay.mid, make)
        self.up_blocks = nn.ModuleList([UpBlock(spec, make, mode) for spec in lay.blocks])
        last = lay.width
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

    def __init__(
        self, lay: Layout, scaling_factor: float = 1.0, model_space_noise: bool = False
    ) -> None:
        super().__init__()
        self.layout = lay
        self.scaling_factor = scaling_factor
        self.decoder = Decoder3d(lay)
        self.register_buffer("latents_mean", torch.zeros(lay.latent_channels))
        self.register_buffer("latents_std", torch.ones(lay.latent_channels))
        c = lay.latent_channels
        self.latent_norm_out = LatentUnnorm(c) if lay.latent_norm else None
        self.post_quant_conv = nn.Conv3d(c, c, 1) if lay.post_quant_conv else None
        # Where decode noise is mixed in: model space for LTX-2 and original LTX-Video files
        # (their pipelines mix before de-normalising), VAE space for diffusers' LTX-Video.
        self.model_space_noise = model_space_noise

    @property
    def upscale(self) -> int:
        ups = [b.up for b in self.layout.blocks if b.up is not None]
        spatial = sum(1 for u in ups if u.stride[1] == 2)
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
        if st.generator is None and self.layout.inject_noise:
            st.generator = torch.Generator(device=z.device).manual_seed(st.seed)
        temb = None
        if self.layout.conditioned:
            temb = torch.full((z.shape[0],), st.timestep, device=z.device, dtype=z.dtype)
        if self.latent_norm_out is not None:
            z = self.latent_norm_out(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
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
