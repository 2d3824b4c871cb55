"""Mochi VAE checkpoint naming: diffusers, Genmo's original and ComfyUI's, and what the naming
says about how the file is meant to be decoded."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable

from latent2mp4.models.family import has_marker

# Genmo's original decoder (`decoder.safetensors`: `blocks.*`, `output_proj.*`) and ComfyUI's
# Mochi VAE file (the same names under `decoder.`, plus `encoder.*`) -> diffusers names, as in
# diffusers' scripts/convert_mochi_to_diffusers.py. `blocks.0` is conv_in and the first mid
# block, `blocks.1..n` the up blocks, `blocks.{n+1}` the last mid block.
_Replacement = str | Callable[[re.Match[str]], str]
_ORIGINAL = re.compile(r"^(?:decoder\.)?(blocks\.|output_proj\.)")
_RESNET_RULES: tuple[tuple[str, str], ...] = (
    (r"\.stack\.0\.", ".norm1.norm_layer."),
    (r"\.stack\.2\.", ".conv1.conv."),
    (r"\.stack\.3\.", ".norm2.norm_layer."),
    (r"\.stack\.5\.", ".conv2.conv."),
)


def _original_rules(last: int) -> list[tuple[str, _Replacement]]:
    return [
        (r"^blocks\.0\.0\.", "decoder.conv_in."),
        (r"^blocks\.0\.(\d+)\.", lambda m: f"decoder.block_in.resnets.{int(m[1]) - 1}."),
        (rf"^blocks\.{last}\.(\d+)\.", r"decoder.block_out.resnets.\1."),
        (
            r"^blocks\.(\d+)\.blocks\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{int(m[1]) - 1}.resnets.{m[2]}.",
        ),
        (r"^blocks\.(\d+)\.proj\.", lambda m: f"decoder.up_blocks.{int(m[1]) - 1}.proj."),
        (r"^output_proj\.", "decoder.proj_out."),
        *_RESNET_RULES,
    ]


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map checkpoint keys (diffusers, Genmo original or ComfyUI naming) to decoder keys;
    encoder keys are left out, other decoder keys are kept so a strict load names them."""
    keys = list(keys)
    bodies = {k: k.removeprefix("decoder.") for k in keys if _ORIGINAL.match(k)}
    indices = [int(m[1]) for b in bodies.values() if (m := re.match(r"blocks\.(\d+)\.\d+\.", b))]
    rules = _original_rules(max(indices, default=0))
    out: dict[str, str] = {}
    for key in keys:
        if key in bodies:
            new = bodies[key]
            for pattern, repl in rules:
                new = re.sub(pattern, repl, new)
            out[key] = new
        elif key.startswith("decoder."):
            out[key] = key
    return out


_MARKERS = (
    ("decoder.block_in.resnets.0.conv1.conv.weight", "decoder.proj_out.weight"),
    ("blocks.0.0.weight", "output_proj.weight"),
    ("decoder.blocks.0.0.weight", "decoder.output_proj.weight"),
)


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold a Mochi VAE decoder in diffusers, Genmo or ComfyUI naming."""
    return has_marker(keys, _MARKERS)


def is_original(keys: Iterable[str]) -> bool:
    """Whether `keys` use Genmo's own names (its `decoder.safetensors`, or ComfyUI's file, which
    keeps them): such files are decoded as Genmo's code decodes, not as diffusers does."""
    return any(_ORIGINAL.match(k) for k in keys)
