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
- bf16 on CUDA against our fp32: PSNR;
- Mochi in Genmo's own naming against Genmo's decode (tests/data/mochi_genmo): max abs.
Tiny (taehv) decoders, base and Super, random weights at the released widths: fp32 on CUDA against
fp32 on the CPU (LSB), fp16 on CUDA against that (PSNR), and `decode_file(--decoder tiny)` on CUDA.
MiniMax-H3 (tiny ViT, 24 channels): fp32 on CUDA against diffusers on CUDA (+ the pipeline's
ImageNet pixel step), in the release's covering tiles and untiled, two clips; `decode_file` on CUDA
lossless against the pipeline's frames; bf16 on CUDA against our fp32 (PSNR).
SD image VAE (animatediff) and SVD's temporal decoder: fp32 on CUDA against the pipelines'
decode_latents on CUDA (SD untiled and tiled, SVD for windows of 2 and the whole clip), and
`decode_file` on CUDA lossless (LSB) and bf16 (PSNR).
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

from tiny_minimax_h3 import make_tiny_h3  # noqa: E402

from latent2mp4 import DecodeOptions, decode_file, load_preset, save_latents  # noqa: E402
from latent2mp4.audio import load_audio  # noqa: E402
from latent2mp4.engine import Segments, TileGrid, decode_stream  # noqa: E402
from latent2mp4.models.ltx.stack import Conditioned  # noqa: E402
from latent2mp4.video import read_video  # noqa: E402
from latent2mp4.weights import load_vae, resolve_vae  # noqa: E402

from tiny_cogvideox import make_tiny_cogvideox  # noqa: E402
from tiny_hunyuan import make_tiny_hunyuan  # noqa: E402
from tiny_hunyuan15 import make_tiny_hunyuan15  # noqa: E402
from tiny_ltx import make_tiny_ltx  # noqa: E402
from tiny_ltx2_audio import make_tiny_audio_vae, make_tiny_vocoder  # noqa: E402
from tiny_mochi import make_tiny_mochi  # noqa: E402
from tiny_sd import make_tiny_sd, make_tiny_svd  # noqa: E402
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


def sound_checks(report: Any) -> None:
    """Kandinsky 6, Cosmos 3 and MiniMax-H3 sound on CUDA (whole and in windows) against
    diffusers on CUDA, fp32."""
    import dataclasses

    from tiny_sound import (
        cosmos3_reference,
        h3_reference,
        make_tiny_cosmos3_audio,
        make_tiny_h3_audio,
        make_tiny_mmaudio,
        mmaudio_reference,
    )

    from latent2mp4.presets import AudioPreset

    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vae, voc = make_tiny_mmaudio(root / "k6")
        make_tiny_cosmos3_audio(root / "c3" / "sound_tokenizer")
        h3 = make_tiny_h3_audio(root / "h3" / "audio_vae")
        cases = [
            ("kandinsky6 mmaudio", root / "k6", AudioPreset(architecture="mmaudio"),
             torch.randn(1, 6, 60, generator=g), lambda z: mmaudio_reference(vae, voc, z)),
            ("cosmos3 tokenizer", root / "c3", AudioPreset(
                architecture="cosmos3-audio", vae_subfolder="sound_tokenizer",
                vocoder_subfolder=None), torch.randn(1, 6, 60, generator=g), None),
            ("minimax-h3 audio", root / "h3", AudioPreset(
                architecture="minimax-h3-audio", vocoder_subfolder=None),
             torch.randn(1, 2, 4, 60, generator=g), lambda z: h3_reference(h3, z[0])),
        ]  # fmt: skip
        tok = None
        for name, folder, spec, z, ref in cases:
            preset = dataclasses.replace(load_preset("wan"), audio=spec)
            sound = load_audio(DecodeOptions(vae=str(folder)), preset, CUDA)
            if ref is None:
                from diffusers import Cosmos3AVAEAudioTokenizer

                tok = Cosmos3AVAEAudioTokenizer.from_pretrained(folder / "sound_tokenizer")
                tok = tok.to(CUDA).eval()
                ref = lambda z, tok=tok: cosmos3_reference(tok, z[0])[None]  # noqa: E731
            else:
                for m in (vae, voc, h3):
                    m.to(CUDA)
            zc = z.to(CUDA)
            with torch.no_grad():
                want = ref(zc)
                got = sound.waveform(zc)
                sound.chunk_frames = 7
                windows = sound.waveform(zc)
            diff = (got - want).abs().max().item()
            report(f"{name} fp32 cuda waveform max abs", diff, diff <= 3e-4)
            diff = (windows - got).abs().max().item()
            report(f"{name} cuda windows vs whole max abs", diff, diff <= 1e-6)


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
    genmo_check(report)
    h3_checks(report)
    sd_checks(report)
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
    sound_checks(report)
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


