"""Ten-second clips with sound for kandinsky6, cosmos3 and minimax-h3, decoded by the CLI from
tiny random pipeline folders whose sound decoders run at the release's sample rates and latent
rates (tiny widths), then probed (ffprobe if installed, else ffmpeg's own listing).

    python scripts/sound_clips.py [--out out/sound-clips]

Random weights: the picture and the sound are noise; streams, rates and durations are the point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from latent2mp4.presets import CONFIG_DIR  # noqa: E402


def kandinsky6(root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from diffusers import MMAudioVAE, MMAudioVocoder

    from tiny_hunyuan import make_tiny_hunyuan

    make_tiny_hunyuan(root / "vae")
    torch.manual_seed(0)
    MMAudioVAE(hidden_channels=8, channel_multipliers=(1, 2), layers_per_block=1).save_pretrained(
        root / "audio_vae"
    )
    MMAudioVocoder(upsample_initial_channel=64, resblock_kernel_sizes=(3,),
                   resblock_dilation_sizes=((1,),)).save_pretrained(root / "vocoder")  # fmt: skip
    frames = 241  # 10 s at 24 fps: 61 latents
    length = -(-frames * 44100 // (24 * 1024))  # the pipeline's ceil: 433 latents, 10.05 s
    z = {"latents": torch.randn(1, 16, 61, 8, 8), "audio_latents": torch.randn(1, 40, length)}
    return z, ["-m", "kandinsky6"]


def cosmos3(root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from diffusers import Cosmos3AVAEAudioTokenizer

    from tiny_wan import make_tiny_wan

    make_tiny_wan(root / "vae", "2.2")
    torch.manual_seed(0)
    tok = Cosmos3AVAEAudioTokenizer(dec_dim=4, dec_c_mults=(1, 2, 2, 2, 2), enc_dim=4,
                                    enc_c_mults=(1, 2, 2))  # fmt: skip
    tok.save_pretrained(root / "sound_tokenizer")
    z = {"latents": torch.randn(1, 48, 61, 4, 4), "sound_latents": torch.randn(64, 250)}
    return z, ["-m", "cosmos3"]


def minimax_h3(root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from diffusers import AutoencoderKLMiniMaxH3Audio
    from tiny_minimax_h3 import TINY, make_tiny_h3

    make_tiny_h3(root / "vae")
    torch.manual_seed(0)
    vae = AutoencoderKLMiniMaxH3Audio(
        encoder_dim=4, latent_dim=64, num_attention_heads=2, decoder_dim=128,
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
        latents_mean=[0.0] * 32, latents_std=[1.0] * 32,
    )  # fmt: skip
    vae.save_pretrained(root / "audio_vae")
    # The real preset with the tiny video VAE's latent channels (its statistics: the VAE's own).
    d = yaml.safe_load((CONFIG_DIR / "minimax-h3.yaml").read_text())
    c = TINY["latent_channels"]
    d.update(name="minimax-h3-tiny", aliases=[], latent_channels=c)
    d["normalization"] = {"std_op": "multiply", "mean": [0.0] * c, "std": [1.0] * c}
    d["preview"]["factors"] = [[0.0, 0.0, 0.0]] * c
    d.pop("tiny")
    (root / "preset.yaml").write_text(yaml.safe_dump(d))
    # 72 latents = 243 frames (17 x 14 + 5) at 24 fps: 10.125 s; 400 audio latents: 10 s
    z = {"latents": torch.randn(1, c, 72, 4, 4), "audio_latents": torch.randn(2, 32, 400)}
    return z, ["--preset", str(root / "preset.yaml")]


def probe(path: Path) -> str:
    if shutil.which("ffprobe"):
        argv = ["ffprobe", "-v", "error", "-show_entries",
                "stream=index,codec_type,codec_name,sample_rate,channels,r_frame_rate,width,height,"
                "duration,nb_frames:format=duration", "-of", "json", str(path)]  # fmt: skip
        return json.dumps(json.loads(subprocess.run(argv, capture_output=True).stdout), indent=1)
    import imageio_ffmpeg

    text = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr  # fmt: skip
    return "\n".join(ln for ln in text.splitlines() if "Stream" in ln or "Duration" in ln)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "sound-clips")
    ap.add_argument("--keep", action="store_true", help="reuse the folders a former run built")
    args = ap.parse_args()
    makers = (("kandinsky6", kandinsky6), ("cosmos3", cosmos3), ("minimax-h3", minimax_h3))
    for name, make in makers:
        root = args.out / name
        preset = ["--preset", str(root / "preset.yaml")] if name == "minimax-h3" else ["-m", name]
        if not (args.keep and (root / "z.safetensors").is_file()):
            shutil.rmtree(root, ignore_errors=True)
            torch.manual_seed(1)
            z, preset = make(root)
            save_file(z, str(root / "z.safetensors"))
        out = root / f"{name}.mp4"
        cli = "import sys; from latent2mp4.cli import main; sys.argv[0] = 'latent2mp4'; main()"
        argv = [sys.executable, "-c", cli, "decode", str(root / "z.safetensors"), *preset,
                "--vae", str(root), "-o", str(out), "--overwrite"]  # fmt: skip
        run = subprocess.run(argv, capture_output=True, text=True)
        print(f"## {name}\n$ latent2mp4 decode z.safetensors {' '.join(preset)} --vae {root}")
        print(run.stdout.strip() or run.stderr.strip(), flush=True)
        if run.returncode == 0:
            print(probe(out), flush=True)


if __name__ == "__main__":
    main()
