"""Mochi files in Genmo's own naming against Genmo's own decode (genmoai/mochi).

Genmo's code is not on PyPI: `scripts/make_mochi_golden.py` ran it once on a tiny random decoder
and saved the weights (Genmo's key names, `tests/data/mochi_genmo/decoder.safetensors`), fixed
DiT-space latents and what `dit_latents_to_vae_latents` + Genmo's decoder made of them
(`golden.safetensors`). Genmo drops each up block's extra leading frames inside the decoder,
diffusers after it; the first frames differ, and these tests tell the two apart.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.latents import denormalise
from latent2mp4.models.mochi.decoder import FAMILY, MochiConfig, MochiDecoder, for_naming
from latent2mp4.models.mochi.naming import rename_keys
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

DATA = Path(__file__).parent / "data" / "mochi_genmo"
WEIGHTS = DATA / "decoder.safetensors"
PARITY = 1e-4
TILE = (16, 8)  # output pixels: tiles of 2x2 latents every latent, blended over 8 px


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(DATA / "golden.safetensors")


@pytest.fixture(scope="module")
def genmo_file() -> MochiDecoder:
    preset = load_preset("mochi")
    loaded = load_vae(resolve_vae(str(WEIGHTS), preset), preset, "cpu", torch.float32)
    assert loaded.notes and "Genmo" in loaded.notes[0]
    decoder = loaded.decoder
    assert isinstance(decoder, MochiDecoder) and decoder.cfg.drop_in_blocks
    return decoder


def ours(decoder: Any, z: torch.Tensor, tile_px: tuple[int, int] | None = None, frames: int = 1):
    grid = (
        None if tile_px is None else TileGrid.from_pixels((tile_px[0],) * 2, (tile_px[1],) * 2, 8)
    )
    with torch.inference_mode():
        return torch.cat(list(decode_stream(decoder, z, grid, max_chunk_frames=frames)), dim=2)


def per_frame(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return (a - b).abs().amax(dim=(0, 1, 3, 4)).tolist()


def lsb_per_frame(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """Max 8-bit difference per frame once both are frames (see `to_frames`)."""
    return np.abs(to_frames(a).astype(int) - to_frames(b)).max(axis=(0, 2, 3, 4)).tolist()


def test_dit_latents_to_vae_latents(golden) -> None:
    """The preset's model-space statistics are Genmo's vae_stats.py, applied the same way."""
    got = denormalise(golden["dit_latents"], load_preset("mochi").normalization)
    assert torch.equal(got, golden["vae_latents"])


@pytest.mark.parametrize("frames", [1, 2])
def test_genmo_file_matches_genmo_decode(golden, genmo_file, frames) -> None:
    got = ours(genmo_file, golden["vae_latents"], frames=frames)
    expected = golden["video"]
    assert got.shape == expected.shape == (2, 3, 13, 16, 24)
    diffs = per_frame(got, expected)
    print(f"\nmochi genmo file vs genmo decode, max abs per frame: {[f'{d:.1e}' for d in diffs]}")
    print(f"  LSB per frame: {lsb_per_frame(got, expected)}")
    assert max(diffs) <= PARITY


def test_diffusers_order_would_differ(golden, genmo_file) -> None:
    """The same weights decoded as diffusers does (drop after the decoder) miss Genmo's picture,
    most in the first frames (later ones differ less as the causal receptive field moves past
    the clip's start), so the fixture tells the two orders apart."""
    diffusers_order = MochiDecoder(replace(genmo_file.cfg, drop_in_blocks=False)).eval()
    diffusers_order.load_state_dict(genmo_file.state_dict())
    got = ours(diffusers_order, golden["vae_latents"])
    diffs = per_frame(got, golden["video"])
    print(
        f"\nmochi diffusers order vs genmo decode, max abs per frame: {[f'{d:.2g}' for d in diffs]}"
    )
    print(f"  LSB per frame: {lsb_per_frame(got, golden['video'])}")
    assert diffs[0] > 0.05 and diffs[-1] < diffs[0]


def test_comfyui_naming_decodes_as_genmo(golden, tmp_path) -> None:
    """ComfyUI's Mochi VAE file keeps Genmo's names under `decoder.` (with `encoder.*`)."""
    state = {f"decoder.{k}": v for k, v in load_file(WEIGHTS).items()}
    state["encoder.layers.0.weight"] = torch.zeros(32, 15, dtype=torch.float16)
    save_file(state, str(tmp_path / "mochi_preview_vae_bf16.safetensors"))
    preset = load_preset("mochi")
    source = resolve_vae(str(tmp_path / "mochi_preview_vae_bf16.safetensors"), preset)
    loaded = load_vae(source, preset, "cpu", torch.float32)
    got = ours(loaded.decoder, golden["vae_latents"])
    assert (got - golden["video"]).abs().max().item() <= PARITY


def test_diffusers_naming_keeps_diffusers_order() -> None:
    keys = load_file(WEIGHTS).keys()
    cfg = MochiConfig(block_out_channels=(32,) * 4, layers_per_block=(1, 1, 1, 0, 1))
    assert for_naming(cfg, keys)[0].drop_in_blocks
    diffusers_keys = rename_keys(keys).values()
    assert for_naming(cfg, diffusers_keys) == (cfg, None)
    assert FAMILY.for_naming is for_naming


def blended_genmo_tiles(decoder: MochiDecoder, z: torch.Tensor) -> torch.Tensor:
    """diffusers' own tiler (`AutoencoderKLMochi.tiled_decode`: tile placement, blending and
    cropping) around Genmo's decode of each tile, which test_genmo_file_matches_genmo_decode
    shows ours to be."""
    from diffusers import AutoencoderKLMochi

    cfg = decoder.cfg
    vae = AutoencoderKLMochi(
        latent_channels=12,
        encoder_block_out_channels=(32,) * 4,
        decoder_block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
    ).eval()

    class GenmoTile(torch.nn.Module):
        def forward(self, tile: torch.Tensor, conv_cache: Any = None) -> tuple[torch.Tensor, None]:
            return ours(decoder, tile).clone(), None  # a normal tensor: diffusers blends in place

    vae.decoder = GenmoTile()
    vae.drop_last_temporal_frames = False  # Genmo's decode already gives 6(T-1)+1 frames
    vae.enable_tiling(TILE[0], TILE[0], TILE[1], TILE[1])
    with torch.no_grad():
        return vae.tiled_decode(z).sample


def test_tiled_genmo_file(golden, genmo_file) -> None:
    z = golden["vae_latents"]
    expected = blended_genmo_tiles(genmo_file, z)
    got = ours(genmo_file, z, TILE)
    assert got.shape == expected.shape == (2, 3, 13, 16, 24)
    diff = (got - expected).abs().max().item()
    print(f"\nmochi genmo file tiled {TILE}: max abs {diff:.1e}")
    assert diff <= PARITY
    assert (got - golden["video"]).abs().max().item() > PARITY  # the tiles did blend


def to_frames(video: torch.Tensor) -> np.ndarray:
    """Genmo's `decode_latents` frames ((x + 1) / 2, clamped), rounded to 8 bits."""
    frames = ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)
    return (frames.numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_lossless_matches_genmo(golden, genmo_file, tiled, tmp_path, cli) -> None:
    save_file({"latents": golden["dit_latents"]}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "mochi", "--vae", WEIGHTS, "--lossless"]
    args += ["--latent-space", "model", "-o", tmp_path / "out.mkv"]
    if tiled:
        args += ["--tile-size", str(TILE[0]), "--tile-stride", str(TILE[1])]
        video = blended_genmo_tiles(genmo_file, golden["vae_latents"])
    else:
        args += ["--no-tile"]
        video = golden["video"]
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert "Genmo-original Mochi VAE weights" in run.output
    expected = to_frames(video)
    for b in range(2):
        got, _ = read_video(tmp_path / f"out-{b}.mkv")
        assert got.shape == expected[b].shape == (13, 16, 24, 3)
        diff = np.abs(got.astype(int) - expected[b].astype(int)).max()
        print(f"\nmochi genmo CLI {'tiled' if tiled else 'untiled'} video {b}: max {diff} LSB")
        assert diff <= 1
