"""Benchmark latent2mp4 against diffusers on the same latents and the same weights (CPU or CUDA).

    python scripts/bench.py                        # speed: every family, fp32 and bf16, 3 runs each
    python scripts/bench.py --families wan --dtypes fp32 --repeats 5
    python scripts/bench.py --mode scale           # peak RSS for 6/11/21/41 latent frames (Wan)
    python scripts/bench.py --mode scale --families mochi   # 4/8/15/28 latents: 19 to 163 frames
    python scripts/bench.py --mode input           # ours alone: input-inclusive peak, 720p bf16
    python scripts/bench.py --quick                # tiny test configs: seconds (the smoke test)
    python scripts/bench.py --device cuda --families wan --frames 21 --size 60,104   # GPU, 480p
    python scripts/bench.py --mode tiny --dtypes fp32 --frames 21 --size 60,104  # full vs tiny
    python scripts/bench.py --mode audio --seconds 5   # LTX-2 sound: what audio adds to a decode
    python scripts/bench.py --families minimax-h3 --blocks 4   # H3 ViT at 2048 wide, 4 of 36 blocks
    python scripts/bench.py --mode sound --seconds 10  # K6, Cosmos 3, H3 sound vs diffusers

Setup, cached in --workdir (default out/bench/): each family's real-size default diffusers VAE
(`AutoencoderKL*()` defaults; Wan 2.2 with the TI2V-5B arguments) with seeded default-init weights,
saved once with `save_pretrained`, and seeded N(0, 1) model-space latents in the preset's layout.

Every measured run is its own process doing what a user does. ours: `decode_file` to an H.264 mp4.
diffusers: `from_pretrained`, the pipeline's de-normalisation, `vae.decode`, `postprocess_video`,
`export_to_video`. Tools alternate run by run; medians are reported.
- wall: load weights + read latents + decode + write the video (imports excluded); process: the
  whole subprocess, timed by the parent.
- peak RSS: the Python process's own high-water mark (VmHWM), so it includes the weights
  (diffusers loads the encoder too); ffmpeg is a separate process for both tools and is not counted.
- PSNR: one extra untimed run per tool (also a warm-up). Ours writes a lossless RGB file
  (`lossless=True`: libx264rgb QP 0) that is read back; diffusers' postprocessed frames are
  ×255 and rounded (`export_to_video` truncates; we round both sides). bf16 rows also give ours
  bf16 against ours fp32.
Input mode measures our whole process (reading the latent file included) against clip length:
bf16 latents at 720p saved with `save_file`, 6 → 161 latent frames (21 → 641 output frames), with
the preview decoder and with the VAE decoder (the tiny test widths: the input side's memory does
not depend on the decoder's width, and real widths at 720p would take hours on a CPU), decoding
in the first of --dtypes (fp32 unless given: bf16 only where the CPU has bf16 units); it also
times the validation pass (header + streamed NaN/Inf scan) on its own.
Tiny mode runs only ours, three ways on the same latents: the full VAE, `--decoder tiny` (a
taehv-layout checkpoint with seeded default-init weights at the released widths) and `--decoder
preview`; it reports their wall times, peak RSS and the full/tiny ratio of multiply-accumulates,
counted on the `meta` device (no compute). Random weights make quality meaningless here; see
scripts/tiny_quality.py for tiny-vs-full PSNR with real weights.
Scale mode measures peak RSS against clip length at a small spatial size (16×16 latents by
default, to stay feasible on a few cores; `--size 60,104` is 480p) and plots it (matplotlib,
`pip install -e '.[bench]'`).
Audio mode times what a clip's sound adds: the LTX-2.0 audio VAE + vocoder (real-size diffusers
defaults, seeded init) on `--seconds` of audio latents; ours: `load_audio` + `decode_waveform`;
diffusers: `from_pretrained` of both + `audio_vae.decode` + the vocoder, as LTX2Pipeline does.
Both fp32 (ours always decodes audio in fp32). Then ours runs the speed mode's LTX-2 row twice per
repeat through a pipeline folder (vae/, audio_vae/, vocoder/): its latent file alone, and with
`audio_latents` as long as the video; the difference is what sound adds end to end (audio VAE,
vocoder, the temporary audio file and the AAC encode inside the FFmpeg process that receives the
frames).
Sound mode: see scripts/bench_sound.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("ours", "diffusers")
DTYPES = ("fp32", "bf16")
SCALE_FRAMES = (6, 11, 21, 41)  # latent frames; 41 → 161 output frames
SCALE_SIZE = (16, 16)
INPUT_FRAMES = (6, 21, 41, 81, 161)  # latent frames; 161 → 641 output frames
INPUT_SIZE = (90, 160)  # 720p in Wan latents
DECODERS = ("preview", "vae")


@dataclass(frozen=True)
class Family:
    preset: str  # latent2mp4 preset
    cls: str  # diffusers class
    size: tuple[int, int, int]  # default latents (T, h, w)
    tiny: tuple[str, str]  # tests/ builder and variant for --quick
    tiny_size: tuple[int, int, int]
    config: dict[str, Any] = field(default_factory=dict)  # real size: constructor defaults + this
    scale_frames: tuple[int, ...] = SCALE_FRAMES  # latent frames of --mode scale
    options: dict[str, Any] = field(default_factory=dict)  # extra DecodeOptions for ours


# The SD 1.5 / SDXL VAE architecture (both releases' config.json); SVD's shares the encoder.
SD_VAE_ENCODER: dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
)  # fmt: skip
SD_VAE: dict[str, Any] = dict(SD_VAE_ENCODER, up_block_types=("UpDecoderBlock2D",) * 4)

# fmt: off
FAMILIES = {
    "wan": Family("wan", "AutoencoderKLWan", (3, 32, 32), ("tiny_wan", "2.1"), (3, 8, 8)),
    # 16×16 latents: the same 256×256 output as wan (16× spatial compression); mean/std: preset
    "wan2.2": Family("wan2.2", "AutoencoderKLWan", (3, 16, 16), ("tiny_wan", "2.2"), (2, 4, 4),
                     dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                          in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)),
    "hunyuan": Family("hunyuan", "AutoencoderKLHunyuanVideo", (5, 32, 32),
                      ("tiny_hunyuan", "tiny"), (5, 8, 8)),
    "cogvideox": Family("cogvideox", "AutoencoderKLCogVideoX", (5, 30, 45),
                        ("tiny_cogvideox", "groups32"), (3, 8, 8)),
    # 3 latents → 13 frames; scale: 4/8/15/28 latents → 19/43/85/163 frames
    "mochi": Family("mochi", "AutoencoderKLMochi", (3, 32, 32), ("tiny_mochi", "tiny"), (2, 8, 8),
                    scale_frames=(4, 8, 15, 28)),
    # 16×16 latents: 256×256 output (16× spatial compression), as wan2.2
    "hunyuan1.5": Family("hunyuan1.5", "AutoencoderKLHunyuanVideo15", (5, 16, 16),
                         ("tiny_hunyuan15", "tiny"), (3, 4, 4)),
    # LTX-Video 0.9.5 (diffusers' conversion config for the 0.9.5 release): timestep-conditioned,
    # decoded at timestep 0.05 without decode noise on both sides so the outputs compare.
    "ltx": Family("ltx", "AutoencoderKLLTXVideo", (5, 16, 16), ("tiny_ltx", "v095"), (3, 2, 3),
                  dict(block_out_channels=(128, 256, 512, 1024, 2048),
                       down_block_types=("LTXVideo095DownBlock3D",) * 4,
                       layers_per_block=(4, 6, 6, 2, 2),
                       spatio_temporal_scaling=(True, True, True, True),
                       downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                       decoder_block_out_channels=(256, 512, 1024),
                       decoder_layers_per_block=(5, 5, 5, 5),
                       decoder_spatio_temporal_scaling=(True, True, True),
                       decoder_inject_noise=(False, False, False, False),
                       upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
                       timestep_conditioning=True, spatial_compression_ratio=32,
                       temporal_compression_ratio=8),
                  options=dict(decode_timestep=0.05, decode_noise_scale=0.0)),
    "ltx2": Family("ltx2", "AutoencoderKLLTX2Video", (5, 16, 16), ("tiny_ltx", "ltx2"), (3, 2, 3),
                   dict(spatial_compression_ratio=32, temporal_compression_ratio=8),
                   options=dict(latent_space="model")),
    # MiniMax-H3's ViT decoder at the released width (36 blocks, 32 heads x 64 = 2048, constructor
    # defaults): one clip (7 latents → 22 frames) of one 256-px tile (16×16 latents), tiled as
    # released. scale: 37/72/107 latents → 124/243/362 frames, 5.2/10.1/15.1 s at 24 fps.
    "minimax-h3": Family("minimax-h3", "AutoencoderKLMiniMaxH3", (7, 16, 16),
                         ("tiny_minimax_h3", "tiny"), (7, 4, 4), scale_frames=(37, 72, 107)),
    # AnimateDiff's 16 frames at 512×512 (SD 1.5 VAE); scale: 16/32/64/128 frames
    "sd": Family("animatediff", "AutoencoderKL", (16, 64, 64), ("tiny_sd", "sd"), (3, 8, 8),
                 dict(SD_VAE, sample_size=512), scale_frames=(16, 32, 64, 128)),
    # the same architecture at 1024×1024 (SDXL VAE), AnimateDiff-SDXL's 16 frames
    "sdxl": Family("animatediff-sdxl", "AutoencoderKL", (16, 128, 128), ("tiny_sd", "sd"),
                   (3, 8, 8), dict(SD_VAE, sample_size=1024, scaling_factor=0.13025)),
    # SVD-XT: 25 frames at 576×1024, decoded as one window (decode_chunk_size = num_frames)
    "svd": Family("svd", "AutoencoderKLTemporalDecoder", (25, 72, 128), ("tiny_sd", "svd"),
                  (3, 8, 8), dict(SD_VAE_ENCODER, sample_size=768)),
}
# fmt: on
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # H3's pixel space (mean, std)


# ---- setup (parent) ---------------------------------------------------------------------------


def make_vae(name: str, quick: bool, workdir: Path, blocks: int | None = None) -> Path:
    """The family's diffusers folder under `workdir`, built and saved once; `blocks`: MiniMax-H3
    at the released width with that many of its 36 ViT blocks."""
    fam = FAMILIES[name]
    suffix = "-tiny" if quick else (f"-{blocks}blocks" if blocks else "")
    folder = workdir / "models" / (name + suffix)
    if (folder / "config.json").is_file():
        return folder
    import torch

    partial = folder.with_name(folder.name + ".partial")
    print(f"setup: building {fam.cls} ({'tiny' if quick else 'real size'}) → {folder}", flush=True)
    if quick:
        sys.path.insert(0, str(ROOT / "tests"))
        module, variant = fam.tiny
        builder = getattr(__import__(module), "make_" + module)
        builder(partial, variant)
    else:
        import diffusers

        from latent2mp4 import load_preset

        config = dict(fam.config)
        if blocks:
            config["decoder_num_layers"] = blocks
        if name in ("wan2.2", "minimax-h3"):  # the release's per-channel normalisation
            norm = load_preset(fam.preset).normalization
            config.update(latents_mean=list(norm.mean), latents_std=list(norm.std))
        torch.manual_seed(0)
        getattr(diffusers, fam.cls)(**config).eval().save_pretrained(partial)
    partial.rename(folder)
    return folder


def make_latents(name: str, quick: bool, size: tuple[int, int, int], workdir: Path) -> Path:
    import torch

    from latent2mp4 import load_preset, save_latents

    preset = load_preset(FAMILIES[name].preset)
    t, h, w = size
    path = workdir / "latents" / f"{name}{'-tiny' if quick else ''}-{t}x{h}x{w}.safetensors"
    if not path.is_file():
        g = torch.Generator().manual_seed(0)
        z = torch.randn(1, preset.latent_channels, t, h, w, generator=g)
        if preset.layout == "BFCHW":
            z = z.permute(0, 2, 1, 3, 4).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_latents(path, z, model=preset.name, fps=preset.fps, latent_space="model")
    return path


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    def proc(path: str, key: str) -> str:
        try:
            lines = Path(path).read_text().splitlines()
            return next(x.split(":", 1)[1].strip() for x in lines if x.startswith(key))
        except (OSError, StopIteration):
            return ""

    ram = proc("/proc/meminfo", "MemTotal").split()
    flags = set(proc("/proc/cpuinfo", "flags").split())
    # bf16 speed depends on these: AMX tiles are far faster than AVX-512 BF16 dot products.
    bf16 = ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "no bf16 units"
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 0)
    )
    return dict(cpu=proc("/proc/cpuinfo", "model name") or platform.processor(), bf16=bf16,
                cores=len(cores),
                ram_gib=round(int(ram[0]) / 2**20, 1) if ram else None, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), diffusers=version("diffusers"),
                python=platform.python_version(), os=platform.platform())  # fmt: skip


# ---- one measured run (child process) ---------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident set so far.

    Linux: VmHWM, the high-water mark of this process's own address space. Not ru_maxrss: a
    child started by vfork (as subprocess does) inherits the parent's high-water mark at exec,
    so a light run after the parent built a model would report the parent's peak.
    """
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def child(a: argparse.Namespace) -> None:
    """One measured run, as a user would do it; the clock starts after the imports."""
    import torch

    fam, dtype = FAMILIES[a.family], {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    frames = None
    if a.tool == "ours":
        from latent2mp4 import DecodeOptions, decode_file
        from latent2mp4.pipeline import plan
        from latent2mp4.video import read_video

        opts = DecodeOptions(model=fam.preset, vae=a.vae, out=a.out, device=a.device, dtype=a.dtype,
                             overwrite=True, lossless=a.frames_npy is not None,
                             decoder=a.decoder, **fam.options)  # fmt: skip
        start = time.perf_counter()
        if a.time_plan:  # validation alone: header, layout, streamed NaN/Inf scan
            plan(Path(a.latents), opts)
            validate_s = time.perf_counter() - start
            start = time.perf_counter()
        res = decode_file(a.latents, opts)[0]
        wall = time.perf_counter() - start
        rss = peak_rss_mib()
        shape = (res.frames, res.height, res.width)
        if a.frames_npy:
            frames = read_video(a.out)[0]
    else:
        import diffusers
        from diffusers.utils import export_to_video
        from diffusers.video_processor import VideoProcessor
        from safetensors.torch import load_file

        from latent2mp4 import load_preset

        fps = load_preset(fam.preset).fps
        start = time.perf_counter()
        cls = getattr(diffusers, fam.cls)
        if cls._keep_in_fp32_modules:
            # from_pretrained refuses classes with fp32-pinned modules unless accelerate is
            # installed: config + state dict, then the same mixed precision by hand (all but the
            # pinned modules cast).
            from diffusers.models.modeling_utils import no_init_weights

            with no_init_weights():  # as from_pretrained: no random init before the load
                vae = cls.from_config(cls.load_config(a.vae)).eval()
            state = {}
            for f in sorted(Path(a.vae).glob("*.safetensors")):
                state.update(load_file(f))
            vae.load_state_dict(state)
            del state
            pinned = set(cls._keep_in_fp32_modules)
            for pname, param in vae.named_parameters():
                if not pinned & set(pname.split(".")):
                    param.data = param.data.to(dtype)
        else:
            vae = cls.from_pretrained(a.vae, torch_dtype=dtype).eval()
        vae = vae.to(a.device)
        z, cfg = load_file(a.latents)["latents"].to(a.device, dtype), vae.config
        if fam.cls == "AutoencoderKLWan":  # WanPipeline
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).to(z)
            inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).to(z)
            z = z / inv_std + mean
        elif fam.cls in ("AutoencoderKLMochi", "AutoencoderKLMiniMaxH3"):  # Mochi, H3 decode step
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).to(z)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).to(z)
            z = z * std / getattr(cfg, "scaling_factor", 1.0) + mean
        elif fam.cls == "AutoencoderKLCogVideoX":  # CogVideoXPipeline.decode_latents
            z = 1 / cfg.scaling_factor * z.permute(0, 2, 1, 3, 4)
        elif fam.cls.startswith("AutoencoderKLLTX"):  # LTXPipeline / LTX2Pipeline
            mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
            std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
            z = z * std / cfg.scaling_factor + mean
        elif fam.cls == "AutoencoderKL":  # AnimateDiffPipeline.decode_latents, chunks of 16
            z = 1 / cfg.scaling_factor * z
            b, c, f, h, w = z.shape
            z = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        elif fam.cls == "AutoencoderKLTemporalDecoder":  # StableVideoDiffusionPipeline
            b, f = z.shape[:2]
            z = 1 / cfg.scaling_factor * z.flatten(0, 1)
        else:  # HunyuanVideoPipeline
            z = z / cfg.scaling_factor
        temb = None
        if getattr(cfg, "timestep_conditioning", False):
            temb = torch.full((z.shape[0],), fam.options["decode_timestep"]).to(z)
        with torch.no_grad():
            if fam.cls == "AutoencoderKL":
                x = torch.cat([vae.decode(z[i : i + 16]).sample for i in range(0, len(z), 16)])
                video = x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
            elif fam.cls == "AutoencoderKLTemporalDecoder":  # one window: the default chunk
                x = vae.decode(z, num_frames=f).sample
                video = x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
            elif temb is not None:
                video = vae.decode(z, temb).sample
            else:
                video = vae.decode(z).sample
        processor = VideoProcessor(vae_scale_factor=8)
        if fam.cls == "AutoencoderKLMiniMaxH3":  # MiniMaxH3VideoDecodeStep: ImageNet → [0, 1]
            mean, std = (torch.tensor(v, device=a.device).view(1, -1, 1, 1, 1) for v in IMAGENET)
            video = (video.float() * std + mean).clamp(0, 1)
            processor = VideoProcessor(vae_scale_factor=16, do_normalize=False)
        video = processor.postprocess_video(video, output_type="np")[0]
        export_to_video(video, str(a.out), fps=fps)
        wall = time.perf_counter() - start
        rss = peak_rss_mib()
        shape = video.shape[:3]
        if a.frames_npy:
            frames = np.round(video * 255).astype(np.uint8)
    if frames is not None:
        np.save(a.frames_npy, frames)
    result = {"wall_s": wall, "peak_rss_mib": rss, "frames": int(shape[0]),
              "video": "×".join(map(str, shape)), "threads": torch.get_num_threads(),
              "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20
              if a.device.startswith("cuda") else 0.0}  # fmt: skip
    if a.tool == "ours" and a.time_plan:
        result["validate_s"] = validate_s
    Path(a.result).write_text(json.dumps(result))


