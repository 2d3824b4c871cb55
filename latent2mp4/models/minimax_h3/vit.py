"""The MiniMax-H3 ViT decoder: every latent voxel one token, full self-attention, one pixel patch
per token. Weight names follow diffusers' `MiniMaxH3VideoViTDecoder3d` where the tensors are the
same; the original release's fused attention and gated-FFN layouts have modules of their own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class VitConfig:
    latent_channels: int = 24
    out_channels: int = 3
    patch: int = 16  # pixels per token side (the spatial ratio)
    patch_t: int = 4  # frames per token (the temporal ratio)
    num_layers: int = 36
    heads: int = 32
    head_dim: int = 64
    registers: int = 4
    ffn_mult: int = 4
    rope_theta: float = 100.0
    rope_dim_ratio: float = 0.75
    eps: float = 1e-5
    # The original release stores q, k and v fused per head ([h0: q k v, h1: q k v, ...]) and
    # the gated FFN's input projection as [gate; up]; diffusers splits q/k/v and stores [up; gate].
    original_layout: bool = False

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.rope_dim_ratio)


def rope_tables(
    cfg: VitConfig, frames: int, h: int, w: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """cos/sin `(N + registers + 1, 1, rope_dim)` in fp32 for a `frames`×`h`×`w` token grid.

    Coordinates are cell centres normalised to [-1, 1) per axis of *this* grid (so the tile size
    is part of the function), scaled by 2π; the register and class tokens sit at position 0.
    """
    n_freq = cfg.rope_dim // 6
    inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(n_freq, dtype=torch.float32, device=device) * 6 / cfg.rope_dim
    )
    axes = [
        2.0 * (torch.arange(0.5, n, dtype=torch.float32, device=device) / n) - 1.0
        for n in (frames, h, w)
    ]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    pos = torch.cat([pos, pos.new_zeros(cfg.registers + 1, 3)])
    angles = (2.0 * math.pi * pos[:, :, None] * inv_freq).flatten(1)  # (N, 3 * n_freq)
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first `rope_dim` channels of every head of `(B, N, H, d)`."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    a, b = rot.chunk(2, dim=-1)
    turned = torch.cat([-b, a], dim=-1)
    return torch.cat([rot * cos + turned * sin, rest], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.heads, self.head_dim, self.eps = cfg.heads, cfg.head_dim, cfg.eps
        self.fused = cfg.original_layout
        if self.fused:
            self.to_qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        else:
            self.to_q = nn.Linear(cfg.dim, cfg.dim)
            self.to_k = nn.Linear(cfg.dim, cfg.dim)
            self.to_v = nn.Linear(cfg.dim, cfg.dim)
        self.to_out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, _ = x.shape
        if self.fused:  # one GEMM; the per-head interleave is a view
            q, k, v = self.to_qkv(x).view(b, n, self.heads, 3, self.head_dim).unbind(3)
        else:
            q = self.to_q(x).view(b, n, self.heads, self.head_dim)
            k = self.to_k(x).view(b, n, self.heads, self.head_dim)
            v = self.to_v(x).view(b, n, self.heads, self.head_dim)
        # q/k RMSNorm (no affine) in fp32, as the reference, then back to the compute dtype
        q = F.rms_norm(q.float(), (self.head_dim,), eps=self.eps).to(x.dtype)
        k = F.rms_norm(k.float(), (self.head_dim,), eps=self.eps).to(x.dtype)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """SwiGLU: `down(up · silu(gate))`, hidden width `ffn_mult · dim`."""

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        hidden = cfg.ffn_mult * cfg.dim
        self.gate_first = cfg.original_layout
        # one input projection holding both halves; which half is the gate is the layout
        self.proj = nn.Linear(cfg.dim, 2 * hidden)
        self.down = nn.Linear(hidden, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        first, second = self.proj(x).chunk(2, dim=-1)
        gate, up = (first, second) if self.gate_first else (second, first)
        return self.down(up * F.silu(gate))


class Block(nn.Module):
    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.scale1 = nn.Parameter(torch.zeros(cfg.dim))
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.eps)
        self.ff = FeedForward(cfg)
        self.scale2 = nn.Parameter(torch.zeros(cfg.dim))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype) -> Tensor:
        """`x`: the fp32 residual stream; the branches compute in `dtype` (the weights')."""
        dim = (x.shape[-1],)
        h = F.rms_norm(x, dim, self.norm1.weight.float(), self.eps).to(dtype)
        x = x + self.attn(h, cos, sin).float() * self.scale1.float()
        h = F.rms_norm(x, dim, self.norm2.weight.float(), self.eps).to(dtype)
        return x + self.ff(h).float() * self.scale2.float()


class VitDecoder(nn.Module):
    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj_in = nn.Linear(cfg.latent_channels, cfg.dim)
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.proj_out = nn.Linear(cfg.dim, cfg.out_channels * cfg.patch_t * cfg.patch**2)

    def forward(self, z: Tensor) -> Tensor:
        """`(B, C, f, h, w)` latents → `(B, out, f·patch_t, h·patch, w·patch)`, the decoder's
        (ImageNet-normalised) output space."""
        cfg = self.cfg
        b, _, f, h, w = z.shape
        dtype = self.proj_in.weight.dtype
        tokens = self.proj_in(z.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, -1))
        extra = torch.cat(
            [self.register_tokens.expand(b, -1, -1), tokens.new_zeros(b, 1, cfg.dim)], dim=1
        )
        x = torch.cat([tokens, extra.to(tokens.dtype)], dim=1).float()
        cos, sin = rope_tables(cfg, f, h, w, z.device)
        for block in self.blocks:
            x = block(x, cos, sin, dtype)
        x = F.layer_norm(
            x[:, : f * h * w],
            (cfg.dim,),
            self.norm_out.weight.float(),
            self.norm_out.bias.float(),
            cfg.eps,
        )
        x = self.proj_out(x.to(dtype))
        p, pt = cfg.patch, cfg.patch_t
        x = x.view(b, f, h, w, cfg.out_channels, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, cfg.out_channels, f * pt, h * p, w * p)
