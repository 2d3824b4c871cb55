"""Sound of Kandinsky 6 (MMAudio VAE + vocoder), Cosmos 3 (its audio tokenizer) and MiniMax-H3
(its audio VAE): waveform parity with diffusers' arithmetic, the right rate, channel count and
length, then the CLI muxing each with its video (≤ 1 LSB through --lossless)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_audio import read_audio
from test_minimax_h3 import frames_of
from test_minimax_h3 import pixels as h3_pixels
from tiny_minimax_h3 import TINY, make_tiny_h3
from tiny_sound import (
    cosmos3_reference,
    h3_reference,
    make_tiny_cosmos3_audio,
    make_tiny_h3_audio,
    make_tiny_mmaudio,
    mmaudio_reference,
)

from latent2mp4.audio import load_audio
from latent2mp4.errors import WeightsError
from latent2mp4.models.registry import get_sound
from latent2mp4.options import DecodeOptions
from latent2mp4.presets import CONFIG_DIR, AudioPreset, load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error
from tiny_hunyuan import make_tiny_hunyuan
from tiny_wan import make_tiny_wan

PARITY = 3e-4  # the bar for waveforms (fp32 here: measured ~1e-7)
READ_BACK = 3e-4  # after FLAC and ffmpeg's float conversion
CPU = torch.device("cpu")
# The tiny models' presets: architecture and layout from the built-in ones, sizes the tiny ones'.
K6 = AudioPreset(architecture="mmaudio", sample_rate=8000, samples_per_latent=32, trim=False)
C3 = AudioPreset(
    architecture="cosmos3-audio", key="sound_latents", vae_subfolder="sound_tokenizer",
    vocoder_subfolder=None, sample_rate=12000, samples_per_latent=24,
)  # fmt: skip
H3 = AudioPreset(
    architecture="minimax-h3-audio", vocoder_subfolder=None, sample_rate=6000,
    samples_per_latent=6,
)  # fmt: skip


def loaded(root: Path, spec: AudioPreset):
    preset = dataclasses.replace(load_preset("wan"), audio=spec)
    return load_audio(DecodeOptions(vae=str(root)), preset, CPU)


def check(name: str, got: torch.Tensor, want: torch.Tensor, channels: int, samples: int) -> None:
    err = (got - want).abs().max().item()
    rms = want.pow(2).mean().sqrt().item()
    print(f"\n{name}: {tuple(got.shape)} max abs {err:.2e} (signal rms {rms:.3f})")
    assert got.shape == want.shape == (1, channels, samples)
    assert want.abs().mean() > 1e-3 and (want.abs() < 1).any()  # a real, unsaturated signal
    assert err <= PARITY


# ---- models ------------------------------------------------------------------------------------


def test_mmaudio_matches_diffusers(tmp_path):
    vae, vocoder = make_tiny_mmaudio(tmp_path, seed=1, scaling_factor=0.61)
    sound = loaded(tmp_path, K6)
    z = torch.randn(1, 6, 23, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = sound.waveform(z)
    check("mmaudio", got, mmaudio_reference(vae, vocoder, z), 1, 23 * 32)
    assert sound.sample_rate == 8000


def test_cosmos3_tokenizer_matches_diffusers_and_ignores_the_encoder(tmp_path):
    tok = make_tiny_cosmos3_audio(tmp_path / "sound_tokenizer", seed=3)
    sound = loaded(tmp_path, C3)
    z = torch.randn(6, 19, generator=torch.Generator().manual_seed(4))  # the pipeline's (C, T)
    with torch.no_grad():
        got = sound.waveform(z[None])
    check("cosmos3", got, cosmos3_reference(tok, z)[None], 2, 19 * 24)
    assert sound.sample_rate == 12000


@pytest.mark.parametrize("original", [False, True], ids=["diffusers", "original"])
def test_h3_audio_matches_diffusers(tmp_path, original):
    vae = make_tiny_h3_audio(tmp_path / "audio_vae", seed=5, original=original)
    sound = loaded(tmp_path, H3)
    rows = torch.randn(2, 4, 17, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = sound.waveform(rows[None])
    check(f"h3 {'original' if original else 'diffusers'}", got, h3_reference(vae, rows), 2, 17 * 6)
    assert sound.sample_rate == 6000


def test_configs_the_decoders_refuse(tmp_path):
    make_tiny_cosmos3_audio(tmp_path / "c" / "sound_tokenizer")
    cfg_path = tmp_path / "c" / "sound_tokenizer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "latent_mean": [0.0] * 6}))
    with pytest.raises(WeightsError, match="latent_mean is set"):
        loaded(tmp_path / "c", C3)
    make_tiny_h3_audio(tmp_path / "h" / "audio_vae")
    cfg_path = tmp_path / "h" / "audio_vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "latents_std": None}))
    with pytest.raises(WeightsError, match="no latents_mean/latents_std"):
        loaded(tmp_path / "h", H3)


def test_architectures_are_found_by_name():
    assert {get_sound(n).name for n in ("ltx2", "mmaudio", "cosmos3-audio", "minimax-h3-audio")}
    with pytest.raises(LookupError):
        get_sound("wan")  # a video family, not a sound architecture


# ---- through the CLI ---------------------------------------------------------------------------


def lsb(frames: np.ndarray, pixels: torch.Tensor) -> int:
    want = ((pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0) * 255).round().numpy()
    return int(np.abs(frames.astype(int) - want.astype(int)).max())


def test_kandinsky6_video_and_sound(tmp_path, cli):
    """The `kandinsky6` preset with the pipeline's (video, audio) model-space latents; the VAE
    config's scaling factor (not the preset's) de-normalises the video; the sound keeps the
    length the pipeline gives it (longer than the video by part of a latent)."""
    root = tmp_path / "K6"
    vae = make_tiny_hunyuan(root / "vae", seed=7)
    cfg_path = root / "vae" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "scaling_factor": 0.7}))
    audio_vae, vocoder = make_tiny_mmaudio(root, seed=8, scaling_factor=0.55)
    g = torch.Generator().manual_seed(9)
    video = torch.randn(1, 16, 3, 4, 6, generator=g)  # 9 frames at 24 fps: 0.375 s
    length = -(-9 * 8000 // (24 * 32))  # the pipeline's ceil(frames / fps * rate / hop) = 94
    audio = torch.randn(1, 6, length, generator=g)
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "k6.safetensors"))
    preset = tmp_path / "k6.yaml"
    text = (CONFIG_DIR / "kandinsky6.yaml").read_text()
    text = text.replace("sample_rate: 44100", "sample_rate: 8000").replace(": 1024", ": 32")
    preset.write_text(text.replace("name: kandinsky6", "name: k6-tiny"))
    out = tmp_path / "k6.mkv"
    run = cli("decode", tmp_path / "k6.safetensors", "--preset", preset, "--vae", root,
              "--lossless", "--no-tile", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "audio 0.376 s, video 0.375 s: audio kept whole" in run.output
    frames, fps = read_video(out)
    with torch.no_grad():
        pixels = vae.decode(video / 0.7).sample
    assert fps == 24 and frames.shape == (9, 32, 48, 3) and lsb(frames, pixels) <= 1
    got, line = read_audio(out)
    want = mmaudio_reference(audio_vae, vocoder, audio)[0].T.numpy()
    assert "8000 Hz" in line and "mono" in line and "flac" in line
    assert got.shape == want.shape == (length * 32, 1)  # not trimmed to the video
    assert np.abs(got - want).max() <= READ_BACK


def test_cosmos3_video_and_sound(tmp_path, cli):
    """The `cosmos3` preset: Wan 2.2 video latents (z * std + mean from the VAE config) and the
    pipeline's (C, T) sound latents, padded to the video as LTX-2's sound is."""
    root = tmp_path / "Cosmos3"
    vae = make_tiny_wan(root / "vae", "2.2", seed=10)
    tok = make_tiny_cosmos3_audio(root / "sound_tokenizer", seed=11)
    g = torch.Generator().manual_seed(12)
    video = torch.randn(1, 48, 2, 2, 3, generator=g)  # 5 frames at 24 fps: 0.208 s
    sound = torch.randn(6, 100, generator=g)  # 100 x 24 samples at 12 kHz: 0.2 s
    save_file({"latents": video, "sound_latents": sound}, str(tmp_path / "c3.safetensors"))
    preset = tmp_path / "c3.yaml"
    text = (CONFIG_DIR / "cosmos3.yaml").read_text().replace("name: cosmos3", "name: c3-tiny")
    preset.write_text(text.replace("sample_rate: 48000", "sample_rate: 12000"))
    out = tmp_path / "c3.mkv"
    run = cli("decode", tmp_path / "c3.safetensors", "--preset", preset, "--vae", root,
              "--lossless", "--no-tile", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "audio 0.200 s, video 0.208 s: audio padded" in run.output
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        pixels = vae.decode(video * std + mean).sample
    frames, _ = read_video(out)
    assert frames.shape[0] == 5 and lsb(frames, pixels) <= 1
    got, line = read_audio(out)
    want = cosmos3_reference(tok, sound).T.numpy()
    assert "12000 Hz" in line and "stereo" in line
    assert got.shape == (round(5 / 24 * 12000), 2)  # the video's duration
    assert np.abs(got[: want.shape[0]] - want).max() <= READ_BACK


def h3_preset(tmp_path: Path) -> Path:
    """minimax-h3.yaml, audio section included, for the tiny video and audio VAEs' sizes."""
    d = yaml.safe_load((CONFIG_DIR / "minimax-h3.yaml").read_text())
    c = TINY["latent_channels"]
    d.update(name="h3-sound", aliases=[], latent_channels=c)
    d["normalization"] = {"std_op": "multiply", "mean": [0.0] * c, "std": [1.0] * c}
    d["preview"]["factors"] = [[0.0, 0.0, 0.0]] * c
    d.pop("tiny")
    d["audio"].update(sample_rate=6000, samples_per_latent=6)
    path = tmp_path / "h3-sound.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("batched", [False, True], ids=["rows-diffusers", "batch-original"])