def run_child(tool: str, name: str, dtype: str, vae: Path, latents: Path, workdir: Path,
              device: str, frames_npy: Path | None = None, decoder: str = "vae",
              time_plan: bool = False) -> dict[str, Any]:  # fmt: skip
    """One `_run` subprocess; its measurements plus the whole process's wall time."""
    kind = "quality" if frames_npy else "timed"
    stem = f"{latents.stem}-{tool}-{dtype}-{kind}" + ("" if decoder == "vae" else f"-{decoder}")
    out, result = workdir / "videos" / f"{stem}.mp4", workdir / "runs" / f"{stem}.json"
    for folder in (out.parent, result.parent):
        folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "_run", "--tool", tool, "--family", name,
            "--dtype", dtype, "--vae", str(vae), "--latents", str(latents), "--out", str(out),
            "--result", str(result), "--device", device]  # fmt: skip
    argv += ["--frames-npy", str(frames_npy)] if frames_npy else []
    argv += ["--decoder", decoder] + (["--time-plan"] if time_plan else [])
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    process = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{tool} {name} {dtype} ({kind}) failed:\n{tail}")
    run = json.loads(result.read_text()) | {"process_s": process}
    print(f"  {kind:7} {tool:9} {name:9} {dtype}: {run['wall_s']:7.2f} s (process "
          f"{process:6.2f} s), peak RSS {run['peak_rss_mib']:6.0f} MiB", flush=True)  # fmt: skip
    return run


