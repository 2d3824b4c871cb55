"""The record each model family module exports as `FAMILY`; plain data, no behaviour."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

Shapes = Mapping[str, tuple[int, ...]]

if TYPE_CHECKING:
    from torch import Tensor

    from latent2mp4.engine import StreamDecoder
    from latent2mp4.normalization import Normalization

    class StreamModule(nn.Module, StreamDecoder):
        """A built decoder as the type checker sees it: an `nn.Module` that also implements the
        engine's `StreamDecoder`. Only for type checking; no decoder class inherits it, so the
        place that builds a decoder casts to it once."""


@dataclass(frozen=True)
class TimestepSettings:
    """Decode timestep, decode noise scale and noise seed for timestep-conditioned decoders."""

    timestep: float
    noise_scale: float
    seed: int


# (VAE-space latent frames [start, stop), start, stop) → the same frames with decode noise
NoiseMix = Callable[["Tensor", int, int], "Tensor"]
Conditioning = tuple[Any, NoiseMix]  # (the bound StreamDecoder, its NoiseMix)


@dataclass(frozen=True)
class Family:
    """How weights.py finds, configures and builds one family's decoder."""

    name: str  # matches the `family` field of a preset
    diffusers_class: str  # `_class_name` in a diffusers `config.json`
    # Architecture config from a diffusers `config.json` dict (raises KeyError/ValueError).
    config_from_diffusers: Callable[[Mapping[str, Any]], Any]
    # Architecture config inferred from decoder tensor shapes (keys already renamed).
    config_from_shapes: Callable[[Shapes], Any]
    # Builds the decoder module (a StreamDecoder) from a config; does no I/O.
    build: Callable[[Any], nn.Module]
    # Maps checkpoint keys (diffusers, original or ComfyUI naming) to our module's keys; keys
    # the decoder does not need (encoder, quant_conv) are left out of the result.
    rename_keys: Callable[[Iterable[str]], dict[str, str]]
    # Whether a checkpoint's key set holds this family's weights, in any naming it accepts.
    detect: Callable[[Collection[str]], bool]
    # Other `_class_name`s whose `config.json` this family reads (an original release's own
    # class), so that config is used rather than ignored.
    other_classes: tuple[str, ...] = ()
    # Fills in what a config leaves to the tensors (the original MiniMax-H3 config names no FFN
    # width or register count): (config, renamed shapes) → config; None: the config is complete.
    complete_config: Callable[[Any, Shapes], Any] | None = None

    @property
    def config_classes(self) -> tuple[str, ...]:
        return (self.diffusers_class, *self.other_classes)

    # Normalisation held in the loaded weights (LTX's latents_mean/std buffers); None: the
    # config.json or preset one applies.
    normalization: Callable[[nn.Module], Normalization] | None = None
    # For timestep-conditioned decoders: (decoder, settings, batch index, latent shape
    # (1, C, T, h, w)) → the StreamDecoder bound to the settings and a function mixing decode
    # noise into VAE-space latent frames [start, stop); None when this VAE has no conditioning.
    condition: (
        Callable[[nn.Module, TimestepSettings, int, tuple[int, ...]], Conditioning | None] | None
    ) = None
    # For a family whose original release decodes differently from its diffusers port (Mochi's
    # first frames): (config, the checkpoint's own key names, before renaming) → the config that
    # decodes as the code those names come from, and a note saying so (None: nothing to say).
    for_naming: Callable[[Any, Collection[str]], tuple[Any, str | None]] | None = None
    # Architecture config from a single file's safetensors metadata, for original releases that
    # carry their own (LTX-Video's `config` → `vae`); returns None when the metadata holds none
    # (raises KeyError/ValueError for one it cannot build).
    config_from_metadata: Callable[[Mapping[str, str]], Any | None] | None = None
    # Checkpoint keys → module keys when that config lists the blocks (rename_keys guesses).
    rename_for_config: Callable[[Any, Iterable[str]], dict[str, str]] | None = None
    # One-line notes a config calls for (an original file that decodes unlike diffusers).
    config_notes: Callable[[Any], tuple[str, ...]] | None = None


def has_marker(keys: Collection[str], markers: Iterable[Iterable[str]]) -> bool:
    """Whether `keys` hold every key of at least one marker set (a `Family.detect` body)."""
    return any(all(k in keys for k in marker) for marker in markers)
