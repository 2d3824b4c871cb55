"""Sound: LTX-2 audio VAE + vocoder parity with diffusers, muxing by the frames' ffmpeg process,
`--audio FILE`, and the failure modes. Real ffmpeg, real files; `-s` prints the parity figures.

LTX-2's video decoder is another module; here a user preset (Wan 2.1 plus an `audio:` section)
carries tiny random LTX-2 audio models, so the whole path runs end to end.
"""

from __future__ import annotations

import json
import re
import subprocess
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4 import load_decoder
from latent2mp4.audio import load_audio, probe_audio_file
from latent2mp4.models.ltx2.audio import rename_keys as audio_vae_keys
from latent2mp4.models.ltx2.vocoder import rename_keys as vocoder_keys
from latent2mp4.pipeline import DecodeOptions
from latent2mp4.presets import CONFIG_DIR, load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error
from tiny_ltx2_audio import make_tiny_audio_vae, make_tiny_vocoder, reference_waveform
from tiny_wan import make_tiny_wan

PARITY = 1e-4  # waveform before encoding
READ_BACK = 3e-4  # after FLAC (24-bit) and ffmpeg's float conversion
LATENT_FRAMES = 14  # 4*14-3 = 53 mel frames = 0.53 s; the video is 9 frames at 16 fps = 0.5625 s
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A pipeline folder (vae/, audio_vae/, vocoder/) and a user preset with sound."""
    root = tmp_path_factory.mktemp("pipe")
    vae = make_tiny_wan(root / "vae", "2.1", seed=3)
    audio_vae = make_tiny_audio_vae(root / "audio_vae", seed=4)
    vocoder = make_tiny_vocoder(root / "vocoder", seed=5)
    preset = root / "wan-sound.yaml"
    text = (CONFIG_DIR / "wan.yaml").read_text().replace("name: wan\n", "name: wan-sound\n")
    preset.write_text(text + "audio:\n  key: audio_latents\n  sample_rate: 24000\n")
    return root, preset, vae, audio_vae, vocoder


def sample(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 16, 3, 8, 7, generator=g)  # model space (Wan pipeline output)
    audio = torch.randn(b, 4, LATENT_FRAMES, 4, generator=g)  # VAE space, unpacked
    return video, audio


def wan_frames(vae, z: torch.Tensor, folder: Path) -> np.ndarray:
    cfg = load_preset("wan").normalization
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(z * std + mean).sample
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def read_audio(path: Path) -> tuple[np.ndarray, str]:
    """The first audio stream as float32 `(N, channels)`, and ffmpeg's stream line."""
    argv = [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"]
    raw = subprocess.run(argv, capture_output=True, check=True).stdout
    line = next(ln for ln in streams(path) if "Audio:" in ln)
    channels = 2 if "stereo" in line else 1
    return np.frombuffer(raw, np.float32).reshape(-1, channels), line


def streams(path: Path) -> list[str]:
    """ffprobe-style listing: `ffmpeg -i` prints the container's streams."""
    text = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True).stderr
    return [ln.strip() for ln in text.decode().splitlines() if "Stream #" in ln or "Duration" in ln]


def duration(path: Path) -> float:
    found = re.search(r"Duration: (\d+):(\d+):([\d.]+)", "\n".join(streams(path)))
    assert found, streams(path)
    h, m, s = found.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


# ---- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bwe", [False, True], ids=["vocoder", "bwe"])
@pytest.mark.parametrize("b,frames", [(1, 1), (2, 7), (1, 14)])
def test_waveform_matches_the_diffusers_chain(tmp_path, bwe, b, frames):
    vae = make_tiny_audio_vae(tmp_path / "audio_vae", seed=2)
    vocoder = make_tiny_vocoder(tmp_path / "vocoder", seed=2, bwe=bwe)
    opts = DecodeOptions(audio_vae=str(tmp_path / "audio_vae"), vocoder=str(tmp_path / "vocoder"))
    models = load_audio(opts, load_preset("wan"), torch.device("cpu"))
    z = torch.randn(b, 4, frames, 4, generator=torch.Generator().manual_seed(frames))
    ref = reference_waveform(vae, vocoder, z)
    with torch.no_grad():
        got = models.vocoder(models.vae(z))
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    name = "bwe" if bwe else "vocoder"
    print(f"\n{name} B={b} L={frames}: {ref.shape[-1]} samples, max {diff:.2e}")
    assert diff <= PARITY
    assert models.sample_rate == (48000 if bwe else 24000)
    assert ref.abs().max() > 0.05  # a silent reference would prove nothing


