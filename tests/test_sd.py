"""SD image VAE decoder (AnimateDiff & co.): parity with diffusers' `AutoencoderKL.decode`,
tiling as `enable_tiling()`, the LDM single-file names, and one CLI test per pipeline preset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sd import make_tiny_sd, to_ldm

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.models.sd.decoder import SDConfig, SDDecoder, detect, rename_keys
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

from conftest import assert_one_line_error

PARITY = 1e-4


def load_saved(path: Path) -> SDDecoder:
    config = json.loads((path / "config.json").read_text())
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    decoder = SDDecoder(SDConfig.from_diffusers(config)).eval()
    keep = {k: v for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
    decoder.load_state_dict(keep)
    return decoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SDDecoder, Path]:
    path = tmp_path_factory.mktemp("sd_tiny") / "vae"
    vae = make_tiny_sd(path, "sd", seed=0)
    return vae, load_saved(path), path


def reference(vae: Any, zv: torch.Tensor, tiled: bool) -> torch.Tensor:
    """The pipelines' decode: (B, C, F, h, w) -> frames as a batch -> vae.decode -> back."""
    b, c, f, h, w = zv.shape
    vae.enable_tiling() if tiled else vae.disable_tiling()
    with torch.no_grad():
        x = vae.decode(zv.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)).sample
    return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def ours(decoder: Any, zv: torch.Tensor, grid: TileGrid | None, frames: int = 1) -> torch.Tensor:
    return torch.cat(list(decode_stream(decoder, zv, grid, max_chunk_frames=frames)), dim=2)


# enable_tiling() for sample_size 64 and 8x: 64 px tiles every 48 px, blended over 16 px
DIFFUSERS_GRID = TileGrid.from_pixels((64, 64), (48, 48), 8)


@pytest.mark.parametrize(
    "batch, frames, h, w, tiled, per_call",
    [
        (1, 3, 5, 7, False, 1),
        (2, 3, 4, 6, False, 2),  # batch 2, frames grouped per call
        (1, 2, 13, 10, True, 1),  # 3 x 2 tiles of 8 latents every 6
        (2, 2, 9, 17, True, 2),
    ],
)
def test_parity_with_diffusers(tiny, batch, frames, h, w, tiled, per_call) -> None:
    vae, decoder, _ = tiny
    torch.manual_seed(h * 10 + w)
    zv = torch.randn(batch, 4, frames, h, w)
    expected = reference(vae, zv, tiled)
    got = ours(decoder, zv, DIFFUSERS_GRID if tiled else None, per_call)
    assert got.shape == expected.shape == (batch, 3, frames, 8 * h, 8 * w)
    diff = (got - expected).abs().max().item()
    print(f"\nsd B={batch} T={frames} {h}x{w} {'tiled' if tiled else 'untiled'}: max {diff:.2e}")
    assert diff <= PARITY


def test_no_attention_no_post_quant_conv_other_latent_channels(tmp_path) -> None:
    vae = make_tiny_sd(tmp_path / "vae", "bare", seed=3)
    decoder = load_saved(tmp_path / "vae")
    assert decoder.post_quant_conv is None and len(decoder.decoder.mid_block.attentions) == 0
    zv = torch.randn(1, 6, 2, 5, 6)
    got, expected = ours(decoder, zv, None), reference(vae, zv, False)
    assert got.shape == (1, 3, 2, 20, 24)
    assert (got - expected).abs().max().item() <= PARITY


def test_frames_are_independent(tiny) -> None:
    """One frame's pixels depend on its own latent alone: the split is only a memory choice."""
    _, decoder, _ = tiny
    zv = torch.randn(1, 4, 4, 4, 4)
    together = ours(decoder, zv, None, frames=4)
    alone = ours(decoder, zv[:, :, 2:3], None)
    assert (together[:, :, 2:3] - alone).abs().max().item() <= 1e-5


# ---- original single files: bare LDM VAE files and full SD checkpoints -------------------------


@pytest.fixture(scope="module")
def ldm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, torch.Tensor]]:
    vae = make_tiny_sd(None, "ldm", seed=5)
    return vae, to_ldm(vae.state_dict(), levels=4)


