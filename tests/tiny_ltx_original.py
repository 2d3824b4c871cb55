"""Tiny random LTX-Video VAEs built by the original repository's code (Lightricks/LTX-Video, the
`ltx-video` package) and saved as a release does: one safetensors file, the VAE under `vae.`
with `per_channel_statistics`, its architecture as JSON in the metadata (`config` → `vae`).

128 latent channels, patch size 4, x32 space and x8 time, as the releases; widths of 8 to 64.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# The 0.9.5+ decoder (three residual x2 up-samplers, timestep conditioning) at a small width,
# with the padding a test asks for ("spatial_padding_mode" absent: the original's zeros).
V095 = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "encoder_blocks": [["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 2}]],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 2, "inject_noise": False}],
    ],
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": True,
    "decoder_base_channels": 8,
}

# Every other field the original decoder reads, none at diffusers' value: a causal decoder, the
# quant conv and the latent BatchNorm (both absent fields default to them... use_quant_conv is
# absent here: the original's default true), injected noise, lone width-halving blocks, time-
# and space-only up-samplers, the int shorthand, padding absent (zeros).
EXOTIC = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "latent_channels": 128,
    "encoder_blocks": [["res_x", 1]],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_all", {"residual": False, "multiplier": 1}],
        ["res_x", {"num_layers": 1}],
        ["compress_space", {}],
        ["res_x_y", {"multiplier": 2}],
        ["compress_time", {}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 2, "inject_noise": True}],
        ["res_x", 1],
    ],
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "causal_decoder": True,
    "normalize_latent_channels": True,
    "decoder_base_channels": 8,
}


def original_class() -> Any:
    from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder

    return CausalVideoAutoencoder


def make_original_ltx(path: Path, vae_config: dict[str, Any], seed: int = 0) -> Any:
    """Build the original `CausalVideoAutoencoder` from `vae_config` with perturbed random
    weights, save it as a release single file at `path`, and return the original code's own
    load of that file (`CausalVideoAutoencoder.from_pretrained`), fp32, eval mode."""
    cls = original_class()
    torch.manual_seed(seed)
    vae = cls.from_config(json.loads(json.dumps(vae_config)))  # from_config edits its dict
    g = torch.Generator().manual_seed(seed)
    state = {}
    with torch.no_grad():
        for name, t in vae.state_dict().items():
            if t.is_floating_point() and not name.endswith("timestep_scale_multiplier"):
                # Norm weights start at 1, biases and noise scales at 0: no term may vanish.
                t = t + torch.randn(t.shape, generator=g) * 0.05
            if name.endswith("running_var"):
                t = torch.rand(t.shape, generator=g) + 0.5
            state["vae." + name] = t.contiguous()
    c = vae_config["latent_channels"]
    state["vae.per_channel_statistics.mean-of-means"] = torch.randn(c, generator=g) * 0.5
    state["vae.per_channel_statistics.std-of-means"] = torch.rand(c, generator=g) + 0.5
    state["vae.per_channel_statistics.mean-of-stds"] = torch.ones(c)  # in releases, unused
    state["vae.per_channel_statistics.channel"] = torch.arange(c, dtype=torch.float32)
    # A release also holds the transformer; one of its tensors stands for it.
    state["model.diffusion_model.patchify_proj.weight"] = torch.zeros(4, c)
    metadata = {"config": json.dumps({"vae": vae_config, "transformer": {}})}
    save_file(state, str(path), metadata=metadata)
    return cls.from_pretrained(path).eval()
