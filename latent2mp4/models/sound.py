"""The record each sound architecture module exports as `SOUND`; plain data, no behaviour.

A preset's `audio: architecture: mmaudio` is found as module `latent2mp4.models.mmaudio` (the
family naming of models/registry.py), which exports its `SoundArchitecture` as `SOUND`. The sound
path (audio.py) locates and opens the weights of each `Part`, the architecture builds its decoder
on `meta` and says what to load into it; audio.py knows no architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from latent2mp4.presets import AudioPreset

# key → (shape, reader): a checkpoint's tensors, nothing read until a reader is called
Weights = Mapping[str, tuple[tuple[int, ...], Callable[[], Tensor]]]


@dataclass(frozen=True)
class Part:
    """One weights folder of an architecture."""

    # "vae" (the preset's vae_subfolder, --audio-vae) or "vocoder" (vocoder_subfolder, --vocoder)
    role: str
    # config.json `_class_name`s it reads; None: also one naming no class (an original release's)
    classes: tuple[str | None, ...]


@dataclass(frozen=True)
class Loadable:
    """What a strict load fills: `module` (built on meta) from `entries` renamed by `mapping`."""

    module: nn.Module
    entries: Weights
    mapping: Mapping[str, str]


class SoundDecoder(Protocol):
    """A built sound decoder (an `nn.Module`)."""

    sample_rate: int  # of the waveform it returns
    description: str  # where its weights came from; set by the loader

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        """Why latents of batched `shape` do not fit these weights (a channel count), or None."""

    def waveform(self, z: Tensor) -> Tensor:
        """One clip's latents `(1, ...)` float32 as stored (model or VAE space, per the
        preset) → waveform `(1, channels, samples)` float32 in [-1, 1]."""


# (configs by role, None for a file without config.json; checkpoints by role) → the decoder
# built on meta and the loads that fill it. Raises KeyError/ValueError/TypeError on a bad config.
Configs = Mapping[str, dict[str, Any] | None]
Build = Callable[[Configs, Mapping[str, Weights]], tuple[Any, tuple[Loadable, ...]]]


@dataclass(frozen=True)
class SoundArchitecture:
    """How audio.py checks, times and loads one kind of audio latents."""

    name: str  # matches a preset's `audio: architecture`
    form: str  # the stored layout, for messages: "(B, C, L, bins)"
    rank: int  # of a batch of clips
    unbatched: bool  # a tensor one rank short is one clip (e.g. the pipeline's (C, T))
    time_axis: int  # of the batched shape: latent frames
    # Nominal duration (s) of `length` latent frames, from the preset alone (info, notes)
    seconds: Callable[[AudioPreset, int], float]
    parts: tuple[Part, ...]
    build: Build


def hop_seconds(spec: AudioPreset, length: int) -> float:
    """Seconds `length` latents decode to, for waveform decoders with a fixed hop per latent."""
    return length * spec.samples_per_latent / spec.sample_rate
