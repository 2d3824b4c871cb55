"""Sound mode of scripts/bench.py: each sound decoder at real size against diffusers.

    python scripts/bench.py --mode sound --seconds 10            # mmaudio, cosmos3, h3
    python scripts/bench.py --mode sound --sounds h3 --seconds 30

Setup, cached in --workdir: each architecture's real-size diffusers defaults (Kandinsky 6's
`MMAudioVAE()` + `MMAudioVocoder()`, Cosmos 3's `Cosmos3AVAEAudioTokenizer()`, MiniMax-H3's
`AutoencoderKLMiniMaxH3Audio()` with seeded statistics) with seeded default-init weights, saved
with `save_pretrained` as pipeline folders, and seeded N(0, 1) latents lasting `--seconds`.
Every run is its own process. ours: `load_audio` + `decode_waveform` (fp32, in 10 s windows
where the decoder is convolutional); diffusers: `from_pretrained` + the pipeline's arithmetic
(Kandinsky6TI2VAPipeline, Cosmos3OmniPipeline.decode_sound, MiniMaxH3AudioDecodeStep), fp32,
whole clip. Wall and CPU time (all threads, `time.process_time`: on a shared machine the wall
clock also measures the neighbours): load + decode (imports excluded); peak RSS: VmHWM.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("ours", "diffusers")
# name → (preset, latent folder part, latents per second at real size, quick (tiny) rate)
SOUNDS = {
    "mmaudio": ("kandinsky6", 44100 / 1024, 8000 / 32),
    "cosmos3": ("cosmos3", 48000 / 1920, 12000 / 24),
    "h3": ("minimax-h3", 32000 / 800, 6000 / 6),
}


def build(name: str, folder: Path, quick: bool) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    partial = folder.with_name(folder.name + ".partial")
    torch.manual_seed(0)
    if name == "mmaudio":
        if quick:
            from tiny_sound import make_tiny_mmaudio

            make_tiny_mmaudio(partial)
        else:
            from diffusers import MMAudioVAE, MMAudioVocoder

            MMAudioVAE().eval().save_pretrained(partial / "audio_vae")
            MMAudioVocoder().eval().save_pretrained(partial / "vocoder")
    elif name == "cosmos3":
        if quick:
            from tiny_sound import make_tiny_cosmos3_audio

            make_tiny_cosmos3_audio(partial / "sound_tokenizer")
        else:
            from diffusers import Cosmos3AVAEAudioTokenizer

            Cosmos3AVAEAudioTokenizer().eval().save_pretrained(partial / "sound_tokenizer")
    else:
        if quick:
            from tiny_sound import make_tiny_h3_audio

            make_tiny_h3_audio(partial / "audio_vae")
        else:
            from diffusers import AutoencoderKLMiniMaxH3Audio

            g = torch.Generator().manual_seed(1)
            mean = (torch.randn(32, generator=g) * 0.5).tolist()
            std = (torch.rand(32, generator=g) + 0.5).tolist()
            vae = AutoencoderKLMiniMaxH3Audio(latents_mean=mean, latents_std=std)
            vae.eval().save_pretrained(partial / "audio_vae")
    partial.rename(folder)


def latents(name: str, folder: Path, seconds: float, quick: bool) -> Any:
    import torch

    rate = SOUNDS[name][2] if quick else SOUNDS[name][1]
    n = math.ceil(seconds * rate)
    g = torch.Generator().manual_seed(2)
    if name == "mmaudio":
        cfg = json.loads((folder / "audio_vae" / "config.json").read_text())
        return torch.randn(1, cfg["latent_channels"], n, generator=g)
    if name == "cosmos3":
        cfg = json.loads((folder / "sound_tokenizer" / "config.json").read_text())
        return torch.randn(cfg["vocoder_input_dim"], n, generator=g)  # the pipeline's (C, T)
    cfg = json.loads((folder / "audio_vae" / "config.json").read_text())
    return torch.randn(2, cfg["latent_channels"], n, generator=g)  # stereo rows


def child(a: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import peak_rss_mib

    from latent2mp4 import DecodeOptions, load_preset
    from latent2mp4.audio import decode_waveform, load_audio

    if a.tool == "diffusers":
        import diffusers  # noqa: F401 - imports are not timed, as in the other modes

    device = torch.device(a.device)
    start, cpu = time.perf_counter(), time.process_time()
    z = load_file(a.latents)["z"]
    folder = Path(a.models)
    if a.tool == "ours":
        preset = load_preset(SOUNDS[a.sound][0])
        models = load_audio(DecodeOptions(vae=str(folder)), preset, device)
        batched = z if a.sound == "mmaudio" else z[None]
        wave = decode_waveform(models, batched)
    else:
        with torch.no_grad():
            wave = reference(a.sound, folder, z.to(device), device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.save(a.out, wave)
    result = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_rss_mib()}
    Path(a.result).write_text(json.dumps(result))
    Path(a.out).with_suffix(".json").write_text(json.dumps(result))  # kept per tool


def reference(name: str, folder: Path, z: Any, device: Any) -> np.ndarray:
    """diffusers' arithmetic, as the pipelines do it; `(samples, channels)`."""
    import torch

    if name == "mmaudio":
        from diffusers import MMAudioVAE, MMAudioVocoder

        vae = MMAudioVAE.from_pretrained(folder, subfolder="audio_vae").to(device)
        vocoder = MMAudioVocoder.from_pretrained(folder, subfolder="vocoder").to(device)
        mel = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
        return vocoder(mel, return_dict=False)[0][0].T.float().cpu().numpy()
    if name == "cosmos3":
        from diffusers import Cosmos3AVAEAudioTokenizer

        tok = Cosmos3AVAEAudioTokenizer.from_pretrained(folder, subfolder="sound_tokenizer")
        return tok.to(device).decode(z).T.float().cpu().numpy()
    from diffusers import AutoencoderKLMiniMaxH3Audio
    from safetensors.torch import load_file

    # from_pretrained refuses this class without accelerate (its fp32-kept modules need
    # low_cpu_mem_usage): the same config and weights, loaded by hand.
    sub = folder / "audio_vae"
    vae = AutoencoderKLMiniMaxH3Audio.from_config(json.loads((sub / "config.json").read_text()))
    vae.load_state_dict(load_file(sub / "diffusion_pytorch_model.safetensors"))
    vae = vae.eval().to(device)
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1)
    audio = vae.decode(z * std + mean, return_dict=False)[0]
    return audio.float().permute(1, 0, 2)[0].T.cpu().numpy()


