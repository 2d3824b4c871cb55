"""A tiny random MiniMax-H3 video VAE in diffusers' layout (the oracle), and the same weights
written in the original release's layout and as a single ComfyUI-style file, by our own inverse
of the conversion (fused per-head-interleaved q/k/v, swapped FFN halves, x_embedder)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Widths, heads, latent channels and depth all differ from the release (24 ch, 32x64, 36).
TINY = dict(
    latent_channels=6,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    spatial_downsample_factors=(2, 2, 2, 2),
    temporal_downsample_factors=(1, 2, 2, 1),
    norm_num_groups=4,
    decoder_num_layers=2,
    decoder_num_attention_heads=3,
    decoder_attention_head_dim=16,
    decoder_num_register_tokens=2,
    decoder_ffn_mult=2,
    decoder_rope_theta=100.0,
    decoder_rope_dim_ratio=0.75,
)
ORIGINAL_CLASS = "AutoencoderKLLegacy"


def make_tiny_h3(path: Path, seed: int = 0, **overrides: Any) -> Any:
    """Save a random tiny `AutoencoderKLMiniMaxH3` (diffusers folder) and return it (fp32)."""
    from diffusers import AutoencoderKLMiniMaxH3

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    c = TINY["latent_channels"]
    mean = (torch.randn(c, generator=g) * 0.5).tolist()
    std = (torch.rand(c, generator=g) + 0.5).tolist()
    arch = {**TINY, **overrides}
    vae = AutoencoderKLMiniMaxH3(**arch, latents_mean=mean, latents_std=std).eval()
    with torch.no_grad():  # zeros at init (layer scales, registers) would hide whole branches
        for name, p in vae.named_parameters():
            if name.startswith(("decoder.", "post_quant_conv.")):
                scale = 0.5 if p.ndim < 2 else 1.0 / max(p.shape[-1], 1) ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)
                if name.endswith(("norm1.weight", "norm2.weight", "norm_out.weight")):
                    p.add_(1.0)
    vae.save_pretrained(path, safe_serialization=True)
    return vae


def _interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """[q; k; v] per projection → the original's [h0: q k v, h1: q k v, ...] rows."""
    parts = [t.reshape(heads, -1, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(parts, dim=1).reshape(-1, *q.shape[1:])


def to_original(state: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """diffusers' state dict → the original release's names and layouts."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if re.search(r"\.attn\.to_[kv]\.", key):
            continue
        if m := re.match(r"(.*)\.attn\.to_q\.(weight|bias)$", key):
            qkv = [state[f"{m[1]}.attn.to_{x}.{m[2]}"] for x in "qkv"]
            out[f"{m[1]}.attn.to_qkv.{m[2]}"] = _interleave_qkv(*qkv, heads).contiguous()
            continue
        new = key.replace("decoder.proj_in.", "decoder.x_embedder.")
        new = new.replace(".attn.to_out.0.", ".attn.to_out.")
        new = new.replace(".ff.net.2.", ".ff.w2.")
        if ".ff.net.0.proj." in key:
            up, gate = t.chunk(2, dim=0)
            new, t = new.replace(".ff.net.0.proj.", ".ff.w1."), torch.cat([gate, up]).contiguous()
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        out[new] = t
    dim = state["decoder.proj_in.weight"].shape[0]
    out["decoder.mask_token"] = torch.zeros(1, 1, dim)  # training-only, dropped on load
    return out


def write_original(vae: Any, root: Path) -> Path:
    """The release layout: `root/video_vae/{config.json, source/{config.json, model.safetensors}}`."""
    cfg = vae.config
    source = root / "video_vae" / "source"
    source.mkdir(parents=True)
    sd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    save_file(to_original(sd, cfg.decoder_num_attention_heads), str(source / "model.safetensors"))
    (source / "config.json").write_text(json.dumps({
        "_class_name": ORIGINAL_CLASS,
        "z_channels": cfg.latent_channels, "embed_dim": cfg.latent_channels, "out_ch": 3,
        "ch": 8, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
        "space_down": list(cfg.spatial_downsample_factors),
        "time_down": list(cfg.temporal_downsample_factors), "time_up": None,
        "pixel_norm_type": "imagenet",
        "vit_decoder_kwargs": {
            "num_layers": cfg.decoder_num_layers, "heads": cfg.decoder_num_attention_heads,
            "dim_head": cfg.decoder_attention_head_dim, "rope_theta": cfg.decoder_rope_theta,
            "rope_dim_ratio": cfg.decoder_rope_dim_ratio, "norm_type": "rms_norm",
        },
    }))  # fmt: skip
    (root / "video_vae" / "config.json").write_text(json.dumps({
        "source_path": "source", "source_safetensors_path": "model.safetensors",
        "latent_channels": cfg.latent_channels,
        "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std),
        "vae_clip_length": cfg.clip_length, "vae_token_drop": cfg.token_drop,
        "vae_tile_size": 256, "vae_tile_overlap_min": 64, "vae_decoder_tiling": 1,
    }))  # fmt: skip
    return root