def alternate(name: str, dtype: str, vae: Path, latents: Path, args: argparse.Namespace,
              workdir: Path) -> dict[str, dict[str, Any]]:  # fmt: skip
    """ours, diffusers, ours, diffusers, …; per tool the medians and the raw runs."""
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for _ in range(args.repeats):
        for tool in TOOLS:
            runs[tool].append(run_child(tool, name, dtype, vae, latents, workdir, args.device))
    out = {}
    for tool, rs in runs.items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("wall_s", "process_s", "peak_rss_mib", "peak_gpu_mib")
        }
        first = {k: rs[0][k] for k in ("frames", "video")}
        out[tool] = med | first | {"fps": first["frames"] / med["wall_s"], "runs": rs}
    return out


# ---- audio mode ---------------------------------------------------------------------------------


def make_audio(quick: bool, seconds: float, workdir: Path) -> tuple[Path, Path]:
    """A folder with audio_vae/ and vocoder/ and a file of `audio_latents` lasting `seconds`."""
    import torch
    from safetensors.torch import save_file

    folder = workdir / "models" / ("ltx2-audio-tiny" if quick else "ltx2-audio")
    if not (folder / "vocoder" / "config.json").is_file():
        print(f"setup: building the LTX-2 audio VAE and vocoder → {folder}", flush=True)
        partial = folder.with_name(folder.name + ".partial")
        if quick:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_ltx2_audio import make_tiny_audio_vae, make_tiny_vocoder

            make_tiny_audio_vae(partial / "audio_vae")
            make_tiny_vocoder(partial / "vocoder")
        else:
            from diffusers import AutoencoderKLLTX2Audio
            from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

            torch.manual_seed(0)
            AutoencoderKLLTX2Audio().eval().save_pretrained(partial / "audio_vae")
            LTX2Vocoder().eval().save_pretrained(partial / "vocoder")
        partial.rename(folder)
    path = workdir / "latents" / f"{folder.name}-{audio_frames(seconds)}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"audio_latents": audio_latents(folder, seconds, seed=0)}, str(path))
    return folder, path


