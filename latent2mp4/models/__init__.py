"""Model families, imported on first use so a missing optional family never breaks the CLI."""

from __future__ import annotations

import importlib

from latent2mp4.models.family import Family

FAMILY_MODULES = {
    "wan": "latent2mp4.models.wan",
    "hunyuan": "latent2mp4.models.hunyuan",
    "cogvideox": "latent2mp4.models.cogvideox",
    "mochi": "latent2mp4.models.mochi",
    "hunyuan1.5": "latent2mp4.models.hunyuan15",
    "ltx": "latent2mp4.models.ltx",
    "ltx2": "latent2mp4.models.ltx2",
}


def get_family(name: str) -> Family:
    """The `Family` record of `name` (a preset's `family` field)."""
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def all_families() -> list[Family]:
    return [get_family(name) for name in FAMILY_MODULES]
