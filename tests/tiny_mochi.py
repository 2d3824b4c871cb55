"""Tiny random Mochi VAEs saved as real diffusers folders (config.json + safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The released structure (4 widths, temporal expansions 1/2/3, spatial 2/2/2, no decoder
# attention) at the smallest widths its 32-group norms allow; "deep" has several resnets per
# block so `from_shapes` must count them. The encoder is built (diffusers needs it) but unused.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 64),
        layers_per_block=(1, 1, 1, 1, 1),
    ),
    "deep": dict(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 64, 64),
        layers_per_block=(2, 1, 2, 3, 2),
    ),
}


def make_tiny_mochi(path: Path, variant: str = "tiny", seed: int = 0, **overrides: Any) -> Any:
    """Build a diffusers `AutoencoderKLMochi` with perturbed random weights, save it to `path`
    (`save_pretrained`) and return it in eval mode (fp32, CPU).
    `overrides` replace config entries (off-release widths or latent channels)."""
    from diffusers import AutoencoderKLMochi

    torch.manual_seed(seed)
    vae = AutoencoderKLMochi(**{**VARIANTS[variant], **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():
            # Norm weights start at 1 and biases at 0: perturb everything so no term vanishes.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    vae.save_pretrained(path)
    return vae