def audio_frames(seconds: float) -> int:
    return round(seconds * 25)  # LTX2Pipeline: round(duration × 16000 / 160 / 4)


def audio_latents(models: Path, seconds: float, seed: int) -> Any:
    """Seeded N(0, 1) audio latents `(1, C, L, mel_bins / 4)` lasting `seconds`."""
    import torch

    cfg = json.loads((models / "audio_vae" / "config.json").read_text())
    shape = (1, cfg["latent_channels"], audio_frames(seconds), cfg["mel_bins"] // 4)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def audio_child(a: argparse.Namespace) -> None:
    import torch
    from diffusers import AutoencoderKLLTX2Audio
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from safetensors.torch import load_file

    from latent2mp4 import DecodeOptions, load_preset
    from latent2mp4.audio import decode_waveform, load_audio

    device = torch.device(a.device)
    start = time.perf_counter()  # imports excluded, as in speed mode
    z = load_file(a.latents)["audio_latents"]
    if a.tool == "ours":
        opts = DecodeOptions(vae=a.models)
        wave = decode_waveform(load_audio(opts, load_preset("wan"), device), z)
    else:
        vae = AutoencoderKLLTX2Audio.from_pretrained(a.models, subfolder="audio_vae").to(device)
        vocoder = LTX2Vocoder.from_pretrained(a.models, subfolder="vocoder").to(device)
        with torch.no_grad():
            wave = vocoder(vae.decode(z.to(device)).sample)[0].T.float().cpu().numpy()
    wall = time.perf_counter() - start
    np.save(a.out, wave)
    Path(a.result).write_text(json.dumps({"wall_s": wall, "peak_rss_mib": peak_rss_mib()}))


def audio(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    models, latents = make_audio(args.quick, args.seconds, workdir)
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    for _ in range(args.repeats):
        for tool in TOOLS:
            out, result = workdir / "runs" / f"audio-{tool}.npy", workdir / "runs" / "audio.json"
            argv = [sys.executable, str(Path(__file__).resolve()), "_audio", "--tool", tool,
                    "--models", str(models), "--latents", str(latents), "--device", args.device,
                    "--out", str(out), "--result", str(result)]  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"audio {tool} failed:\n{proc.stderr[-3000:]}")
            runs[tool].append(json.loads(result.read_text()))
            print(f"  audio {tool:9}: {runs[tool][-1]['wall_s']:7.2f} s", flush=True)
    ours, theirs = (np.load(workdir / "runs" / f"audio-{t}.npy") for t in TOOLS)
    m = {t: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "peak_rss_mib")}
         for t, rs in runs.items()}  # fmt: skip
    diff = float(np.abs(ours - theirs).max())
    row = {"seconds": args.seconds, "samples": int(ours.shape[0]), "max_abs": diff, **m}
    cells = [[f"{args.seconds:g}", f"{ours.shape[0]}", both(m, "wall_s", ".2f"),
              both(m, "peak_rss_mib", ".0f"), f"{diff:.1e}"]]  # fmt: skip
    head = ["audio s", "samples", "wall s ours / diffusers", "peak RSS MiB ours / diffusers",
            "waveform max abs"]  # fmt: skip
    sound, sound_table = ltx2_row_with_sound(args, workdir, models)
    return [row, sound], markdown(head, cells) + "\n\n" + sound_table


