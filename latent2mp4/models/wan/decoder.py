"""Wan 2.1 and Wan 2.2 (TI2V-5B) VAE decoders, weight-compatible with diffusers `AutoencoderKLWan`.

Decoding streams one latent frame per chunk: chunk 0 yields 1 frame, every later chunk 4. The
causal history of each temporal conv lives in a `WanState`, one per spatial tile. Wan 2.2 decodes
into a 12-channel patch space at half the output resolution; tiles are stitched there and
`finalize` unpatchifies, as diffusers does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.layers import RMSNorm
from latent2mp4.models.wan.layers import (
    Attention,
    CausalConv3d,
    ResBlock,
    Upsample,
    WanState,
    dup_up,
    norm_silu_conv,
    unpatchify,
)

__all__ = ["FAMILY", "WanConfig", "WanDecoder", "WanState", "detect", "rename_keys"]


@dataclass(frozen=True)
class WanConfig:
    """Decoder architecture. Defaults are diffusers' (the Wan 2.1 VAE)."""

    z_dim: int = 16
    base_dim: int = 96  # decoder width unit: `decoder_base_dim` in config.json, else `base_dim`
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Per up block (all but the last): doubles frames. Reversed `temperal_downsample` (sic).
    temporal_upsample: tuple[bool, ...] = (True, True, False)
    is_residual: bool = False  # Wan 2.2: DupUp3D shortcuts, upsamplers keep the width
    out_channels: int = 3  # 3 * patch_size**2
    patch_size: int = 1

    def __post_init__(self) -> None:
        if len(self.temporal_upsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample has {len(self.temporal_upsample)} entries; "
                f"expected {len(self.dim_mult) - 1} for dim_mult {list(self.dim_mult)}"
            )
        if self.out_channels != 3 * self.patch_size**2:
            raise ValueError(
                f"out_channels {self.out_channels} does not match patch_size {self.patch_size} "
                f"(expected {3 * self.patch_size**2})"
            )

    @property
    def widths(self) -> list[int]:
        """Channels after conv_in, then after each up block."""
        return [self.base_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]

    @property
    def upscale(self) -> int:
        """Decode-space pixels per latent pixel (before unpatchify)."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def scale_factor_spatial(self) -> int:
        """Output pixels per latent pixel (diffusers `scale_factor_spatial`): 8 or 16."""
        return self.upscale * self.patch_size

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> WanConfig:
        """From a diffusers `config.json` dict; `z_dim` and `base_dim` are required."""
        cfg = cls(
            z_dim=int(d["z_dim"]),
            base_dim=int(d.get("decoder_base_dim") or d["base_dim"]),
            dim_mult=tuple(int(m) for m in d.get("dim_mult", cls.dim_mult)),
            num_res_blocks=int(d.get("num_res_blocks", cls.num_res_blocks)),
            temporal_upsample=tuple(
                bool(f) for f in d.get("temperal_downsample", [False, True, True])[::-1]
            ),
            is_residual=bool(d.get("is_residual", False)),
            out_channels=int(d.get("out_channels", 3)),
            patch_size=int(d.get("patch_size") or 1),
        )
        ratio = d.get("scale_factor_spatial")
        if ratio is not None and ratio != cfg.scale_factor_spatial:
            raise ValueError(
                f"scale_factor_spatial {ratio} contradicts the architecture "
                f"({cfg.scale_factor_spatial} = {cfg.upscale} x patch_size {cfg.patch_size})"
            )
        return cfg

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> WanConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names)."""
        n_blocks = _count(shapes, "decoder.up_blocks.{}.resnets.0.conv1.weight")
        if n_blocks < 1:
            raise ValueError("no decoder.up_blocks.*.resnets.* weights: not a Wan decoder")
        conv_in = shapes["decoder.conv_in.weight"]
        widths = [
            shapes[f"decoder.up_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n_blocks)
        ]
        # Only the products base_dim * m shape the network; the gcd gives the canonical split.
        base = math.gcd(conv_in[0], *widths)
        is_residual = "decoder.up_blocks.0.upsampler.resample.1.weight" in shapes
        up = "upsampler" if is_residual else "upsamplers.0"
        out_channels = shapes["decoder.conv_out.weight"][0]
        cfg = cls(
            z_dim=conv_in[1],
            base_dim=base,
            dim_mult=tuple(w // base for w in widths[::-1]),
            num_res_blocks=_count(shapes, "decoder.up_blocks.0.resnets.{}.conv1.weight") - 1,
            temporal_upsample=tuple(
                f"decoder.up_blocks.{i}.{up}.time_conv.weight" in shapes
                for i in range(n_blocks - 1)
            ),
            is_residual=is_residual,
            out_channels=out_channels,
            patch_size=math.isqrt(out_channels // 3),
        )
        if cfg.widths[0] != conv_in[0]:
            raise ValueError(f"decoder.conv_in width {conv_in[0]} != {cfg.widths[0]}")
        return cfg


def _count(shapes: Shapes, template: str) -> int:
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


class MidBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(dim, dim), ResBlock(dim, dim)])
        self.attentions = nn.ModuleList([Attention(dim)])

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        x = self.resnets[0](x, state)
        return self.resnets[1](self.attentions[0](x), state)


class UpBlock(nn.Module):
    """Wan 2.1 stage: residual blocks, then an optional upsampler that halves the width."""

    def __init__(self, dim: int, out_dim: int, n_res: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(dim if j == 0 else out_dim, out_dim) for j in range(n_res)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_dim, out_dim // 2, temporal)]) if up else None

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, state)
        return x if self.upsamplers is None else self.upsamplers[0](x, state)


class ResidualUpBlock(nn.Module):
    """Wan 2.2 stage: as `UpBlock` plus a parameter-free DupUp3D shortcut around the stage."""

    def __init__(self, dim: int, out_dim: int, n_res: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(dim if j == 0 else out_dim, out_dim) for j in range(n_res)]
        )
        self.upsampler = Upsample(out_dim, out_dim, temporal) if up else None
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        skip = x
        for resnet in self.resnets:
            x = resnet(x, state)
        if self.upsampler is None:
            return x
        x = self.upsampler(x, state)
        return x.add_(dup_up(skip, self.out_dim, self.factor_t, 2, first=not state.started))


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        widths = cfg.widths
        n = len(cfg.dim_mult)
        self.conv_in = CausalConv3d(cfg.z_dim, widths[0], (3, 3, 3))
        self.mid_block = MidBlock(widths[0])
        blocks: list[nn.Module] = []
        for i in range(n):
            up, temporal = i < n - 1, i < n - 1 and cfg.temporal_upsample[i]
            if cfg.is_residual:
                blocks.append(
                    ResidualUpBlock(widths[i], widths[i + 1], cfg.num_res_blocks + 1, up, temporal)
                )
            else:
                # Each Wan 2.1 upsampler halves the width, so later stages take half.
                dim = widths[i] if i == 0 else widths[i] // 2
                blocks.append(UpBlock(dim, widths[i + 1], cfg.num_res_blocks + 1, up, temporal))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(widths[-1])
        self.conv_out = CausalConv3d(widths[-1], cfg.out_channels, (3, 3, 3))

    def forward(self, x: Tensor, state: WanState) -> Tensor:
        x = self.mid_block(self.conv_in(x, state), state)
        for block in self.up_blocks:
            x = block(x, state)
        return norm_silu_conv(self.norm_out, self.conv_out, x, state)


