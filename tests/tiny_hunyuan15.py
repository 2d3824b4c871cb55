"""Tiny random HunyuanVideo 1.5 VAEs saved as real diffusers folders (config.json + safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The released structure (5 blocks, x16 space, x4 time, 32 latent channels, attention) at tiny
# widths: 8 channels at full resolution is the least that keeps fp32 rounding well under the
# parity bar. "tiny" matches widths across up-samplers as released; "shortcut" does not
# (upsample_match_channel=False), which gives the resnets 1x1x1 shortcut convs.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(8, 16, 16, 32, 32), layers_per_block=1),
    "shortcut": dict(
        block_out_channels=(8, 16, 16, 32, 32), layers_per_block=1, upsample_match_channel=False
    ),
}


def make_tiny_hunyuan15(path: Path, variant: str = "tiny", seed: int = 0, **overrides: Any) -> Any:
    """Build a diffusers `AutoencoderKLHunyuanVideo15` with perturbed random weights, save it to
    `path` (`save_pretrained`) and return it in eval mode (fp32, CPU).
    `overrides` replace config entries (off-release widths or latent channels)."""
    from diffusers import AutoencoderKLHunyuanVideo15

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(**{**VARIANTS[variant], **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # Norm gains start at exactly 1: perturb everything so no term vanishes.
            std = 0.2 if name.endswith("gamma") else 0.02
            p.add_(torch.randn(p.shape, generator=g) * std)
    vae.save_pretrained(path)
    return vae