def genmo_check(report: Callable[..., None]) -> None:
    """Genmo-original Mochi weights on CUDA against Genmo's own decode (the golden fixture of
    tests/test_mochi_genmo.py), one and several latent frames per call."""
    from safetensors.torch import load_file

    data = ROOT / "tests" / "data" / "mochi_genmo"
    golden = load_file(data / "golden.safetensors")
    preset = load_preset("mochi")
    dec = load_vae(resolve_vae(str(data / "decoder.safetensors"), preset), preset, CUDA,
                   torch.float32).decoder  # fmt: skip
    for frames in (1, 4):
        with torch.inference_mode():
            chunks = decode_stream(dec, golden["vae_latents"], device=CUDA,
                                   dtype=torch.float32, max_chunk_frames=frames)  # fmt: skip
            got = torch.cat(list(chunks), dim=2).cpu()
        diff = (got - golden["video"]).abs().max().item()
        report(f"mochi Genmo file cuda, {frames} latent frame(s) per call, vs Genmo's decode",
               diff, diff <= PARITY)  # fmt: skip


def h3_checks(report: Callable[..., None]) -> None:
    from latent2mp4.tiling import tile_grid

    preset = load_preset("minimax-h3")
    imagenet = [torch.tensor(v, device=CUDA).view(1, 3, 1, 1, 1)
                for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vae"
        vae = make_tiny_h3(folder, latent_channels=24).to(CUDA)
        z = torch.randn(1, 24, 8, 20, 18, generator=torch.Generator().manual_seed(0))
        mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in
                     (vae.config.latents_mean, vae.config.latents_std))  # fmt: skip
        zv = z * std + mean
        for tiled in (True, False):
            vae.use_tiling = tiled
            with torch.no_grad():
                ref = vae.decode(zv.to(CUDA)).sample.float()
            ref = (ref * imagenet[1] + imagenet[0]).clamp(0, 1) * 2 - 1
            grid = tile_grid(preset, None, None) if tiled else None
            got = ours(folder, "minimax-h3", zv, torch.float32, grid=grid)
            diff = (got - ref).abs().max().item()
            report(f"minimax-h3 fp32 cuda {'tiled' if tiled else 'whole'} max abs", diff,
                   diff <= PARITY)  # fmt: skip
        vae.use_tiling = True
        src, out, bf16 = (Path(tmp) / n for n in ("z.safetensors", "o.mkv", "b.mkv"))
        save_latents(src, z, model="minimax-h3", latent_space="model")
        decode_file(src, DecodeOptions(vae=str(folder), device="cuda", dtype="fp32",
                                       lossless=True, out=out))  # fmt: skip
        frames_out = read_video(out)[0]
        with torch.no_grad():
            video = vae.decode(zv.to(CUDA)).sample.float()
        video = (video * imagenet[1] + imagenet[0]).clamp(0, 1)[0].permute(1, 2, 3, 0)
        expected = (video * 255).round().to(torch.uint8).cpu().numpy()
        lsb = int(np.abs(frames_out.astype(int) - expected.astype(int)).max())
        report("minimax-h3 decode_file cuda lossless vs pipeline frames", lsb, lsb <= 1, " LSB")
        decode_file(src, DecodeOptions(vae=str(folder), device="cuda", dtype="bf16",
                                       lossless=True, out=bf16))  # fmt: skip
        p = psnr(read_video(bf16)[0], frames_out)
        report("minimax-h3 bf16 cuda vs our fp32 PSNR", p, p >= 30, " dB")


