"""CUDA checks that the CPU test suite cannot make: run on a machine with a GPU.

    python scripts/cuda_check.py            # needs torch with CUDA, diffusers==0.42.1, ffmpeg

For every family (the tests' tiny random configs, saved with `save_pretrained`):
- fp32 on CUDA against diffusers' `decode()` on CUDA, untiled and tiled: max abs difference;
- Wan, Mochi, HunyuanVideo 1.5: several latent frames per call (the CUDA path) against one frame
  per call: max abs;
- LTX (0.9.0, timestep-conditioned 0.9.5 at noise 0, LTX-2): also diffusers' framewise decoding
  against our temporal tiles;
- `decode_file(device="cuda", lossless=True)` end to end: frames against the diffusers
  pipeline's, in LSB;
- bf16 on CUDA against our fp32: PSNR.
Tiny (taehv) decoders, base and Super, random weights at the released widths: fp32 on CUDA against
fp32 on the CPU (LSB), fp16 on CUDA against that (PSNR), and `decode_file(--decoder tiny)` on CUDA.
Sound (LTX-2 audio VAE + vocoder, and the bandwidth-extension vocoder): our waveform on CUDA
against diffusers' chain on CUDA, max abs.
Prints one line per check and exits 1 if any exceeds its bound.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from latent2mp4 import DecodeOptions, decode_file, load_preset, save_latents  # noqa: E402
from latent2mp4.audio import load_audio  # noqa: E402
from latent2mp4.engine import TileGrid, decode_stream  # noqa: E402
from latent2mp4.models.ltx.layers import Conditioned  # noqa: E402
from latent2mp4.video import read_video  # noqa: E402
from latent2mp4.weights import load_vae, resolve_vae  # noqa: E402

from tiny_cogvideox import make_tiny_cogvideox  # noqa: E402
from tiny_hunyuan import make_tiny_hunyuan  # noqa: E402
from tiny_hunyuan15 import make_tiny_hunyuan15  # noqa: E402
from tiny_ltx import make_tiny_ltx  # noqa: E402
from tiny_ltx2_audio import make_tiny_audio_vae, make_tiny_vocoder  # noqa: E402
from tiny_mochi import make_tiny_mochi  # noqa: E402
from tiny_wan import make_tiny_wan  # noqa: E402

PARITY = 1e-4
CUDA = torch.device("cuda")

# model, builder, variant, channels, spatial ratio, latent frames, diffusers tiling kwargs
CASES: list[tuple[str, Callable[..., Any], str, int, int, int, dict[str, float]]] = [
    ("wan", make_tiny_wan, "2.1", 16, 8, 5, {}),
    ("wan2.2", make_tiny_wan, "2.2", 48, 16, 3, {}),
    ("hunyuan", make_tiny_hunyuan, "tiny", 16, 8, 7, {}),
    # enable_tiling takes latent tile sizes and an overlap factor: stride int(4 * 0.75) = 3.
    (
        "hunyuan1.5",
        make_tiny_hunyuan15,
        "tiny",
        32,
        16,
        5,
        {"tile_latent_min_height": 4, "tile_latent_min_width": 4, "tile_overlap_factor": 0.25},
    ),
    (
        "cogvideox",
        make_tiny_cogvideox,
        "groups32",
        16,
        8,
        5,
        {"tile_overlap_factor_height": 1 / 4, "tile_overlap_factor_width": 1 / 4},
    ),
    ("mochi", make_tiny_mochi, "tiny", 12, 8, 4, {}),
    ("ltx", make_tiny_ltx, "v090", 128, 32, 3, {}),
    ("ltx", make_tiny_ltx, "v095", 128, 32, 3, {}),
    ("ltx2", make_tiny_ltx, "ltx2", 128, 32, 3, {}),
]
TIMESTEP = 0.05  # decode timestep of the conditioned LTX case (noise 0: deterministic)


def vae_space(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The diffusers pipelines' de-normalisation of model-space `(B, C, T, h, w)` latents."""
    cfg = vae.config
    if type(vae).__name__ == "AutoencoderKLWan":
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        inv = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
        return z / inv + mean
    if type(vae).__name__ == "AutoencoderKLMochi":  # pipeline_mochi.py
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
        return z * std / cfg.scaling_factor + mean
    if type(vae).__name__.startswith("AutoencoderKLLTX"):
        mean = vae.latents_mean.float().cpu().view(1, -1, 1, 1, 1)
        std = vae.latents_std.float().cpu().view(1, -1, 1, 1, 1)
        return z * std / cfg.scaling_factor + mean
    return z / cfg.scaling_factor


