"""Write the Mochi golden fixture: a tiny random decoder in Genmo's own naming and what Genmo's own
code decodes from fixed DiT-space latents.

Genmo's code is not on PyPI, so the test suite cannot run it; this script runs it once, on a
checkout of https://github.com/genmoai/mochi (it needs torch, safetensors and einops, and imports
nothing of latent2mp4), and saves

- `decoder.safetensors`: the decoder's state dict exactly as Genmo's `Decoder` names it (the
  layout of Genmo's released `decoder.safetensors`), weights stored as fp16 and decoded in fp32;
- `golden.safetensors`: `dit_latents` (B=2, model space), `vae_latents`
  (`dit_latents_to_vae_latents`) and `video` (the decoder's output, about [-1, 1]); Genmo's
  `decode_latents` returns exactly `((video + 1) / 2).clamp(0, 1)` channels-last, which is
  checked here and left out of the file to keep it small.

tests/test_mochi_genmo.py compares latent2mp4 with them. Deterministic (fixed seeds, CPU, fp32):

    python scripts/make_mochi_golden.py --genmo ~/src/mochi --out tests/data/mochi_genmo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# The released layout (4 widths, temporal expansions 1/2/3, spatial 2/2/2, no attention) at the
# smallest widths the 32-group norms allow; one residual block per stage except the first up
# block (skipped to keep the file small: its inputs are one latent frame per chunk either way).
ARCH = dict(
    out_channels=3,
    base_channels=32,
    channel_multipliers=[1, 1, 1, 1],
    temporal_expansions=[1, 2, 3],
    spatial_expansions=[2, 2, 2],
    num_res_blocks=[1, 1, 1, 0, 1],
    latent_dim=12,
    has_attention=[False] * 5,
    output_norm=False,
    nonlinearity="silu",
    output_nonlinearity="silu",
    causal=True,
)
LATENTS = (2, 12, 3, 2, 3)  # B, C, T, h, w: 13 frames of 16x24, non-square to catch transposes
SEED = 0


def commit_of(checkout: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--genmo", type=Path, required=True, help="a checkout of genmoai/mochi")
    ap.add_argument("--out", type=Path, default=Path("tests/data/mochi_genmo"))
    ap.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
    args = ap.parse_args()
    src = args.genmo / "src"
    if not (src / "genmo" / "mochi_preview" / "vae" / "models.py").is_file():
        sys.exit(f"error: {args.genmo} is not a genmoai/mochi checkout (no src/genmo/...)")
    sys.path.insert(0, str(src))
    from genmo.mochi_preview.vae.models import Decoder, decode_latents
    from genmo.mochi_preview.vae.vae_stats import dit_latents_to_vae_latents

    torch.manual_seed(SEED)
    decoder = Decoder(**ARCH).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in decoder.parameters():
            # Norm weights start at 1 and biases at 0: perturb everything so no term vanishes;
            # then round to fp16 so the stored weights are exactly the ones decoded here.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            p.copy_(p.half().float())
    dit = torch.randn(LATENTS, generator=g)
    vae = dit_latents_to_vae_latents(dit)
    with torch.inference_mode():
        video = decoder(vae)
        frames = decode_latents(decoder, vae)  # autocast("cuda") is off on a CPU
    assert torch.equal(frames, ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1))

    commit = args.commit or commit_of(args.genmo)
    meta = {"source": f"genmoai/mochi {commit}", "arch": json.dumps(ARCH), "seed": str(SEED)}
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.half().contiguous() for k, v in decoder.state_dict().items()}
    save_file(state, str(args.out / "decoder.safetensors"), metadata=meta)
    golden = {"dit_latents": dit, "vae_latents": vae, "video": video}
    save_file(
        {k: v.contiguous() for k, v in golden.items()},
        str(args.out / "golden.safetensors"),
        metadata=meta,
    )
    clamped = ((video < -1) | (video > 1)).float().mean().item()
    print(f"{args.out}: video {tuple(video.shape)}, range [{video.min():.2f}, {video.max():.2f}]")
    print(f"{clamped:.1%} of the values clamp; genmoai/mochi {commit}")


if __name__ == "__main__":
    main()
