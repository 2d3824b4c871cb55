"""CogVideoX VAE decoder (CogVideoX-2b, -5b and 1.5 share it), weight-compatible with diffusers.

Behaviour matches diffusers 0.42.1 `AutoencoderKLCogVideoX.decode`: latents are decoded in chunks
of 2 frames (3 for the first chunk when T is odd), causal convs carry the last 2 padded input frames
from chunk to chunk, and every GroupNorm takes its statistics from the current chunk only, so the
chunking is part of the model's output and not just a memory device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.layers import check_latents

# CogVideoXSpatialNorm3D (diffusers autoencoder_kl_cogvideox.py) builds its GroupNorm with a fixed
# eps of 1e-6; the config's `norm_eps` only reaches the plain GroupNorms of the encoder.
_SPATIAL_NORM_EPS = 1e-6
# diffusers decodes this many latent frames per call; the VAE was trained on that chunking.
_CHUNK = 2


@dataclass(frozen=True)
class CogVideoXConfig:
    """Decoder architecture; defaults are diffusers' (and those of every released checkpoint)."""

    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    out_channels: int = 3
    layers_per_block: int = 3
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> CogVideoXConfig:
        """Read a diffusers `config.json` dict; absent keys take diffusers' defaults."""
        if d.get("use_post_quant_conv", False):
            # diffusers 0.42.1 builds that conv with `out_channels` (3) inputs, so it cannot run on
            # latents; no released CogVideoX VAE sets the flag.
            raise ValueError("CogVideoX config sets use_post_quant_conv=true, which is unsupported")
        act = d.get("act_fn", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"CogVideoX config has act_fn={act!r}; only 'silu' is supported")
        blocks = tuple(d.get("up_block_types", ("CogVideoXUpBlock3D",) * 4))
        if any(b != "CogVideoXUpBlock3D" for b in blocks):
            raise ValueError(
                f"CogVideoX config has up_block_types={blocks}; expected CogVideoXUpBlock3D"
            )
        channels = tuple(int(c) for c in d.get("block_out_channels", cls.block_out_channels))
        if len(blocks) != len(channels):
            raise ValueError(
                f"CogVideoX config has {len(blocks)} up_block_types "
                f"but {len(channels)} block_out_channels"
            )
        ratio = d.get("temporal_compression_ratio", cls.temporal_compression_ratio)
        if ratio <= 0 or math.log2(ratio) % 1:
            raise ValueError(f"temporal_compression_ratio {ratio} must be a power of two")
        return cls(
            block_out_channels=channels,
            latent_channels=int(d.get("latent_channels", cls.latent_channels)),
            out_channels=int(d.get("out_channels", cls.out_channels)),
            layers_per_block=int(d.get("layers_per_block", cls.layers_per_block)),
            norm_num_groups=int(d.get("norm_num_groups", cls.norm_num_groups)),
            temporal_compression_ratio=int(ratio),
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> CogVideoXConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names).

        GroupNorm group counts and the temporal ratio leave no trace in shapes; they take the
        value of every released checkpoint (32 groups, ratio 4).
        """
        up = [int(m[1]) for k in shapes if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
        if not up:
            raise KeyError("decoder.up_blocks.0.resnets.0.conv1.conv.weight")
        n = max(up) + 1
        top = [shapes[f"decoder.up_blocks.{i}.resnets.0.conv1.conv.weight"][0] for i in range(n)]
        resnets = {k.split(".")[4] for k in shapes if k.startswith("decoder.up_blocks.0.resnets.")}
        return cls(
            block_out_channels=tuple(reversed(top)),
            latent_channels=shapes["decoder.conv_in.conv.weight"][1],
            out_channels=shapes["decoder.conv_out.conv.weight"][0],
            layers_per_block=len(resnets) - 1,
        )


@dataclass
class CogVideoXState:
    """Causal caches of one spatial tile: per time-padded conv, its last `k_t - 1` input frames."""

    frames: dict[nn.Module, Tensor] = field(default_factory=dict)


class _Latent:
    """The chunk's latents resized (nearest) to each feature size once per chunk."""

    def __init__(self, z: Tensor) -> None:
        self.z = z
        self._sized: dict[tuple[int, ...], Tensor] = {}

    def at(self, size: tuple[int, ...]) -> Tensor:
        if size not in self._sized:
            t, hw = size[0], size[1:]
            if t > 1 and t % 2:
                # CogVideoXSpatialNorm3D: for an odd frame count, latent frame 0 maps to feature
                # frame 0 alone and the remaining latent frames stretch over the rest.
                head = F.interpolate(self.z[:, :, :1], size=(1, *hw))
                tail = F.interpolate(self.z[:, :, 1:], size=(t - 1, *hw))
                sized = torch.cat([head, tail], dim=2)
            else:
                sized = F.interpolate(self.z, size=size)
            self._sized[size] = sized.contiguous(memory_format=torch.channels_last_3d)
        return self._sized[size]


