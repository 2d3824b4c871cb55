from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latent2mp4.errors import InputError, UsageError
from latent2mp4.latents import (
    denormalise,
    normalise,
    read_latent_file,
    resolve_latent_space,
    save_latents,
    select_video,
)
from latent2mp4.packed import VideoSize
from latent2mp4.presets import load_preset

from conftest import latents, whole

WAN = load_preset("wan")


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_single_tensor_is_chosen_whatever_its_name(tmp_path):
    lf = read_latent_file(write(tmp_path / "a.safetensors", {"x": latents((16, 2, 4, 4))}))
    assert lf.key == "x" and lf.tensor.shape == (16, 2, 4, 4)


def test_preferred_key_among_several(tmp_path):
    f = write(
        tmp_path / "a.safetensors",
        {"noise": latents((16, 1, 4, 4)), "latents": latents((16, 2, 4, 4), 1)},
    )
    assert read_latent_file(f).key == "latents"


def test_ambiguous_and_missing_keys_list_what_is_there(tmp_path):
    f = write(
        tmp_path / "a.safetensors", {"a": latents((16, 1, 4, 4)), "b": latents((16, 1, 4, 4))}
    )
    with pytest.raises(InputError, match="a, b.*--key"):
        read_latent_file(f)
    with pytest.raises(InputError, match="no tensor 'c'.*a, b"):
        read_latent_file(f, key="c")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"\xff" * 64, b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."],
    ids=["empty", "short", "random", "pickle"],
)
def test_unreadable_files_are_input_errors(tmp_path, content):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        read_latent_file(f)


def test_truncated_file_is_an_input_error(tmp_path):
    f = write(tmp_path / "a.safetensors", {"latents": latents((16, 3, 8, 8))})
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(InputError, match=str(f.name)):
        read_latent_file(f)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_latent_file(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "shape,expected",
    [
        ((16, 3, 4, 5), (1, 1, 16, 3, 4, 5)),
        ((2, 16, 3, 4, 5), (1, 2, 16, 3, 4, 5)),
        ((7, 1, 16, 3, 4, 5), (1, 1, 16, 3, 4, 5)),
    ],
)
def test_shapes_become_bcthw(tmp_path, shape, expected):
    lf = read_latent_file(write(tmp_path / "a.safetensors", {"latents": latents(shape)}))
    assert whole(select_video(lf, WAN).view).shape == expected


def test_trajectory_index_picks_a_step_and_says_so(tmp_path):
    traj = torch.stack([torch.full((1, 16, 2, 3, 3), float(i)) for i in range(5)])
    lf = read_latent_file(write(tmp_path / "t.safetensors", {"latents": traj}))
    assert whole(select_video(lf, WAN).view).unique().item() == 4.0
    sel = select_video(lf, WAN, index=1)
    assert (
        whole(sel.view).unique().item() == 1.0
        and "steps 1 of 5" in sel.notes[0]
        and sel.steps == (1,)
    )
    with pytest.raises(UsageError, match="out of range"):
        select_video(lf, WAN, index=5)


@pytest.mark.parametrize(
    "spec,steps",
    [
        ("-1", [9]),
        ("0,-1", [0, 9]),
        ("::3", [0, 3, 6, 9]),
        ("all", list(range(10))),
        ("2:5", [2, 3, 4]),
    ],
)
def test_index_specs_select_trajectory_steps(tmp_path, spec, steps):
    traj = torch.arange(10.0).view(10, 1, 1, 1, 1, 1).expand(10, 1, 16, 1, 2, 2).contiguous()
    sel = select_video(
        read_latent_file(write(tmp_path / "t.safetensors", {"latents": traj})), WAN, index=spec
    )
    assert list(sel.steps) == steps
    assert whole(sel.view)[:, 0, 0, 0, 0, 0].tolist() == [float(s) for s in steps]


@pytest.mark.parametrize("spec", ["x", "1:2:3:4", "5:5", "12"])
def test_bad_index_specs(tmp_path, spec):
    traj = torch.zeros(10, 1, 16, 1, 2, 2)
    with pytest.raises(UsageError, match="--index"):
        select_video(
            read_latent_file(write(tmp_path / "t.safetensors", {"latents": traj})), WAN, index=spec
        )


def test_bfchw_layout_is_permuted(tmp_path):
    x = latents((1, 3, 16, 4, 5))  # B, F, C, H, W
    lf = read_latent_file(write(tmp_path / "c.safetensors", {"latents": x}))
    z = whole(select_video(lf, load_preset("cogvideox")).view)
    assert torch.equal(z[0], x.permute(0, 2, 1, 3, 4))
    assert whole(select_video(lf, WAN, layout="BFCHW").view).shape == (1, 1, 16, 3, 4, 5)


def test_the_other_layout_is_taken_only_when_it_alone_fits(tmp_path):
    cog = load_preset("cogvideox")
    x = latents((1, 16, 3, 4, 5))  # B, C, F, H, W: a CogVideoX latent saved channels-first
    lf = read_latent_file(write(tmp_path / "c.safetensors", {"latents": x}))
    sel = select_video(lf, cog)
    assert torch.equal(whole(sel.view)[0], x) and "read as BCFHW" in sel.notes[0]
    frames_first = read_latent_file(
        write(tmp_path / "w.safetensors", {"latents": x.transpose(1, 2).contiguous()})
    )
    assert torch.equal(whole(select_video(frames_first, WAN).view)[0], x)
    # 16 frames of 16 channels: ambiguous, so the preset's layout holds, and --layout is obeyed.
    square = read_latent_file(
        write(tmp_path / "s.safetensors", {"latents": latents((1, 16, 16, 2, 3))})
    )
    assert (
        whole(select_video(square, cog).view).shape == (1, 1, 16, 16, 2, 3)
        and not select_video(square, cog).notes
    )
    with pytest.raises(InputError, match="3 channels"):
        select_video(lf, cog, layout="BFCHW")


