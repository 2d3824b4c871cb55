"""Original LTX-Video single files (the VAE under `vae.`, its config in the metadata) against the
original repository's own decode (`ltx_video`: `CausalVideoAutoencoder.from_pretrained` on the
same file, then `vae_decode`), and the released structures under diffusers' conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_ltx_original import EXOTIC, V095, make_original_ltx

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.models.ltx.stack import Conditioned, LtxDecoder
from latent2mp4.presets import builtin_presets
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

from conftest import assert_one_line_error

PARITY = 1e-4
TIMESTEP = 0.05
V090 = {  # 0.9.0's block list (res_x_y halving the width, a plain last up-sampler), 1 layer each
    **{k: v for k, v in V095.items() if k != "timestep_conditioning"},
    "decoder_blocks": [
        ["res_x", 1], ["compress_all", 1], ["res_x_y", 1], ["res_x", 1], ["compress_all", 1],
        ["res_x_y", 1], ["res_x", 1], ["compress_all", 1], ["res_x", 1], ["res_x", 1],
    ],
}  # fmt: skip


def with_padding(config: dict[str, Any], padding: str | None) -> dict[str, Any]:
    return config if padding is None else {**config, "spatial_padding_mode": padding}


def original_decode(vae: Any, z: torch.Tensor, timestep: float | None, seed: int = 0) -> Any:
    """The original repository's decode of model-space latents (per-channel statistics), the
    global generator seeded first (it draws the injected noise)."""
    from ltx_video.models.autoencoders.vae_encode import vae_decode

    t = None if timestep is None else torch.full((z.shape[0],), timestep)
    torch.manual_seed(seed)
    with torch.no_grad():
        return vae_decode(z, vae, True, vae_per_channel_normalize=True, timestep=t)


class OriginalDecoder(torch.nn.Module):
    """The original VAE's own decode behind diffusers' decoder call, `decoder(z, temb)`."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        shape = (z.shape[0], 3, 8 * z.shape[2], 32 * z.shape[3], 32 * z.shape[4])
        return self.vae._decode(z, target_shape=shape, timestep=temb)