class _CausalConv(nn.Module):
    """Conv3d, zero-padded in space; in time prefixed by the cache or copies of frame 0."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        # Spatial zero padding inside the conv; time padding is done by hand (CogVideoXCausalConv3d
        # with pad_mode "first"). diffusers' SafeConv3d splits > 2 GiB inputs along time, which is
        # the same sum; we do not split.
        self.conv = nn.Conv3d(cin, cout, k, padding=(0, k // 2, k // 2))

    def padded(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """A channels-last buffer with room for `k_t - 1` history frames before the input.

        Returns the buffer and the view the input is written into; the layer before writes its
        output straight there, so history and input are never concatenated into a new copy.
        """
        b, c, t, h, w = like.shape
        pad = self.conv.kernel_size[0] - 1
        buf = torch.empty(
            (b, c, t + pad, h, w),
            dtype=like.dtype,
            device=like.device,
            memory_format=torch.channels_last_3d,
        )
        return buf, buf[:, :, pad:]

    def run(self, buf: Tensor, state: CogVideoXState) -> Tensor:
        """Fill a `padded` buffer's history (the cache, or copies of frame 0) and convolve."""
        pad = self.conv.kernel_size[0] - 1
        past = state.frames.get(self)
        if past is None:
            past = buf[:, :, pad : pad + 1].expand(-1, -1, pad, -1, -1)
        buf[:, :, :pad].copy_(past)
        state.frames[self] = buf[:, :, -pad:].clone()
        return self.conv(buf)

    def forward(self, x: Tensor, state: CogVideoXState | None = None) -> Tensor:
        if self.conv.kernel_size[0] == 1:
            # A 1x1x1 conv is a per-pixel linear map: as a GEMM over channels-last pixels it
            # stays channels-last (the conv kernel for this shape returns the other layout).
            w = self.conv.weight.flatten(1)
            y = F.linear(x.permute(0, 2, 3, 4, 1), w, self.conv.bias)
            return y.permute(0, 4, 1, 2, 3)
        assert state is not None
        buf, room = self.padded(x)
        room.copy_(x)
        return self.run(buf, state)


class _SpatialNorm(nn.Module):
    """GroupNorm of the features, scaled and shifted by 1x1x1 convs of the resized latents."""

    def __init__(self, channels: int, latent_channels: int, groups: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=_SPATIAL_NORM_EPS)
        self.conv_y = _CausalConv(latent_channels, channels, 1)
        self.conv_b = _CausalConv(latent_channels, channels, 1)

    def forward(self, x: Tensor, zq: _Latent, out: Tensor | None = None) -> Tensor:
        """`out` receives the result (a causal conv's `padded` room)."""
        z = zq.at(tuple(x.shape[2:]))
        return torch.addcmul(self.conv_b(z), self.norm_layer(x), self.conv_y(z), out=out)


def _norm_silu_conv(
    norm: _SpatialNorm, conv: _CausalConv, x: Tensor, zq: _Latent, state: CogVideoXState
) -> Tensor:
    """conv(silu(norm(x))) with the activation written straight into the conv's buffer."""
    buf, room = conv.padded(x)
    F.silu(norm(x, zq, out=room), inplace=True)
    return conv.run(buf, state)


