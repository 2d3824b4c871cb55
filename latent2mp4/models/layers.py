"""Primitive layers that more than one family's decoder uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """L2 norm over channels times sqrt(C) and `gamma`, no bias (diffusers `WanRMS_norm`,
    `HunyuanVideo15RMS_norm`).

    `images` only selects the stored `gamma` shape, `(C, 1, 1)` versus `(C, 1, 1, 1)`, to match
    the checkpoint; any input with channels on dim 1 is accepted.
    """

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * (2 if images else 3)))

    def forward(self, x: Tensor, silu: bool = False, out: Tensor | None = None) -> Tensor:
        """`silu` fuses the activation that follows every norm in a residual block; `out`
        receives the result (a causal conv's `padded` room)."""
        # One reduction over channels (accumulated in fp32 even for half inputs), then two
        # in-place passes over x instead of normalize/cast/scale/gamma copies of the full tensor.
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).float()
        inv = (self.scale / norm.clamp_min_(1e-12)).to(x.dtype)
        y = torch.mul(x, inv, out=out) if out is not None else x * inv
        y.mul_(self.gamma.view(-1, *(1,) * (x.ndim - 2)))
        return F.silu(y, inplace=True) if silu else y


def padded_buffer(like: Tensor, history: int) -> tuple[Tensor, Tensor]:
    """A channels-last buffer for a causal 3x3x3 conv's input: `history` frames in front and one
    pixel all round, plus the view where `like`'s frames go.

    The layer before writes its output straight into the view, so the padded input is never
    built by concatenation; the caller fills the padding.
    """
    b, c, t, h, w = like.shape
    buf = torch.empty(
        (b, c, t + history, h + 2, w + 2),
        dtype=like.dtype,
        device=like.device,
        memory_format=torch.channels_last_3d,
    )
    return buf, buf[:, :, history:, 1:-1, 1:-1]


def squeeze_conv_weights(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object
) -> None:
    """A `load_state_dict` pre-hook for attention blocks whose q/k/v/out projections are Linear
    here but 1x1 (2-D) or 1x1x1 (3-D) conv weights in the original and ComfyUI files."""
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        key = f"{prefix}{name}.weight"
        w = state_dict.get(key)
        if w is not None and w.ndim > 2:
            state_dict[key] = w.reshape(w.shape[:2])


def check_latents(z: Tensor, channels: int) -> None:
    """A decoder's own guard on what reaches `decode_chunk`: `(B, channels, t, h, w)`."""
    if z.ndim != 5 or z.shape[1] != channels:
        raise ValueError(f"latents have shape {tuple(z.shape)}; expected (B, {channels}, t, h, w)")
