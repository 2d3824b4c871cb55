"""SVD temporal VAE decoder: parity with diffusers' `StableVideoDiffusionPipeline.decode_latents`
for every window size, the window changing the output, tiles, Stability's and ComfyUI's file
names, and the CLI (`--decode-chunk-size`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sd import make_tiny_svd, to_ldm

from latent2mp4.engine import Segments, TileGrid, decode_stream
from latent2mp4.models.svd import SVDConfig, SVDDecoder, detect, rename_keys
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

PARITY = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SVDDecoder, Path]:
    path = tmp_path_factory.mktemp("svd_tiny") / "vae"
    vae = make_tiny_svd(path, seed=0)
    config = json.loads((path / "config.json").read_text())
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    decoder = SVDDecoder(SVDConfig.from_diffusers(config)).eval()
    decoder.load_state_dict({k: v for k, v in state.items() if k.startswith("decoder.")})
    return vae, decoder, path


def decode_latents(vae: Any, zv: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """pipeline_stable_video_diffusion.py decode_latents on VAE-space (B, F, C, h, w) latents:
    the (B*F) frames in slices of `decode_chunk_size` (default num_frames), each decoded with
    num_frames = its length, back to (B, 3, F, H, W)."""
    b, f = zv.shape[:2]
    flat = zv.flatten(0, 1)
    chunk = chunk or f
    with torch.no_grad():
        parts = [
            vae.decode(flat[i : i + chunk], num_frames=flat[i : i + chunk].shape[0]).sample
            for i in range(0, flat.shape[0], chunk)
        ]
    x = torch.cat(parts)
    return x.reshape(-1, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def ours(
    decoder: Any, zv: torch.Tensor, chunk: int | None, grid: TileGrid | None = None
) -> torch.Tensor:
    """zv (B, F, C, h, w) -> ours through the engine's segments, (B, 3, F, H, W)."""
    z = zv.transpose(1, 2)
    ranges = Segments(frames=chunk).ranges(z.shape[2])
    return torch.cat(list(decode_stream(decoder, z, grid, segments=ranges)), dim=2)


@pytest.mark.parametrize("chunk", [None, 1, 2, 3])
def test_parity_for_each_window(tiny, chunk) -> None:
    vae, decoder, _ = tiny
    torch.manual_seed(11)
    zv = torch.randn(1, 5, 4, 4, 5)
    expected, got = decode_latents(vae, zv, chunk), ours(decoder, zv, chunk)
    assert got.shape == expected.shape == (1, 3, 5, 32, 40)
    diff = (got - expected).abs().max().item()
    print(f"\nsvd window {chunk or 'all'} of 5: max {diff:.2e}")
    assert diff <= PARITY


def test_the_window_is_part_of_the_output(tiny) -> None:
    vae, decoder, _ = tiny
    zv = torch.randn(1, 4, 4, 3, 3)
    whole, halves = ours(decoder, zv, None), ours(decoder, zv, 2)
    change = (whole - halves).abs().max().item()
    print(f"\nsvd window 4 vs 2: frames differ by up to {change:.3f}")
    assert change > 1e-2  # a real difference, not float noise: mixing stops at the window edge
    assert (halves - decode_latents(vae, zv, 2)).abs().max().item() <= PARITY


def test_batch_of_two(tiny) -> None:
    """Two videos whose frame count the window divides (so the pipeline's flattened slices never
    straddle videos): each decoded on its own, as latent2mp4 decodes one video at a time."""
    vae, decoder, _ = tiny
    zv = torch.randn(2, 4, 4, 3, 4)
    diff = (ours(decoder, zv, 2) - decode_latents(vae, zv, 2)).abs().max().item()
    assert diff <= PARITY