def sound(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import markdown

    rows, cells = [], []
    for name in args.sounds:
        folder = workdir / "models" / f"sound-{name}{'-tiny' if args.quick else ''}"
        if not folder.is_dir():
            print(f"setup: building the {name} sound decoder → {folder}", flush=True)
            build(name, folder, args.quick)
        path = workdir / "latents" / f"{folder.name}-{args.seconds:g}s.safetensors"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"z": latents(name, folder, args.seconds, args.quick)}, str(path))
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
        (workdir / "runs").mkdir(parents=True, exist_ok=True)
        for _ in range(args.repeats):
            for tool in TOOLS:
                out = workdir / "runs" / f"sound-{name}-{tool}.npy"
                result = workdir / "runs" / "sound.json"
                argv = [sys.executable, str(ROOT / "scripts" / "bench.py"), "_sound",
                        "--tool", tool, "--sound", name, "--models", str(folder),
                        "--latents", str(path), "--device", args.device, "--out", str(out),
                        "--result", str(result)]  # fmt: skip
                proc = subprocess.run(argv, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"sound {name} {tool} failed:\n{proc.stderr[-3000:]}")
                runs[tool].append(json.loads(result.read_text()))
                print(f"  sound {name} {tool:9}: {runs[tool][-1]['wall_s']:7.2f} s", flush=True)
        ours, theirs = (np.load(workdir / "runs" / f"sound-{name}-{t}.npy") for t in TOOLS)
        keys = ("wall_s", "cpu_s", "peak_rss_mib")
        m = {t: {k: statistics.median(r[k] for r in rs) for k in keys} for t, rs in runs.items()}
        # CPU seconds (all threads) as well as wall: on a shared machine the wall clock also
        # measures the neighbours.
        rate = {t: args.seconds / m[t]["wall_s"] for t in TOOLS}
        cpu_rate = {t: args.seconds / m[t]["cpu_s"] for t in TOOLS}
        diff = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("nan")
        rows.append({"sound": name, "seconds": args.seconds, "samples": ours.shape,
                     "max_abs": diff, "sound_s_per_s": rate, "sound_s_per_cpu_s": cpu_rate,
                     **m})  # fmt: skip
        cells.append([
            name, f"{args.seconds:g}", f"{ours.shape[0]}×{ours.shape[1]}",
            " / ".join(f"{m[t]['wall_s']:.2f}" for t in TOOLS),
            " / ".join(f"{rate[t]:.2f}" for t in TOOLS),
            " / ".join(f"{m[t]['cpu_s']:.1f}" for t in TOOLS),
            " / ".join(f"{cpu_rate[t]:.3f}" for t in TOOLS),
            f"{m['ours']['cpu_s'] / m['diffusers']['cpu_s']:.2f}",
            " / ".join(f"{m[t]['peak_rss_mib']:.0f}" for t in TOOLS), f"{diff:.1e}",
        ])  # fmt: skip
    head = ["sound decoder", "sound s", "samples × channels", "wall s ours / diffusers",
            "sound s per s ours / diffusers", "CPU s ours / diffusers",
            "sound s per CPU s ours / diffusers", "CPU time ratio ours/diffusers",
            "peak RSS MiB ours / diffusers", "waveform max abs"]  # fmt: skip
    return rows, markdown(head, cells)
