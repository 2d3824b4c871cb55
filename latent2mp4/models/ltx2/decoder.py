"""LTX-2 video VAE decoder, weight-compatible with diffusers' `AutoencoderKLLTX2Video`.

The LTX-Video stack (see ltx/decoder.py and ltx/stack.py) with LTX-2's settings: reflect spatial
padding, plain 1x1x1 shortcut convs and per-block up-sampler kinds (`upsample_type`); causal in
time only where config.json says so (the diffusers class default; the released LTX-2.0 decoder
is non-causal). The audio VAE of LTX-2 is a separate model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.ltx.decoder import (
    LtxConfig,
    build,
    condition,
    detect,
    make_rename,
    normalization,
)


def config_from_diffusers(d: Mapping[str, Any]) -> LtxConfig:
    return LtxConfig.from_diffusers(d, ltx2=True)


def config_from_shapes(shapes: Shapes) -> LtxConfig:
    """Shapes as for LTX-Video, with LTX-2.0's reflect padding and non-causal decoder."""
    return LtxConfig.from_shapes(shapes, ltx2=True)


FAMILY = Family(
    name="ltx2",
    diffusers_class="AutoencoderKLLTX2Video",
    config_from_diffusers=config_from_diffusers,
    config_from_shapes=config_from_shapes,
    build=build,
    rename_keys=make_rename(ltx2=True),
    detect=detect,
    normalization=normalization,
    # LTX-2 mixes decode noise in model space, before de-normalising (pipeline_ltx2.py).
    condition=condition,
)