def tiled_reference(vae: Any, zv: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """AutoencoderKL.tiled_decode's tiles and blends, each tile decoded by the SVD decoder over
    the whole window (diffusers has no tiling for this VAE)."""
    from diffusers import AutoencoderKL

    blend_px = (size - stride) * 8
    z = zv.flatten(0, 1)
    f = zv.shape[1]
    rows = []
    with torch.no_grad():
        for i in range(0, z.shape[2], stride):
            row = []
            for j in range(0, z.shape[3], stride):
                tile = z[:, :, i : i + size, j : j + size]
                row.append(vae.decode(tile, num_frames=f).sample)
            rows.append(row)
    out = []
    for i, row in enumerate(rows):
        kept = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = AutoencoderKL.blend_v(None, rows[i - 1][j], tile, blend_px)
            if j > 0:
                tile = AutoencoderKL.blend_h(None, row[j - 1], tile, blend_px)
            kept.append(tile[:, :, : stride * 8, : stride * 8])
        out.append(torch.cat(kept, dim=3))
    x = torch.cat(out, dim=2)
    return x.reshape(-1, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def test_tiles_as_the_sd_vae_tiles(tiny) -> None:
    vae, decoder, _ = tiny
    zv = torch.randn(1, 3, 4, 9, 7)
    grid = TileGrid.from_pixels((40, 40), (32, 32), 8)
    got, expected = ours(decoder, zv, None, grid), tiled_reference(vae, zv, 5, 4)
    assert got.shape == expected.shape == (1, 3, 3, 72, 56)
    diff = (got - expected).abs().max().item()
    print(f"\nsvd tiled 2x2: max {diff:.2e}")
    assert diff <= PARITY


# ---- Stability's checkpoints and ComfyUI's files ---------------------------------------------


@pytest.mark.parametrize("form", ["stability-checkpoint", "comfyui-vae"])
def test_original_files(tiny, form, tmp_path) -> None:
    vae, _, _ = tiny
    state = to_ldm(vae.state_dict(), levels=4)
    assert "decoder.conv_out.time_mix_conv.weight" in state
    assert "decoder.mid.block_1.time_stack.in_layers.2.weight" in state
    assert "decoder.up.0.block.0.mix_factor" in state
    state = {k: v for k, v in state.items() if not k.startswith(("quant_conv", "post_quant"))}
    if form == "stability-checkpoint":  # svd_xt.safetensors: VAE under first_stage_model.
        state = {f"first_stage_model.{k}": v for k, v in state.items()}
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 8, 3, 3)
        state["conditioner.embedders.3.encoder.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / f"{form}.safetensors"
    save_file(state, str(path))
    preset = load_preset("svd-xt")
    loaded = load_vae(resolve_vae(str(path), preset), preset, "cpu", torch.float32)
    zv = torch.randn(1, 3, 4, 4, 3)
    diff = (ours(loaded.decoder, zv, None) - decode_latents(vae, zv, None)).abs().max().item()
    print(f"\nsvd {form}: max {diff:.2e}")
    assert diff <= PARITY


def test_detection_tells_svd_from_sd(tiny) -> None:
    from latent2mp4.models.sd.decoder import detect as detect_sd

    vae, _, _ = tiny
    for keys in (set(vae.state_dict()), set(to_ldm(vae.state_dict(), 4))):
        assert detect(set(rename_keys(keys).values())) or detect(keys)
        assert not detect_sd(keys)


# ---- through the CLI ---------------------------------------------------------------------------


def pipeline_frames(vae: Any, z: torch.Tensor, scale: float, chunk: int | None) -> np.ndarray:
    video = decode_latents(vae, 1 / scale * z, chunk)  # 1 / scaling_factor * latents
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("chunk", [None, 2])
def test_cli_lossless_matches_the_pipeline(tiny, chunk, tmp_path, cli) -> None:
    vae, _, folder = tiny
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 5, 4, 3, 4, generator=g)  # (B, F, 4, h, w) model space, as returned
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "svd", "--vae", folder, "--lossless"]
    args += ["--no-tile", "-o", tmp_path / "out.mkv"]
    args += ["--decode-chunk-size", str(chunk)] if chunk else []
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert f"independent window(s) of {chunk or 5} latent frame" in run.output
    scale = json.loads((folder / "config.json").read_text())["scaling_factor"]
    for b in range(2):
        got, _ = read_video(tmp_path / f"out-{b}.mkv")
        expected = pipeline_frames(vae, z[b : b + 1], scale, chunk)
        assert got.shape == expected.shape == (5, 24, 32, 3)
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        print(f"\nsvd CLI window {chunk or 'all'} video {b}: max {diff} LSB")
        assert diff <= 1


def test_python_api_window(tiny) -> None:
    import latent2mp4

    vae, _, folder = tiny
    z = torch.randn(1, 4, 4, 3, 3)
    decoder = latent2mp4.load_decoder("svd", vae=folder, dtype="fp32", decode_chunk_size=2)
    scale = json.loads((folder / "config.json").read_text())["scaling_factor"]
    expected = decode_latents(vae, 1 / scale * z, 2)
    assert (decoder.decode(z) - expected).abs().max().item() <= PARITY
    whole = decode_latents(vae, 1 / scale * z, None)
    assert (decoder.decode(z, decode_chunk_size=4) - whole).abs().max().item() <= PARITY
