"""Checkpoint key names of the LTX video VAEs: diffusers' and the original releases'.

Original LTX releases (ltxv-*.safetensors, ComfyUI and Lightricks LTX-2 files) number the
decoder's mid block, channel-changing blocks, up-samplers and residual groups as one flat
`up_blocks.K` list, in forward order (diffusers, loaders/single_file_utils.py). When the file's
metadata lists the blocks (original LTX-Video files), that list says which module each K is;
otherwise it follows from the keys: `res_blocks.*` is a group, `conv1.*` a lone block, `conv.*`
an up-sampler, and the first group is the mid block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping

_UNIT = re.compile(r"^decoder\.up_blocks\.(\d+)\.(.*)$")
_RENAMES = (
    ("res_blocks.", "resnets."),
    ("norm3.norm.", "norm3."),
    ("decoder.last_time_embedder.", "decoder.time_embedder."),
    ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
)
_STATS = {
    "per_channel_statistics.mean-of-means": "latents_mean",
    "per_channel_statistics.std-of-means": "latents_std",
}
_KEPT = ("decoder.", "latents_mean", "latents_std")
_SHORTCUT = re.compile(r"\.conv_shortcut\.(weight|bias)$")


def _unit_prefixes(keys: list[str]) -> dict[int, str]:
    units: dict[int, set[str]] = {}
    for key in keys:
        if m := _UNIT.match(key):
            units.setdefault(int(m[1]), set()).add(m[2].split(".")[0])
    out: dict[int, str] = {}
    block, seen_mid = 0, False
    for k in sorted(units):
        kinds = units[k]
        if "res_blocks" in kinds:
            out[k] = f"decoder.up_blocks.{block}." if seen_mid else "decoder.mid_block."
            block, seen_mid = (block + 1 if seen_mid else block), True
        elif "conv1" in kinds:
            out[k] = f"decoder.up_blocks.{block}.conv_in."
        else:
            out[k] = f"decoder.up_blocks.{block}.upsamplers.0."
    return out


def rename_original(
    keys: Iterable[str],
    units: Mapping[int, str],
    ltx2: bool,
    kept: tuple[str, ...] = _KEPT,
) -> dict[str, str]:
    """Original keys → decoder keys, unit K of the flat list renamed to `units[K]` (a unit
    missing there keeps its name, so strict loading reports it); keys outside `kept` are left
    out."""
    out = {}
    for key in keys:
        new = _STATS.get(key, key)
        if (m := _UNIT.match(new)) and int(m[1]) in units:
            new = units[int(m[1])] + m[2]
        for old, rep in _RENAMES:
            new = new.replace(old, rep)
        if not ltx2:  # 0.9.x wraps its 1x1x1 shortcut conv; LTX-2 keeps it plain
            new = _SHORTCUT.sub(r".conv_shortcut.conv.\1", new)
        if new.startswith(kept):
            out[key] = new
    return out


def is_original(keys: Collection[str]) -> bool:
    return any(k.startswith("per_channel_statistics.") or ".res_blocks." in k for k in keys)


def make_rename(ltx2: bool) -> Callable[[Iterable[str]], dict[str, str]]:
    def rename_keys(keys: Iterable[str]) -> dict[str, str]:
        """Map checkpoint keys (diffusers or original LTX naming) to decoder keys; encoder and
        unused statistics are left out."""
        keys = list(keys)
        if is_original(keys):
            return rename_original(keys, _unit_prefixes(keys), ltx2)
        return {k: k for k in keys if k.startswith(_KEPT)}

    return rename_keys


def detect(keys: Collection[str]) -> bool:
    """Whether `keys` hold an LTX-Video or LTX-2 video VAE (diffusers or original naming).

    The two generations share key names and, for 0.9.5+ and LTX-2, shapes; they differ in
    padding and causality, which the weights do not show, so --model (or config.json) decides.
    """
    return "decoder.conv_in.conv.weight" in keys and (
        "latents_mean" in keys or "per_channel_statistics.mean-of-means" in keys
    )