def test_comfyui_files_are_channels_first_whatever_the_preset(tmp_path):
    x = latents((1, 16, 16, 2, 3))  # ambiguous shape: ComfyUI's own layout decides
    f = write(
        tmp_path / "a.latent", {"latent_tensor": x, "latent_format_version_0": torch.tensor([])}
    )
    assert torch.equal(
        whole(select_video(read_latent_file(f), load_preset("cogvideox")).view)[0], x
    )


@pytest.mark.parametrize(
    "tensor,message",
    [
        (torch.zeros(16, 2, 4, 4, dtype=torch.int32), "int32"),
        (torch.zeros(16, 4, 4), "expected \\(C,F,H,W\\)"),
        (torch.zeros(16, 0, 4, 4), "empty dimension"),
        (torch.full((16, 2, 4, 4), float("nan")), "NaN/Inf"),
        (
            torch.zeros(48, 2, 4, 4),
            "48 channels; --model wan expects 16 "
            "\\(did you mean cosmos3 or lucy-edit or wan2.2\\?\\)",
        ),
    ],
)
def test_invalid_latents(tmp_path, tensor, message):
    lf = read_latent_file(write(tmp_path / "a.safetensors", {"latents": tensor}))
    with pytest.raises((InputError, UsageError), match=message):
        select_video(lf, WAN)


def test_half_precision_latents_are_accepted(tmp_path):
    for dtype in (torch.float16, torch.bfloat16):
        lf = read_latent_file(
            write(tmp_path / "h.safetensors", {"latents": latents((16, 2, 4, 4), dtype=dtype)})
        )
        assert whole(select_video(lf, WAN).view).dtype == dtype


def test_comfyui_latent_files_are_vae_space(tmp_path):
    f = write(
        tmp_path / "ComfyUI_00001_.latent",
        {"latent_tensor": latents((1, 16, 2, 4, 4)), "latent_format_version_0": torch.tensor([])},
    )
    lf = read_latent_file(f)
    assert lf.key == "latent_tensor" and lf.comfy
    assert resolve_latent_space(lf, "auto")[0] == "vae"
    assert resolve_latent_space(lf, "model")[0] == "model"


def test_save_latents_metadata_round_trip(tmp_path):
    f = save_latents(
        tmp_path / "mine.safetensors",
        latents((48, 2, 4, 4)),
        model="wan2.2",
        fps=24,
        latent_space="vae",
    )
    lf = read_latent_file(f)
    assert (lf.meta_model, lf.meta_fps, lf.meta_latent_space) == ("wan2.2", 24.0, "vae")
    assert resolve_latent_space(lf, "auto") == ("vae", "file metadata")
    plain = read_latent_file(write(tmp_path / "p.safetensors", {"latents": latents((16, 1, 2, 2))}))
    assert resolve_latent_space(plain, "auto")[0] == "model"


def test_denormalise_matches_the_wan_pipeline_formula_and_inverts():
    z = latents((1, 16, 2, 3, 3))
    mean = torch.tensor(WAN.normalization.mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN.normalization.std).view(1, 16, 1, 1, 1)
    reference = z / (1.0 / std) + mean  # pipeline_wan.py: latents / (1 / std) + mean
    assert torch.equal(denormalise(z, WAN.normalization), reference)
    assert torch.allclose(normalise(reference, WAN.normalization), z, atol=1e-5)
    hy = load_preset("hunyuan").normalization
    assert torch.equal(denormalise(z, hy), z / 0.476986)


def test_cogvideox15_front_padding_is_dropped(tmp_path):
    lf = read_latent_file(
        write(tmp_path / "c.safetensors", {"latents": latents((1, 22, 16, 4, 4))})
    )
    sel = select_video(lf, load_preset("cogvideox1.5"))
    assert whole(sel.view).shape[3] == 21 and "padding" in sel.notes[-1]
    assert torch.equal(whole(sel.view)[0], lf.tensor.permute(0, 2, 1, 3, 4)[:, :, 1:])
    assert whole(select_video(lf, load_preset("cogvideox")).view).shape[3] == 22


def test_cogvideox15_padding_follows_the_generation_frame_count(tmp_path):
    """85 frames make 22 latents the pipeline does not pad; 81 make 21, padded to 22. ComfyUI
    pads inside its model, so its files keep every frame."""
    lf = read_latent_file(
        write(tmp_path / "c.safetensors", {"latents": latents((1, 22, 16, 2, 2))})
    )
    cog = load_preset("cogvideox1.5")
    kept = select_video(lf, cog, size=VideoSize(num_frames=85))
    assert whole(kept.view).shape[3] == 22 and not any("padding" in n for n in kept.notes)
    padded = select_video(lf, cog, size=VideoSize(num_frames=81))
    assert whole(padded.view).shape[3] == 21
    with pytest.raises(InputError, match="--num-frames 49 makes 13 latent frames"):
        select_video(lf, cog, size=VideoSize(num_frames=49))
    path = tmp_path / "c.latent"
    save_file(
        {"latent_tensor": latents((1, 16, 4, 2, 2)), "latent_format_version_0": torch.tensor([])},
        str(path),
    )
    assert whole(select_video(read_latent_file(path), cog).view).shape[3] == 4