def test_single_files_with_their_config_load(tmp_path):
    make_tiny_audio_vae(tmp_path / "a")
    make_tiny_vocoder(tmp_path / "v")
    opts = DecodeOptions(
        audio_vae=str(tmp_path / "a" / "diffusion_pytorch_model.safetensors"),
        vocoder=str(tmp_path / "v" / "diffusion_pytorch_model.safetensors"),
    )
    assert load_audio(opts, load_preset("wan"), torch.device("cpu")).sample_rate == 24000


def test_original_checkpoint_names_are_renamed(tmp_path):
    make_tiny_vocoder(tmp_path / "v")
    ours = load_file(tmp_path / "v" / "diffusion_pytorch_model.safetensors")
    original = {"vae.x": 0, "audio_vae.decoder.conv_in.conv.weight": 0, "audio_vae.encoder.y": 0}
    for key in ours:
        head, _, rest = key.partition(".")
        old = {"upsamplers": "ups", "resnets": "resblocks", "conv_in": "conv_pre"}.get(head, head)
        old = "conv_post" if head == "conv_out" else old
        original[f"vocoder.{old}.{rest}"] = 0
    mapping = vocoder_keys(original)
    assert sorted(mapping.values()) == sorted(ours)
    assert audio_vae_keys(original) == {
        "audio_vae.decoder.conv_in.conv.weight": "conv_in.conv.weight"
    }


def test_wrong_audio_weights_are_one_line_errors(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample()
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root / "vae"]
    run = cli(*args, "--audio-vae", root / "vocoder", "-o", tmp_path / "o.mp4")
    assert_one_line_error(run, 1, "LTX2Vocoder", "AutoencoderKLLTX2Audio")
    assert list(tmp_path.iterdir()) == [tmp_path / "z.safetensors"]


# ---- through the CLI ---------------------------------------------------------------------------


def test_lossless_frames_and_audio_match_diffusers_in_one_file(tmp_path, pipeline, cli):
    root, preset, vae, audio_vae, vocoder = pipeline
    video, audio = sample()
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    out = tmp_path / "out.mkv"
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root, "--lossless",
              "--no-tile", "-o", out, "--report", tmp_path / "r.jsonl")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "audio 0.530 s, video 0.562 s: audio padded with 0.032 s of silence" in run.output
    ref = reference_waveform(audio_vae, vocoder, audio)
    for b in range(2):
        path = tmp_path / f"out-{b}.mkv"
        frames, _ = read_video(path)
        expected = wan_frames(vae, video[b : b + 1], root / "vae")
        lsb = np.abs(frames.astype(int) - expected.astype(int)).max()
        got, line = read_audio(path)
        want = ref[b].T.numpy()
        n = want.shape[0]
        err = np.abs(got[:n] - want).max()
        print(f"\nbatch {b}: frames max {lsb} LSB; audio max {err:.2e} over {n} samples")
        print("\n".join(streams(path)))
        assert lsb <= 1
        assert "24000 Hz" in line and "flac" in line and "stereo" in line
        assert err <= READ_BACK
        assert got.shape[0] == round(9 / 16 * 24000)  # padded to the video's 0.5625 s
        assert np.abs(got[n:]).max() == 0  # with silence
        assert len(streams(path)) == 3  # duration line, one video, one audio stream
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert [a["codec"] for a in record["audio"]] == ["flac", "flac"]
    assert record["audio"][0]["sample_rate"] == 24000