def ltx2_row_with_sound(args: argparse.Namespace, workdir: Path,
                        models: Path) -> tuple[dict[str, Any], str]:  # fmt: skip
    """Ours on the speed mode's LTX-2 row, its latent file alone and with audio latents as long
    as the video, through a pipeline folder (vae/, audio_vae/, vocoder/): what sound adds."""
    from safetensors.torch import load_file, save_file

    from latent2mp4 import load_preset

    fam = FAMILIES["ltx2"]
    size = fam.tiny_size if args.quick else fam.size
    video = make_latents("ltx2", args.quick, size, workdir)
    pipeline = workdir / "models" / f"{video.stem}-pipeline"
    if not pipeline.is_dir():
        pipeline.mkdir(parents=True)
        targets = {"vae": make_vae("ltx2", args.quick, workdir),
                   "audio_vae": models / "audio_vae", "vocoder": models / "vocoder"}  # fmt: skip
        for name, target in targets.items():
            (pipeline / name).symlink_to(target.resolve(), target_is_directory=True)
    preset = load_preset("ltx2")
    seconds = preset.frames_out(size[0]) / preset.fps
    both_path = video.with_name(f"{video.stem}-with-audio-{audio_frames(seconds)}.safetensors")
    if not both_path.is_file():
        sound_z = audio_latents(models, seconds, seed=1)
        save_file(load_file(video) | {"audio_latents": sound_z}, str(both_path))
    runs: dict[str, list[dict[str, Any]]] = {"video": [], "video + sound": []}
    for _ in range(args.repeats):
        for kind, path in (("video", video), ("video + sound", both_path)):
            runs[kind].append(run_child("ours", "ltx2", "fp32", pipeline, path, workdir,
                                        args.device))  # fmt: skip
    m = {k: {key: statistics.median(r[key] for r in rs) for key in ("wall_s", "peak_rss_mib")}
         for k, rs in runs.items()}  # fmt: skip
    extra = m["video + sound"]["wall_s"] - m["video"]["wall_s"]
    first = runs["video"][0]
    row = {"ltx2_row": first["video"], "audio_s": seconds, "extra_wall_s": extra, **m}
    alone, sound = m["video"], m["video + sound"]
    cells = [[first["video"], f"{seconds:.2f}", f"{alone['wall_s']:.2f}", f"{sound['wall_s']:.2f}",
              f"{extra:+.2f} ({extra / alone['wall_s'] * 100:+.1f} %)",
              f"{alone['peak_rss_mib']:.0f} / {sound['peak_rss_mib']:.0f}"]]  # fmt: skip
    head = ["LTX-2 row, video F×H×W", "sound s", "wall s video only", "wall s video + sound",
            "sound adds", "peak RSS MiB video only / + sound"]  # fmt: skip
    return row, markdown(head, cells)


# ---- the two modes (parent) -------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"frame shapes differ: {a.shape} vs {b.shape}"
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def fmt_db(p: float | None) -> str:
    return "–" if p is None else "∞ (identical)" if math.isinf(p) else f"{p:.1f}"