class WanDecoder(nn.Module):
    """Streaming Wan VAE decoder (engine `StreamDecoder`); parameter names equal diffusers'."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_quant_conv = nn.Conv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)

    @property
    def upscale(self) -> int:
        return self.cfg.upscale

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """The first latent frame alone, then up to `max_frames` per chunk.

        `max_frames=1` is diffusers' `AutoencoderKLWan._decode` call for call. Larger chunks give
        the same result (causal convs, per-frame norms and attention; reference §3.5) with fewer,
        larger kernel launches, which keeps a GPU busy.
        """
        starts = range(1, num_frames, max(1, max_frames))
        return [Chunk(0, 1)] + [Chunk(s, min(s + max_frames, num_frames)) for s in starts]

    def new_state(self) -> WanState:
        return WanState()

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Latents `(B, z_dim, t, h, w)` in VAE space -> `(B, out_channels, f, 8h, 8w)`.

        With the usual two temporal upsamplers `f` is `1 + 4 (t - 1)` for the clip's first
        chunk and `4 t` after it. Any `t >= 1` works, and chunked calls equal one call over the
        whole clip. Advances `state`; output dtype follows `z` and the weights.
        """
        assert isinstance(state, WanState), type(state)
        if z.ndim != 5 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}; expected (B, {self.cfg.z_dim}, t, h, w)"
            )
        # post_quant_conv is 1x1x1, so applying it per chunk equals diffusers' whole-clip call.
        # Channels-last activations are the layout oneDNN/cuDNN convolve without reordering.
        z = z.contiguous(memory_format=torch.channels_last_3d)
        x = self.decoder(self.post_quant_conv(z), state)
        state.started = True
        return x

    def finalize(self, x: Tensor) -> Tensor:
        """Stitched decode space -> pixels `(B, 3, f, H, W)` clamped to [-1, 1]."""
        if self.cfg.patch_size > 1:
            x = unpatchify(x, self.cfg.patch_size)
        return x.clamp(-1.0, 1.0)


