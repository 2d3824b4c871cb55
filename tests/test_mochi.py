"""Mochi decoder: parity with diffusers' `AutoencoderKLMochi.decode`, streaming, key naming, CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.latents import denormalise, normalise
from latent2mp4.models.mochi.decoder import FAMILY, MochiConfig, MochiDecoder
from latent2mp4.models.mochi.naming import detect, rename_keys
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video
from latent2mp4.weights import load_vae, resolve_vae

from tiny_mochi import make_tiny_mochi

PARITY = 1e-4


def load_saved(path: Path) -> tuple[MochiDecoder, dict[str, torch.Tensor], dict[str, Any]]:
    config = json.loads((path / "config.json").read_text())
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    decoder = MochiDecoder(MochiConfig.from_diffusers(config)).eval()
    decoder.load_state_dict({k: v for k, v in state.items() if k.startswith("decoder.")})
    return decoder, state, config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, MochiDecoder, Path]:
    path = tmp_path_factory.mktemp("mochi_tiny") / "vae"
    vae = make_tiny_mochi(path, "tiny", seed=0)
    return vae, load_saved(path)[0], path


def reference(vae: Any, z: torch.Tensor, tile_px: tuple[int, int] | None) -> torch.Tensor:
    """diffusers' default decode (whole clip), optionally with enable_tiling()."""
    if tile_px is None:
        vae.disable_tiling()
    else:
        size, stride = tile_px
        vae.enable_tiling(
            tile_sample_min_height=size,
            tile_sample_min_width=size,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )
    with torch.no_grad():
        return vae.decode(z).sample


def ours(decoder: MochiDecoder, z: torch.Tensor, tile_px=None, frames: int = 1) -> torch.Tensor:
    grid = (
        None if tile_px is None else TileGrid.from_pixels((tile_px[0],) * 2, (tile_px[1],) * 2, 8)
    )
    return torch.cat(list(decode_stream(decoder, z, grid, max_chunk_frames=frames)), dim=2)


@pytest.mark.parametrize(
    "batch, frames, h, w, tile_px",
    [
        (1, 1, 5, 4, None),  # one latent frame: one video frame
        (2, 3, 3, 4, None),  # batch 2
        (1, 2, 7, 5, (32, 24)),  # 3 x 2 tiles of 4 latents every 3, blended over 8 px
        (2, 1, 5, 5, (32, 24)),
    ],
)
def test_parity_with_diffusers(tiny, batch, frames, h, w, tile_px) -> None:
    vae, decoder, _ = tiny
    torch.manual_seed(frames * 100 + h)
    z = torch.randn(batch, 12, frames, h, w)
    expected = reference(vae, z, tile_px)
    got = ours(decoder, z, tile_px)
    assert got.shape == expected.shape == (batch, 3, 6 * (frames - 1) + 1, 8 * h, 8 * w)
    diff = (got - expected).abs().max().item()
    print(f"\nmochi B={batch} T={frames} {h}x{w} tiles {tile_px}: max abs {diff:.2e}")
    assert diff <= PARITY


def test_streamed_equals_whole_clip(tiny) -> None:
    """One latent frame per call (the product's stream) equals one call over the whole clip,
    and any other grouping, because every layer is causal or per frame."""
    _, decoder, _ = tiny
    torch.manual_seed(5)
    z = torch.randn(1, 12, 3, 3, 4)
    with torch.inference_mode():
        whole = decoder.decode_chunk(z, decoder.new_state())[:, :, 5:]
    streamed = list(decode_stream(decoder, z))
    assert [c.shape[2] for c in streamed] == [1, 6, 6]
    for got in (torch.cat(streamed, dim=2), ours(decoder, z, frames=2)):
        assert got.shape == whole.shape
        diff = (got - whole).abs().max().item()
        print(f"\nmochi streamed vs whole clip: max abs {diff:.2e}")
        assert diff <= 1e-5