def sd_checks(report: Callable[..., None]) -> None:
    """animatediff (frames as a batch through AutoencoderKL) and svd (decode_chunk_size windows
    with num_frames) on CUDA against the diffusers pipelines' decode_latents on CUDA."""
    g = torch.Generator().manual_seed(0)
    for model in ("animatediff", "svd"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "vae"
            vae = make_tiny_sd(folder, "sd") if model == "animatediff" else make_tiny_svd(folder)
            vae = vae.to(CUDA)
            z = torch.randn(1, 4, 5, 13, 10, generator=g)  # (B, C, F, h, w) VAE space
            flat = z.transpose(1, 2).flatten(0, 1).to(CUDA)
            preset = load_preset(model)
            dec: Any = load_vae(resolve_vae(str(folder), preset), preset, CUDA, torch.float32)
            windows = [None] if model == "animatediff" else [None, 2]
            for tiled in (False, True) if model == "animatediff" else (False,):
                for window in windows:
                    with torch.no_grad():
                        if model == "animatediff":
                            vae.enable_tiling() if tiled else vae.disable_tiling()
                            ref = vae.decode(flat).sample
                        else:
                            n = window or 5
                            ref = torch.cat([vae.decode(flat[i : i + n], num_frames=len(
                                flat[i : i + n])).sample for i in range(0, 5, n)])  # fmt: skip
                    ref = ref.reshape(1, 5, *ref.shape[1:]).transpose(1, 2).float()
                    grid = TileGrid.from_pixels((64, 64), (48, 48), 8) if tiled else None
                    segments = Segments(window).ranges(5)
                    with torch.inference_mode():
                        chunks = decode_stream(dec.decoder, z, grid, CUDA, torch.float32,
                                               max_chunk_frames=4, segments=segments)  # fmt: skip
                        got = torch.cat(list(chunks), dim=2)
                    diff = (got - ref).abs().max().item()
                    what = "tiled" if tiled else "whole"
                    what = f"window {window or 'all'}" if model == "svd" else what
                    report(f"{model} fp32 cuda {what} max abs", diff, diff <= PARITY)
            if model == "animatediff":
                vae.disable_tiling()
            src, out = Path(tmp) / "z.safetensors", Path(tmp) / "out.mkv"
            scale = vae.config.scaling_factor
            stored = (z * scale).transpose(1, 2).contiguous() if model == "svd" else z * scale
            save_latents(src, stored, model=model, latent_space="model")
            opts = DecodeOptions(vae=str(folder), device="cuda", dtype="fp32", lossless=True,
                                 no_tile=True, out=out)  # fmt: skip
            decode_file(src, opts)
            with torch.no_grad():
                zz = 1 / scale * stored.to(CUDA)
                if model == "svd":
                    ref = vae.decode(zz.flatten(0, 1), num_frames=5).sample
                else:
                    ref = vae.decode(zz.transpose(1, 2).flatten(0, 1)).sample
            video = (ref.float().cpu() / 2 + 0.5).clamp(0, 1)
            expected = (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            frames_out = read_video(out)[0]
            lsb = int(np.abs(frames_out.astype(int) - expected.astype(int)).max())
            report(f"{model} decode_file cuda lossless vs pipeline frames", lsb, lsb <= 1, " LSB")
            bf16 = Path(tmp) / "bf16.mkv"
            decode_file(src, DecodeOptions(vae=str(folder), device="cuda", dtype="bf16",
                                           lossless=True, no_tile=True, out=bf16))  # fmt: skip
            p = psnr(read_video(bf16)[0], frames_out)
            report(f"{model} bf16 cuda vs our fp32 PSNR", p, p >= 30, " dB")


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
