"""Family name → its module, by convention: a preset's `family: hunyuan1.5` is the module (or
package) `latent2mp4.models.hunyuan15`, which exports its `Family` record as `FAMILY`. A new family
is its module plus a preset; nothing here lists them. Sound architectures (a preset's
`audio: architecture`) are found the same way and export `SOUND`."""

from __future__ import annotations

import importlib

from latent2mp4.models.family import Family
from latent2mp4.models.sound import SoundArchitecture


def module_name(family: str) -> str:
    """`hunyuan1.5` → `latent2mp4.models.hunyuan15`, `minimax-h3` → `...models.minimax_h3`."""
    return "latent2mp4.models." + family.lower().replace(".", "").replace("-", "_")


def get_family(name: str) -> Family:
    """The `Family` record of `name` (a preset's `family` field); LookupError when none is."""
    family = _record(name, "FAMILY")
    if not isinstance(family, Family) or family.name != name:
        raise LookupError(f"{module_name(name)} exports no FAMILY named {name!r}")
    return family


def get_sound(name: str) -> SoundArchitecture:
    """The `SoundArchitecture` record of `name` (a preset's `audio: architecture`), found the
    same way; LookupError when none is."""
    sound = _record(name, "SOUND")
    if not isinstance(sound, SoundArchitecture) or sound.name != name:
        raise LookupError(f"{module_name(name)} exports no SOUND named {name!r}")
    return sound


def _record(name: str, attr: str) -> object:
    module = module_name(name)
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            raise LookupError(f"no module {module}") from None
        raise
