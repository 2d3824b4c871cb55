"""LTX-2's sound: audio latents `(B, 8, L, 16)` (VAE space, as `LTX2Pipeline` returns them) →
the audio VAE's stereo mel spectrogram → the vocoder (plain, or with bandwidth extension)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from latent2mp4.models.ltx2.audio import AudioVaeConfig, AudioVaeDecoder
from latent2mp4.models.ltx2.audio import rename_keys as audio_vae_keys
from latent2mp4.models.ltx2.vocoder import BweConfig, BweVocoder, Vocoder, VocoderConfig
from latent2mp4.models.ltx2.vocoder import rename_keys as vocoder_keys
from latent2mp4.models.sound import Loadable, Part, SoundArchitecture, Weights

if TYPE_CHECKING:
    from latent2mp4.presets import AudioPreset

AUDIO_VAE_CLASS = "AutoencoderKLLTX2Audio"
VOCODER_CLASSES = ("LTX2Vocoder", "LTX2VocoderWithBWE")


class LtxSound(nn.Module):
    """The audio VAE decoder then the vocoder."""

    description = ""

    def __init__(self, vae: AudioVaeDecoder, vocoder: nn.Module, sample_rate: int) -> None:
        super().__init__()
        self.vae, self.vocoder, self.sample_rate = vae, vocoder, sample_rate

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        want = self.vae.cfg.latent_channels
        if shape[1] == want:
            return None
        return f"has {shape[1]} channels; the audio VAE decodes {want}"

    def waveform(self, z: Tensor) -> Tensor:
        return self.vocoder(self.vae(z))


def build(
    configs: Mapping[str, dict[str, Any] | None], weights: Mapping[str, Weights]
) -> tuple[LtxSound, tuple[Loadable, ...]]:
    vae_cfg, voc_cfg = configs["vae"], configs["vocoder"]
    with torch.device("meta"):
        vae = AudioVaeDecoder(
            AudioVaeConfig.from_diffusers(vae_cfg) if vae_cfg else AudioVaeConfig()
        )
    mapping = vocoder_keys(weights["vocoder"])
    bwe = (voc_cfg or {}).get("_class_name") == "LTX2VocoderWithBWE" or any(
        k.startswith("bwe_generator.") for k in mapping.values()
    )
    vocoder: nn.Module
    if bwe:
        bcfg = BweConfig.from_diffusers(voc_cfg or {})
        with torch.device("meta"):
            vocoder = BweVocoder(bcfg)
        rate = bcfg.output_sampling_rate
    else:
        # A single file: the release's architecture (24 kHz), checked by the strict load.
        vcfg = VocoderConfig.from_diffusers(voc_cfg) if voc_cfg else VocoderConfig()
        with torch.device("meta"):
            vocoder = Vocoder(vcfg)
        rate = vcfg.output_sampling_rate
    loads = (
        Loadable(vae, weights["vae"], audio_vae_keys(weights["vae"])),
        Loadable(vocoder, weights["vocoder"], mapping),
    )
    return LtxSound(vae, vocoder, int(rate)), loads


def seconds(spec: AudioPreset, length: int) -> float:
    """4L - 3 mel frames at the preset's `mel_rate`."""
    return max(4 * length - 3, 1) / spec.mel_rate


SOUND = SoundArchitecture(
    name="ltx2",
    form="(B, C, L, bins) as LTX2Pipeline(output_type='latent') returns them",
    rank=4,
    unbatched=False,
    time_axis=2,
    seconds=seconds,
    parts=(Part("vae", (AUDIO_VAE_CLASS,)), Part("vocoder", VOCODER_CLASSES)),
    build=build,
)
