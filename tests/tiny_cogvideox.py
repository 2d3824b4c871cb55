"""Tiny random diffusers CogVideoX VAEs saved as real diffusers folders (test oracle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# "tiny": 4 levels like the real model, so 8x space / 4x time, at widths a CPU decodes fast.
# norm_eps is deliberately not the default: the decoder's spatial norms ignore it (diffusers
# hard-codes eps 1e-6 there), and parity must still hold.
# "groups32": 32 GroupNorm groups and 16 latent channels like the released checkpoints, because
# `from_shapes` cannot see the group count and assumes 32.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(16, 16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_eps=1e-3,
    ),
    "groups32": dict(
        block_out_channels=(32, 32, 32, 32),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=32,
    ),
}


def make_tiny_cogvideox(path: Path, variant: str = "tiny", seed: int = 0, **overrides: Any) -> Any:
    """Build, perturb (every parameter gets N(0, 0.1) noise) and save a diffusers
    `AutoencoderKLCogVideoX` into `path`; returns the model in eval mode, fp32, on CPU.
    `overrides` replace config entries (off-release widths or latent channels)."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        **{**VARIANTS[variant], **overrides},
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    vae.save_pretrained(path)
    return vae
