"""Tiny random diffusers LTX-2 audio models (`AutoencoderKLLTX2Audio`, `LTX2Vocoder`,
`LTX2VocoderWithBWE`) saved as real diffusers folders.

The real rates are kept (16 kHz mel analysis, hop 160, 4x latent downsampling, a 24 kHz or 48 kHz
vocoder) so durations and containers are realistic; widths are tiny. Attention is switched on
(off in the release) so it is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

AUDIO_VAE: dict[str, Any] = dict(
    base_channels=8,
    output_channels=2,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    resolution=16,
    latent_channels=4,
    norm_type="pixel",
    causality_axis="height",
    mid_block_add_attention=True,
    mel_bins=16,
)
# 2 channels x 16 bins in; x240 (4*4*3*5): 100 mel frames/s → 24 kHz.
VOCODER: dict[str, Any] = dict(
    in_channels=32,
    hidden_channels=32,
    out_channels=2,
    upsample_kernel_sizes=[8, 8, 7, 15],
    upsample_factors=[4, 4, 3, 5],
    resnet_kernel_sizes=[3, 5],
    resnet_dilations=[[1, 3], [1, 2]],
    output_sampling_rate=24000,
)
# The LTX-2.3 kind: snake activations; a 16 kHz stage (x160) then bandwidth extension to 48 kHz.
BWE: dict[str, Any] = dict(
    in_channels=32,
    hidden_channels=32,
    out_channels=2,
    upsample_kernel_sizes=[8, 8, 20],
    upsample_factors=[4, 4, 10],
    resnet_kernel_sizes=[3, 5],
    resnet_dilations=[[1, 3], [1, 2]],
    bwe_in_channels=32,
    bwe_hidden_channels=16,
    bwe_upsample_kernel_sizes=[8, 8, 7, 15],
    bwe_upsample_factors=[4, 4, 3, 5],
    bwe_resnet_kernel_sizes=[3],
    bwe_resnet_dilations=[[1, 3]],
    filter_length=64,
    hop_length=80,
    window_length=64,
    num_mel_channels=16,
    input_sampling_rate=16000,
    output_sampling_rate=48000,
)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Snake α/β are log-scale zeros; norms and biases would otherwise be trivial.
            std = 0.3 if name.endswith((".alpha", ".beta")) else 0.05
            p.add_(torch.randn(p.shape, generator=g) * std)
        for name, b in model.named_buffers():
            if name.endswith(("forward_basis", "inverse_basis", "mel_basis")):
                b.copy_(torch.randn(b.shape, generator=g).abs() * 0.1)  # STFT bases are data


def make_tiny_audio_vae(path: Path, seed: int = 0) -> Any:
    """A tiny `AutoencoderKLLTX2Audio`, saved to `path`, float32 eval mode."""
    from diffusers import AutoencoderKLLTX2Audio

    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Audio(**AUDIO_VAE).eval()
    _perturb(vae, seed)
    vae.save_pretrained(path)
    return vae


def make_tiny_vocoder(path: Path, seed: int = 0, bwe: bool = False) -> Any:
    """A tiny `LTX2Vocoder` (or `LTX2VocoderWithBWE`), saved to `path`, float32 eval mode."""
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    torch.manual_seed(seed)
    vocoder = (LTX2VocoderWithBWE(**BWE) if bwe else LTX2Vocoder(**VOCODER)).eval()
    _perturb(vocoder, seed + 1)
    vocoder.save_pretrained(path)
    return vocoder


def reference_waveform(vae: Any, vocoder: Any, z: torch.Tensor) -> torch.Tensor:
    """What `LTX2Pipeline` does with audio latents it returns: `audio_vae.decode`, then the
    vocoder. `(B, 2, samples)` float32."""
    with torch.no_grad():
        return vocoder(vae.decode(z).sample)