def tiled_original(vae: Any, z: torch.Tensor, tile_px: int | None, framewise: bool) -> Any:
    """diffusers' own spatial tiles and framewise tiles (the scheme latent2mp4 follows) around
    the original decoder: a diffusers LTX VAE whose decoder is swapped for the original's."""
    from diffusers import AutoencoderKLLTXVideo

    shell = AutoencoderKLLTXVideo(
        block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        latent_channels=4,
    ).eval()  # fmt: skip
    shell.decoder = OriginalDecoder(vae)
    shell.use_framewise_decoding = framewise
    if tile_px is not None:
        stride = tile_px - 32 * (tile_px // 64)
        shell.enable_tiling(tile_px, tile_px, None, stride, stride)
    mean = vae.mean_of_means.view(1, -1, 1, 1, 1)
    std = vae.std_of_means.view(1, -1, 1, 1, 1)
    temb = torch.full((z.shape[0],), TIMESTEP)
    with torch.no_grad():
        return shell.decode(z * std + mean, temb).sample


def ours(path: Path, z: torch.Tensor, tile_px: int | None = None, framewise: bool = False) -> Any:
    """Our load of the file and our decode of model-space latents at TIMESTEP, seed 0."""
    preset = builtin_presets()["ltx"]
    loaded = load_vae(resolve_vae(str(path), preset), preset, "cpu", torch.float32)
    decoder = loaded.decoder
    assert isinstance(decoder, LtxDecoder)
    mean, std = decoder.stats()
    grid = None
    if tile_px is not None:
        grid = TileGrid.from_pixels((tile_px,) * 2, (tile_px - 32 * (tile_px // 64),) * 2, 32)
    d = Conditioned(decoder, TIMESTEP, 0) if decoder.layout.conditioned else decoder
    with torch.no_grad():
        chunks = decode_stream(d, z * std + mean, grid, max_chunk_frames=1 if framewise else 99)
        return torch.cat(list(chunks), dim=2), loaded.notes


@pytest.mark.parametrize("padding", [None, "reflect", "replicate", "circular"])
def test_parity_with_the_original_decode(padding, tmp_path) -> None:
    path = tmp_path / "ltxv.safetensors"
    vae = make_original_ltx(path, with_padding(V095, padding), seed=1)
    z = torch.randn(2, 128, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    got, notes = ours(path, z)
    expected = original_decode(vae, z, TIMESTEP)
    diff = (got - expected).abs().max().item()
    print(f"\n0.9.5 structure, padding {padding or 'absent (zeros)'}, batch 2: {diff:.2e}")
    assert got.shape == expected.shape == (2, 3, 9, 64, 96) and diff <= PARITY
    # Only a non-zero padding parts from diffusers' conversion, and says so.
    assert bool(notes) == (padding is not None)
    if padding:
        assert f'spatial_padding_mode "{padding}" (diffusers: "zeros")' in notes[0]


@pytest.mark.parametrize(
    "tile_px, framewise, size",
    [(96, False, (2, 4, 4)), (None, True, (3, 2, 2))],
    ids=["tiles", "framewise"],
)
def test_tiles_follow_diffusers_scheme_around_the_original(tile_px, framewise, size, tmp_path):
    """(Spatial tiles inside framewise tiles are the engine's, checked in test_ltx.py.)"""
    path = tmp_path / "ltxv.safetensors"
    vae = make_original_ltx(path, with_padding(V095, "reflect"), seed=3)
    z = torch.randn(1, 128, *size, generator=torch.Generator().manual_seed(4))
    got, _ = ours(path, z, tile_px, framewise)
    expected = tiled_original(vae, z, tile_px, framewise)
    diff = (got - expected).abs().max().item()
    print(f"\nreflect, tiles {tile_px} framewise {framewise}: {diff:.2e}")
    assert got.shape == expected.shape and diff <= PARITY


def test_every_other_original_field(tmp_path) -> None:
    """Causal decoder, quant conv (absent: on), latent BatchNorm, injected noise (the same
    draws for the same seed), lone blocks, time- and space-only up-samplers."""
    path = tmp_path / "ltxv.safetensors"
    vae = make_original_ltx(path, EXOTIC, seed=5)
    z = torch.randn(2, 128, 3, 2, 2, generator=torch.Generator().manual_seed(6))
    got, notes = ours(path, z)
    expected = original_decode(vae, z, None, seed=0)
    diff = (got - expected).abs().max().item()
    print(f"\nexotic original config, batch 2: {diff:.2e}")
    assert got.shape == expected.shape == (2, 3, 17, 64, 64) and diff <= PARITY
    for field in ("causal_decoder true", "use_quant_conv true", "normalize_latent_channels true"):
        assert field in notes[0]
    # The injected noise matters: another seed for the original gives another picture.
    assert (original_decode(vae, z, None, seed=1) - expected).abs().max().item() > 1e-3


def diffusers_conversion(path: Path, diffusers_config: dict[str, Any]) -> Any:
    """diffusers' own single-file conversion of the file into an AutoencoderKLLTXVideo of the
    release's diffusers config (the metadata plays no part in it)."""
    from diffusers import AutoencoderKLLTXVideo
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    with safe_open(str(path), framework="pt") as f:
        checkpoint = {k: f.get_tensor(k) for k in f.keys()}
    state = convert_ltx_vae_checkpoint_to_diffusers(checkpoint)
    vae = AutoencoderKLLTXVideo(
        block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1), **diffusers_config
    ).eval()
    result = vae.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("encoder.")}, strict=False
    )
    assert not result.unexpected_keys and all(k.startswith("encoder.") for k in result.missing_keys)
    return vae


RELEASED = {  # (the original block list, the diffusers config of that release at our width)
    "0.9.0": (
        V090, dict(decoder_block_out_channels=(8, 16, 32, 32), decoder_layers_per_block=(1,) * 5)
    ),
    "0.9.5": (
        V095,
        dict(
            decoder_block_out_channels=(16, 32, 64), decoder_layers_per_block=(1, 1, 1, 2),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False), upsample_residual=(True,) * 3,
            upsample_factor=(2, 2, 2), timestep_conditioning=True,
        ),
    ),
}  # fmt: skip


@pytest.mark.parametrize("release", list(RELEASED))
def test_released_structures_decode_alike_unless_the_padding_is_not_zeros(release, tmp_path):
    """A released block list decodes the same under diffusers' conversion and the original code
    when its metadata names no padding (the original's default is zeros, as diffusers builds);
    a non-zero padding in the metadata is followed by the original code alone."""
    blocks, diffusers_config = RELEASED[release]
    z = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(7))
    timestep = TIMESTEP if blocks.get("timestep_conditioning") else None
    diffs = {}
    for padding in (None, "reflect"):
        path = tmp_path / f"{padding}.safetensors"
        vae = make_original_ltx(path, with_padding(blocks, padding), seed=8)
        converted = diffusers_conversion(path, diffusers_config)
        mean, std = vae.mean_of_means.view(1, -1, 1, 1, 1), vae.std_of_means.view(1, -1, 1, 1, 1)
        temb = None if timestep is None else torch.tensor([timestep])
        with torch.no_grad():
            theirs = converted.decode(z * std + mean, temb).sample
        original = original_decode(vae, z, timestep)
        got, _ = ours(path, z)
        diffs[padding] = (theirs - original).abs().max().item()
        print(f"\n{release} padding {padding}: diffusers vs original {diffs[padding]:.2e}, "
              f"ours vs original {(got - original).abs().max().item():.2e}")  # fmt: skip
        assert (got - original).abs().max().item() <= PARITY
    assert diffs[None] <= PARITY < diffs["reflect"]


