"""Kandinsky 6's sound: MMAudio's mel VAE, then MMAudio's BigVGAN vocoder (mono)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from latent2mp4.models.bigvgan import (
    CHUNK_SECONDS,
    Generator,
    GeneratorConfig,
    generator_context,
    generator_keys,
    windowed,
)
from latent2mp4.models.mmaudio.vae import MelVae, MelVaeConfig
from latent2mp4.models.sound import Loadable, Part, SoundArchitecture, Weights, hop_seconds

if TYPE_CHECKING:
    pass

# `MMAudioVocoder` config.json names → GeneratorConfig fields (diffusers' defaults below).
VOCODER_NAMES = {
    "in_channels": "num_mels",
    "initial_channels": "upsample_initial_channel",
    "upsample_rates": "upsample_rates",
    "upsample_kernel_sizes": "upsample_kernel_sizes",
    "resblock_kernel_sizes": "resblock_kernel_sizes",
    "resblock_dilations": "resblock_dilation_sizes",
}
VOCODER_DEFAULTS: dict[str, Any] = {
    "num_mels": 128,
    "upsample_initial_channel": 1536,
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}


class MelSound(nn.Module):
    """Model-space latents `(1, C, L)` → mel → mono waveform `(1, 1, 2L x hop)`.

    The VAE's mid block attends over the whole clip, so the mel is decoded whole (small: 128
    bins x 86 frames per second); the vocoder, where the memory is, runs in windows of
    `chunk_frames` mel frames with its receptive field as margin (`context`), which gives the
    whole-clip waveform.
    """

    description = ""

    def __init__(self, vae: MelVae, vocoder: Generator) -> None:
        super().__init__()
        self.vae, self.vocoder = vae, vocoder
        self.sample_rate = vae.cfg.sample_rate
        self.context = generator_context(vocoder.cfg)
        hop = vocoder.cfg.hop
        self.chunk_frames = max(math.ceil(CHUNK_SECONDS * self.sample_rate / hop), self.context)

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        want = self.vae.cfg.latent_channels
        if shape[1] == want:
            return None
        return f"has {shape[1]} channels; the audio VAE decodes {want}"

    def waveform(self, z: Tensor) -> Tensor:
        mel = self.vae(z)
        return windowed(self.vocoder, mel, self.vocoder.cfg.hop, self.context, self.chunk_frames)


def vae_keys(keys: list[str]) -> dict[str, str]:
    """`vae.decoder.*` and the data statistics; the encoder and the mel front end are dropped."""
    out = {}
    for k in keys:
        name = k.removeprefix("vae.")
        if name.startswith(("decoder.", "data_mean", "data_std")):
            out[k] = name
        elif not name.startswith(("encoder.", "mel_converter.")):
            out[k] = k  # unknown: the strict load names it
    return out


def build(
    configs: Mapping[str, dict[str, Any] | None], weights: Mapping[str, Weights]
) -> tuple[MelSound, tuple[Loadable, ...]]:
    vcfg = MelVaeConfig.from_diffusers(configs["vae"] or {})
    gcfg = GeneratorConfig.parse({**VOCODER_DEFAULTS, **(configs["vocoder"] or {})}, VOCODER_NAMES)
    if gcfg.hop != vcfg.hop_length:
        raise ValueError(f"the vocoder upsamples x{gcfg.hop}, the mel hop is {vcfg.hop_length}")
    if gcfg.in_channels != vcfg.mel_bins:
        raise ValueError(
            f"the vocoder takes {gcfg.in_channels} mel bins, the VAE makes {vcfg.mel_bins}"
        )
    with torch.device("meta"):
        vae, vocoder = MelVae(vcfg), Generator(gcfg)
    loads = (
        Loadable(vae, weights["vae"], vae_keys(list(weights["vae"]))),
        Loadable(vocoder, weights["vocoder"], generator_keys(weights["vocoder"])),
    )
    return MelSound(vae, vocoder), loads


SOUND = SoundArchitecture(
    name="mmaudio",
    form="(B, C, L) as Kandinsky6TI2VAPipeline(output_type='latent') returns them",
    rank=3,
    unbatched=False,
    time_axis=2,
    seconds=hop_seconds,
    parts=(Part("vae", ("MMAudioVAE",)), Part("vocoder", ("MMAudioVocoder",))),
    build=build,
)
