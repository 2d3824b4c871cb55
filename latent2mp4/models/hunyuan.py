"""HunyuanVideo VAE decoder, weight-compatible with diffusers' `AutoencoderKLHunyuanVideo`.

Causal 3-D convs with replicate padding, GroupNorm over channels x time x space, one block-causal
attention over every latent frame of a chunk in the mid block, and nearest up-sampling that keeps
frame 0 image-like. Nothing is carried between chunks: the time plan is diffusers' temporal tiling
(tiles of 5 latents every 3, cross-faded over 4 frames), so a chunk is a complete decode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes, has_marker
from latent2mp4.models.layers import squeeze_conv_weights

# diffusers' temporal tiling defaults (autoencoder_kl_hunyuan_video.py, `use_framewise_decoding`
# is on by default): tiles of 16 sample frames placed every 12.
TEMPORAL_RATIO = 4  # the only ratio diffusers' decoder supports
TILE_SAMPLE_FRAMES = 16
TILE_SAMPLE_STRIDE = 12
TILE_LATENTS = TILE_SAMPLE_FRAMES // TEMPORAL_RATIO  # 4: longer clips are tiled in time
TILE_LATENT_STRIDE = TILE_SAMPLE_STRIDE // TEMPORAL_RATIO  # 3
BLEND_FRAMES = TILE_SAMPLE_FRAMES - TILE_SAMPLE_STRIDE  # 4 sample frames cross-faded
NORM_EPS = 1e-6
UP_BLOCK_TYPE = "HunyuanVideoUpBlock3D"
# The same block under the Tencent release's class name (its AutoencoderKLCausal3D config).
UP_BLOCK_TYPES = (UP_BLOCK_TYPE, "UpDecoderBlockCausal3D")
ORIGINAL_CLASS = "AutoencoderKLCausal3D"


@dataclass(frozen=True)
class HunyuanConfig:
    """Decoder architecture; field names and defaults follow diffusers' `config.json`."""

    latent_channels: int = 16
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    spatial_compression_ratio: int = 8
    mid_block_add_attention: bool = True

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> HunyuanConfig:
        """Read a diffusers `config.json` dict; `latent_channels` and `block_out_channels` are
        required (KeyError), the rest default as in diffusers; unsupported values raise
        ValueError."""
        blocks = tuple(int(c) for c in d["block_out_channels"])
        up_types = tuple(d.get("up_block_types", (UP_BLOCK_TYPE,) * len(blocks)))
        if len(up_types) != len(blocks) or any(t not in UP_BLOCK_TYPES for t in up_types):
            raise ValueError(
                f"up_block_types {up_types} unsupported: expected {len(blocks)} x {UP_BLOCK_TYPE}"
            )
        # Tencent's own config (AutoencoderKLCausal3D) names the ratio time_compression_ratio.
        ratio = d.get("temporal_compression_ratio", d.get("time_compression_ratio", TEMPORAL_RATIO))
        if ratio != TEMPORAL_RATIO:
            raise ValueError(
                f"temporal_compression_ratio {ratio} unsupported: "
                f"HunyuanVideo decodes with {TEMPORAL_RATIO}"
            )
        if d.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"act_fn {d['act_fn']!r} unsupported: expected 'silu'")
        return cls(
            latent_channels=int(d["latent_channels"]),
            out_channels=int(d.get("out_channels", 3)),
            block_out_channels=blocks,
            layers_per_block=int(d.get("layers_per_block", 2)),
            norm_num_groups=int(d.get("norm_num_groups", 32)),
            spatial_compression_ratio=int(d.get("spatial_compression_ratio", 8)),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> HunyuanConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names).

        Shapes cannot tell the GroupNorm group count nor the spatial ratio (ratio 4 and 8 place
        up-samplers in the same blocks), so those keep the released model's values, 32 and 8.
        """
        up = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.conv\.weight")
        found = [(int(m[1]), int(m[2])) for k in shapes if (m := up.fullmatch(k))]
        if not found:
            raise KeyError("decoder.up_blocks.0.resnets.0.conv1.conv.weight")
        n_blocks = 1 + max(b for b, _ in found)
        n_resnets = 1 + max(r for b, r in found if b == 0)
        widths = [
            shapes[f"decoder.up_blocks.{i}.resnets.0.conv1.conv.weight"][0] for i in range(n_blocks)
        ]
        return cls(
            latent_channels=shapes["decoder.conv_in.conv.weight"][1],
            out_channels=shapes["decoder.conv_out.conv.weight"][0],
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=n_resnets - 1,
            mid_block_add_attention="decoder.mid_block.attentions.0.to_q.weight" in shapes,
        )

    @property
    def up_factors(self) -> list[tuple[int, int] | None]:
        """(time, space) up-sampling factor after each up block, None where there is none.

        diffusers' placement rule (HunyuanVideoDecoder3D): block i doubles space while
        i < log2(spatial ratio), and doubles time in the log2(4) = 2 blocks before the last.
        """
        n = len(self.block_out_channels)
        n_space = self.spatial_compression_ratio.bit_length() - 1
        n_time = TEMPORAL_RATIO.bit_length() - 1
        factors: list[tuple[int, int] | None] = []
        for i in range(n):
            space = 2 if i < n_space else 1
            time = 2 if n - 1 - n_time <= i < n - 1 else 1
            factors.append((time, space) if time * space > 1 else None)
        return factors


class CausalConv3d(nn.Module):
    """Conv3d on a replicate-padded input: k//2 each side in H and W, k-1 leading frames."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel)
        self.pad = (kernel // 2, kernel // 2, kernel // 2, kernel // 2, kernel - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return self.conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=NORM_EPS)
        self.conv1 = CausalConv3d(cin, cout, 3)
        self.norm2 = nn.GroupNorm(groups, cout, eps=NORM_EPS)
        self.conv2 = CausalConv3d(cout, cout, 3)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        # The norms make fresh tensors, so SiLU and the residual add can work in place.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class BlockCausalAttention(nn.Module):
    """One head over all T*h*w positions; a query in frame f sees keys in frames <= f."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.register_load_state_dict_pre_hook(squeeze_conv_weights)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(b, 1, t * h * w, c)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        # diffusers materialises a dense (N, N) additive mask; attending frame by frame to the
        # visible prefix gives the same softmax without the N^2 mask and lets SDPA pick a
        # mask-free kernel.
        n = h * w
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[:, :, f * n : (f + 1) * n], k[:, :, : (f + 1) * n], v[:, :, : (f + 1) * n]
                )
                for f in range(t)
            ],
            dim=2,
        )
        out = self.to_out[0](out).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return out.add_(x)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [BlockCausalAttention(channels, groups)] if attention else []
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    """Nearest up-sampling by (time, space, space) except frame 0 (space only), then a conv."""

    def __init__(self, channels: int, factors: tuple[int, int]) -> None:
        super().__init__()
        self.time, self.space = factors
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=(self.time, self.space, self.space), mode="nearest")
        # Repeating every frame and dropping the first copy leaves frame 0 once, others twice.
        return self.conv(x[:, :, self.time - 1 :])


class UpBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, n: int, groups: int, factors: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n)]
        )
        self.upsamplers = nn.ModuleList([Upsample(cout, factors)] if factors else [])

    def forward(self, x: Tensor) -> Tensor:
        for block in [*self.resnets, *self.upsamplers]:
            x = block(x)
        return x


class Decoder3D(nn.Module):
    def __init__(self, cfg: HunyuanConfig) -> None:
        super().__init__()
        widths = list(reversed(cfg.block_out_channels))
        groups = cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.latent_channels, widths[0], 3)
        self.mid_block = MidBlock(widths[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block + 1, groups, f)
                for i, f in enumerate(cfg.up_factors)
            ]
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(widths[-1], cfg.out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


class HunyuanDecoder(nn.Module):
    """HunyuanVideo VAE decoder (`post_quant_conv` + `decoder`) as an engine StreamDecoder.

    Latents `(B, latent_channels, T, h, w)` in VAE space decode to
    `(B, out_channels, 4(T-1)+1, upscale*h, upscale*w)` in about [-1, 1] (not clamped, as in
    diffusers); dtype follows the weights and input.
    """

    def __init__(self, cfg: HunyuanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_quant_conv = nn.Conv3d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder3D(cfg)

    @property
    def upscale(self) -> int:
        return 2 ** sum(f is not None and f[1] == 2 for f in self.cfg.up_factors)

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """diffusers' `_decode`: one pass up to 4 latents, else `_temporal_tiled_decode`.

        Fixed whatever `max_frames`: the tiles are part of the reference's result.
        """
        if num_frames <= TILE_LATENTS:
            return [Chunk(0, num_frames)]
        chunks = [Chunk(0, min(TILE_LATENTS + 1, num_frames), emit=TILE_SAMPLE_STRIDE + 1)]
        for start in range(TILE_LATENT_STRIDE, num_frames, TILE_LATENT_STRIDE):
            stop = min(start + TILE_LATENTS + 1, num_frames)
            # A lone trailing latent decodes to one frame, which would be dropped: skip it.
            if stop - start > 1:
                chunks.append(
                    Chunk(start, stop, drop=1, blend=BLEND_FRAMES, emit=TILE_SAMPLE_STRIDE)
                )
        return chunks

    def new_state(self) -> None:
        """No causal state: every chunk is decoded on its own (temporal tiles overlap)."""
        return None

    def decode_chunk(self, z: Tensor, state: object = None) -> Tensor:
        """Latents `(B, C, t, h, w)` -> `(B, out_channels, 4(t-1)+1, up*h, up*w)`; no state."""
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        z = z.contiguous(memory_format=torch.channels_last_3d)
        return self.decoder(self.post_quant_conv(z))

    def finalize(self, x: Tensor) -> Tensor:
        return x


# ComfyUI-internal (LDM-style) names -> diffusers names, the inverse of ComfyUI's
# comfy/diffusers_convert.py::convert_vae_state_dict. ComfyUI numbers up blocks 3 - i whatever
# the block count, so 3 - N is its exact inverse. Tencent's names already equal diffusers'.
_Replacement = str | Callable[[re.Match[str]], str]
_COMFY_RULES: tuple[tuple[re.Pattern[str], _Replacement], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.resnets."),
        (
            r"^decoder\.up\.(\d+)\.upsample\.",
            lambda m: f"decoder.up_blocks.{3 - int(m[1])}.upsamplers.0.",
        ),
        (r"^decoder\.mid\.block_(\d+)\.", lambda m: f"decoder.mid_block.resnets.{int(m[1]) - 1}."),
        (r"^decoder\.mid\.attn_1\.norm\.", "decoder.mid_block.attentions.0.group_norm."),
        (r"^decoder\.mid\.attn_1\.([qkv])\.", r"decoder.mid_block.attentions.0.to_\1."),
        (r"^decoder\.mid\.attn_1\.proj_out\.", "decoder.mid_block.attentions.0.to_out.0."),
        (r"^decoder\.norm_out\.", "decoder.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    )
)
_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")

# Key sets that identify a HunyuanVideo VAE. The GroupNorm keys rule out HunyuanVideo 1.5
# (RMS norms, `.gamma`); the attention keys rule out CogVideoX and LTX, which share
# `decoder.conv_in.conv.weight`.
_MARKERS = (
    (
        "decoder.conv_in.conv.weight",
        "decoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid_block.attentions.0.group_norm.weight",
    ),
    (
        "decoder.conv_in.conv.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.mid.attn_1.norm.weight",
    ),
)


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers, Tencent or ComfyUI-internal naming) to decoder keys;
    encoder, quant_conv and other keys are left out."""
    out: dict[str, str] = {}
    for key in keys:
        new = key
        for pattern, repl in _COMFY_RULES:
            new = pattern.sub(repl, new)
        if new.startswith(_DECODER_PREFIXES):
            out[key] = new
    return out


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold a HunyuanVideo (v1) VAE in diffusers/Tencent or ComfyUI naming."""
    return has_marker(keys, _MARKERS)


FAMILY = Family(
    name="hunyuan",
    diffusers_class="AutoencoderKLHunyuanVideo",
    config_from_diffusers=HunyuanConfig.from_diffusers,
    config_from_shapes=HunyuanConfig.from_shapes,
    build=HunyuanDecoder,
    rename_keys=rename_keys,
    detect=detect,
    # The Tencent release's vae/config.json, next to its pytorch_model.pt.
    other_classes=(ORIGINAL_CLASS,),
)
