"""MiniMax-H3 video decoder: parity with diffusers' `AutoencoderKLMiniMaxH3` (+ the modular
pipeline's ImageNet pixel step) clip by clip and in the release's covering tiles, every weights
layout, and the CLI end to end (lossless, within 1 LSB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tiny_minimax_h3 import TINY, make_tiny_h3, to_original, write_original

from latent2mp4.clips import ClipPlan
from latent2mp4.engine import TileGrid, covering, decode_stream
from latent2mp4.latents import save_latents
from latent2mp4.presets import CONFIG_DIR, Preset, load_preset
from latent2mp4.tiling import tile_grid
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

from conftest import assert_one_line_error, latents

PARITY = 1e-4
C = TINY["latent_channels"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
# 29 x 20 latents = 464 x 320 px: 3 tiles down (uneven overlaps 160/144 px), 2 across (192 px);
# 8 latents = two clips, the second repeat-padded (26 frames)
MAIN = (2, C, 8, 29, 20)


def tiny_preset(folder: Path) -> Path:
    """minimax-h3.yaml for the tiny VAE's latent channels (its statistics: the VAE's own)."""
    d = yaml.safe_load((CONFIG_DIR / "minimax-h3.yaml").read_text())
    d.update(name="h3-tiny", aliases=[], latent_channels=C)
    d["normalization"] = {"std_op": "multiply", "mean": [0.0] * C, "std": [1.0] * C}
    d["preview"]["factors"] = [[0.0, 0.0, 0.0]] * C
    d.pop("tiny")
    d.pop("audio")  # the soundtrack is tested in test_sound.py; here its latents are ignored
    path = folder / "h3-tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


PRESET: Preset | None = None


def pixels(vae: Any, z: torch.Tensor, tiled: bool = True) -> torch.Tensor:
    """What MiniMaxH3VideoDecodeStep hands the video processor, in our [-1, 1]."""
    vae.use_tiling = tiled
    with torch.no_grad():
        out = vae.decode(z).sample
    vae.use_tiling = True
    return (out.float() * STD + MEAN).clamp(0, 1) * 2 - 1


def frames_of(x: torch.Tensor) -> np.ndarray:
    """The pipeline's uint8 frames `(B, F, H, W, 3)` (numpy_to_pil: x * 255, rounded)."""
    return ((x + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def ours(decoder: Any, z: torch.Tensor, tiled: bool = True) -> torch.Tensor:
    grid = tile_grid(load_preset("h3"), None, None) if tiled else None  # the release's tiles
    return torch.cat(list(decode_stream(decoder, z, grid)), dim=2)


def load(path: Path | str) -> Any:
    assert PRESET is not None
    return load_vae(resolve_vae(str(path), PRESET), PRESET, "cpu", torch.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Any, Path]:
    global PRESET
    root = tmp_path_factory.mktemp("h3")
    PRESET = load_preset(str(tiny_preset(root)))
    return make_tiny_h3(root / "vae"), root / "vae"


def preset_args(folder: Path) -> list[str | Path]:
    return ["--preset", folder.parent / "h3-tiny.yaml"]


@pytest.fixture(scope="module")
def main_case(tiny) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space latents of MAIN and the pipeline's frames for them (tiled, as released)."""
    vae, _ = tiny
    zm = latents(MAIN, seed=1)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return zm, pixels(vae, zm * std + mean)


def vae_space(vae: Any, zm: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return zm * std + mean


def test_covering_tiles_follow_split_tiles(tiny) -> None:
    """Our covering tiles (latent units) are diffusers' `_split_tiles` (pixels), for every frame
    size up to 1344 px, and the grid places them so."""
    vae, _ = tiny
    for n in range(1, 85):
        starts, sizes, overlaps = vae._split_tiles(n * 16, 256, 64)
        spans = covering(n, 16, 4)
        assert [s * 16 for s, _ in spans] == starts, n
        assert [o * 16 for _, o in spans[1:]] == overlaps, n
        assert sizes == [min(256, n * 16)] * len(spans)
    grid = TileGrid.from_pixels((256, 256), (192, 192), 16, cover=True)
    assert grid.origins(29, 20) == [[(0, 0), (0, 4)], [(6, 0), (6, 4)], [(13, 0), (13, 4)]]


def test_clip_plan_frame_counts_equal_diffusers(tiny) -> None:
    """Every latent count from 3 to 17 on a one-token frame: our frames (count and values) are
    diffusers' `_decode` (clips, dropped pre-pad, cross-fades, repeat padding)."""
    vae, folder = tiny
    decoder = load(folder).decoder
    plan = ClipPlan(17, 3, 4)
    for t in range(3, 18):
        z = latents((1, C, t, 1, 1), seed=t)
        expected = pixels(vae, z)
        got = ours(decoder, z)
        assert got.shape[2] == expected.shape[2] == plan.frames_out(t), t
        assert (got - expected).abs().max() <= PARITY, t
    assert [plan.frames_out(5 * n + 2) for n in range(1, 4)] == [22, 39, 56]


def test_tiled_parity_with_diffusers(tiny, main_case) -> None:
    vae, folder = tiny
    zm, expected = main_case
    got = ours(load(folder).decoder, vae_space(vae, zm))
    err = (got - expected).abs().max().item()
    print(f"\nh3 tiled 3x2 tiles, 2 clips, batch 2: {tuple(got.shape)} max abs {err:.2e}")
    assert got.shape == expected.shape and err <= PARITY


def test_untiled_parity_with_diffusers(tiny) -> None:
    vae, folder = tiny
    z = latents((2, C, 12, 20, 18), seed=2)  # larger than a tile: untiled differs from tiled
    expected = pixels(vae, z, tiled=False)
    got = ours(load(folder).decoder, z, tiled=False)
    err = (got - expected).abs().max().item()
    print(f"\nh3 untiled 2 clips batch 2: max abs {err:.2e}")
    assert err <= PARITY
    assert (ours(load(folder).decoder, z) - got).abs().max() > 1e-3  # tiles change the picture


def test_every_weights_layout_decodes_the_same(tiny, tmp_path: Path) -> None:
    vae, folder = tiny
    z = latents((1, C, 7, 20, 18), seed=4)
    reference = ours(load(folder).decoder, z)
    # a pipeline folder: the video VAE under vae/ (its audio VAE would sit in audio_vae/)
    pipe = tmp_path / "pipe"
    (pipe / "vae").mkdir(parents=True)
    for f in folder.iterdir():
        (pipe / "vae" / f.name).write_bytes(f.read_bytes())
    # the original release: video_vae/{config.json, source/{config.json, model.safetensors}}
    original = write_original(vae, tmp_path / "release")
    for name, path in [
        ("pipeline folder", pipe),
        ("original release", original),
        ("original video_vae/", original / "video_vae"),
    ]:
        err = (ours(load(path).decoder, z) - reference).abs().max().item()
        print(f"\n{name}: max abs {err:.2e} against the diffusers folder")
        assert err <= 1e-5, name
    # the release's latent statistics come from video_vae/config.json
    norm = load(original).normalization
    assert norm is not None and norm.mean == pytest.approx(vae.config.latents_mean)


def test_comfyui_single_file(tmp_path: Path) -> None:
    """ComfyUI's repackaged file: original names, fp16, no config. Head width and patch sizes
    cannot be read off tensors, so it takes the release's (64-wide heads): a tiny VAE with
    those, against the same fp16 weights in diffusers' naming."""
    vae = make_tiny_h3(tmp_path / "vae", seed=3, decoder_num_attention_heads=2,
                       decoder_attention_head_dim=64)  # fmt: skip
    state = {
        k: v.half()
        for k, v in load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors").items()
    }
    save_file(state, str(tmp_path / "diffusers_fp16.safetensors"))
    comfy = tmp_path / "minimax_h3_video_vae_fp16.safetensors"
    save_file({f"vae.{k}": v for k, v in to_original(state, 2).items()}, str(comfy))
    z = latents((1, C, 7, 20, 18), seed=4)
    got = ours(load(comfy).decoder, z)
    want = ours(load(tmp_path / "diffusers_fp16.safetensors").decoder, z)
    err = (got - want).abs().max().item()
    print(f"\nComfyUI fp16 single file: max abs {err:.2e}")
    assert err <= 1e-5
    assert vae.config.decoder_attention_head_dim == 64


def test_cli_lossless_within_one_lsb(tiny, main_case, tmp_path: Path, cli) -> None:
    vae, folder = tiny
    zm, expected = main_case
    audio = latents((2, 32, 40), seed=9)  # the pipeline's stereo rows: ignored until sound lands
    save_file({"latents": zm, "audio_latents": audio}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", *preset_args(folder), "--vae", folder, "--lossless",
        "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "'audio_latents' ignored" in run.output
    want = frames_of(expected)
    for b in range(2):
        got, fps = read_video(tmp_path / f"o-{b}.mkv")
        diff = np.abs(got.astype(int) - want[b].astype(int)).max()
        print(f"\nh3 CLI lossless [{b}]: {got.shape} max {diff} LSB")
        assert got.shape == want[b].shape and diff <= 1 and fps == 24


def test_cli_no_tile_says_it_changes_the_picture(tiny, main_case, tmp_path: Path, cli) -> None:
    vae, folder = tiny
    zm, _ = main_case
    save_latents(tmp_path / "z.safetensors", zm[:1])
    run = cli(
        "decode", tmp_path / "z.safetensors", *preset_args(folder), "--vae", folder,
        "--lossless", "--no-tile", "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "--no-tile changes the picture" in run.output
    got, _ = read_video(tmp_path / "o.mkv")
    want = frames_of(pixels(vae, vae_space(vae, zm[:1]), tiled=False))[0]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_comfyui_nested_latent_file(tiny, tmp_path: Path, cli) -> None:
    """A community save node's H3 AV latent: `latent_tensor` (video, VAE space as ComfyUI keeps
    latents) and `latent_tensor_1` (audio) beside ComfyUI's marker."""
    vae, folder = tiny
    z = latents((1, C, 7, 6, 5), seed=6)
    tensors = {
        "latent_tensor": z,
        "latent_tensor_1": latents((1, 32, 36), seed=7),
        "latent_format_version_0": torch.tensor([]),
    }
    save_file(tensors, str(tmp_path / "h3.latent"), metadata={"nested_streams": "2"})
    run = cli("decode", tmp_path / "h3.latent", *preset_args(folder), "--vae", folder, "--lossless",
              "-o", tmp_path / "o.mkv")  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "o.mkv")
    want = frames_of(pixels(vae, z))[0]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_bad_inputs_are_one_line_errors(tiny, tmp_path: Path, cli) -> None:
    vae, folder = tiny
    save_file({"latents": latents((1, C, 2, 4, 4))}, str(tmp_path / "short.safetensors"))
    run = cli("decode", tmp_path / "short.safetensors", *preset_args(folder), "--vae", folder,
              "-o", tmp_path / "o.mp4")  # fmt: skip
    assert_one_line_error(run, 1, "too few")
    assert not (tmp_path / "o.mp4").exists()
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    state.pop("decoder.transformer_blocks.1.attn.to_v.weight")
    (tmp_path / "partial").mkdir()
    save_file(state, str(tmp_path / "partial" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "partial" / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file({"latents": latents((1, C, 7, 4, 4))}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", *preset_args(folder), "--vae",
              tmp_path / "partial", "-o", tmp_path / "o.mp4")  # fmt: skip
    assert_one_line_error(run, 1, "lacks 1 decoder weights", "to_v.weight")
