"""The Python API: one `load_decoder`, tensors in memory to files, frames or a float video."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import latent2mp4
from latent2mp4 import decoder as decoder_mod
from latent2mp4.errors import InputError, Latent2Mp4Error, OutputError, UsageError
from latent2mp4.latents import save_latents
from latent2mp4.video import read_video

from conftest import latents
from tiny_wan import make_tiny_wan

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wan") / "vae"
    make_tiny_wan(path, "2.1")
    return path


@pytest.fixture(scope="module")
def dec(wan_vae) -> latent2mp4.Decoder:
    return latent2mp4.load_decoder("wan", vae=wan_vae, dtype="fp32")


def test_a_tensor_in_memory_gives_the_cli_frames(tmp_path, cli, dec, wan_vae):
    z = latents((1, 16, 3, 4, 6), seed=2)
    result = dec.to_video(z, tmp_path / "mem.mkv", lossless=True)
    assert result.output == tmp_path / "mem.mkv" and result.frames == 9
    save_latents(tmp_path / "z.safetensors", z, model="wan")
    run = cli(
        "decode",
        tmp_path / "z.safetensors",
        "--vae",
        wan_vae,
        "--lossless",
        "--dtype",
        "fp32",
        "-o",
        tmp_path / "cli.mkv",
    )
    assert run.exit_code == 0, run.output
    a, b = read_video(tmp_path / "mem.mkv")[0], read_video(tmp_path / "cli.mkv")[0]
    assert a.shape == (9, 32, 48, 3) and np.array_equal(a, b)
    # NumPy input and the file path itself decode to the same frames.
    dec.to_video(z.numpy(), tmp_path / "np.mkv", lossless=True)
    assert np.array_equal(read_video(tmp_path / "np.mkv")[0], a)


def test_weights_are_read_once_for_many_calls(tmp_path, wan_vae, monkeypatch):
    loads = []
    real = decoder_mod.load_vae

    def spy(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder_mod, "load_vae", spy)
    dec = latent2mp4.load_decoder("wan", vae=wan_vae, dtype="fp32")
    for i in range(3):
        res = dec.to_video(latents((16, 2, 4, 4), seed=i), tmp_path / f"v{i}.mp4")
        assert res.output.is_file()
    assert len(loads) == 1


def test_batches_and_trajectories_name_files_like_the_cli(tmp_path, dec):
    results = dec.to_video(latents((2, 16, 2, 4, 4)), tmp_path / "b.mp4")
    assert [r.output.name for r in results] == ["b-0.mp4", "b-1.mp4"]
    with pytest.raises(AttributeError, match="index the results"):
        _ = results.output
    steps = [latents((16, 2, 4, 4), seed=s) for s in range(3)]
    results = dec.to_video(steps, tmp_path / "t.mp4", index="0,-1")
    assert [r.output.name for r in results] == ["t-step000.mp4", "t-step002.mp4"]
    with pytest.raises(OutputError, match="exists"):
        dec.to_video(steps, tmp_path / "t.mp4", index=0)


def test_frames_stream_before_the_last_latent_frame_is_decoded(dec, monkeypatch):
    T = 5
    calls: list[int] = []
    original = dec.module.decode_chunk

    def counting(z, state):
        calls.append(z.shape[2])
        return original(z, state)

    monkeypatch.setattr(dec.module, "decode_chunk", counting)
    # 32x32 latent frames: large enough to be decoded one per call (small ones are grouped)
    frames = dec.frames(latents((1, 16, T, 32, 32)))
    first = next(frames)
    assert first.shape == (256, 256, 3) and first.dtype == np.uint8
    assert len(calls) == 1 < T  # one latent frame decoded so far
    rest = list(frames)
    assert len(rest) == 4 * (T - 1) and len(calls) == T


def test_decode_returns_the_whole_float_video(dec):
    z = latents((2, 16, 2, 4, 4))
    video = dec.decode(z)
    assert video.shape == (2, 3, 5, 32, 32) and video.dtype == torch.float32
    frames = np.stack(list(dec.frames(z[1])))
    q = ((video[1].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert np.array_equal(q.numpy(), frames)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.ones(16, 2, 4, 4, dtype=torch.int32), "latents are int32; expected a float dtype"),
        (
            latents((48, 2, 4, 4)),
            "latents have 48 channels (tensor 'latents', shape (48, 2, 4, 4)); the VAE has "
            "16 latent channels (z_dim in",
        ),
        (torch.full((16, 2, 4, 4), float("nan")), "NaN/Inf values"),
        ("no/such/file.safetensors", "file not found"),
        (object(), "latents must be a torch tensor"),
    ],
)
def test_wrong_inputs_raise_our_errors_with_the_cli_messages(tmp_path, dec, bad, message):
    with pytest.raises(Latent2Mp4Error, match=re.escape(message)):
        dec.to_video(bad, tmp_path / "x.mp4")
    assert not list(tmp_path.iterdir())


def test_latents_for_another_model_and_unknown_models(dec):
    with pytest.raises(InputError, match="the VAE has 16 latent channels"):
        dec.frames(latents((48, 2, 4, 4)))  # checked at the call, before any frame
    with pytest.raises(Latent2Mp4Error, match="unknown model 'nope'"):
        latent2mp4.load_decoder("nope")


def python_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_readme_python_examples_run(tmp_path, wan_vae, monkeypatch):
    """The README's "From Python" snippets, run as written with a tiny VAE and a stand-in for
    the diffusion model (the only parts a test cannot have)."""
    monkeypatch.chdir(tmp_path)

    class Pipe:  # what a diffusers pipeline returns with output_type="latent"
        def __call__(self, *args, **kwargs):
            return type("Out", (), {"frames": latents((1, 16, 3, 4, 6))})()

    blocks = python_blocks("From Python")
    assert len(blocks) >= 2
    for code in blocks:
        code = code.replace('"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"', repr(str(wan_vae)))
        namespace = {
            "pipe": Pipe(),
            "prompt": "a cat",
            "sample_latents": lambda: latents((1, 16, 2, 4, 4)),
            "model": None,
        }
        exec(compile(code, "README.md", "exec"), namespace)
    assert list(tmp_path.glob("*.mp4"))


def test_decode_file_takes_plain_strings_for_paths(tmp_path, wan_vae):
    """Library callers write `out="clip.mp4"` as often as `Path("clip.mp4")`."""
    lat = tmp_path / "z.safetensors"
    save_latents(lat, latents((1, 16, 2, 4, 4)), model="wan", fps=16)
    opts = latent2mp4.DecodeOptions(
        model="wan", vae=str(wan_vae), dtype="fp32", out=str(tmp_path / "clip.mp4")
    )
    result = latent2mp4.decode_file(str(lat), opts)[0]
    assert result.output == tmp_path / "clip.mp4" and result.output.is_file()
    out_dir = latent2mp4.DecodeOptions(decoder="preview", model="wan", out_dir=str(tmp_path / "d"))
    assert latent2mp4.decode_file(str(lat), out_dir)[0].output.parent == tmp_path / "d"


def test_per_call_choices_get_the_cli_checks(tmp_path, dec):
    z = latents((1, 16, 2, 4, 4))
    for kwargs, message in (
        (dict(fps=0), "--fps must be positive"),
        (dict(fps=float("inf")), "--fps must be positive"),
        (dict(overwrite=True, skip_existing=True), "exclude each other"),
        (dict(latent_space="Model"), "must be auto, model or vae"),
    ):
        with pytest.raises(UsageError, match=message):
            dec.to_video(z, tmp_path / "x.mp4", **kwargs)
    with pytest.raises(UsageError, match="must be auto, model or vae"):
        dec.decode(z, latent_space="comfy")
    assert not list(tmp_path.iterdir())


def test_step_names_are_padded_for_the_whole_trajectory(tmp_path):
    """One step keeps one name whichever steps a run picks (--skip-existing relies on it)."""
    preview = latent2mp4.load_decoder("wan", decoder="preview", device="cpu")
    z = latents((1001, 1, 16, 1, 2, 2))
    for index in ("0", "0,-1"):
        results = preview.to_video(z, tmp_path / "t.mp4", index=index, overwrite=True)
        assert [r.output.name for r in results][0] == "t-step0000.mp4"


def test_odd_in_memory_inputs(dec):
    """Big-endian arrays decode as their values; other odd inputs are our one-line errors."""
    z = latents((1, 16, 2, 4, 4)).numpy()
    assert torch.equal(dec.decode(z.astype(">f4")), dec.decode(z))
    for bad in ([1.0, 2.0], z.tolist(), torch.empty(1, 16, 2, 4, 4, device="meta")):
        with pytest.raises(InputError):
            dec.decode(bad)