def test_ldm_names_are_what_diffusers_single_file_loader_reads(ldm) -> None:
    """diffusers' own LDM converter maps our LDM-named file back onto its AutoencoderKL."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae, state = ldm
    assert "decoder.mid.attn_1.q.weight" in state and state["decoder.mid.attn_1.q.weight"].ndim == 4
    assert "decoder.up.0.block.0.conv1.weight" in state and "post_quant_conv.weight" in state
    back = convert_ldm_vae_checkpoint(state, dict(vae.config))
    want = vae.state_dict()
    decoder_keys = {k for k in want if k.startswith(("decoder.", "post_quant_conv."))}
    assert decoder_keys <= set(back)
    for k in decoder_keys:
        assert torch.equal(back[k].reshape(want[k].shape), want[k]), k


@pytest.mark.parametrize("form", ["comfyui-vae", "sd-checkpoint"])
def test_original_single_files(ldm, form, tmp_path) -> None:
    vae, state = ldm
    if form == "sd-checkpoint":  # the VAE under first_stage_model., beside the UNet and CLIP
        state = {f"first_stage_model.{k}": v for k, v in state.items()}
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(3)
    path = tmp_path / f"{form}.safetensors"
    save_file(state, str(path))
    assert detect(set(rename_keys(k.removeprefix("first_stage_model.") for k in state).values()))
    preset = load_preset("animatediff")
    loaded = load_vae(resolve_vae(str(path), preset), preset, "cpu", torch.float32)
    zv = torch.randn(1, 4, 2, 5, 4)
    diff = (ours(loaded.decoder, zv, None) - reference(vae, zv, False)).abs().max().item()
    print(f"\nsd {form}: max {diff:.2e}")
    assert diff <= PARITY


def test_svd_weights_are_refused_for_an_sd_preset(tmp_path) -> None:
    from tiny_sd import make_tiny_svd

    make_tiny_svd(tmp_path / "svd")
    state = load_file(tmp_path / "svd" / "diffusion_pytorch_model.safetensors")
    save_file(state, str(tmp_path / "svd.safetensors"))
    with pytest.raises(Exception, match="svd VAE"):
        load_vae(resolve_vae(str(tmp_path / "svd.safetensors"), load_preset("animatediff")),
                 load_preset("animatediff"), "cpu", torch.float32)  # fmt: skip


# ---- through the CLI: one test per pipeline preset --------------------------------------------


def pipeline_frames(vae: Any, z: torch.Tensor, scale: float, tiled: bool) -> np.ndarray:
    """decode_latents of the pipelines (1 / scaling_factor * latents, frames as a batch), then
    the VideoProcessor's [0, 1] and uint8 rounding, batch element 0."""
    video = reference(vae, 1 / scale * z, tiled)
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "model, tiled, batch",
    [
        ("animatediff", False, 2),
        ("animatediff-sdxl", True, 1),
        ("latte", False, 1),
        ("i2vgen-xl", False, 1),
        ("zeroscope", False, 1),
        ("modelscope", True, 2),
    ],
)
def test_cli_preset_lossless_matches_the_pipeline(tiny, model, tiled, batch, tmp_path, cli) -> None:
    vae, _, folder = tiny
    preset = load_preset(model)
    assert preset.family == "sd" and preset.layout == "BCFHW"
    g = torch.Generator().manual_seed(len(model))
    h, w = (13, 10) if tiled else (5, 6)
    z = torch.randn(batch, 4, 3, h, w, generator=g)  # model space, (B, 4, F, h, w) as returned
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", model, "--vae", folder, "--lossless"]
    args += ["-o", tmp_path / "out.mkv"]
    args += ["--tile-size", "64", "--tile-stride", "48"] if tiled else ["--no-tile"]
    run = cli(*args)
    assert run.exit_code == 0, run.output
    scale = json.loads((folder / "config.json").read_text())["scaling_factor"]  # 0.3: wins
    for b in range(batch):
        got, _ = read_video(tmp_path / (f"out-{b}.mkv" if batch > 1 else "out.mkv"))
        expected = pipeline_frames(vae, z[b : b + 1], scale, tiled)
        assert got.shape == expected.shape == (3, 8 * h, 8 * w, 3)
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        print(f"\n{model} CLI {'tiled' if tiled else 'untiled'} video {b}: max {diff} LSB")
        assert diff <= 1


def test_decode_chunk_size_is_refused_where_frames_are_independent(tiny, tmp_path, cli) -> None:
    _, _, folder = tiny
    save_file({"latents": torch.randn(1, 4, 2, 4, 4)}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "animatediff", "--vae", folder,
              "--decode-chunk-size", "2", "-o", tmp_path / "o.mp4")  # fmt: skip
    assert_one_line_error(run, 2, "--decode-chunk-size", "animatediff")
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("frames", [3, 4])  # 4 frames of 4 channels: only the layout tells
def test_comfyui_latent_is_a_batch_of_frames_in_vae_space(tiny, frames, tmp_path, cli) -> None:
    vae, _, folder = tiny
    zv = torch.randn(frames, 4, 4, 5)  # ComfyUI LATENT "samples": (F, 4, h, w), VAE space
    marker = {"latent_format_version_0": torch.tensor([])}
    save_file({"latent_tensor": zv, **marker}, str(tmp_path / "ComfyUI_00001_.latent"))
    out = tmp_path / "comfy.mkv"
    run = cli("decode", tmp_path / "ComfyUI_00001_.latent", "-m", "animatediff", "--vae", folder,
              "--lossless", "--no-tile", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(out)
    video = (reference(vae, zv.transpose(0, 1)[None], False) / 2 + 0.5).clamp(0, 1)
    want = (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
    assert got.shape == want.shape == (frames, 32, 40, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
