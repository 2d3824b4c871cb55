"""Latents as people save them (torch.save, NumPy) and reads that never hold the whole clip."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latent2mp4 import latents as latents_mod
from latent2mp4.arrays import LATENT_SUFFIXES, RawArray
from latent2mp4.batch import collect_inputs
from latent2mp4.errors import InputError
from latent2mp4.latents import read_latent_file, select_video
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error, latents, whole

WAN = load_preset("wan")
PREVIEW = ("--model", "wan", "--decoder", "preview", "--lossless")


def preview_frames(cli, path: Path, *args: str) -> np.ndarray:
    out = path.with_name(path.name + ".mkv")
    run = cli("decode", path, *PREVIEW, "-o", out, *args)
    assert run.exit_code == 0, run.output
    return read_video(out)[0]


@pytest.fixture
def reference(tmp_path, cli):
    """A (B=1) latent saved as safetensors, and its preview frames."""
    z = latents((1, 16, 3, 4, 6), seed=7)
    path = tmp_path / "ref.safetensors"
    save_file({"latents": z}, str(path))
    return z, preview_frames(cli, path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_save_forms_decode_like_safetensors(tmp_path, cli, reference, dtype):
    z, expected = reference
    forms = {
        "bare.pt": z.to(dtype),
        "dict.pth": {"latents": z.to(dtype), "noise": torch.zeros(3)},
        "nested.bin": {"samples": {"latents": z.to(dtype)}, "step": 3},
        "comfy.pt": {"samples": z.to(dtype)},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        got = preview_frames(cli, tmp_path / name)
        # fp16/bf16 storage rounds the latents; fp32 files are the same latents exactly.
        if dtype == torch.float32:
            assert np.array_equal(got, expected), name
        else:
            assert got.shape == expected.shape
            assert np.abs(got.astype(int) - expected).max() <= 8, name


def test_a_list_of_tensors_is_a_trajectory(tmp_path, cli):
    steps = [latents((16, 2, 4, 4), seed=s) for s in range(4)]
    torch.save(steps, tmp_path / "traj.pt")
    lf = read_latent_file(tmp_path / "traj.pt")
    sel = select_video(lf, WAN, index="0,-1")
    assert sel.steps == (0, 3)
    assert torch.equal(whole(sel.view)[1, 0], steps[3])
    run = cli("decode", tmp_path / "traj.pt", "-m", "wan", "--decoder", "preview", "--index", "::2")
    assert run.exit_code == 0, run.output
    assert {p.name for p in tmp_path.glob("*.mp4")} == {"traj-step000.mp4", "traj-step002.mp4"}
    torch.save([steps[0], latents((16, 3, 4, 4))], tmp_path / "bad.pt")
    with pytest.raises(InputError, match="equally shaped"):
        read_latent_file(tmp_path / "bad.pt")


def test_numpy_files(tmp_path, cli, reference):
    z, expected = reference
    np.save(tmp_path / "z.npy", z.numpy())
    np.savez(tmp_path / "z.npz", latents=z.numpy(), noise=np.zeros(3, np.float32))
    np.savez_compressed(tmp_path / "one.npz", z.numpy().astype(np.float16))
    assert np.array_equal(preview_frames(cli, tmp_path / "z.npy"), expected)
    assert np.array_equal(preview_frames(cli, tmp_path / "z.npz"), expected)
    assert read_latent_file(tmp_path / "one.npz").key == "arr_0"
    np.save(tmp_path / "big.npy", z.numpy().astype(">f4"))  # big-endian bytes are swapped
    assert np.array_equal(preview_frames(cli, tmp_path / "big.npy"), expected)
    np.save(tmp_path / "f.npy", np.asfortranarray(z.numpy()))
    with pytest.raises(InputError, match="Fortran order"):
        read_latent_file(tmp_path / "f.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy"):
        read_latent_file(tmp_path / "obj.npy")


def test_pickles_with_code_and_pipeline_outputs_are_refused_with_what_to_save(tmp_path, cli):
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    torch.save(WanPipelineOutput(frames=latents((1, 16, 2, 4, 4))), tmp_path / "out.pt")
    run = cli("decode", tmp_path / "out.pt", "-m", "wan", "--decoder", "preview")
    assert_one_line_error(run, 1, "WanPipelineOutput", "torch.save(output.frames")
    torch.save({"f": Path("x")}, tmp_path / "code.pt")
    run = cli("decode", tmp_path / "code.pt", "-m", "wan", "--decoder", "preview")
    assert_one_line_error(run, 1, "code.pt", "weights-only", "pathlib")
    assert not list(tmp_path.glob("*.mp4"))


def test_info_shows_every_form(tmp_path, cli):
    z = latents((1, 16, 3, 4, 6))
    torch.save({"latents": {"video": z}}, tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", z.numpy())
    torch.save([z, z], tmp_path / "c.pt")
    for name, tensor, shape in [
        ("a.pt", "latents.video", "(1, 16, 3, 4, 6)"),
        ("b.npy", "tensor", "(1, 16, 3, 4, 6)"),
        ("c.pt", "tensor", "(2, 1, 16, 3, 4, 6)"),
    ]:
        run = cli("info", tmp_path / name)
        assert run.exit_code == 0, run.output
        assert tensor in run.stdout and shape in run.stdout and "wan" in run.stdout, name


def test_batch_discovery_takes_every_latent_suffix(tmp_path):
    for suffix in LATENT_SUFFIXES:
        (tmp_path / f"x{suffix}").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    found = [i.path.suffix for i in collect_inputs([tmp_path])]
    assert sorted(found) == sorted(LATENT_SUFFIXES)


# ---- chunked reads (flat memory) ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["BCFHW", "BFCHW"])
def test_a_chunked_read_equals_the_whole_read(tmp_path, layout):
    z = latents((2, 3, 16, 7, 4, 5))  # (steps, B, C, T, h, w)
    stored = z.permute(0, 1, 3, 2, 4, 5).contiguous() if layout == "BFCHW" else z
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))
    np.save(tmp_path / "z.npy", stored.numpy())
    for name in ("z.safetensors", "z.npy"):
        view = select_video(read_latent_file(tmp_path / name), WAN, layout, index="all").view
        for pos, b, start, stop in [(0, 0, 0, 7), (1, 2, 2, 5), (0, 1, 6, 7)]:
            assert torch.equal(view.read(pos, b, start, stop), z[pos, b : b + 1, :, start:stop])


def test_decoding_never_reads_more_than_a_chunk(tmp_path, cli, monkeypatch):
    T = 9
    z = latents((1, 16, T, 4, 6))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    frames_read: list[int] = []
    take = RawArray.take

    def spy(self, index):
        x = take(self, index)
        frames_read.append(x.shape[-3])  # (C, t, h, w) after the batch index
        return x

    monkeypatch.setattr(RawArray, "take", spy)
    monkeypatch.setattr(latents_mod, "SCAN_BYTES", 2 * 16 * 4 * 6 * 4)  # the scan: 2 frames a read
    expected = preview_frames(cli, tmp_path / "z.safetensors")
    assert frames_read and max(frames_read) <= 2 < T
    # The same frames as from the whole tensor in memory.
    torch.save(z, tmp_path / "z.pt")
    assert np.array_equal(expected, preview_frames(cli, tmp_path / "z.pt"))


def test_nan_is_found_by_the_streamed_scan_in_any_slice(tmp_path, cli, monkeypatch):
    z = latents((1, 16, 6, 4, 4))
    z[0, 3, 5, 1, 2] = float("nan")
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    monkeypatch.setattr(latents_mod, "SCAN_BYTES", 16 * 4 * 4 * 4)  # one frame a read
    run = cli("decode", tmp_path / "z.safetensors", "-m", "wan", "--decoder", "preview")
    assert_one_line_error(run, 1, "1 NaN/Inf values")