def jsonable(x: Any) -> Any:
    """JSON has no infinity: identical frames' PSNR is written as "inf"."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return "inf" if isinstance(x, float) and math.isinf(x) else x


def both(m: dict[str, dict[str, Any]], key: str, fmt: str) -> str:
    return " / ".join(format(m[tool][key], fmt) for tool in TOOLS)


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def speed(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    rows, cells = [], []
    gpu = args.device.startswith("cuda")
    for name in args.families:
        t, h, w = FAMILIES[name].tiny_size if args.quick else FAMILIES[name].size
        size = (args.frames[0] if args.frames else t, *(args.size or (h, w)))
        vae = make_vae(name, args.quick, workdir, args.blocks if name == "minimax-h3" else None)
        latents = make_latents(name, args.quick, size, workdir)
        npy = {(tool, dt): workdir / "frames" / f"{latents.stem}-{tool}-{dt}.npy"
               for tool in TOOLS for dt in DTYPES}  # fmt: skip
        npy["ours", "fp32"].parent.mkdir(parents=True, exist_ok=True)
        for dtype in args.dtypes:
            for tool in TOOLS:
                run_child(tool, name, dtype, vae, latents, workdir, args.device, npy[tool, dtype])
            if dtype != "fp32" and "fp32" not in args.dtypes:
                run_child(
                    "ours", name, "fp32", vae, latents, workdir, args.device, npy["ours", "fp32"]
                )
            m = alternate(name, dtype, vae, latents, args, workdir)
            ours = np.load(npy["ours", dtype])
            vs_fp32 = None if dtype == "fp32" else psnr(ours, np.load(npy["ours", "fp32"]))
            row = dict(family=name, dtype=dtype, latents="×".join(map(str, size)),
                       ratio=m["ours"]["wall_s"] / m["diffusers"]["wall_s"],
                       psnr_vs_diffusers_db=psnr(ours, np.load(npy["diffusers", dtype])),
                       psnr_vs_fp32_db=vs_fp32, frame_std=float(ours.std()), **m)  # fmt: skip
            rows.append(row)
            cells.append([name, dtype, row["latents"], m["ours"]["video"], both(m, "wall_s", ".2f"),
                          f"{row['ratio']:.2f}", both(m, "fps", ".2f"), both(m, "process_s", ".1f"),
                          both(m, "peak_rss_mib", ".0f"), fmt_db(row["psnr_vs_diffusers_db"]),
                          fmt_db(row["psnr_vs_fp32_db"])]
                         + ([both(m, "peak_gpu_mib", ".0f")] if gpu else []))  # fmt: skip
    head = ["family", "dtype", "latents T×h×w", "video F×H×W", "wall s ours / diffusers",
            "ours/diffusers", "frames/s ours / diffusers", "process s ours / diffusers",
            "peak RSS MiB ours / diffusers", "PSNR vs diffusers dB",
            "PSNR vs own fp32 dB"] + (["peak GPU MiB ours / diffusers"] if gpu else [])  # fmt: skip
    return rows, markdown(head, cells)


def scale(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    rows, cells = [], []
    for name in args.families:
        fam = FAMILIES[name]
        h, w = args.size or (fam.tiny_size[1:] if args.quick else SCALE_SIZE)
        vae = make_vae(name, args.quick, workdir)
        for dtype in args.dtypes:
            for t in args.frames or fam.scale_frames:
                latents = make_latents(name, args.quick, (t, h, w), workdir)
                m = alternate(name, dtype, vae, latents, args, workdir)
                rows.append({"family": name, "dtype": dtype, "latent_frames": t, **m})
                rss, wall = both(m, "peak_rss_mib", ".0f"), both(m, "wall_s", ".2f")
                cells.append([name, dtype, str(t), m["ours"]["video"], rss, wall])
    head = ["family", "dtype", "latent frames", "video F×H×W", "peak RSS MiB ours / diffusers",
            "wall s ours / diffusers"]  # fmt: skip
    plot(rows, workdir / "memory_scaling.png")
    return rows, markdown(head, cells)


def input_scale(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Ours alone, reading included: peak RSS against clip length for bf16 720p latent files."""
    import torch
    from safetensors.torch import save_file

    from latent2mp4 import load_preset

    rows, cells = [], []
    h, w = args.size or INPUT_SIZE
    for name in args.families:
        vae = make_vae(name, True, workdir)  # tiny widths: see the module docstring
        channels = load_preset(FAMILIES[name].preset).latent_channels
        for t in args.frames or INPUT_FRAMES:
            path = workdir / "latents" / f"{name}-input-{t}x{h}x{w}-bf16.safetensors"
            if not path.is_file():
                g = torch.Generator().manual_seed(0)
                z = torch.randn(1, channels, t, h, w, generator=g).to(torch.bfloat16)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({"latents": z}, str(path))
                del z
            for decoder in args.decoders:
                r = run_child("ours", name, args.dtypes[0], vae, path, workdir, args.device,
                              decoder=decoder, time_plan=True)  # fmt: skip
                mib = path.stat().st_size / 2**20
                rows.append({"family": name, "decoder": decoder, "latent_frames": t,
                             "file_mib": mib, **r})  # fmt: skip
                cells.append([name, decoder, str(t), r["video"], f"{mib:.0f}",
                              f"{r['peak_rss_mib']:.0f}", f"{r['validate_s']:.2f}",
                              f"{r['wall_s']:.1f}"])  # fmt: skip
    for name in args.families:
        for decoder in args.decoders:
            mine = [r for r in rows if r["family"] == name and r["decoder"] == decoder]
            peaks = [r["peak_rss_mib"] for r in mine]
            if peaks:
                growth = (max(peaks) - min(peaks)) / min(peaks) * 100
                print(f"{name} {decoder}: peak RSS {min(peaks):.0f}–{max(peaks):.0f} MiB "
                      f"({growth:.1f} % spread)")  # fmt: skip
    head = ["family", "decoder", "latent frames", "video F×H×W", "latent file MiB",
            "peak RSS MiB (ours, input included)", "validation s", "decode + write s"]  # fmt: skip
    return rows, markdown(head, cells)


