"""MiniMax-H3 video VAE decoder, weight-compatible with diffusers' `AutoencoderKLMiniMaxH3` and
with the original release (`video_vae/source/model.safetensors`).

A non-causal ViT decodes clips of `chunk + overlap` latents (5 + 2), clip by clip
(`latent2mp4.clips`); the engine cross-fades the clips and tiles space with the release's
covering tiles (the preset's `tiling`). The decoder's output is ImageNet-normalised RGB, which
`finalize` maps to the engine's [-1, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from latent2mp4.clips import ClipPlan
from latent2mp4.engine import Chunk
from latent2mp4.models.family import Family, Shapes
from latent2mp4.models.minimax_h3.vit import VitConfig, VitDecoder

# The original config's `pixel_norm_type: imagenet`: the decoder outputs (rgb - mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# `_class_name` of the original release's `video_vae/source/config.json`.
ORIGINAL_CLASS = "AutoencoderKLLegacy"


@dataclass(frozen=True)
class H3Config:
    vit: VitConfig
    clip_length: int = 17
    token_drop: int = 3

    @property
    def latent_channels(self) -> int:
        return self.vit.latent_channels

    @property
    def plan(self) -> ClipPlan:
        return ClipPlan(self.clip_length, self.token_drop, self.vit.patch_t)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> H3Config:
        """A diffusers `config.json`, or the original release's source config merged with its
        wrapper `video_vae/config.json` (what weights.py reads for that layout)."""
        if d.get("_class_name") == ORIGINAL_CLASS or "vit_decoder_kwargs" in d:
            return cls._from_original(d)
        vit = VitConfig(
            latent_channels=int(d.get("latent_channels", 24)),
            out_channels=int(d.get("out_channels", 3)),
            patch=math.prod(int(f) for f in d.get("spatial_downsample_factors", (2, 2, 2, 2, 1, 1))),
            patch_t=math.prod(
                int(f) for f in d.get("temporal_downsample_factors", (1, 2, 2, 1, 1, 1))
            ),
            num_layers=int(d.get("decoder_num_layers", 36)),
            heads=int(d.get("decoder_num_attention_heads", 32)),
            head_dim=int(d.get("decoder_attention_head_dim", 64)),
            registers=int(d.get("decoder_num_register_tokens", 4)),
            ffn_mult=int(d.get("decoder_ffn_mult", 4)),
            rope_theta=float(d.get("decoder_rope_theta", 100.0)),
            rope_dim_ratio=float(d.get("decoder_rope_dim_ratio", 0.75)),
            eps=float(d.get("decoder_norm_eps", 1e-5)),
        )
        return cls._checked(vit, int(d.get("clip_length", 17)), int(d.get("token_drop", 3)))

    @classmethod
    def _from_original(cls, d: Mapping[str, Any]) -> H3Config:
        kw = d["vit_decoder_kwargs"]
        time = d.get("time_up") or d.get("time_down") or (1, 2, 2, 1, 1, 1)
        space = d.get("space_up") or d.get("space_down") or (2, 2, 2, 2, 1, 1)
        vit = VitConfig(
            latent_channels=int(d.get("embed_dim", d.get("z_channels", 24))),
            out_channels=int(d.get("out_ch", 3)),
            patch=math.prod(int(f) for f in space),
            patch_t=math.prod(int(f) for f in time),
            num_layers=int(kw["num_layers"]),
            heads=int(kw["heads"]),
            head_dim=int(kw["dim_head"]),
            # not in the release's config: the reference's defaults until `complete` reads them
            # off the tensors
            registers=int(kw.get("num_register_tokens", 4)),
            ffn_mult=int(kw.get("ffn_mult", 4)),
            rope_theta=float(kw.get("rope_theta", 100.0)),
            rope_dim_ratio=float(kw.get("rope_dim_ratio", 0.75)),
            eps=float(kw.get("eps", 1e-5)),
            original_layout=True,
        )
        return cls._checked(
            vit, int(d.get("vae_clip_length", 17)), int(d.get("vae_token_drop", 3))
        )

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> H3Config:
        """A single file without a config (ComfyUI's repackaged VAE): widths from the tensors;
        head width, patch sizes, RoPE and clip geometry cannot be seen in shapes and are the
        release's (head_dim 64, 16×16×4 patches, θ 100 over 3/4 of each head, 17-frame clips)."""
        dim, channels = shapes["decoder.proj_in.weight"]
        original = "decoder.blocks.0.attn.to_qkv.weight" in shapes
        layers = 1 + max(
            int(m[1]) for k in shapes if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))
        )
        hidden = shapes["decoder.blocks.0.ff.down.weight"][1]
        out = shapes["decoder.proj_out.weight"][0]
        base = VitConfig()
        if out != base.out_channels * base.patch_t * base.patch**2:
            raise ValueError(f"proj_out has {out} rows; the release's 3x4x16x16 patch has 3072")
        if dim % base.head_dim or hidden % dim:
            raise ValueError(f"width {dim} / FFN {hidden} do not fit {base.head_dim}-wide heads")
        vit = replace(
            base,
            latent_channels=channels,
            num_layers=layers,
            heads=dim // base.head_dim,
            registers=shapes["decoder.register_tokens"][1],
            ffn_mult=hidden // dim,
            original_layout=original,
        )
        return cls._checked(vit, 17, 3)

    @classmethod
    def _checked(cls, vit: VitConfig, clip_length: int, token_drop: int) -> H3Config:
        if vit.rope_dim % 6 or vit.rope_dim > vit.head_dim:
            raise ValueError(
                f"rotary width {vit.rope_dim} (head_dim x rope_dim_ratio) must be a multiple of "
                f"6 within the head"
            )
        cfg = cls(vit, clip_length, token_drop)
        cfg.plan  # noqa: B018 - validates the clip geometry
        return cfg