# Original Wan naming (Wan2.1_VAE.pth, Wan2.2_VAE.pth, ComfyUI wan_2.1_vae / wan2.2_vae
# safetensors) -> diffusers, applied in order after the Wan 2.1 flat stage index is resolved.
# Mirrors diffusers' scripts/convert_wan_to_diffusers.py; tensor shapes are unchanged.
_ORIGINAL_RULES: list[tuple[str, str]] = [
    (r"^conv2\.", "post_quant_conv."),
    (r"^decoder\.conv1\.", "decoder.conv_in."),
    (r"^decoder\.head\.0\.", "decoder.norm_out."),
    (r"^decoder\.head\.2\.", "decoder.conv_out."),
    (r"^decoder\.middle\.0\.", "decoder.mid_block.resnets.0."),
    (r"^decoder\.middle\.1\.", "decoder.mid_block.attentions.0."),
    (r"^decoder\.middle\.2\.", "decoder.mid_block.resnets.1."),
    # Wan 2.2 nests stages; the entry after the res blocks (index 3) is the upsampler.
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)\.",
     r"decoder.up_blocks.\1.upsampler.\2."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
]  # fmt: skip
_FLAT_STAGE = re.compile(r"^decoder\.upsamples\.(\d+)\.(?!upsamples\.)")
_FLAT_UPSAMPLER = re.compile(r"^decoder\.upsamples\.(\d+)\.(?:resample|time_conv)\.")
_KEEP = ("decoder.", "post_quant_conv.")


def _flat_stages(keys: Collection[str]) -> dict[int, str]:
    """Wan 2.1's flat `decoder.upsamples.k` -> `up_blocks.b.{resnets.j|upsamplers.0}`.

    Each stage is `n` res blocks followed by an upsampler (the last stage has none), so the
    first upsampler index found in the key set is `n`, for any num_res_blocks.
    """
    indices = {int(m[1]) for k in keys if (m := _FLAT_STAGE.match(k))}
    n = min((int(m[1]) for k in keys if (m := _FLAT_UPSAMPLER.match(k))), default=len(indices))
    names = {}
    for k in indices:
        block, j = divmod(k, n + 1)
        names[k] = f"up_blocks.{block}." + ("upsamplers.0" if j == n else f"resnets.{j}")
    return names


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Checkpoint key -> `WanDecoder` key, for diffusers or original Wan 2.1 / 2.2 naming.

    Encoder and quant-conv keys are left out; other decoder keys are kept (renamed) so that a
    strict load reports anything unexpected.
    """
    # No rule matches a diffusers name, so one pass serves both namings.
    keys = list(keys)
    stages = _flat_stages(keys)
    out = {}
    for key in keys:
        new = _FLAT_STAGE.sub(lambda m: f"decoder.{stages[int(m[1])]}.", key)
        for pattern, repl in _ORIGINAL_RULES:
            new = re.sub(pattern, repl, new)
        if new.startswith(_KEEP):
            out[key] = new
    return out


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold a Wan VAE, diffusers or original naming (RMS norms carry `gamma`;
    a bare `conv_in` tells diffusers' Wan from HunyuanVideo 1.5, whose convs wrap a `.conv`)."""
    diffusers = {"decoder.mid_block.resnets.0.norm1.gamma", "decoder.conv_in.weight"}
    return diffusers <= set(keys) or "decoder.middle.0.residual.0.gamma" in keys


FAMILY = Family(
    name="wan",
    diffusers_class="AutoencoderKLWan",
    config_from_diffusers=WanConfig.from_diffusers,
    config_from_shapes=WanConfig.from_shapes,
    build=WanDecoder,
    rename_keys=rename_keys,
    detect=detect,
)