def test_h3_video_and_sound(tmp_path, cli, batched):
    """The `minimax-h3` preset's sound: the blocks' stereo rows (2, C, L) from a pipeline folder's
    diffusers audio_vae/, or batched (1, 2, C, L) from the release's audio_vae/ (model.safetensors
    + config.json); left and right, trimmed to the video as LTX-2's sound is."""
    root = tmp_path / "H3"
    vae = make_tiny_h3(root / "vae", seed=13)
    audio_vae = make_tiny_h3_audio(root / "audio_vae", seed=14, original=batched)
    g = torch.Generator().manual_seed(15)
    video = torch.randn(1, TINY["latent_channels"], 7, 4, 4, generator=g)  # 22 frames: 0.917 s
    rows = torch.randn(2, 4, 1000, generator=g)  # 6000 samples at 6 kHz: 1 s
    audio = rows[None] if batched else rows
    save_file({"latents": video, "audio_latents": audio}, str(tmp_path / "h3.safetensors"))
    out = tmp_path / "h3.mkv"
    run = cli("decode", tmp_path / "h3.safetensors", "--preset", h3_preset(tmp_path), "--vae",
              root, "--lossless", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "audio 1.000 s, video 0.917 s: audio trimmed" in run.output
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    frames, fps = read_video(out)
    want_frames = frames_of(h3_pixels(vae, video * std + mean))[0]
    assert fps == 24 and frames.shape == want_frames.shape == (22, 64, 64, 3)
    assert np.abs(frames.astype(int) - want_frames.astype(int)).max() <= 1
    got, line = read_audio(out)
    want = h3_reference(audio_vae, rows)[0].T.numpy()  # (samples, [left, right])
    assert "6000 Hz" in line and "stereo" in line
    n = round(22 / 24 * 6000)
    assert got.shape == (n, 2) and np.abs(got - want[:n]).max() <= READ_BACK


def test_info_shows_the_sound_latents_and_their_duration(tmp_path, cli):
    z = torch.zeros(1, 48, 2, 2, 3)
    save_file(
        {"latents": z, "sound_latents": torch.zeros(64, 250)}, str(tmp_path / "c.safetensors")
    )
    run = cli("info", tmp_path / "c.safetensors")
    assert run.exit_code == 0, run.output
    row = next(ln for ln in run.stdout.splitlines() if "cosmos3" in ln and "sound_latents" in ln)
    assert "(64, 250)" in row and "10.00 s" in row  # 25 latents per second
    z = torch.zeros(1, 16, 31, 4, 4)
    save_file(
        {"latents": z, "audio_latents": torch.zeros(1, 40, 218)}, str(tmp_path / "k.safetensors")
    )
    run = cli("info", tmp_path / "k.safetensors")
    row = next(ln for ln in run.stdout.splitlines() if "kandinsky6" in ln and "audio_latents" in ln)
    assert "(1, 40, 218)" in row and "5.06 s" in row  # 218 x 1024 / 44100


def test_sound_latents_that_do_not_fit_are_one_line_errors(tmp_path, cli):
    root = tmp_path / "H3"
    make_tiny_h3(root / "vae", seed=13)
    make_tiny_h3_audio(root / "audio_vae", seed=14)
    video = torch.randn(1, TINY["latent_channels"], 7, 4, 4)
    for name, audio, message in [
        ("rank", torch.randn(4, 60), "expected unpacked float audio latents (B, 2, C, L)"),
        ("rows", torch.randn(3, 4, 60), "has 3 rows of 4 channels"),
    ]:
        save_file({"latents": video, "audio_latents": audio}, str(tmp_path / f"{name}.safetensors"))
        run = cli("decode", tmp_path / f"{name}.safetensors", "--preset", h3_preset(tmp_path),
                  "--vae", root, "-o", tmp_path / f"{name}.mp4")  # fmt: skip
        assert_one_line_error(run, 1, message)
        assert not (tmp_path / f"{name}.mp4").exists()


# ---- bounded memory: windows give the whole clip ------------------------------------------------


def reach(fn, x: torch.Tensor, hop: int) -> int:
    """How many input frames away from a perturbed middle frame the output changes (the
    receptive field's radius, measured)."""
    n = x.shape[-1]
    with torch.no_grad():
        base = fn(x)
        bumped = x.clone()
        bumped[..., n // 2] += 1.0
        moved = (fn(bumped) - base).abs().amax(dim=tuple(range(base.ndim - 1))) > 0
    idx = torch.nonzero(moved).flatten()
    return int(max(n // 2 - idx.min().item() // hop, idx.max().item() // hop - n // 2))


@pytest.mark.parametrize("arch", ["mmaudio", "cosmos3", "h3"])
def test_windowed_decoding_equals_the_whole_clip(tmp_path, arch):
    """Each decoder's stated context covers its measured receptive field, and the waveform
    decoded in small windows with that context equals the whole clip's (printed: max abs)."""
    g = torch.Generator().manual_seed(16)
    if arch == "mmaudio":
        make_tiny_mmaudio(tmp_path, seed=17)
        sound, z = loaded(tmp_path, K6), torch.randn(1, 6, 60, generator=g)
        inner, x, hop = sound.vocoder, sound.vae(z).detach(), sound.vocoder.cfg.hop
        context = sound.context
    elif arch == "cosmos3":
        make_tiny_cosmos3_audio(tmp_path / "sound_tokenizer", seed=18)
        sound, z = loaded(tmp_path, C3), torch.randn(1, 6, 60, generator=g)
        inner, x, hop, context = sound.decoder, z, sound.cfg.hop, sound.cfg.context
    else:
        make_tiny_h3_audio(tmp_path / "audio_vae", seed=19)
        sound, z = loaded(tmp_path, H3), torch.randn(1, 2, 4, 60, generator=g)
        inner, x, hop, context = sound._decode, z[0], sound.cfg.generator.hop, sound.context
    measured = reach(inner, x, hop)
    assert measured <= context
    with torch.no_grad():
        whole = sound.waveform(z)
        sound.chunk_frames = 7  # many windows, each shorter than its margins
        windowed = sound.waveform(z)
    err = (windowed - whole).abs().max().item()
    print(
        f"\n{arch}: receptive field {measured} frames, context {context}; windows max abs {err:.1e}"
    )
    assert windowed.shape == whole.shape and err <= 1e-6
