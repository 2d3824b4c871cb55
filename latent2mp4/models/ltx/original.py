"""The original LTX-Video architecture config, as an `ltxv-*.safetensors` file carries it.

A release stores its VAE's config (`CausalVideoAutoencoder`) as JSON in the safetensors metadata
(`config` → `vae`). It is read field by field as Lightricks/LTX-Video reads it
(`CausalVideoAutoencoder.from_config`, `Decoder`, `AutoencoderKLWrapper`), with that code's
defaults where a field is absent: `spatial_padding_mode` zeros, `patch_size` 1,
`norm_layer` group_norm, `use_quant_conv` true, `decoder_base_channels` 128, no causal decoder,
no timestep conditioning. The decoder blocks are the config's list reversed. What no release
uses and latent2mp4 does not build (group or layer norm, attention blocks, 2-D convolutions) is
refused by name, never ignored; encoder-only fields do not change the decode.

diffusers' conversion of such a file ignores the metadata: it builds zero padding, a non-causal
decoder and no quant conv or latent norm whatever the file says, so `notes` names each field
where the two decodes part.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from latent2mp4.models.ltx.layers import BlockSpec, PaddingMode, UpSpec
from latent2mp4.models.ltx.naming import _KEPT, rename_original
from latent2mp4.models.ltx.stack import Layout

CLASS_NAME = "CausalVideoAutoencoder"
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
UP_STRIDES = {"compress_time": (2, 1, 1), "compress_space": (1, 2, 2), "compress_all": (2, 2, 2)}
# Where a unit goes in an up block, in order: lone residual block, up-sampler, residual group.
_RANK = {"res_x_y": 0, "compress_time": 1, "compress_space": 1, "compress_all": 1, "res_x": 2}
# What diffusers' conversion builds for every LTX-Video file, whatever its metadata says.
DIFFUSERS_BUILDS = {
    "spatial_padding_mode": "zeros",
    "causal_decoder": False,
    "use_quant_conv": False,
    "normalize_latent_channels": False,
}


@dataclass(frozen=True)
class Unit:
    """One entry of `decoder_blocks`: res_x (a residual group), res_x_y (a lone residual block
    dividing the width by `multiplier`) or compress_* (a depth-to-space up-sampler)."""

    kind: str
    layers: int = 0
    noise: bool = False
    multiplier: int = 1
    residual: bool = False


def _unit(entry: Any) -> Unit:
    if not isinstance(entry, list | tuple) or len(entry) != 2 or not isinstance(entry[0], str):
        raise ValueError(f"decoder block {entry!r} is not [name, parameters]")
    name, params = entry
    if isinstance(params, int) and not isinstance(params, bool):
        params = {"num_layers": params}  # the original's shorthand
    if not isinstance(params, dict):
        raise ValueError(f"decoder block {name}'s parameters {params!r} are not a mapping")
    noise = bool(params.get("inject_noise", False))
    if name == "res_x":
        if "num_layers" not in params:
            raise ValueError("decoder block res_x lacks num_layers")
        return Unit(name, layers=int(params["num_layers"]), noise=noise)
    if name == "res_x_y":
        return Unit(name, noise=noise, multiplier=int(params.get("multiplier", 2)))
    if name in UP_STRIDES:
        residual = bool(params.get("residual", False)) if name == "compress_all" else False
        return Unit(name, multiplier=int(params.get("multiplier", 1)), residual=residual)
    if name == "attn_res_x":
        raise ValueError("decoder block attn_res_x (attention) is not supported")
    raise ValueError(f"unknown decoder block {name!r}")


@dataclass(frozen=True)
class OriginalConfig:
    """The decoder part of an original `CausalVideoAutoencoder` config (defaults: the
    original code's when a field is absent)."""

    latent_channels: int
    units: tuple[Unit, ...]  # decoding order: the config's list reversed
    out_channels: int = 3
    patch_size: int = 1
    base_channels: int = 128
    causal: bool = False
    conditioned: bool = False
    padding_mode: PaddingMode = "zeros"
    quant_conv: bool = True
    latent_norm: bool = False
    # The original pipeline de-normalises with the per-channel statistics alone (its VAE
    # reports scaling_factor 1.0 whatever the config says), and mixes decode noise before that.
    scaling_factor: float = 1.0
    model_space_noise: bool = True

    @classmethod
    def from_dict(cls, vae: Mapping[str, Any]) -> OriginalConfig:
        """Raises KeyError for a field the original code requires, ValueError for a value it
        (or latent2mp4) cannot build."""
        name = vae.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ValueError(f"_class_name {name!r}: expected {CLASS_NAME}")
        dims = vae["dims"]
        if dims != 3:
            raise ValueError(f"dims {dims!r} is not supported: only 3-D decoders")
        norm = vae.get("norm_layer", "group_norm")
        if norm != "pixel_norm":
            raise ValueError(f"norm_layer {norm!r} is not supported: only pixel_norm")
        padding = vae.get("spatial_padding_mode", "zeros")
        if padding not in PADDING_MODES:
            raise ValueError(f"spatial_padding_mode {padding!r}: expected one of {PADDING_MODES}")
        blocks = vae["decoder_blocks"] if "decoder_blocks" in vae else vae["blocks"]
        if not isinstance(blocks, list | tuple) or not blocks:
            raise ValueError("decoder_blocks must be a non-empty list")
        cfg = cls(
            latent_channels=int(vae["latent_channels"]),
            units=tuple(_unit(b) for b in reversed(blocks)),
            out_channels=int(vae.get("out_channels", 3)),
            patch_size=int(vae.get("patch_size", 1)),
            base_channels=int(vae.get("decoder_base_channels", 128)),
            causal=bool(vae.get("causal_decoder", False)),
            conditioned=bool(vae.get("timestep_conditioning", False)),
            padding_mode=cast("PaddingMode", padding),
            quant_conv=bool(vae.get("use_quant_conv", True)),
            latent_norm=bool(vae.get("normalize_latent_channels", False)),
        )
        cfg.layout()  # validates
        return cfg

    def _start_width(self) -> int:
        # As the original: every lone block and up-sampler multiplies the input width by its
        # multiplier (compress_time/space too, though they do not divide it back).
        width = self.base_channels
        for u in self.units:
            if u.kind == "res_x_y" or u.kind in UP_STRIDES:
                width *= u.multiplier
        return width

    def plan(self) -> tuple[Layout, dict[int, str]]:
        """The layout, and the module prefix of each unit (K in `decoder.up_blocks.K`)."""
        width = self._start_width()
        units = list(enumerate(self.units))
        prefixes: dict[int, str] = {}
        mid = BlockSpec(width, width, 0)
        if units and units[0][1].kind == "res_x":
            u = units.pop(0)[1]
            mid = BlockSpec(width, width, u.layers, noise=u.noise, timed=self.conditioned)
            prefixes[0] = "decoder.mid_block."
        blocks: list[BlockSpec] = []
        current: dict[str, Any] | None = None
        last = -1

        def close() -> None:
            if current is not None:
                blocks.append(BlockSpec(**current))

        for k, u in units:
            rank = _RANK[u.kind]
            if current is not None and rank <= last:
                close()
                current = None
            if current is None:
                current = {"cin": width, "width": width, "layers": 0}
            b = len(blocks)
            if u.kind == "res_x_y":
                if u.noise and u.multiplier != 1:
                    raise ValueError("res_x_y with inject_noise cannot change the width")
                width //= u.multiplier
                current.update(conv_in=width, conv_in_noise=u.noise, width=width)
                prefixes[k] = f"decoder.up_blocks.{b}.conv_in."
            elif u.kind == "res_x":
                current.update(layers=u.layers, noise=u.noise, timed=self.conditioned)
                prefixes[k] = f"decoder.up_blocks.{b}."
            else:
                factor = u.multiplier if u.kind == "compress_all" else 1
                current["up"] = UpSpec(UP_STRIDES[u.kind], u.residual, factor)
                width //= factor
                current["width"] = width
                prefixes[k] = f"decoder.up_blocks.{b}.upsamplers.0."
            last = rank
        close()
        lay = Layout(
            latent_channels=self.latent_channels,
            out_channels=self.out_channels,
            patch_size=self.patch_size,
            mid=mid,
            blocks=tuple(blocks),
            conditioned=self.conditioned,
            causal=self.causal,
            padding_mode=self.padding_mode,
            plain_shortcut=False,
            post_quant_conv=self.quant_conv,
            latent_norm=self.latent_norm,
        )
        lay.check()
        return lay, prefixes

    def layout(self) -> Layout:
        return self.plan()[0]

    def differences(self) -> tuple[str, ...]:
        """`field value` for each field where diffusers' conversion builds something else."""
        ours = {
            "spatial_padding_mode": self.padding_mode,
            "causal_decoder": self.causal,
            "use_quant_conv": self.quant_conv,
            "normalize_latent_channels": self.latent_norm,
        }
        return tuple(
            f"{k} {json.dumps(v)} (diffusers: {json.dumps(DIFFUSERS_BUILDS[k])})"
            for k, v in ours.items()
            if v != DIFFUSERS_BUILDS[k]
        )


def config_from_metadata(metadata: Mapping[str, str]) -> OriginalConfig | None:
    """The VAE config of an original single file's metadata (`config` → `vae`); None when
    the metadata holds none."""
    raw = metadata.get("config")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"its metadata's config is not JSON ({e})") from None
    vae = doc.get("vae") if isinstance(doc, dict) else None
    return OriginalConfig.from_dict(vae) if isinstance(vae, dict) else None


def rename_for_config(cfg: Any, keys: Iterable[str]) -> dict[str, str]:
    """Original keys → decoder keys, each `up_blocks.K` placed where the config's block list
    puts it; the quant conv and latent norm statistics only where the config builds them."""
    assert isinstance(cfg, OriginalConfig)
    lay, prefixes = cfg.plan()
    kept: tuple[str, ...] = _KEPT
    kept += ("post_quant_conv.",) if lay.post_quant_conv else ()
    kept += ("latent_norm_out.running_",) if lay.latent_norm else ()
    return rename_original(keys, prefixes, ltx2=False, kept=kept)


def config_notes(cfg: Any) -> tuple[str, ...]:
    """A note when this file decodes unlike diffusers' conversion of it."""
    if not isinstance(cfg, OriginalConfig) or not (diff := cfg.differences()):
        return ()
    return (
        "the file's own LTX-Video config asks for " + ", ".join(diff) + "; decoding as the "
        "original code does (diffusers' conversion of this file would differ)",
    )