def test_time_chunks() -> None:
    decoder = MochiDecoder(MochiConfig(block_out_channels=(32, 32, 32, 32)))
    chunks = decoder.time_chunks(7, max_frames=3)
    assert [(c.start, c.stop, c.drop) for c in chunks] == [(0, 3, 5), (3, 6, 0), (6, 7, 0)]
    for t in range(1, 20):
        frames = sum(6 * (c.stop - c.start) - c.drop for c in decoder.time_chunks(t))
        assert frames == 6 * (t - 1) + 1 == load_preset("mochi").frames_out(t)


def test_released_architecture_keys_and_shapes() -> None:
    from diffusers import AutoencoderKLMochi

    with torch.device("meta"):
        theirs = AutoencoderKLMochi().state_dict()
        mine = MochiDecoder(MochiConfig()).state_dict()
    expected = {k: v.shape for k, v in theirs.items() if k.startswith("decoder.")}
    assert {k: v.shape for k, v in mine.items()} == expected
    shapes = {k: tuple(v) for k, v in expected.items()}
    assert MochiConfig.from_shapes(shapes) == MochiConfig()


# Genmo's original decoder names, written in the forward direction of diffusers'
# scripts/convert_mochi_to_diffusers.py (up blocks count from blocks.1; the last mid block is
# blocks.{n_up + 1}).
def to_original(key: str, n_up: int) -> str:
    rules = [
        (r"^decoder\.conv_in\.", "blocks.0.0."),
        (r"^decoder\.block_in\.resnets\.(\d+)\.", lambda m: f"blocks.0.{int(m[1]) + 1}."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"blocks.{int(m[1]) + 1}.blocks."),
        (r"^decoder\.up_blocks\.(\d+)\.proj\.", lambda m: f"blocks.{int(m[1]) + 1}.proj."),
        (r"^decoder\.block_out\.resnets\.", f"blocks.{n_up + 1}."),
        (r"^decoder\.proj_out\.", "output_proj."),
        (r"\.norm1\.norm_layer\.", ".stack.0."),
        (r"\.conv1\.conv\.", ".stack.2."),
        (r"\.norm2\.norm_layer\.", ".stack.3."),
        (r"\.conv2\.conv\.", ".stack.5."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("mochi_deep")
    vae = make_tiny_mochi(path, "deep", seed=2)
    return (vae, *load_saved(path))


@pytest.mark.parametrize("naming", ["genmo", "comfyui"])
def test_original_and_comfy_files_load_by_their_names(deep, naming, tmp_path) -> None:
    """Several resnets per block in Genmo's naming load into the right places (the decode
    itself is checked against Genmo's code in test_mochi_genmo.py)."""
    vae, decoder, state, config = deep
    decoder_keys = [k for k in state if k.startswith("decoder.")]
    original = {to_original(k, 3): state[k] for k in decoder_keys}
    assert original.keys().isdisjoint(state.keys())
    assert "blocks.1.blocks.2.stack.5.weight" in original and "blocks.4.1.stack.0.bias" in original
    if naming == "comfyui":  # ComfyUI's VAE file: decoder.* original names plus encoder.layers.*
        original = {f"decoder.{k}": v for k, v in original.items()}
        original["encoder.layers.0.weight"] = torch.zeros(32, 15)
    assert detect(original.keys())
    renamed = rename_keys(original.keys())
    assert sorted(renamed.values()) == sorted(decoder_keys)

    path = tmp_path / "decoder.safetensors"
    save_file(original, str(path))
    preset = load_preset("mochi")
    loaded = load_vae(resolve_vae(str(path), preset), preset, "cpu", torch.float32)
    # From shapes alone, and decoded as Genmo's code does (its names say where it comes from).
    genmo_cfg = replace(MochiConfig.from_diffusers(config), drop_in_blocks=True)
    assert loaded.decoder.cfg == genmo_cfg
    assert loaded.normalization is None  # no config.json: the preset's values apply
    same = MochiDecoder(genmo_cfg).eval()
    same.load_state_dict(decoder.state_dict())
    torch.manual_seed(3)
    z = torch.randn(1, 12, 2, 3, 3)
    diff = (ours(loaded.decoder, z) - ours(same, z)).abs().max().item()
    print(f"\nmochi {naming} single file: max abs {diff:.2e}")
    assert diff <= PARITY


def test_diffusers_single_file_decodes_as_diffusers(deep, tmp_path) -> None:
    """A diffusers-named file without its config.json still follows diffusers' decode."""
    vae, _, state, _ = deep
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    preset = load_preset("mochi")
    source = resolve_vae(str(tmp_path / "diffusion_pytorch_model.safetensors"), preset)
    assert source.config is None
    loaded = load_vae(source, preset, "cpu", torch.float32)
    assert not loaded.decoder.cfg.drop_in_blocks and loaded.notes == ()
    torch.manual_seed(3)
    z = torch.randn(1, 12, 2, 3, 3)
    assert (ours(loaded.decoder, z) - reference(vae, z, None)).abs().max().item() <= PARITY


def test_diffusers_naming_is_identity(deep) -> None:
    _, _, state, config = deep
    renamed = rename_keys(state.keys())
    assert renamed == {k: k for k in state if k.startswith("decoder.")}
    shapes = {k: tuple(state[k].shape) for k in renamed}
    assert MochiConfig.from_shapes(shapes) == MochiConfig.from_diffusers(config)
    assert detect(state.keys())


def test_detect_tells_families_apart() -> None:
    import diffusers

    from latent2mp4.weights import known_families

    for name in ("AutoencoderKLCogVideoX", "AutoencoderKLWan", "AutoencoderKLHunyuanVideo"):
        with torch.device("meta"):
            keys = getattr(diffusers, name)().state_dict().keys()
        assert not detect(keys), name
    with torch.device("meta"):
        mochi_keys = diffusers.AutoencoderKLMochi().state_dict().keys()
    others = [f.name for f in known_families() if f.name != "mochi" and f.detect(mochi_keys)]
    assert others == []


def test_config_from_diffusers() -> None:
    assert MochiConfig.from_diffusers({"latent_channels": 12}) == MochiConfig()
    with pytest.raises(KeyError, match="latent_channels"):
        MochiConfig.from_diffusers({})
    with pytest.raises(ValueError, match="layers_per_block"):
        MochiConfig.from_diffusers({"latent_channels": 12, "layers_per_block": [3, 3]})
    with pytest.raises(ValueError, match="multiples of 32"):
        MochiConfig.from_diffusers({"latent_channels": 12, "decoder_block_out_channels": [8] * 4})
    assert FAMILY.name == "mochi" and FAMILY.diffusers_class == "AutoencoderKLMochi"
    cfg = MochiConfig()
    assert (cfg.temporal_ratio, cfg.upscale) == (6, 8)


def test_preset_and_normalisation() -> None:
    preset = load_preset("mochi-1")
    assert (preset.name, preset.latent_channels, preset.spatial_ratio, preset.fps) == (
        "mochi",
        12,
        8,
        30.0,
    )
    from diffusers import AutoencoderKLMochi

    with torch.device("meta"):  # its defaults are the released values
        cfg = AutoencoderKLMochi().config
    norm = preset.normalization
    assert norm.mean == tuple(cfg.latents_mean) and norm.std == tuple(cfg.latents_std)
    assert norm.scaling_factor == cfg.scaling_factor == 1.0
    # pipeline_mochi.py: latents * std / scaling_factor + mean, with any scaling factor
    from latent2mp4.normalization import Normalization

    odd = Normalization(mean=norm.mean, std=norm.std, scaling_factor=0.7)
    z = torch.randn(1, 12, 2, 3, 3)
    mean = torch.tensor(norm.mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(norm.std).view(1, -1, 1, 1, 1)
    assert torch.equal(denormalise(z, odd), z * std / 0.7 + mean)
    assert torch.allclose(normalise(denormalise(z, odd), odd), z, atol=1e-6)


# ---- through the CLI: lossless video against the diffusers pipeline's arithmetic ------------


def pipeline_frames(vae: Any, zv: torch.Tensor) -> np.ndarray:
    """diffusers' decode of VAE-space latents, as MochiPipeline exports batch element 0."""
    with torch.no_grad():
        video = vae.decode(zv).sample
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def odd_vae(tmp_path_factory: pytest.TempPathFactory):
    """The tiny VAE with a config.json holding values no preset has."""
    folder = tmp_path_factory.mktemp("mochi_odd") / "vae"
    vae = make_tiny_mochi(folder, "tiny", seed=4)
    cfg = json.loads((folder / "config.json").read_text())
    g = torch.Generator().manual_seed(7)
    cfg["latents_mean"] = (torch.randn(12, generator=g) * 0.3).tolist()
    cfg["latents_std"] = (torch.rand(12, generator=g) * 1.5 + 0.5).tolist()
    cfg["scaling_factor"] = 0.7
    (folder / "config.json").write_text(json.dumps(cfg))
    return vae, folder, cfg


def to_vae_space(z: torch.Tensor, cfg: dict) -> torch.Tensor:
    mean = torch.tensor(cfg["latents_mean"]).view(1, 12, 1, 1, 1)
    std = torch.tensor(cfg["latents_std"]).view(1, 12, 1, 1, 1)
    return z * std / cfg["scaling_factor"] + mean  # pipeline_mochi.py


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_lossless_matches_the_diffusers_pipeline(odd_vae, tiled, tmp_path, cli) -> None:
    vae, folder, cfg = odd_vae
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 12, 2, 5, 7, generator=g)  # model space, as MochiPipeline returns it
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "mochi", "--vae", folder, "--lossless"]
    args += ["-o", tmp_path / "out.mkv"]
    if tiled:
        args += ["--tile-size", "32", "--tile-stride", "24"]
        vae.enable_tiling(32, 32, 24, 24)
    else:
        args += ["--no-tile"]
        vae.disable_tiling()
    run = cli(*args)
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "out.mkv")
    expected = pipeline_frames(vae, to_vae_space(z, cfg))
    assert got.shape == expected.shape == (7, 40, 56, 3)
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    print(f"\nmochi CLI {'tiled' if tiled else 'untiled'}: max {diff} LSB")
    assert diff <= 1


