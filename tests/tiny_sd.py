"""Tiny random SD (`AutoencoderKL`) and SVD (`AutoencoderKLTemporalDecoder`) VAEs saved as real
diffusers folders, and the same weights under the original CompVis/LDM and Stability names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

# Widths, groups and latent channels no release has; four levels keep the 8x ratio the presets
# need. sample_size 64 makes diffusers' enable_tiling() use 64 px tiles every 48 px.
SD_VARIANTS: dict[str, dict[str, Any]] = {
    "sd": dict(
        block_out_channels=(16, 24, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.3,
    ),
    # no mid attention, no post_quant_conv, 6 latent channels, 2 resnets per level
    "bare": dict(
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=6,
        sample_size=32,
        mid_block_add_attention=False,
        use_post_quant_conv=False,
    ),
    # 32 groups, as the LDM originals (their single files carry no config)
    "ldm": dict(
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=32,
        latent_channels=4,
        sample_size=64,
    ),
}
# SVD's norms are fixed at 32 groups: the smallest widths that allow them.
SVD_CONFIG: dict[str, Any] = dict(
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4, sample_size=64
)


def _perturb(vae: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # Norm weights start at 1, biases at 0, zero-initialised convs at 0: move them all.
            scale = 1.0 if name.endswith("mix_factor") else 0.05
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return vae.eval()


def make_tiny_sd(path: Path | None, variant: str = "sd", seed: int = 0) -> Any:
    """A perturbed random `AutoencoderKL`, saved with `save_pretrained(path)` when given
    (variant "svd": `make_tiny_svd`, for scripts/bench.py --quick)."""
    from diffusers import AutoencoderKL

    if variant == "svd":
        return make_tiny_svd(path, seed)

    n = len(SD_VARIANTS[variant]["block_out_channels"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        **SD_VARIANTS[variant],
    )
    _perturb(vae, seed)
    if path is not None:
        vae.save_pretrained(path)
    return vae


def make_tiny_svd(path: Path | None, seed: int = 0) -> Any:
    """A perturbed random `AutoencoderKLTemporalDecoder`, saved when `path` is given."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    n = len(SVD_CONFIG["block_out_channels"])
    vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * n, **SVD_CONFIG)
    _perturb(vae, seed)
    if path is not None:
        vae.save_pretrained(path)
    return vae


# diffusers names -> CompVis/LDM names (the inverse of what the single-file loaders read).
def to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state.items():
        new = key
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.",
            new,
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"^decoder\.mid_block\.resnets\.(\d+)\.",
                     lambda m: f"decoder.mid.block_{int(m[1]) + 1}.", new)  # fmt: skip
        new = new.replace("decoder.mid_block.attentions.0.", "decoder.mid.attn_1.")
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".attn_1." in new:
            new = new.replace("group_norm", "norm").replace("to_out.0", "proj_out")
            new = re.sub(r"\.to_(q|k|v)\.", r".\1.", new)
            if t.ndim == 2:
                t = t[:, :, None, None]  # 1x1 convs in the originals
        # SVD's temporal parts (sgm VideoResBlock / AE3DConv)
        new = new.replace(".spatial_res_block.", ".")
        for ours, theirs in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"),
                             ("norm2", "out_layers.0"), ("conv2", "out_layers.3")):  # fmt: skip
            new = new.replace(f".temporal_res_block.{ours}.", f".time_stack.{theirs}.")
        new = new.replace(".time_mixer.mix_factor", ".mix_factor")
        new = new.replace("decoder.time_conv_out.", "decoder.conv_out.time_mix_conv.")
        out[new] = t.clone()
    return out