# ---- the CLI end to end -----------------------------------------------------------------------


def frames_of(video: torch.Tensor) -> np.ndarray:
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def max_lsb(path: Path, expected: np.ndarray) -> int:
    got, _ = read_video(path)
    assert got.shape == expected.shape
    return int(np.abs(got.astype(int) - expected.astype(int)).max())


@pytest.fixture(scope="module")
def reflect_file(tmp_path_factory) -> tuple[Any, Path]:
    path = tmp_path_factory.mktemp("ltx_orig") / "ltxv-reflect.safetensors"
    return make_original_ltx(path, with_padding(V095, "reflect"), seed=9), path


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_lossless_matches_the_original(reflect_file, tiled, tmp_path, cli) -> None:
    vae, path = reflect_file
    z = torch.randn(2, 128, 2, 4, 4, generator=torch.Generator().manual_seed(10))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", path, "--lossless"]
    args += ["--decode-timestep", "0.05", "--decode-noise-scale", "0", "-o", tmp_path / "o.mkv"]
    # Tiles of 3 latents every 2 (reflect padding cannot pad a 1-latent edge tile).
    args += ["--tile-size", "96", "--tile-stride", "64"] if tiled else ["--no-tile"]
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert 'asks for spatial_padding_mode "reflect" (diffusers: "zeros")' in run.output
    if tiled:
        video = tiled_original(vae, z, 96, False)
    else:
        video = original_decode(vae, z, TIMESTEP)
    for b in range(2):
        lsb = max_lsb(tmp_path / f"o-{b}.mkv", frames_of(video[b : b + 1]))
        print(f"\nCLI reflect {'tiled' if tiled else 'untiled'} b{b}: max {lsb} LSB")
        assert lsb <= 1


def test_cli_decode_noise_is_mixed_in_model_space_as_the_original_pipeline(
    reflect_file, tmp_path, cli
) -> None:
    """The original pipeline mixes `(1 - s) z + s noise` before its VAE de-normalises; with
    the pipeline's own draw (the generator seeded with --seed) the frames are the same."""
    vae, path = reflect_file
    z = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(11))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", path, "--lossless",
        "--decode-timestep", "0.05", "--decode-noise-scale", "0.3", "--seed", "7",
        "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    torch.manual_seed(7)
    s = 0.3
    noisy = z * (1 - s) + torch.randn_like(z) * s  # pipeline_ltx_video.py, before vae_decode
    lsb = max_lsb(tmp_path / "o.mkv", frames_of(original_decode(vae, noisy, TIMESTEP)))
    print(f"\nCLI decode noise 0.3 in model space: max {lsb} LSB")
    assert lsb <= 1


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"norm_layer": None}, "norm_layer 'group_norm' is not supported"),
        ({"dims": [2, 1]}, "dims [2, 1] is not supported"),
        ({"dims": None}, "lacks 'dims'"),
        ({"spatial_padding_mode": "mirror"}, "spatial_padding_mode 'mirror'"),
        ({"decoder_blocks": [["attn_res_x", {"num_layers": 1}]]}, "attn_res_x (attention)"),
        ({"decoder_blocks": [["res_x", {}]]}, "res_x lacks num_layers"),
        ({"decoder_blocks": [["res_y", 1]]}, "unknown decoder block 'res_y'"),
    ],
)
def test_configs_that_cannot_be_built_are_one_line_errors(change, fragment, tmp_path, cli):
    vae_config = {k: v for k, v in V095.items() if change.get(k, 0) is not None}
    vae_config.update({k: v for k, v in change.items() if v is not None})
    path = tmp_path / "ltxv.safetensors"
    state = {"vae.decoder.conv_in.conv.weight": torch.zeros(8, 128, 3, 3, 3)}
    state["vae.per_channel_statistics.mean-of-means"] = torch.zeros(128)
    save_file(state, str(path), metadata={"config": json.dumps({"vae": vae_config})})
    save_file({"latents": torch.randn(1, 128, 2, 2, 2)}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", path)
    assert_one_line_error(run, 1, str(path), fragment)


def test_metadata_that_is_not_json_is_a_one_line_error(tmp_path, cli) -> None:
    path = tmp_path / "ltxv.safetensors"
    state = {"vae.decoder.conv_in.conv.weight": torch.zeros(8, 128, 3, 3, 3)}
    state["vae.per_channel_statistics.mean-of-means"] = torch.zeros(128)
    save_file(state, str(path), metadata={"config": "{not json"})
    save_file({"latents": torch.randn(1, 128, 2, 2, 2)}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", path)
    assert_one_line_error(run, 1, "its metadata's config is not JSON")
