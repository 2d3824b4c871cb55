"""`--decoder tiny --vae FILE`: one loader for every madebyollin tiny decoder.

The file's tensors decide the layout, never its name: a `decoder.22` output conv is the taehv
layout (taehv, taem1), a `decoder.19` one the taesd layout (taesd, taesdxl, taesdv); shapes then
give the widths and the variant, which must fit the preset. Three namings are read: whole
autoencoders (`decoder.N.*` beside `encoder.N.*`: taehv, taesdv, taem1), bare decoders
(`N.*`: `taesd_decoder.pth` / `.safetensors`) and diffusers' `AutoencoderTiny`
(`decoder.layers.N.*`, one index lower: it applies the soft clamp outside its sequence).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from latent2mp4.errors import WeightsError
from latent2mp4.models.tiny.blocks import TinyDecoder
from latent2mp4.models.tiny.taehv import OUT_INDEX as TAEHV_OUT
from latent2mp4.models.tiny.taehv import TinyConfig
from latent2mp4.models.tiny.taesd import OUT_INDEX as TAESD_OUT
from latent2mp4.models.tiny.taesd import TaesdConfig
from latent2mp4.presets import Preset, builtin_presets
from latent2mp4.weights import Reader, channels_last, offenders, open_tensors

if TYPE_CHECKING:
    from latent2mp4.models.family import StreamModule

__all__ = ["TINY_BYTES_PER_PIXEL", "download_hint", "load_tiny", "tiny_config"]

# Peak decode bytes per output pixel of one latent frame (fp32; measured VmHWM growth at 416x240),
# for tiling decisions; the full VAEs take 10000-45000 (their presets).
TINY_BYTES_PER_PIXEL = 4000
KNOWN = "taehv, taem1, taesd, taesdxl or taesdv"
# A file's key → our `decoder.N.*` key (None: not part of a decoder), per naming
BARE = re.compile(r"^(\d+)\.")  # taesd_decoder.*: the decoder Sequential alone
DIFFUSERS = re.compile(r"^decoder\.layers\.(\d+)\.")  # AutoencoderTiny


def download_hint(preset: Preset) -> str:
    if preset.tiny is None:
        return f"no tiny decoder is known for {preset.name}"
    return f"download {preset.tiny.file} from {preset.tiny.url}"


def _variant_text(v: tuple[int, int, int]) -> str:
    return f"{v[0]} latent channels, patch {v[1]}, {v[2]}x time"


def _check_fit(cfg: TinyConfig | TaesdConfig, preset: Preset, where: str) -> None:
    if cfg.variant == preset.tiny_variant:
        return
    fits = [p.name for p in builtin_presets().values() if p.tiny_variant == cfg.variant]
    hint = f"use --model {' or '.join(fits)}" if fits else "no built-in preset fits it"
    raise WeightsError(
        f"{where}: a tiny decoder for {_variant_text(cfg.variant)}; --model {preset.name} needs "
        f"{_variant_text(preset.tiny_variant)} ({hint}; for {preset.name}: {download_hint(preset)})"
    )


def _our_key(key: str) -> str | None:
    """`decoder.N.*` for a decoder tensor in any of the three namings; None for anything else."""
    if m := DIFFUSERS.match(key):
        return f"decoder.{int(m.group(1)) + 1}.{key[m.end() :]}"
    if key.startswith("decoder."):
        return key
    if m := BARE.match(key):
        return f"decoder.{key}"
    return None


def _decoder_entries(
    entries: dict[str, tuple[tuple[int, ...], Reader]], where: str, hint: str
) -> dict[str, tuple[tuple[int, ...], Reader]]:
    ours: dict[str, tuple[tuple[int, ...], Reader]] = {}
    foreign = set()
    for key, entry in entries.items():
        mine = _our_key(key)
        if mine is not None:
            ours[mine] = entry
        elif not key.startswith("encoder."):
            foreign.add(key)
    if foreign or not ours:
        found = f"unexpected tensors {offenders(foreign)}" if foreign else "no decoder tensors"
        raise WeightsError(f"{where}: not a tiny autoencoder of {KNOWN} ({found}); {hint}")
    # An encoder alone is also a bare Sequential; its first layer is a conv from RGB, where
    # every decoder starts with the parameter-free soft clamp.
    if "decoder.0.weight" in ours and ours["decoder.0.weight"][0][1:2] == (3,):
        raise WeightsError(f"{where}: a tiny encoder (taesd_encoder?), not a decoder; {hint}")
    return ours


def tiny_config(shapes: dict[str, tuple[int, ...]], where: str) -> TinyConfig | TaesdConfig:
    """The layout and widths `decoder.N.*` tensor shapes describe (WeightsError if none)."""
    layouts: list[tuple[int, Callable[[dict[str, tuple[int, ...]]], TinyConfig | TaesdConfig]]]
    layouts = [(TAEHV_OUT, TinyConfig.from_shapes), (TAESD_OUT, TaesdConfig.from_shapes)]
    for out, read in layouts:
        if f"decoder.{out}.weight" in shapes:
            try:
                return read(shapes)
            except (KeyError, ValueError) as e:
                raise WeightsError(f"{where}: not a known tiny decoder layout ({e})") from None
    raise WeightsError(
        f"{where}: not a known tiny decoder layout (no output conv decoder.{TAEHV_OUT} or "
        f"decoder.{TAESD_OUT})"
    )


def load_tiny(
    spec: str | None, preset: Preset, device: torch.device | str, dtype: torch.dtype
) -> tuple[StreamModule, str]:
    """Load a tiny decoder (`.pth` weights-only or `.safetensors`, fp16 or fp32) strictly.

    Returns the decoder on `device` in `dtype` and a description for messages and metadata.
    """
    if spec is None:
        raise WeightsError(f"--decoder tiny needs --vae FILE; {download_hint(preset)}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"{spec}: no such tiny decoder file; {download_hint(preset)}")
    where = str(path)
    entries = _decoder_entries(open_tensors((path,)), where, download_hint(preset))
    shapes = {k: s for k, (s, _) in entries.items()}
    config = tiny_config(shapes, where)
    _check_fit(config, preset, where)
    with torch.device("meta"):
        module = TinyDecoder(config, preset.frames_out, preset.clip_plan)
    expected = {f"decoder.{k}": tuple(v.shape) for k, v in module.decoder.state_dict().items()}
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    wrong = {f"{k} {shapes[k]}≠{v}" for k, v in expected.items() if shapes.get(k, v) != v}
    if missing or unexpected or wrong:
        what = (
            f"lacks {offenders(missing)}"
            if missing
            else f"has unexpected {offenders(unexpected)}"
            if unexpected
            else f"has wrong shapes {offenders(wrong)}"
        )
        raise WeightsError(f"{where}: the {config.describe()} {what}")
    state = {}
    for key in expected:
        t = entries[key][1]().to(device=device, dtype=dtype)
        state[key] = channels_last(t)
    module.load_state_dict(state, strict=True, assign=True)
    module.eval()
    return cast("StreamModule", module), f"{where} ({config.describe()})"