class H3Decoder(nn.Module):
    """Clip-by-clip MiniMax-H3 decoder (engine `StreamDecoder`); stateless across clips."""

    def __init__(self, cfg: H3Config) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.latent_channels
        self.post_quant_conv = nn.Conv3d(c, c, 1)
        self.decoder = VitDecoder(cfg.vit)

    @property
    def upscale(self) -> int:
        return self.cfg.vit.patch

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """diffusers' `_decode` clips, each one chunk. `max_frames` is ignored: a clip's
        result depends on the latents it sees, so the split is fixed."""
        plan = self.cfg.plan
        spans = plan.spans(num_frames)
        if not spans:
            raise ValueError(
                f"{num_frames} latent frames are too few for one clip (at least "
                f"{plan.chunk - plan.token_drop + 1})"
            )
        last = len(spans) - 1
        return [
            Chunk(
                start,
                stop,
                trim=plan.pad_frames(num_frames) if i == last else 0,
                blend=plan.overlap_frames if i else 0,
                emit=None if i == last else plan.main_frames,
            )
            for i, (start, stop) in enumerate(spans)
        ]

    def new_state(self) -> None:
        return None

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """One clip `(B, C, t ≤ chunk + overlap, h, w)` → its main frames, then its trailing
        overlap frames (the implicit leading frames of both halves dropped), ImageNet space."""
        cfg = self.cfg
        plan = cfg.plan
        if z.ndim != 5 or z.shape[1] != cfg.latent_channels:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}; expected (B, {cfg.latent_channels}, t, h, w)"
            )
        short = plan.clip_latents - z.shape[2]
        if short > 0:  # the last clip: repeat the last latent (its frames are trimmed later)
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, short, -1, -1)], dim=2)
        w = self.post_quant_conv.weight.flatten(1)
        z = torch.einsum("oc,bcthw->bothw", w, z) + self.post_quant_conv.bias.view(1, -1, 1, 1, 1)
        x = self.decoder(z)
        span = plan.chunk * cfg.vit.patch_t
        main = x[:, :, plan.pre_pad : span]
        if plan.token_drop == 0:
            return main
        return torch.cat([main, x[:, :, span + plan.pre_pad : 2 * span]], dim=2)

    def finalize(self, x: Tensor) -> Tensor:
        """ImageNet-normalised RGB → [0, 1] (clamped, as the pipeline) → [-1, 1]."""
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, -1, 1, 1, 1)
        return (x.float() * std + mean).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


# Checkpoint naming → our module's, applied in order. diffusers and the original release differ
# in the ViT's names (and in two tensor layouts, told apart by the config or by `to_qkv`);
# ComfyUI's repackaged file keeps the original names.
_RULES: list[tuple[str, str]] = [
    (r"^decoder\.transformer_blocks\.", "decoder.blocks."),
    (r"^decoder\.x_embedder\.", "decoder.proj_in."),
    (r"\.attn\.to_out\.0\.", ".attn.to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj."),
    (r"\.ff\.net\.2\.", ".ff.down."),
    (r"\.ff\.w1\.", ".ff.proj."),
    (r"\.ff\.w2\.", ".ff.down."),
]
_KEEP = ("decoder.", "post_quant_conv.")
_DROPPED = ("decoder.mask_token",)  # the original's training-only mask token


def rename_keys(keys: Iterable[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        if key in _DROPPED or not key.startswith(_KEEP):
            continue
        new = key
        for pattern, repl in _RULES:
            new = re.sub(pattern, repl, new)
        out[key] = new
    return out


def detect(keys: Collection[str]) -> bool:
    """A ViT decoder with register tokens and layer-scaled blocks, either naming."""
    ks = set(keys)
    return "decoder.register_tokens" in ks and (
        "decoder.transformer_blocks.0.scale1" in ks
    )


def complete(cfg: H3Config, shapes: Shapes) -> H3Config:
    """The original config names neither the register count nor the FFN width: the tensors do."""
    if not cfg.vit.original_layout:
        return cfg
    vit = cfg.vit
    if (reg := shapes.get("decoder.register_tokens")) is not None:
        vit = replace(vit, registers=reg[1])
    if (down := shapes.get("decoder.blocks.0.ff.down.weight")) is not None:
        if down[1] % vit.dim:
            raise ValueError(f"FFN width {down[1]} is not a multiple of the width {vit.dim}")
        vit = replace(vit, ffn_mult=down[1] // vit.dim)
    return replace(cfg, vit=vit)


def build(cfg: H3Config) -> H3Decoder:
    return H3Decoder(cfg)


FAMILY = Family(
    name="minimax-h3",
    diffusers_class="AutoencoderKLMiniMaxH3",
    config_from_diffusers=H3Config.from_diffusers,
    config_from_shapes=H3Config.from_shapes,
    build=build,
    rename_keys=rename_keys,
    detect=detect,
    other_classes=(ORIGINAL_CLASS,),
    complete_config=complete,
)
