"""MiniMax-H3's sound: stereo latents `(B, 2, 32, L)` (two rows: left, right) → 32 kHz stereo.

Weight-compatible with the decoder half of diffusers `AutoencoderKLMiniMaxH3Audio` (`dec_in_proj`
and the BigVGAN `decoder.*`) and with the original release's `audio_vae/model.safetensors`, whose
names are the same (weight-normalised convs as `weight_g`/`weight_v`, folded when read). The VAE
is mono: the two stereo rows decode as two clips and become the left and right channels, after
de-normalising with the config's per-channel `latents_mean` / `latents_std` (model space, as the
modular pipeline holds them). The encoder, its attention projection and the posterior heads are
not needed to decode. Fully convolutional; fp32 (bf16 decodes audibly quieter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from latent2mp4.models.bigvgan import (
    CHUNK_SECONDS,
    Generator,
    GeneratorConfig,
    fold_weight_norm,
    generator_context,
    generator_keys,
    windowed,
)
from latent2mp4.models.family import Shapes
from latent2mp4.models.sound import Loadable, Part, SoundArchitecture, Weights, hop_seconds

if TYPE_CHECKING:
    pass

CLASS = "AutoencoderKLMiniMaxH3Audio"
DILATIONS = ((1, 3, 5), (1, 3, 5), (1, 3, 5))  # the reference's fixed AMP dilations
# config.json names of the diffusers class → GeneratorConfig fields (in_channels = latent_dim)
NAMES = {
    "in_channels": "latent_dim",
    "initial_channels": "decoder_dim",
    "upsample_rates": "decoder_rates",
    "upsample_kernel_sizes": "decoder_kernel_sizes",
    "resblock_kernel_sizes": "resblock_kernel_sizes",
    "resblock_dilations": "resblock_dilation_sizes",
}


@dataclass(frozen=True)
class H3AudioConfig:
    latent_channels: int
    generator: GeneratorConfig
    sample_rate: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.latent_channels or len(self.std) != self.latent_channels:
            raise ValueError(f"latents_mean/latents_std need {self.latent_channels} values each")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("latents_mean/latents_std hold NaN or Inf")


def _statistics(d: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if d.get("latents_mean") is None or d.get("latents_std") is None:
        raise ValueError("no latents_mean/latents_std (the audio latents' statistics)")
    return tuple(float(v) for v in d["latents_mean"]), tuple(float(v) for v in d["latents_std"])


def from_diffusers(d: Mapping[str, Any]) -> H3AudioConfig:
    defaults = {"resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": DILATIONS}
    mean, std = _statistics(d)
    return H3AudioConfig(
        int(d.get("latent_channels", 32)),
        GeneratorConfig.parse({**defaults, **d}, NAMES),
        int(d.get("sampling_rate", 32000)),
        mean,
        std,
    )


def from_release(d: Mapping[str, Any], shapes: Shapes) -> H3AudioConfig:
    """The original `audio_vae/config.json` (statistics, `sample_rate`) and the weights' shapes
    for the architecture. The reference pairs each upsample rate u with kernel 2u - u % 2
    (convert_minimax_h3_to_diffusers.py), so the rates follow from the kernels."""
    kernels: list[int] = []
    while f"decoder.ups.{len(kernels)}.0.weight" in shapes:
        kernels.append(shapes[f"decoder.ups.{len(kernels)}.0.weight"][-1])
    blocks = {int(k.split(".")[2]) for k in shapes if k.startswith("decoder.resblocks.")}
    per = len(blocks) // max(len(kernels), 1)
    res_kernels = [shapes[f"decoder.resblocks.{j}.convs1.0.weight"][-1] for j in range(per)]
    gen = GeneratorConfig(
        in_channels=shapes["dec_in_proj.weight"][0],
        initial_channels=shapes["decoder.conv_pre.weight"][0],
        upsample_rates=tuple((k + 1) // 2 for k in kernels),
        upsample_kernel_sizes=tuple(kernels),
        resblock_kernel_sizes=tuple(res_kernels),
        resblock_dilations=DILATIONS[:per],
    )
    mean, std = _statistics(d)
    latent = int(d.get("latent_channels", shapes["dec_in_proj.weight"][1]))
    return H3AudioConfig(latent, gen, int(d.get("sample_rate", 32000)), mean, std)


class H3Sound(nn.Module):
    """Stereo rows `(1, 2, C, L)` → `(1, 2, L x hop)`: left and right, decoded in windows of
    `chunk_frames` latents with the decoder's receptive field as margin (`context`), which
    gives the whole-clip waveform."""

    description = ""

    def __init__(self, cfg: H3AudioConfig) -> None:
        super().__init__()
        self.cfg, self.sample_rate = cfg, cfg.sample_rate
        self.dec_in_proj = nn.Conv1d(cfg.latent_channels, cfg.generator.in_channels, 1)
        self.decoder = Generator(cfg.generator)
        self.context = generator_context(cfg.generator)  # dec_in_proj is pointwise
        per_second = self.sample_rate / cfg.generator.hop
        self.chunk_frames = max(math.ceil(CHUNK_SECONDS * per_second), self.context)

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        want = (2, self.cfg.latent_channels)
        if tuple(shape[1:3]) == want:
            return None
        return f"has {shape[1]} rows of {shape[2]} channels; the audio VAE decodes 2 of {want[1]}"

    def waveform(self, z: Tensor) -> Tensor:
        # The statistics live in the config, not the weights (as the modular pipeline reads them).
        std = torch.tensor(self.cfg.std, device=z.device).view(1, -1, 1)
        mean = torch.tensor(self.cfg.mean, device=z.device).view(1, -1, 1)
        rows = z[0] * std + mean  # (2, C, L): the stereo rows as two mono clips
        wave = windowed(self._decode, rows, self.cfg.generator.hop, self.context, self.chunk_frames)
        return wave.transpose(0, 1)  # (1, 2, samples)

    def _decode(self, rows: Tensor) -> Tensor:
        return self.decoder(self.dec_in_proj(rows))


def keys(entries: Weights) -> dict[str, str]:
    """Decoder keys kept (the down-sampler's `lowpass.` level dropped); the encoder, `pre_block`,
    the posterior heads left out; anything else kept, so the strict load names it."""
    out = generator_keys(entries, "")
    return {
        k: v
        for k, v in out.items()
        if not k.startswith(("encoder.", "pre_block.", "mean_proj.", "logs_proj."))
    }


def build(
    configs: Mapping[str, dict[str, Any] | None], weights: Mapping[str, Weights]
) -> tuple[H3Sound, tuple[Loadable, ...]]:
    entries = fold_weight_norm(weights["vae"])
    d = configs["vae"] or {}
    shapes = {k: v[0] for k, v in entries.items()}
    cfg = from_diffusers(d) if d.get("_class_name") == CLASS else from_release(d, shapes)
    with torch.device("meta"):
        sound = H3Sound(cfg)
    return sound, (Loadable(sound, entries, keys(entries)),)


SOUND = SoundArchitecture(
    name="minimax-h3-audio",
    form="(B, 2, C, L) or one clip's stereo rows (2, C, L), as MiniMax-H3's blocks hold them",
    rank=4,
    unbatched=True,
    time_axis=3,
    seconds=hop_seconds,
    # The original release's config.json names no class: statistics and sample rate only.
    parts=(Part("vae", (CLASS, None)),),
    build=build,
)
