"""Family name → its module, by convention: a preset's `family: hunyuan1.5` is the module (or
package) `latent2mp4.models.hunyuan15`, which exports its `Family` record as `FAMILY`. A new family
is its module plus a preset; nothing here lists them."""

from __future__ import annotations

import importlib

from latent2mp4.models.family import Family


def module_name(family: str) -> str:
    """`hunyuan1.5` → `latent2mp4.models.hunyuan15`, `minimax-h3` → `...models.minimax_h3`."""
    return "latent2mp4.models." + family.lower().replace(".", "").replace("-", "_")


def get_family(name: str) -> Family:
    """The `Family` record of `name` (a preset's `family` field); LookupError when none is."""
    module = module_name(name)
    try:
        family = getattr(importlib.import_module(module), "FAMILY", None)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise LookupError(f"no family module {module}") from None
        raise
    if not isinstance(family, Family) or family.name != name:
        raise LookupError(f"{module} exports no FAMILY named {name!r}")
    return family
