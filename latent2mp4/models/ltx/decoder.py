"""LTX-Video 0.9.x VAE decoder, weight-compatible with diffusers' `AutoencoderKLLTXVideo`.

0.9.0: four up blocks (three x2 space-time up-samplers), no conditioning. 0.9.1: a
timestep-conditioned decoder. 0.9.5+ (0.9.6/0.9.7/0.9.8): three residual up-samplers with
`upsample_factor` 2 and wider blocks. The decoder is non-causal in time (replicated edge frames
both sides). Latent statistics live in the weights (`latents_mean`/`latents_std`, the original
releases' `per_channel_statistics`): `z * std / scaling_factor + mean`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from latent2mp4.models.family import Conditioning, Family, Shapes, TimestepSettings
from latent2mp4.models.ltx.layers import BlockSpec, PaddingMode, UpSpec
from latent2mp4.models.ltx.naming import detect, make_rename
from latent2mp4.models.ltx.original import (
    OriginalConfig,
    config_from_metadata,
    config_notes,
    rename_for_config,
)
from latent2mp4.models.ltx.stack import Conditioned, Layout, LtxDecoder
from latent2mp4.normalization import Normalization

UP_TYPES = {"spatiotemporal": (2, 2, 2), "spatial": (1, 2, 2), "temporal": (2, 1, 1)}


def _rev(values: Iterable[Any]) -> list[Any]:
    return list(reversed(list(values)))


def _padding(mode: Any) -> PaddingMode:
    if mode == "zeros" or mode == "reflect":
        return cast("PaddingMode", mode)
    raise ValueError(f"decoder_spatial_padding_mode {mode!r} unsupported: zeros or reflect")


def _per_block(value: Any, n: int) -> tuple[Any, ...]:
    return (value,) * n if isinstance(value, bool) else tuple(value)


@dataclass(frozen=True)
class LtxConfig:
    """Decoder architecture; field names follow diffusers' `config.json` (encoder order)."""

    latent_channels: int = 128
    out_channels: int = 3
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)
    decoder_inject_noise: tuple[bool, ...] = (False, False, False, False, False)
    upsample_residual: tuple[bool, ...] = (False, False, False, False)
    upsample_factor: tuple[int, ...] = (1, 1, 1, 1)
    upsample_type: tuple[str, ...] = ("spatiotemporal",) * 4
    timestep_conditioning: bool = False
    patch_size: int = 4
    resnet_norm_eps: float = 1e-6
    scaling_factor: float = 1.0
    decoder_causal: bool = False
    padding_mode: PaddingMode = "zeros"
    ltx2: bool = False  # LTX-2 naming quirk: plain 1x1x1 shortcut convs

    @property
    def model_space_noise(self) -> bool:
        """LTX-2's pipelines mix decode noise before de-normalising; diffusers' LTX-Video after."""
        return self.ltx2

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any], ltx2: bool = False) -> LtxConfig:
        """Read a diffusers `config.json` dict; defaults as in the diffusers class."""
        base = LTX2_DEFAULTS if ltx2 else cls()
        widths = tuple(
            int(c) for c in d.get("decoder_block_out_channels", base.decoder_block_out_channels)
        )
        layers = tuple(
            int(n) for n in d.get("decoder_layers_per_block", base.decoder_layers_per_block)
        )
        n = len(widths)
        if len(layers) != n + 1:
            raise ValueError(f"decoder_layers_per_block needs {n + 1} values, got {len(layers)}")
        if int(d.get("patch_size_t", 1)) != 1:
            raise ValueError(f"patch_size_t {d['patch_size_t']} unsupported: expected 1")
        get = d.get
        cfg = cls(
            latent_channels=int(get("latent_channels", 128)),
            out_channels=int(get("out_channels", 3)),
            decoder_block_out_channels=widths,
            decoder_layers_per_block=layers,
            decoder_spatio_temporal_scaling=_per_block(
                get("decoder_spatio_temporal_scaling", base.decoder_spatio_temporal_scaling), n
            ),
            decoder_inject_noise=_per_block(
                get("decoder_inject_noise", base.decoder_inject_noise), n + 1
            ),
            upsample_residual=_per_block(get("upsample_residual", base.upsample_residual), n),
            upsample_factor=tuple(int(f) for f in get("upsample_factor", base.upsample_factor)),
            upsample_type=tuple(get("upsample_type", ("spatiotemporal",) * n)),
            timestep_conditioning=bool(get("timestep_conditioning", False)),
            patch_size=int(get("patch_size", 4)),
            resnet_norm_eps=float(get("resnet_norm_eps", 1e-6)),
            scaling_factor=float(get("scaling_factor", 1.0)),
            decoder_causal=bool(get("decoder_causal", base.decoder_causal)),
            padding_mode=_padding(get("decoder_spatial_padding_mode", base.padding_mode)),
            ltx2=ltx2,
        )
        cfg.layout()  # validates
        return cfg

    @classmethod
    def from_shapes(cls, shapes: Shapes, ltx2: bool = False) -> LtxConfig:
        """Infer the architecture from decoder tensor shapes (diffusers key names).

        Shapes cannot tell a residual up-sampler from a plain one; every release pairs
        `upsample_factor` 2 with residual and 1 with plain, so that rule is assumed. Up-sampler
        strides are taken as space-time (LTX-Video 0.9.x and LTX-2.0; LTX-2.3 mixes kinds and
        needs its config.json). The decoder is non-causal in time, as every release ships it
        (LTX-2.0 too: `decoder_causal` false in diffusers' conversion config); eps is 1e-6.
        """
        base = LTX2_DEFAULTS if ltx2 else cls()
        blk = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.conv\.weight")
        found = [(int(m[1]), int(m[2])) for k in shapes if (m := blk.fullmatch(k))]
        if not found:
            raise KeyError("decoder.up_blocks.0.resnets.0.conv1.conv.weight")
        n = 1 + max(b for b, _ in found)
        mid = re.compile(r"decoder\.mid_block\.resnets\.(\d+)\.conv1\.conv\.weight")
        n_mid = 1 + max(int(m[1]) for k in shapes if (m := mid.fullmatch(k)))
        layers = [n_mid] + [1 + max(r for b, r in found if b == i) for i in range(n)]
        widths, scaling, factors, noise = [], [], [], []
        for i in range(n):
            p = f"decoder.up_blocks.{i}."
            width = shapes[p + "resnets.0.conv1.conv.weight"][0]
            up = shapes.get(p + "upsamplers.0.conv.conv.weight")
            factor = 1
            if up is not None:
                factor = 8 * up[1] // up[0]  # conv: C*f in, 8*C out
            widths.append(width * factor)
            scaling.append(up is not None)
            factors.append(factor)
            noise.append(p + "resnets.0.per_channel_scale1" in shapes)
        noise.insert(0, "decoder.mid_block.resnets.0.per_channel_scale1" in shapes)
        cfg = cls(
            latent_channels=shapes["decoder.conv_in.conv.weight"][1],
            out_channels=shapes["decoder.conv_out.conv.weight"][0] // 16,
            decoder_block_out_channels=tuple(_rev(widths)),
            decoder_layers_per_block=tuple(_rev(layers)),
            decoder_spatio_temporal_scaling=tuple(_rev(scaling)),
            decoder_inject_noise=tuple(_rev(noise)),
            upsample_residual=tuple(f > 1 for f in _rev(factors)),
            upsample_factor=tuple(_rev(factors)),
            upsample_type=("spatiotemporal",) * n,
            timestep_conditioning="decoder.timestep_scale_multiplier" in shapes,
            decoder_causal=False,
            padding_mode=base.padding_mode,
            ltx2=ltx2,
        )
        cfg.layout()
        return cfg

    def layout(self) -> Layout:
        """The decoder stack from the input side, as diffusers' LTXVideoDecoder3d builds it."""
        n = len(self.decoder_block_out_channels)
        widths = _rev(self.decoder_block_out_channels)
        layers = _rev(self.decoder_layers_per_block)
        scaling = _rev(self.decoder_spatio_temporal_scaling)
        residual = _rev(self.upsample_residual)
        factors = _rev(self.upsample_factor)
        noise = [bool(x) for x in _rev(self.decoder_inject_noise)]
        if not (len(scaling) == len(residual) == len(factors) == len(self.upsample_type) == n):
            raise ValueError(f"per-block decoder settings must have {n} values")
        blocks = []
        width = widths[0]
        for i in range(n):
            # diffusers sizes a block by its widths divided by the up-sampler's factor.
            factor = int(factors[i])
            cin, cout = width // factor, widths[i] // factor
            if cin != cout and self.timestep_conditioning:
                raise ValueError("timestep-conditioned blocks that change width are unsupported")
            if cin != cout and factor != 1:
                raise ValueError("blocks that change width with upsample_factor > 1 unsupported")
            kind = self.upsample_type[i]
            if kind not in UP_TYPES:
                raise ValueError(f"upsample_type {kind!r} unsupported: expected {list(UP_TYPES)}")
            up = UpSpec(UP_TYPES[kind], bool(residual[i]), factor) if scaling[i] else None
            if up is None and factor != 1:
                raise ValueError("upsample_factor > 1 needs an up-sampler")
            blocks.append(
                BlockSpec(
                    cin=width,
                    width=cout,
                    layers=layers[i + 1],
                    conv_in=cout if cin != cout else None,
                    up=up,
                    noise=noise[i + 1],
                    conv_in_noise=noise[i + 1],
                    timed=self.timestep_conditioning,
                )
            )
            width = cout
        mid = BlockSpec(
            widths[0], widths[0], layers[0], noise=noise[0], timed=self.timestep_conditioning
        )
        lay = Layout(
            latent_channels=self.latent_channels,
            out_channels=self.out_channels,
            patch_size=self.patch_size,
            mid=mid,
            blocks=tuple(blocks),
            conditioned=self.timestep_conditioning,
            causal=self.decoder_causal,
            padding_mode=self.padding_mode,
            plain_shortcut=self.ltx2,
            eps=self.resnet_norm_eps,
        )
        lay.check()
        return lay