def test_comfyui_latent_file_is_vae_space(odd_vae, tmp_path, cli) -> None:
    """ComfyUI saves what its sampler returns after Mochi's process_out (z * std + mean): raw
    VAE space, decoded as is. With the released statistics, the preview normalises it back."""
    vae, folder, _ = odd_vae
    vae.disable_tiling()
    g = torch.Generator().manual_seed(2)
    zv = torch.randn(1, 12, 2, 3, 4, generator=g)
    marker = {"latent_format_version_0": torch.tensor([])}
    save_file({"latent_tensor": zv, **marker}, str(tmp_path / "ComfyUI_00001_.latent"))
    out = tmp_path / "comfy.mkv"
    run = cli("decode", tmp_path / "ComfyUI_00001_.latent", "-m", "mochi", "--vae", folder,
              "--lossless", "--no-tile", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(out)
    diff = np.abs(got.astype(int) - pipeline_frames(vae, zv).astype(int)).max()
    assert diff <= 1, diff

    preview = tmp_path / "preview.mkv"
    run = cli("decode", tmp_path / "ComfyUI_00001_.latent", "-m", "mochi", "--decoder", "preview",
              "--lossless", "-o", preview)  # fmt: skip
    assert run.exit_code == 0, run.output
    frames, _ = read_video(preview)
    assert frames.shape == (7, 24, 32, 3)


def test_bf16_is_close_to_fp32(tiny) -> None:
    _, decoder, _ = tiny
    dtype = torch.bfloat16
    torch.manual_seed(3)
    z = torch.randn(1, 12, 2, 3, 3)
    expected = ours(decoder, z)
    low = MochiDecoder(decoder.cfg).eval()
    low.load_state_dict(decoder.state_dict())
    got = torch.cat(list(decode_stream(low.to(dtype), z, dtype=dtype)), dim=2)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < 0.1
