"""Tiny random diffusers `AutoencoderKLWan` models saved as real diffusers folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Real latent widths (16 / 48) so presets and normalisation fit; tiny channel widths (8 is
# the least that keeps fp32 rounding well under the parity bar: RMS norms over 4 channels
# amplify it). Wan 2.1 uses num_res_blocks 1 so the flat original-naming index map is tested
# off its default; Wan 2.2 has distinct encoder and decoder widths.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "2.1": dict(base_dim=8, z_dim=16, num_res_blocks=1),
    "2.2": dict(
        base_dim=4,
        decoder_base_dim=8,
        z_dim=48,
        num_res_blocks=2,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=[round(-0.24 + 0.01 * i, 2) for i in range(48)],
        latents_std=[round(0.4 + 0.02 * i, 2) for i in range(48)],
    ),
}


def make_tiny_wan(path: Path, variant: str = "2.1", seed: int = 0, **overrides: Any) -> Any:
    """Build a tiny `AutoencoderKLWan` ("2.1" or "2.2") with every parameter perturbed, save it
    with `save_pretrained(path)` and return it (float32, eval mode).
    `overrides` replace config entries (off-release widths or latent channels)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**{**TINY_CONFIGS[variant], **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # Norm gains and biases would otherwise be exactly 1 / 0.
            std = 0.2 if name.endswith("gamma") else 0.02
            p.add_(torch.randn(p.shape, generator=g) * std)
    vae.save_pretrained(path)
    return vae