def reference(vae: Any, zv: torch.Tensor) -> torch.Tensor:
    """diffusers' `decode` on CUDA; LTX's conditioned VAEs get the decode timestep."""
    with torch.no_grad():
        if getattr(vae.config, "timestep_conditioning", False):
            temb = torch.full((zv.shape[0],), TIMESTEP, device=CUDA)
            return vae.decode(zv.to(CUDA), temb).sample.float()
        return vae.decode(zv.to(CUDA)).sample.float()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ours(folder: Path, model: str, z: torch.Tensor, dtype: torch.dtype, **kw: Any) -> torch.Tensor:
    preset = load_preset(model)
    dec: Any = load_vae(resolve_vae(str(folder), preset), preset, CUDA, dtype).decoder
    if getattr(getattr(dec, "layout", None), "conditioned", False):
        dec = Conditioned(dec, TIMESTEP, 0)
    with torch.inference_mode():
        return torch.cat(list(decode_stream(dec, z, device=CUDA, dtype=dtype, **kw)), dim=2)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    # The oracle in true fp32 too: PyTorch's default lets cuDNN convolve fp32 in TF32.
    torch.backends.cudnn.allow_tf32 = False
    failures = 0

    def report(name: str, value: float, ok: bool, unit: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.3g}{unit}")

    for model, make, variant, channels, ratio, frames, tiling in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "vae"
            vae = make(folder, variant).to(CUDA)
            g = torch.Generator().manual_seed(0)
            # LTX-2 reflect-pads: keep every tile at least 2 latents wide, as diffusers needs.
            z = torch.randn(1, channels, frames, 8, 8 if ratio == 32 else 7, generator=g)
            zv = vae_space(vae, z)
            px = 4 * ratio  # 4-latent tiles every 3: several tiles and blends on 8x7 latents
            for tiled in (False, True):
                grid = None
                if tiled:
                    grid = TileGrid.from_pixels((px, px), (3 * ratio, 3 * ratio), ratio=ratio)
                    vae.enable_tiling(
                        tile_sample_min_height=px,
                        tile_sample_min_width=px,
                        **(tiling or {"tile_sample_stride_height": 3 * ratio,
                                      "tile_sample_stride_width": 3 * ratio}),
                    )  # fmt: skip
                else:
                    vae.disable_tiling()
                ref = reference(vae, zv)
                whole = {"max_chunk_frames": 1000} if model.startswith("ltx") else {}
                got = ours(folder, model, zv, torch.float32, grid=grid, **whole)
                diff = (got - ref).abs().max().item()
                report(f"{model} fp32 cuda {'tiled' if tiled else 'whole'} max abs", diff,
                       diff <= PARITY)  # fmt: skip
            vae.disable_tiling()
            if model.startswith("ltx"):
                vae.use_framewise_decoding = True
                ref = reference(vae, zv)
                vae.use_framewise_decoding = False
                got = ours(folder, model, zv, torch.float32, max_chunk_frames=1)
                diff = (got - ref).abs().max().item()
                report(f"{model} {variant} framewise max abs", diff, diff <= PARITY)
            if model.startswith("wan") or model in ("mochi", "hunyuan1.5"):
                one = ours(folder, model, zv, torch.float32, max_chunk_frames=1)
                many = ours(folder, model, zv, torch.float32, max_chunk_frames=4)
                diff = (one - many).abs().max().item()
                report(f"{model} 4 latent frames per call vs 1, max abs", diff, diff <= 1e-5)
            # End to end: the CLI's function on CUDA, lossless, against the pipeline's frames.
            src = Path(tmp) / "z.safetensors"
            stored = z.permute(0, 2, 1, 3, 4).contiguous() if model.startswith("cog") else z
            save_latents(src, stored, model=model, latent_space="model")
            out = Path(tmp) / "out.mkv"
            ltx = dict(decode_timestep=TIMESTEP, decode_noise_scale=0.0) if model == "ltx" else {}
            opts = DecodeOptions(vae=str(folder), device="cuda", dtype="fp32", lossless=True,
                                 no_tile=True, out=out, **ltx)  # fmt: skip
            decode_file(src, opts)
            frames_out = read_video(out)[0]
            video = reference(vae, zv).cpu()
            expected = (video / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).numpy() * 255
            expected = expected.round().astype(np.uint8)
            lsb = int(np.abs(frames_out.astype(int) - expected.astype(int)).max())
            report(f"{model} decode_file cuda lossless vs pipeline frames", lsb, lsb <= 1, " LSB")
            bf16 = Path(tmp) / "bf16.mkv"
            decode_file(src, DecodeOptions(vae=str(folder), device="cuda", dtype="bf16",
                                           lossless=True, no_tile=True, out=bf16,
                                           **ltx))  # fmt: skip
            p = psnr(read_video(bf16)[0], frames_out)
            report(f"{model} bf16 cuda vs our fp32 PSNR", p, p >= 30, " dB")
    tiny_checks(report)
    for bwe in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            vae = make_tiny_audio_vae(Path(tmp) / "a").to(CUDA)
            vocoder = make_tiny_vocoder(Path(tmp) / "v", bwe=bwe).to(CUDA)
            opts = DecodeOptions(audio_vae=str(Path(tmp) / "a"), vocoder=str(Path(tmp) / "v"))
            models = load_audio(opts, load_preset("wan"), CUDA)
            za = torch.randn(2, 4, 14, 4, generator=torch.Generator().manual_seed(0)).to(CUDA)
            with torch.no_grad():
                ref = vocoder(vae.decode(za).sample)
                got = models.vocoder(models.vae(za))
            diff = (got - ref).abs().max().item()
            name = "bwe vocoder" if bwe else "vocoder"
            report(f"audio VAE + {name} fp32 cuda waveform max abs", diff, diff <= PARITY)
    # A non-finite chunk on CUDA (the pinned-copy path of to_frames) stops before its frames.
    from latent2mp4.errors import DecodeError
    from latent2mp4.frames import to_frames

    good = torch.zeros(1, 3, 4, 8, 8, device=CUDA, dtype=torch.float16)
    bad = torch.full_like(good, float("inf"))
    got: list[np.ndarray] = []
    try:
        got.extend(to_frames([good, bad, good]))
        stopped = False
    except DecodeError as e:
        stopped = "float16" in str(e)
    report("non-finite fp16 chunk on CUDA: frames handed out before the stop", len(got),
           stopped and len(got) == 4)  # fmt: skip
    print(f"{failures} failure(s)")
    return 1 if failures else 0


