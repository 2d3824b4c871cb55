"""Write the built-in sample: a moving pattern projected into a preset's latent space.

The pattern (a colour wheel background with a white disc orbiting the centre) is drawn at latent
resolution and mapped to latents with the pseudo-inverse of the preset's preview factors, so the
preview decoder shows it back. Deterministic: no randomness at all.

    python scripts/make_sample.py out/sample.safetensors --model wan --frames 13
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from latent2mp4 import load_preset, save_latents


def pattern(t: int, h: int, w: int) -> torch.Tensor:
    """RGB in [-1, 1], shape (3, t, h, w)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w) * w / h, indexing="ij")
    frames = []
    for k in range(t):
        phase = 2 * math.pi * k / max(t, 1)
        angle = torch.atan2(y, x) + phase
        rgb = torch.stack([torch.cos(angle + o) for o in (0.0, 2.1, 4.2)]) * 0.6
        cx, cy = 0.55 * math.cos(phase), 0.55 * math.sin(phase)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < 0.06).float()
        frames.append(rgb * (1 - disc) + disc * 0.95)
    return torch.stack(frames, dim=1)


def to_latents(rgb: torch.Tensor, model: str) -> torch.Tensor:
    """Least-norm model-space latents (C, t, h, w) whose preview is `rgb`."""
    preset = load_preset(model)
    factors = torch.tensor(preset.preview.factors)  # (C, 3)
    bias = torch.tensor(preset.preview.bias).view(3, 1, 1, 1)
    return torch.einsum("rthw,rc->cthw", rgb - bias, torch.linalg.pinv(factors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="wan")
    ap.add_argument("--frames", type=int, default=13, help="latent frames")
    ap.add_argument("--height", type=int, default=60, help="latent height")
    ap.add_argument("--width", type=int, default=104, help="latent width")
    args = ap.parse_args()
    preset = load_preset(args.model)
    z = to_latents(pattern(args.frames, args.height, args.width), args.model)
    if preset.layout == "BFCHW":
        z = z.permute(1, 0, 2, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_latents(args.out, z.contiguous(), model=preset.name, fps=preset.fps, latent_space="model")
    print(args.out)


if __name__ == "__main__":
    main()