class _Resnet(nn.Module):
    def __init__(self, cin: int, cout: int, latent_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _SpatialNorm(cin, latent_channels, groups)
        self.conv1 = _CausalConv(cin, cout, 3)
        self.norm2 = _SpatialNorm(cout, latent_channels, groups)
        self.conv2 = _CausalConv(cout, cout, 3)
        # A plain 1x1x1 Conv3d (key `conv_shortcut.weight`, no `.conv`), so no time padding.
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, zq: _Latent, state: CogVideoXState) -> Tensor:
        h = _norm_silu_conv(self.norm1, self.conv1, x, zq, state)
        h = _norm_silu_conv(self.norm2, self.conv2, h, zq, state)
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class _Upsample(nn.Module):
    """Nearest x2 in space (and in time if `compress_time`), then a per-frame 3x3 Conv2d."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[2]
        if self.compress_time and t > 1:
            # CogVideoXUpsample3D (diffusers models/upsampling.py): each frame is repeated twice,
            # except frame 0 of an odd-length chunk (T -> 2T, or 2T - 1 when T is odd).
            idx = torch.arange(t, device=x.device).repeat_interleave(2)[t % 2 :]
            x = x.index_select(2, idx)
        b, c, t, h, w = x.shape
        y = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2.0)
        y = self.conv(y)
        return y.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)


class _Level(nn.Module):
    """`mid_block` or one `up_blocks.i`: resnets, then an optional up-sampler."""

    def __init__(
        self, channels: list[int], cfg: CogVideoXConfig, upsample: bool, compress_time: bool
    ) -> None:
        super().__init__()
        z, g = cfg.latent_channels, cfg.norm_num_groups
        self.resnets = nn.ModuleList(
            _Resnet(a, b, z, g) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.upsamplers = (
            nn.ModuleList([_Upsample(channels[-1], compress_time)]) if upsample else None
        )

    def forward(self, x: Tensor, zq: _Latent, state: CogVideoXState) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, zq, state)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _Net(nn.Module):
    def __init__(self, cfg: CogVideoXConfig) -> None:
        super().__init__()
        ch = list(reversed(cfg.block_out_channels))
        self.conv_in = _CausalConv(cfg.latent_channels, ch[0], 3)
        self.mid_block = _Level([ch[0]] * 3, cfg, upsample=False, compress_time=False)
        time_levels = int(math.log2(cfg.temporal_compression_ratio))
        n = len(ch)
        self.up_blocks = nn.ModuleList(
            _Level(
                [ch[max(i - 1, 0)]] + [ch[i]] * (cfg.layers_per_block + 1),
                cfg,
                upsample=i < n - 1,
                compress_time=i < time_levels,
            )
            for i in range(n)
        )
        self.norm_out = _SpatialNorm(ch[-1], cfg.latent_channels, cfg.norm_num_groups)
        self.conv_out = _CausalConv(ch[-1], cfg.out_channels, 3)

    def forward(self, z: Tensor, state: CogVideoXState) -> Tensor:
        zq = _Latent(z)
        x = self.mid_block(self.conv_in(z, state), zq, state)
        for level in self.up_blocks:
            x = level(x, zq, state)
        return _norm_silu_conv(self.norm_out, self.conv_out, x, zq, state)


class CogVideoXDecoder(nn.Module):
    """CogVideoX VAE decoder; parameter names equal diffusers' `decoder.*` keys.

    Decodes VAE-space latents `(B, C, t, h, w)` chunk by chunk into `(B, 3, f, 8h, 8w)` in
    roughly [-1, 1] (no clamp, as in diffusers); dtype follows the weights.
    """

    def __init__(self, cfg: CogVideoXConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = _Net(cfg)

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.cfg.block_out_channels) - 1)

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """diffusers' frame batches: pairs of latent frames, the first one 3 long if T is odd.

        Fixed whatever `max_frames`: GroupNorm statistics are per batch, so the plan is exact.
        """
        if num_frames < 1:
            raise ValueError(f"need at least one latent frame, got {num_frames}")
        first = num_frames if num_frames < _CHUNK else _CHUNK + num_frames % _CHUNK
        bounds = [0, *range(first, num_frames + 1, _CHUNK)]
        return [Chunk(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def new_state(self) -> CogVideoXState:
        return CogVideoXState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Decode one chunk `(B, C, t, h, w)` to `(B, 3, f, 8h, 8w)`, advancing `state`.

        t = 1, 2 or 3 latent frames give f = 1, 8 or 9 frames (temporal_compression_ratio 4).
        """
        if not isinstance(state, CogVideoXState):
            raise TypeError(f"expected a CogVideoXState, got {type(state).__name__}")
        check_latents(z, self.cfg.latent_channels)
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        return self.decoder(z.contiguous(memory_format=torch.channels_last_3d), state)

    def finalize(self, x: Tensor) -> Tensor:
        """Identity: diffusers' CogVideoX decode does not clamp."""
        return x


# Original SAT checkpoint (`3d-vae.pt`) decoder names -> diffusers names, applied in order.
# diffusers' scripts/convert_cogvideox_to_diffusers.py applies these as raw substring renames;
# here each is anchored on dots so it cannot fire on a name that is already diffusers-style
# ("mid_block." contains "block.", "upsamplers" contains "upsample").
_SAT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^decoder\.mid\.block_1\.", "decoder.mid_block.resnets.0."),
    (r"^decoder\.mid\.block_2\.", "decoder.mid_block.resnets.1."),
    (r"\.block\.(\d+)\.", r".resnets.\1."),
    (r"\.upsample\.", ".upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
)
# SAT numbers up levels from the output side: `decoder.up.i` is `decoder.up_blocks.(n-1-i)`.
_SAT_UP = re.compile(r"^decoder\.up\.(\d+)\.")


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map decoder keys in diffusers or SAT naming to ours; other keys are left out."""
    keys = [k for k in keys if k.startswith("decoder.")]
    up = [int(m[1]) for k in keys if (m := _SAT_UP.match(k))]
    n = max(up, default=-1) + 1
    out = {}
    for key in keys:
        new = _SAT_UP.sub(lambda m: f"decoder.up_blocks.{n - 1 - int(m[1])}.", key)
        for pattern, repl in _SAT_RENAMES:
            new = re.sub(pattern, repl, new)
        out[key] = new
    return out


def detect(keys: Collection[str]) -> bool:
    """True for a CogVideoX VAE in diffusers or SAT naming: spatial norms fed by the latents."""
    return "decoder.conv_in.conv.weight" in keys and any(
        k.startswith("decoder.") and ".conv_y.conv." in k for k in keys
    )


FAMILY = Family(
    name="cogvideox",
    diffusers_class="AutoencoderKLCogVideoX",
    config_from_diffusers=CogVideoXConfig.from_diffusers,
    config_from_shapes=CogVideoXConfig.from_shapes,
    build=CogVideoXDecoder,
    rename_keys=rename_keys,
    detect=detect,
)
