"""Tiny-vs-full quality with real weights: `--decoder tiny` (and the preview) against the full VAE.

    python scripts/tiny_quality.py run.safetensors --model wan \\
        --vae Wan-AI/Wan2.1-T2V-1.3B-Diffusers --tiny taew2_1.safetensors

Decodes each latent file three ways with latent2mp4 (full VAE, tiny decoder, weightless preview)
and prints PSNR / SSIM of tiny and preview against the full VAE, plus decode times (weights are
loaded once, untimed). It needs the released weights and latents a diffusion model produced: on
random weights or random latents the numbers mean nothing (which is why scripts/bench.py --mode
tiny measures only speed). Each file must hold one video (batch 1, the last trajectory step).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from latent2mp4 import load_decoder
from latent2mp4.metrics import psnr, ssim

DECODERS = ("vae", "tiny", "preview")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("latents", type=Path, nargs="+")
    ap.add_argument("--model", "-m", required=True, help="preset name, e.g. wan")
    ap.add_argument("--vae", help="the full VAE (default: the preset's Hugging Face repo)")
    ap.add_argument("--tiny", required=True, help="the taehv checkpoint, e.g. taew2_1.safetensors")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", help="decode precision of both (default fp32)")
    ap.add_argument("--latent-space", default="auto", choices=("auto", "model", "vae"))
    args = ap.parse_args()
    print("| file | decoder | seconds | PSNR vs full dB (mean / min frame) | SSIM vs full |")
    print("| --- | --- | --- | --- | --- |")
    decoders = {
        kind: load_decoder(args.model, args.tiny if kind == "tiny" else args.vae, args.device,
                           args.dtype, decoder=kind)
        for kind in DECODERS
    }  # fmt: skip
    for path in args.latents:
        frames: dict[str, np.ndarray] = {}
        for kind, decoder in decoders.items():
            start = time.perf_counter()
            frames[kind] = np.stack(list(decoder.frames(path, latent_space=args.latent_space)))
            seconds = time.perf_counter() - start
            if kind == "vae":
                print(f"| {path.name} | full VAE | {seconds:.2f} | reference | reference |")
                continue
            full = frames["vae"]
            assert frames[kind].shape == full.shape, (kind, frames[kind].shape, full.shape)
            p = [psnr(a, b) for a, b in zip(frames[kind], full, strict=True)]
            s = np.mean([ssim(a, b) for a, b in zip(frames[kind], full, strict=True)])
            print(f"| {path.name} | {kind} | {seconds:.2f} | {np.mean(p):.2f} / {min(p):.2f} "
                  f"| {s:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