def test_default_is_aac_and_the_summary_shows_audio(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample(1)
    (tmp_path / "in").mkdir()
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "in" / "z.safetensors"))
    run = cli("decode", tmp_path / "in", "--preset", preset, "--vae", root, "--out-dir", tmp_path)
    assert run.exit_code == 0, run.output
    listing = streams(tmp_path / "z.mp4")
    audio_line = next(ln for ln in listing if "Audio:" in ln)
    assert "aac" in audio_line and "24000 Hz" in audio_line, listing
    assert "0.53 s aac 24 kHz" in run.stdout  # the summary table's audio column
    assert duration(tmp_path / "z.mp4") == pytest.approx(9 / 16, abs=0.03)


def test_no_audio_and_files_without_audio(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample(1)
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root,
              "--no-audio", "-o", tmp_path / "a.mp4")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert not any("Audio:" in ln for ln in streams(tmp_path / "a.mp4"))
    save_file({"latents": video}, str(tmp_path / "v.safetensors"))
    run = cli("decode", tmp_path / "v.safetensors", "--preset", preset, "--vae", root / "vae")
    assert run.exit_code == 0, run.output
    assert "no audio latents ('audio_latents') in the file: video only" in run.output


def test_pt_input_and_the_python_api(tmp_path, pipeline):
    root, preset, *_ = pipeline
    video, audio = sample(1)
    torch.save({"latents": video, "audio_latents": audio}, tmp_path / "z.pt")
    decoder = load_decoder(preset, vae=root)
    result = decoder.to_video(tmp_path / "z.pt", tmp_path / "a.mp4")
    assert result.audio.seconds == pytest.approx(0.53) and result.audio.codec == "aac"
    assert sum("Audio:" in ln for ln in streams(tmp_path / "a.mp4")) == 1
    decoder.to_video(tmp_path / "z.pt", tmp_path / "b.mp4", no_audio=True)
    assert not any("Audio:" in ln for ln in streams(tmp_path / "b.mp4"))


def test_nan_audio_latents_are_refused(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample(1)
    audio[0, 0, 3, 1] = float("nan")
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root)
    assert_one_line_error(run, 1, "'audio_latents' holds NaN or Inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.safetensors"]


def test_audio_latents_without_audio_weights_publish_nothing(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample()
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    lonely = tmp_path / "lonely"
    make_tiny_wan(lonely / "vae", "2.1")
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", lonely / "vae",
              "-o", tmp_path / "out.mp4")  # fmt: skip
    assert_one_line_error(run, 1, "no audio_vae/", "--no-audio")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely", "z.safetensors"]


def test_audio_batch_must_match_the_video(tmp_path, pipeline, cli):
    root, preset, *_ = pipeline
    video, audio = sample()
    save_file({"latents": video, "audio_latents": audio[:1]}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root)
    assert_one_line_error(run, 1, "1 clips", "video latents 2")


def test_info_shows_audio_latents_and_duration(tmp_path, pipeline, cli):
    _, preset, *_ = pipeline
    video, audio = sample()
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    run = cli("info", tmp_path / "z.safetensors", "--preset", preset)
    assert run.exit_code == 0, run.output
    row = next(ln for ln in run.stdout.splitlines() if "wan-sound" in ln and "audio_latents" in ln)
    assert "(2, 4, 14, 4)" in row and "0.53 s" in row


# ---- --audio FILE ------------------------------------------------------------------------------


