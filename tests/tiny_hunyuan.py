"""Tiny random HunyuanVideo VAEs saved as real diffusers folders (config.json + safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# "tiny": the cheapest shape that still has every module kind (shortcut convs, spatial-only and
# space+time up-samplers, attention). "groups32": the released model's group count and
# layers_per_block, which `from_shapes` assumes for single files.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        latent_channels=16,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
    ),
    "groups32": dict(
        latent_channels=16,
        block_out_channels=(32, 32, 32, 64),
        layers_per_block=2,
        norm_num_groups=32,
    ),
    "noattn": dict(
        latent_channels=16,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
    ),
}


def make_tiny_hunyuan(path: Path, variant: str = "tiny", seed: int = 0, **overrides: Any) -> Any:
    """Build a diffusers `AutoencoderKLHunyuanVideo` with perturbed random weights, save it to
    `path` (`save_pretrained`) and return it in eval mode (fp32, CPU).
    `overrides` replace config entries (off-release widths or latent channels)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(**{**VARIANTS[variant], **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():
            # Norm weights start at 1 and biases at 0: perturb everything so no term vanishes.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    vae.save_pretrained(path)
    return vae