LTX2_DEFAULTS = LtxConfig(
    decoder_block_out_channels=(256, 512, 1024),
    decoder_layers_per_block=(5, 5, 5, 5),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    upsample_type=("spatiotemporal",) * 3,
    decoder_causal=True,
    padding_mode="reflect",
    ltx2=True,
)


def build(cfg: LtxConfig | OriginalConfig) -> LtxDecoder:
    return LtxDecoder(cfg.layout(), cfg.scaling_factor, model_space_noise=cfg.model_space_noise)


# ---- normalisation and conditioning hooks -----------------------------------------------------


def normalization(module: nn.Module) -> Normalization:
    """`z * std / scaling_factor + mean` from the loaded buffers and the config."""
    assert isinstance(module, LtxDecoder)
    mean = tuple(float(v) for v in module.stats()[0].flatten())
    std = tuple(float(v) for v in module.stats()[1].flatten())
    return Normalization(mean=mean, std=std, scaling_factor=module.scaling_factor)


def condition(
    module: nn.Module, settings: TimestepSettings, batch: int, shape: tuple[int, ...]
) -> Conditioning | None:
    """The decoder bound to `settings`, and the pipeline's noise mix `(1 - s) z + s noise`
    over latents of `shape`, with noise seeded per batch element (`seed + batch`); None
    without timestep conditioning."""
    assert isinstance(module, LtxDecoder)
    if not module.layout.conditioned:
        return None
    s = settings.noise_scale
    g = torch.Generator().manual_seed(settings.seed + batch)
    noise = torch.randn(shape, generator=g) if s else None  # the latents' size: small
    mean, std = module.stats()
    scale = module.scaling_factor

    def mix(z: Tensor, start: int, stop: int) -> Tensor:
        if noise is None:
            return z
        n = noise[:, :, start:stop].to(z.device)
        if module.model_space_noise:  # LTX-2 and original LTX-Video files (LtxDecoder)
            m, d = mean.to(z.device), std.to(z.device)
            zm = (z - m) * scale / d
            return ((1 - s) * zm + s * n) * d / scale + m
        return (1 - s) * z + s * n

    return Conditioned(module, settings.timestep, settings.seed + batch), mix


FAMILY = Family(
    name="ltx",
    diffusers_class="AutoencoderKLLTXVideo",
    config_from_diffusers=LtxConfig.from_diffusers,
    config_from_shapes=LtxConfig.from_shapes,
    build=build,
    rename_keys=make_rename(ltx2=False),
    detect=detect,
    normalization=normalization,
    condition=condition,
    config_from_metadata=config_from_metadata,
    rename_for_config=rename_for_config,
    config_notes=config_notes,
)
