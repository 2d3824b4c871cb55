"""The Stable Diffusion image VAE's 2-D decoder blocks, shared by the `sd` and `svd` families.

Attribute names are diffusers' key paths (`ResnetBlock2D`, the mid-block `Attention`,
`Upsample2D`), so diffusers checkpoints load without renaming; the CompVis/LDM names of the
original releases (`decoder.up.3.block.0`, `mid.attn_1.q`, …) go through `ldm_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from latent2mp4.models.family import Shapes
from latent2mp4.models.layers import squeeze_conv_weights

NORM_EPS = 1e-6  # every GroupNorm of the SD decoder (diffusers resnet_eps and the attention's)


class ResnetBlock2D(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, plus a 1x1 shortcut where the width changes."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        # The norms make fresh tensors, so SiLU and the residual add can work in place.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class Attention2D(nn.Module):
    """One head over the h*w positions of each image, with a residual (diffusers `Attention`
    as the VAE mid block builds it: group norm first, biases everywhere)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.register_load_state_dict_pre_hook(squeeze_conv_weights)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, hw, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        a = self.to_out[0](F.scaled_dot_product_attention(q, k, v)).squeeze(1)
        return a.transpose(1, 2).reshape(b, c, h, w).add_(x)


class Upsample2D(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def count(shapes: Shapes | Iterable[str], template: str) -> int:
    """How many consecutive indices `template.format(i)` names, from 0."""
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


# CompVis/LDM decoder names → diffusers names, as applied after the up-level index is
# reversed (`up.{n-1-i}` is diffusers' `up_blocks.{i}`, deepest first). `resnet` names where a
# resnet's own 2-D parts go: "" for the SD decoder, ".spatial_res_block" in SVD's.
_Replacement = str | Callable[[re.Match[str]], str]


def ldm_rules(levels: int, resnet: str = "") -> list[tuple[str, _Replacement]]:
    def up(m: re.Match[str]) -> str:
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}."

    return [
        (r"^decoder\.mid\.block_(\d+)\.", lambda m: f"decoder.mid_block.resnets.{int(m[1]) - 1}."),
        (r"^decoder\.mid\.attn_1\.norm\.", "decoder.mid_block.attentions.0.group_norm."),
        (r"^decoder\.mid\.attn_1\.(q|k|v)\.", r"decoder.mid_block.attentions.0.to_\1."),
        (r"^decoder\.mid\.attn_1\.proj_out\.", "decoder.mid_block.attentions.0.to_out.0."),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: up(m) + "upsamplers.0."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", lambda m: up(m) + f"resnets.{m[2]}."),
        (r"^decoder\.norm_out\.", "decoder.conv_norm_out."),
        (
            r"^(decoder\.(?:mid_block|up_blocks\.\d+)\.resnets\.\d+)\."
            r"(norm1|conv1|norm2|conv2|nin_shortcut)\.",
            lambda m: f"{m[1]}{resnet}.{'conv_shortcut' if m[2] == 'nin_shortcut' else m[2]}.",
        ),
    ]


def ldm_levels(keys: Iterable[str]) -> int:
    """Up levels of an LDM-named decoder: one more than the largest `decoder.up.{i}` index."""
    found = [int(m[1]) for k in keys if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    return max(found, default=-1) + 1


def apply_rules(key: str, rules: list[tuple[str, _Replacement]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key
