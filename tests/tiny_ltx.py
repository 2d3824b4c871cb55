"""Tiny random LTX-Video / LTX-2 VAEs saved as real diffusers folders (config.json + safetensors).

The real structure at a fraction of the width: 128 latent channels, patch size 4, x32 space and
x8 time. "v090": 0.9.0's four up blocks (plain up-samplers, width-changing blocks with shortcut
convs). "v095": 0.9.5's three residual up-samplers with factor 2 and timestep conditioning.
"ltx2": LTX-2's causal, reflect-padded decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ENCODER = dict(block_out_channels=(8, 16, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "v090": (
        "AutoencoderKLLTXVideo",
        dict(
            **ENCODER,
            decoder_block_out_channels=(8, 16, 32, 32),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
        ),
    ),
    "v095": (
        "AutoencoderKLLTXVideo",
        dict(
            **ENCODER,
            decoder_block_out_channels=(8, 16, 32),
            decoder_layers_per_block=(1, 1, 1, 1),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            upsample_residual=(True, True, True),
            upsample_factor=(2, 2, 2),
            timestep_conditioning=True,
        ),
    ),
    "ltx2": (
        "AutoencoderKLLTX2Video",
        dict(
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_block_out_channels=(8, 16, 32),
            decoder_layers_per_block=(1, 1, 1, 1),
            # As the released config states them: diffusers' derivation from the encoder's
            # four down blocks would give 64 and 16.
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        ),
    ),
}


def make_tiny_ltx(path: Path, variant: str = "v090", seed: int = 0, **overrides: Any) -> Any:
    """Build a diffusers LTX VAE with perturbed random weights and latent statistics, save it to
    `path` (`save_pretrained`) and return it in eval mode (fp32, CPU).
    `overrides` replace config entries (off-release widths or latent channels)."""
    import diffusers

    cls, kwargs = VARIANTS[variant]
    torch.manual_seed(seed)
    vae = getattr(diffusers, cls)(**{**kwargs, **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("timestep_scale_multiplier"):
                continue
            # Norm weights start at 1 and biases at 0: perturb everything so no term vanishes.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape, generator=g) * 0.5)
        vae.latents_std.copy_(torch.rand(vae.latents_std.shape, generator=g) + 0.5)
    vae.save_pretrained(path)
    return vae
