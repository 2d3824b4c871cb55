"""The CLI as users meet it: real files, real ffmpeg, the preview decoder (no weights)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latent2mp4.engine import decode_stream
from latent2mp4.frames import to_frames
from latent2mp4.latents import read_latent_file, save_latents
from latent2mp4.models.preview import PreviewDecoder
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error, latents

ROOT = Path(__file__).parents[1]


def sample(tmp_path: Path, shape=(16, 4, 6, 10), name="sample.safetensors", **meta) -> Path:
    path = tmp_path / name
    if meta:
        save_latents(path, latents(shape), **meta)
    else:
        save_file({"latents": latents(shape)}, str(path))
    return path


def test_preview_decode_writes_the_real_frame_count_size_and_fps(tmp_path, cli):
    f = sample(tmp_path)  # T = 4 latent frames of 6×10
    run = cli("decode", f, "--model", "wan", "--decoder", "preview")
    assert run.exit_code == 0, run.output
    video, fps = read_video(tmp_path / "sample.mp4")
    assert video.shape == (4 * (4 - 1) + 1, 48, 80, 3) and fps == 16


def test_lossless_frames_equal_what_the_decoder_produced(tmp_path, cli):
    f = sample(tmp_path, shape=(16, 3, 5, 7))
    run = cli(
        "decode",
        f,
        "--model",
        "wan",
        "--decoder",
        "preview",
        "--lossless",
        "-o",
        tmp_path / "x.mkv",
    )
    assert run.exit_code == 0, run.output
    preset = load_preset("wan")
    zt = read_latent_file(f).tensor.unsqueeze(0)
    expected = np.stack(list(to_frames(decode_stream(PreviewDecoder(preset), zt))))
    got, _ = read_video(tmp_path / "x.mkv")
    assert got.shape == expected.shape == (9, 40, 56, 3)
    assert np.array_equal(got, expected)


def test_metadata_names_model_and_fps_so_no_flags_are_needed(tmp_path, cli):
    f = sample(tmp_path, shape=(48, 2, 4, 4), model="wan2.2", fps=12, latent_space="model")
    run = cli("decode", f, "--decoder", "preview")
    assert run.exit_code == 0, run.output
    video, fps = read_video(tmp_path / "sample.mp4")
    assert video.shape == (5, 64, 64, 3) and fps == 12


def test_batch_gives_one_video_each(tmp_path, cli):
    f = sample(tmp_path, shape=(3, 16, 2, 4, 4))
    run = cli("decode", f, "--model", "wan", "--decoder", "preview", "--out-dir", tmp_path / "o")
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        f"sample-{b}.mp4" for b in range(3)
    ]


def test_existing_output_and_skip_existing(tmp_path, cli):
    f = sample(tmp_path)
    (tmp_path / "sample.mp4").write_bytes(b"keep me")
    assert_one_line_error(
        cli("decode", f, "-m", "wan", "--decoder", "preview"), 1, "sample.mp4", "--overwrite"
    )
    run = cli("decode", f, "-m", "wan", "--decoder", "preview", "--skip-existing")
    assert run.exit_code == 0 and "skipped" in run.stdout
    assert (tmp_path / "sample.mp4").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "setup,args,code,fragment",
    [
        (None, ["missing.safetensors", "-m", "wan"], 1, "file not found"),
        ("random", ["bad.safetensors", "-m", "wan"], 1, "not a readable safetensors file"),
        ("wan", ["sample.safetensors", "-m", "sdxl"], 2, "unknown model 'sdxl'"),
        ("wan", ["sample.safetensors", "-m", "wan2.2"], 1, "did you mean"),
        ("wan", ["sample.safetensors", "-m", "wan", "--tile-size", "100"], 2, "multiples of 8"),
        ("wan", ["sample.safetensors", "-m", "wan", "--tile-size", "0"], 2, "positive"),
        ("wan", ["sample.safetensors", "-m", "wan", "--fps", "0"], 2, "--fps must be positive"),
        ("wan", ["sample.safetensors", "-m", "wan", "--fps", "nan"], 2, "--fps must be positive"),
        ("wan", ["sample.safetensors", "-m", "wan", "-o", "."], 2, "is a folder; use --out-dir"),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "--codec", "prores", "-o", "x.mp4"],
            2,
            "prores goes in .mov or .mkv files",
        ),
        ("wan", ["sample.safetensors", "-m", "wan", "--codec", "h264", "-o", "x.webm"], 2, "h264"),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "--lossless", "--crf", "10"],
            2,
            "excludes --crf",
        ),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "-o", "x.webm", "--audio-codec", "aac"],
            2,
            "webm",
        ),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "--audio-codec", "nonsense"],
            2,
            "no such audio",
        ),
        ("wan", ["sample.safetensors", "-m", "wan", "--audio-bitrate", "abc"], 2, "192k"),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "--audio", "a.wav", "--audio-key", "k"],
            2,
            "excludes",
        ),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "--tile-size", "64", "--no-tile"],
            2,
            "--no-tile excludes --tile-size",
        ),
        ("wan", ["sample.safetensors", "-m", "wan", "--device", "cuda:0"], 2, "CUDA"),
        (
            "wan",
            ["sample.safetensors", "-m", "wan", "-o", "x.avi", "--decoder", "preview"],
            2,
            "container",
        ),
        ("nan", ["sample.safetensors", "-m", "wan"], 1, "NaN"),
        ("wan", ["sample.safetensors"], 2, "pass --model"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    tmp_path, cli, monkeypatch, setup, args, code, fragment
):
    monkeypatch.chdir(tmp_path)
    if setup == "random":
        (tmp_path / "bad.safetensors").write_bytes(np.random.default_rng(0).bytes(256))
    elif setup == "wan":
        sample(tmp_path)
    elif setup == "nan":
        save_file({"latents": torch.full((16, 2, 4, 4), float("inf"))}, "sample.safetensors")
    run = cli("decode", *args)
    assert_one_line_error(run, code, fragment)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))


def test_vae_decoder_without_weights_says_what_to_pass(tmp_path, cli):
    run = cli("decode", sample(tmp_path), "-m", "wan")
    assert_one_line_error(run, 1, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--vae")


def test_info_lists_tensors_and_fitting_models(tmp_path, cli):
    run = cli("info", sample(tmp_path, shape=(16, 13, 60, 104), model="wan", fps=16))
    assert run.exit_code == 0, run.output
    for text in ("latents", "(16, 13, 60, 104)", "latent2mp4.model", "hunyuan", "832x480", "49"):
        assert text in run.stdout, text


def test_presets_table(cli):
    run = cli("presets")
    assert run.exit_code == 0 and "wan2.2" in run.stdout and "cogvideox1.5" in run.stdout


def test_installed_script_runs_end_to_end(tmp_path):
    f = sample(tmp_path, shape=(16, 2, 4, 4))
    exe = Path(sys.executable).parent / "latent2mp4"
    proc = subprocess.run(
        [str(exe), "decode", str(f), "-m", "wan", "--decoder", "preview"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_video(tmp_path / "sample.mp4")[0].shape == (5, 32, 32, 3)
    bad = subprocess.run(
        [str(exe), "decode", str(tmp_path / "nope.safetensors"), "-m", "wan"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_make_sample_script_is_deterministic(tmp_path):
    for name in ("a", "b"):
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "make_sample.py"),
                str(tmp_path / f"{name}.safetensors"),
                "--frames",
                "3",
                "--height",
                "8",
                "--width",
                "12",
            ],
            check=True,
            capture_output=True,
        )
    a, b = (read_latent_file(tmp_path / f"{n}.safetensors") for n in "ab")
    assert torch.equal(a.tensor, b.tensor) and a.metadata == b.metadata


def test_trajectory_steps_become_named_videos_with_one_load(tmp_path, cli):
    traj = latents((50, 1, 16, 2, 4, 4))
    save_file({"latents": traj}, str(tmp_path / "run.safetensors"))
    run = cli(
        "decode",
        tmp_path / "run.safetensors",
        "-m",
        "wan",
        "--decoder",
        "preview",
        "--index",
        "0,-1",
    )
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["run-step000.mp4", "run-step049.mp4"]
    run = cli("decode", tmp_path / "run.safetensors", "-m", "wan", "--decoder", "preview")
    assert sorted(p.name for p in tmp_path.glob("*.mp4"))[-1] == "run.mp4"  # default: last step


def test_compare_command_reports_inf_for_identical_and_writes_side_by_side(tmp_path, cli):
    f = sample(tmp_path, shape=(16, 3, 4, 6))
    assert (
        cli(
            "decode", f, "-m", "wan", "--decoder", "preview", "--lossless", "-o", tmp_path / "a.mkv"
        ).exit_code
        == 0
    )
    run = cli(
        "compare",
        tmp_path / "a.mkv",
        f,
        "-m",
        "wan",
        "--decoder",
        "preview",
        "--csv",
        tmp_path / "m.csv",
        "--side-by-side",
        tmp_path / "sbs.mp4",
    )
    assert run.exit_code == 0, run.output
    assert "inf" in run.stdout and "1.0000" in run.stdout
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "frame,input,psnr,ssim,mae"
    video, _ = read_video(tmp_path / "sbs.mp4")
    assert video.shape == (9, 32, 96, 3)
    bad = cli("compare", tmp_path / "a.mkv", tmp_path / "missing.mp4")
    assert_one_line_error(bad, 1, "missing.mp4")


def test_index_on_a_tensor_without_steps_is_noted(tmp_path, cli):
    """--index picks trajectory steps; on a batch it must not pass for a batch-element pick."""
    f = sample(tmp_path)
    run = cli("decode", f, "-m", "wan", "--decoder", "preview", "--index", "0")
    assert run.exit_code == 0, run.output
    assert "--index 0 ignored: only 6-D (steps,B,C,F,H,W) latents have steps" in run.output


def test_info_reads_cogvideox15_padding_as_decode_does(tmp_path, cli):
    z = torch.randn(1, 22, 16, 2, 2)
    save_latents(tmp_path / "c85.safetensors", z, model="cogvideox1.5", num_frames=85)
    save_latents(tmp_path / "c.safetensors", z, model="cogvideox1.5")
    assert "22×2×2" in cli("info", tmp_path / "c85.safetensors").stdout  # not padded
    assert "21×2×2" in cli("info", tmp_path / "c.safetensors").stdout  # the default 81-frame pad


def test_info_on_an_empty_tensor_says_so(tmp_path, cli):
    save_file({"latents": torch.zeros(1, 16, 0, 4, 4)}, str(tmp_path / "e.safetensors"))
    run = cli("info", tmp_path / "e.safetensors")
    assert run.exit_code == 0 and "empty dimension" in run.stdout and " fps" not in run.stdout