def make_tiny(name: str, workdir: Path) -> Path:
    """The preset's tiny-decoder checkpoint at the released widths (seeded default init), saved
    once: the taehv layout (taem1's for Mochi's 6x time), or taesd's (TAESDV for SVD) for the
    one-frame-per-latent presets."""
    import torch
    from safetensors.torch import save_file

    from latent2mp4 import load_preset
    from latent2mp4.models.tiny.blocks import Layout, TinyDecoder
    from latent2mp4.models.tiny.taehv import TinyConfig
    from latent2mp4.models.tiny.taesd import TaesdConfig

    preset = load_preset(FAMILIES[name].preset)
    channels, patch, t_up = preset.tiny_variant
    path = workdir / "models" / f"{name}-tiny-{channels}ch.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        strides = {1: None, 4: (1, 2, 2), 6: (1, 2, 3), 8: (2, 2, 2)}[t_up]
        cfg: Layout = (
            TaesdConfig(channels, memory=preset.family == "svd")
            if strides is None
            else TinyConfig(channels, patch, strides)
        )
        decoder = TinyDecoder(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(path))
    return path


def count_macs(name: str, vae: Path, tiny: Path, size: tuple[int, int, int]) -> tuple[float, float]:
    """Multiply-accumulates of the full and the tiny decoder on `size` latents (meta device)."""
    import torch
    from safetensors import safe_open
    from torch.utils.flop_counter import FlopCounterMode

    from latent2mp4 import load_preset
    from latent2mp4.engine import decode_stream
    from latent2mp4.models.registry import get_family
    from latent2mp4.models.tiny.blocks import TinyDecoder
    from latent2mp4.models.tiny.loader import tiny_config

    preset = load_preset(FAMILIES[name].preset)
    family = get_family(preset.family)
    config = family.config_from_diffusers(json.loads((vae / "config.json").read_text()))
    with safe_open(str(tiny), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    with torch.device("meta"):
        decoders = (family.build(config), TinyDecoder(tiny_config(shapes, str(tiny))))
    z = torch.empty(1, preset.latent_channels, *size, device="meta")
    macs = []
    for decoder in decoders:
        with FlopCounterMode(display=False) as counter:
            for _ in decode_stream(decoder.eval(), z, device="meta"):  # type: ignore[arg-type]
                pass
        macs.append(counter.get_total_flops() / 2)
    return macs[0], macs[1]


def tiny(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Ours three ways on the same latents: full VAE, tiny decoder, preview (alternating runs)."""
    rows, cells = [], []
    for name in args.families:
        t, h, w = FAMILIES[name].tiny_size if args.quick else FAMILIES[name].size
        size = (args.frames[0] if args.frames else t, *(args.size or (h, w)))
        vae, taehv = make_vae(name, args.quick, workdir), make_tiny(name, workdir)
        latents = make_latents(name, args.quick, size, workdir)
        full_macs, tiny_macs = count_macs(name, vae, taehv, size)
        weights = {"vae": vae, "tiny": taehv, "preview": vae}
        for dtype in args.dtypes:
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in weights}
            for _ in range(args.repeats):
                for kind, path in weights.items():
                    runs[kind].append(run_child("ours", name, dtype, path, latents, workdir,
                                                args.device, decoder=kind))  # fmt: skip
            m = {kind: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "peak_rss_mib")}
                 | {"frames": rs[0]["frames"], "video": rs[0]["video"], "runs": rs}
                 for kind, rs in runs.items()}  # fmt: skip
            speedup = m["vae"]["wall_s"] / m["tiny"]["wall_s"]
            row = dict(family=name, dtype=dtype, latents="×".join(map(str, size)), speedup=speedup,
                       full_gmac=full_macs / 1e9, tiny_gmac=tiny_macs / 1e9, **m)  # fmt: skip
            rows.append(row)
            each = " / ".join
            cells.append([name, dtype, row["latents"], m["vae"]["video"],
                          each(f"{m[k]['wall_s']:.2f}" for k in weights), f"{speedup:.1f}",
                          f"{full_macs / tiny_macs:.1f}",
                          each(f"{m[k]['frames'] / m[k]['wall_s']:.2f}" for k in weights),
                          each(f"{m[k]['peak_rss_mib']:.0f}" for k in weights)])  # fmt: skip
    head = ["family", "dtype", "latents T×h×w", "video F×H×W", "wall s full / tiny / preview",
            "full/tiny wall", "full/tiny MACs", "frames/s full / tiny / preview",
            "peak RSS MiB full / tiny / preview"]  # fmt: skip
    return rows, markdown(head, cells)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed, so {path} was not drawn: pip install -e '.[bench]'")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((r["family"], r["dtype"]) for r in rows):
        sel = [r for r in rows if (r["family"], r["dtype"]) == key]
        size = sel[0]["ours"]["video"].split("×", 1)[1]
        for tool, style in zip(TOOLS, ("o-", "s--"), strict=True):
            xs, ys = [r[tool]["frames"] for r in sel], [r[tool]["peak_rss_mib"] for r in sel]
            ax.plot(xs, ys, style, label=f"{tool} ({key[0]} {key[1]}, {size})")
    ax.set(xlabel="output frames", ylabel="peak RSS (MiB)", title="Peak memory vs clip length")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def has_tiny(name: str) -> bool:
    from latent2mp4 import load_preset

    return load_preset(FAMILIES[name].preset).tiny is not None


# ---- command line -----------------------------------------------------------------------------


def csv(text: str) -> list[str]:
    return text.split(",")


def ints(text: str) -> list[int]:
    return [int(x) for x in csv(text)]


def main() -> None:
    if sys.argv[1:2] == ["_run"]:
        ap = argparse.ArgumentParser(prog="bench.py _run")
        for opt in ("--tool", "--family", "--dtype", "--vae", "--latents", "--result", "--device"):
            ap.add_argument(opt, required=True)
        ap.add_argument("--out", type=Path, required=True)
        ap.add_argument("--frames-npy")
        ap.add_argument("--decoder", default="vae")
        ap.add_argument("--time-plan", action="store_true")
        return child(ap.parse_args(sys.argv[2:]))
    if sys.argv[1:2] == ["_audio"]:
        ap = argparse.ArgumentParser(prog="bench.py _audio")
        for opt in ("--tool", "--models", "--latents", "--device", "--out", "--result"):
            ap.add_argument(opt, required=True)
        return audio_child(ap.parse_args(sys.argv[2:]))
    if sys.argv[1:2] == ["_sound"]:
        from bench_sound import child as sound_child

        ap = argparse.ArgumentParser(prog="bench.py _sound")
        for opt in ("--tool", "--sound", "--models", "--latents", "--device", "--out", "--result"):
            ap.add_argument(opt, required=True)
        return sound_child(ap.parse_args(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    modes_all = ("speed", "scale", "input", "tiny", "audio", "sound")
    ap.add_argument("--mode", choices=modes_all, default="speed")
    ap.add_argument("--sounds", type=csv, default=["mmaudio", "cosmos3", "h3"],
                    help="sound mode: mmaudio,cosmos3,h3")  # fmt: skip
    ap.add_argument("--decoders", type=csv, default=list(DECODERS), help="input mode: preview,vae")
    ap.add_argument("--seconds", type=float, default=5.0, help="audio mode: clip length")
    ap.add_argument("--families", type=csv, help="default: all (scale: wan)")
    ap.add_argument("--dtypes", type=csv, help="default: fp32,bf16 (scale, input: fp32)")
    ap.add_argument("--repeats", type=int, help="timed runs per tool (default: speed 3, scale 1)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench")
    ap.add_argument("--frames", type=ints, help="latent frames T (scale: a list, e.g. 6,11,21; "
                    "default per family, Wan 6,11,21,41)")  # fmt: skip
    ap.add_argument("--size", type=ints, help="latent h,w, e.g. 60,104 (scale default: 16,16)")
    ap.add_argument("--quick", action="store_true", help="tiny test configs and latents")
    ap.add_argument("--blocks", type=int, help="minimax-h3 speed: released width, N of 36 blocks "
                    "(each block costs the same, so the ratio holds; 36 take ~15 min a run on "
                    "2 CPU cores)")  # fmt: skip
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], for both tools")
    args = ap.parse_args()
    is_speed = args.mode == "speed"
    args.families = args.families or (list(FAMILIES) if is_speed else ["wan"])
    args.dtypes = args.dtypes or (list(DTYPES) if is_speed else ["fp32"])
    if bad := (set(args.families) - set(FAMILIES)) | (set(args.dtypes) - set(DTYPES)):
        ap.error(f"unknown {', '.join(bad)}; families: {', '.join(FAMILIES)}; dtypes: fp32, bf16")
    if args.mode == "tiny" and not all(has_tiny(f) for f in args.families):
        ap.error("--mode tiny needs families whose preset names a tiny decoder")
    args.dtypes.sort(key=DTYPES.index)  # fp32 first: bf16 rows compare with its frames
    args.repeats = args.repeats or (3 if is_speed else 1)
    if args.repeats < 1 or (args.size and len(args.size) != 2):
        ap.error("--repeats must be at least 1 and --size is h,w")
    if is_speed and args.frames and len(args.frames) > 1:
        ap.error("--frames takes one value in speed mode (a list in scale mode)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mach = machine()
    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    if args.device.startswith("cuda"):
        import torch

        mach["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    desc = (
        (f"{mach['gpu']} (CUDA); host " if "gpu" in mach else "")
        + f"{mach['cpu']} ({mach['bf16']}), {mach['cores']} usable cores, "
        f"{mach['ram_gib']} GiB RAM; torch {mach['torch']} ({mach['torch_threads']} threads), "
        f"diffusers {mach['diffusers']}, Python {mach['python']}, {mach['os']}"
    )
    print(f"machine: {desc}\ncommand: {command}", flush=True)
    from bench_sound import sound

    modes = {"speed": speed, "scale": scale, "input": input_scale, "tiny": tiny, "audio": audio,
             "sound": sound}  # fmt: skip
    rows, table = modes[args.mode](args, workdir)
    stems = {"speed": "results", "scale": "memory_scaling", "input": "input_scaling"}
    stem = stems.get(args.mode, args.mode)
    notes = (
        "wall: load weights + read latents + decode + write the video (median; imports excluded); "
        "process: the whole subprocess. Peak RSS: VmHWM of the Python process (weights "
        "included; diffusers also loads the encoder; ffmpeg not counted). PSNR on uint8 frames "
        "(rounded both sides); ours from a lossless file. Random weights: timing only."
    )
    if args.mode == "tiny":
        notes = (
            "All three are latent2mp4 (`--decoder vae/tiny/preview`), medians of alternating runs; "
            "wall: load + read + decode + write (imports excluded). MACs counted on the meta "
            "device. Random weights: timing only."
        )
    if args.mode == "sound":
        notes = (
            "wall: load the models + read latents + decode to a waveform (median; imports "
            "excluded), fp32; sound s per s = seconds of sound per second of wall. Random "
            "weights: timing only."
        )
    if args.mode == "audio":
        notes = (
            "wall: load both models + read latents + decode to a waveform (median; imports "
            "excluded), fp32. Random weights: timing only."
        )
    titles = {"tiny": "full VAE vs tiny vs preview", "input": "alone, reading the input included"}
    title = titles.get(args.mode, f"vs diffusers ({args.mode})")
    md = f"## latent2mp4 {title}\n\nMachine: {desc}\n\n`{command}`\n\n"
    md += f"{table}\n\n{notes}\n"
    (workdir / f"{stem}.md").write_text(md)
    raw = {"machine": mach, "command": command, "rows": rows}
    (workdir / f"{stem}.json").write_text(json.dumps(jsonable(raw), indent=1))
    print(f"\n{table}\n\nwritten: {workdir / (stem + '.md')}, {workdir / (stem + '.json')}")


if __name__ == "__main__":
    main()