def tiny_checks(report: Callable[..., None]) -> None:
    from safetensors.torch import save_file

    from latent2mp4.models.tiny.blocks import Layout
    from latent2mp4.models.tiny.loader import load_tiny
    from latent2mp4.models.tiny.taehv import TinyConfig, TinyDecoder
    from latent2mp4.models.tiny.taesd import TaesdConfig

    cases: list[tuple[str, Layout]] = [
        ("wan", TinyConfig()),
        ("wan2.2", TinyConfig(48, 2, (1, 2, 2), (512, 256, 128, 64), True)),
        ("mochi", TinyConfig(12, 1, (1, 2, 3))),  # TAEM1
        ("animatediff", TaesdConfig()),  # TAESD
        ("svd", TaesdConfig(memory=True)),  # TAESDV
    ]
    for model, cfg in cases:
        preset = load_preset(model)
        name = f"{model} {cfg.describe()}"
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            cpu = TinyDecoder(cfg, preset.frames_out).eval()
            path = Path(tmp) / "taehv.safetensors"
            save_file({k: v.contiguous() for k, v in cpu.state_dict().items()}, str(path))
            z = torch.randn(
                1, cfg.latent_channels, 5, 8, 7, generator=torch.Generator().manual_seed(0)
            )
            with torch.inference_mode():
                ref = torch.cat(list(decode_stream(cpu, z)), 2)
                outs = {}
                for dtype in (torch.float32, torch.float16):
                    dec = load_tiny(str(path), preset, CUDA, dtype)[0]
                    outs[dtype] = torch.cat(
                        list(decode_stream(dec, z, device=CUDA, dtype=dtype)), 2
                    ).cpu()
            lsb = ((outs[torch.float32] - ref).abs() * 127.5).round().max().item()
            report(f"{name}: fp32 cuda vs cpu", lsb, lsb <= 1, " LSB")
            to8 = lambda x: ((x[0] + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()  # noqa: E731
            p = psnr(to8(outs[torch.float16]), to8(ref))
            report(f"{name}: fp16 cuda vs fp32 cpu PSNR", p, p >= 35, " dB")
            src, out = Path(tmp) / "z.safetensors", Path(tmp) / "out.mkv"
            stored = z.transpose(1, 2) if preset.layout == "BFCHW" else z  # SVD: (B, F, C, h, w)
            save_latents(src, stored, model=model, latent_space="model")
            decode_file(src, DecodeOptions(vae=str(path), decoder="tiny", device="cuda", out=out,
                                           lossless=True))  # fmt: skip
            frames = read_video(out)[0]
            lsb = int(np.abs(frames.astype(int) - to8(ref).astype(int)).max())
            report(f"{name}: decode_file cuda lossless vs cpu frames", lsb, lsb <= 1, " LSB")


if __name__ == "__main__":
    sys.exit(main())