def tone(path: Path, seconds: float, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 0.5 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.mark.parametrize("kind", ["wav", "mp3"])
def test_audio_file_is_muxed_and_fitted_to_the_video(tmp_path, cli, kind):
    src = tone(tmp_path / "tone.wav", 2.0)
    if kind == "mp3":
        mp3 = tmp_path / "tone.mp3"
        subprocess.run([FFMPEG, "-v", "error", "-i", str(src), str(mp3)], check=True)
        src = mp3
    z = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    out = tmp_path / "out.mp4"
    run = cli("decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "preview",
              "--audio", src, "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "video 1.062 s: audio trimmed by" in run.output  # 17 frames at 16 fps
    listing = streams(out)
    print("\n" + "\n".join(listing))
    assert sum("Stream #" in ln for ln in listing) == 2
    assert "Audio: aac" in next(ln for ln in listing if "Audio:" in ln)
    assert duration(out) == pytest.approx(17 / 16, abs=0.03)
    assert probe_audio_file(out).seconds == pytest.approx(17 / 16, abs=0.03)


def test_unreadable_audio_file_publishes_nothing(tmp_path, cli):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    save_file({"latents": torch.randn(1, 16, 2, 4, 4)}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "preview"]
    run = cli(*args, "--audio", bad, "-o", tmp_path / "out.mp4")
    assert_one_line_error(run, 1, "bad.wav: not a readable audio file")
    run = cli(*args, "--audio", tmp_path / "missing.wav", "-o", tmp_path / "out.mp4")
    assert_one_line_error(run, 1, "missing.wav: audio file not found")
    run = cli(*args, "--audio", bad, "--no-audio")
    assert_one_line_error(run, 2, "--no-audio excludes --audio")
    assert cli(*args, "-o", tmp_path / "silent.mp4").exit_code == 0  # a video without sound
    run = cli(*args, "--audio", tmp_path / "silent.mp4", "-o", tmp_path / "out.mp4")
    assert_one_line_error(run, 1, "silent.mp4: has no audio stream")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav", "silent.mp4", "z.safetensors"]


def test_ltx2_video_and_sound_from_one_pipeline_folder(tmp_path, cli):
    """The real `ltx2` preset: LTX2Pipeline's (video, audio) latents, both VAE space, decoded from a
    pipeline folder (vae/, audio_vae/, vocoder/) into one file, each stream against diffusers."""
    from tiny_ltx import make_tiny_ltx

    root = tmp_path / "LTX-2"
    vae = make_tiny_ltx(root / "vae", "ltx2", seed=6)
    audio_vae = make_tiny_audio_vae(root / "audio_vae", seed=7)
    vocoder = make_tiny_vocoder(root / "vocoder", seed=8)
    g = torch.Generator().manual_seed(9)
    video = torch.randn(1, 128, 2, 2, 3, generator=g)  # 9 frames of 64x96 at 24 fps: 0.375 s
    audio = torch.randn(1, 4, 9, 4, generator=g)  # 4*9-3 = 33 mel frames: 0.33 s
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "run.safetensors"))
    out = tmp_path / "run.mkv"
    run = cli("decode", tmp_path / "run.safetensors", "-m", "ltx2", "--vae", root, "--lossless",
              "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "latent space: vae" in run.output  # LTX2Pipeline returns de-normalised latents
    with torch.no_grad():
        pixels = vae.decode(video).sample
    expected = ((pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0) * 255).round()
    frames, fps = read_video(out)
    assert fps == 24 and frames.shape == (9, 64, 96, 3)
    assert np.abs(frames.astype(int) - expected.numpy().astype(int)).max() <= 1
    got, line = read_audio(out)
    want = reference_waveform(audio_vae, vocoder, audio)[0].T.numpy()
    assert "24000 Hz" in line and "flac" in line
    assert np.abs(got[: want.shape[0]] - want).max() <= READ_BACK
    assert got.shape[0] == 9 * 24000 // 24  # the video's duration: padded with silence


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a[:, :, :0], "has an empty dimension"),
        (lambda a: torch.cat([a, a], dim=1), "channels; the audio VAE"),
    ],
    ids=["empty", "channels"],
)
def test_audio_latents_that_do_not_fit_are_refused(tmp_path, pipeline, cli, edit, message):
    root, preset, *_ = pipeline
    video, audio = sample(1)
    save_file(
        {"latents": video, "audio_latents": edit(audio).contiguous()},
        str(tmp_path / "z.safetensors"),
    )
    run = cli("decode", tmp_path / "z.safetensors", "--preset", preset, "--vae", root)
    assert_one_line_error(run, 1, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.safetensors"]
