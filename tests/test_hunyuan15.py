"""HunyuanVideo 1.5 decoder: parity with diffusers' `AutoencoderKLHunyuanVideo15.decode`, the
exact frame-by-frame stream against the whole clip, Tencent and ComfyUI weights, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.errors import WeightsError
from latent2mp4.latents import denormalise, normalise
from latent2mp4.models.hunyuan15.decoder import (
    FAMILY,
    Hunyuan15Config,
    Hunyuan15Decoder,
    detect,
    rename_keys,
)
from latent2mp4.normalization import Normalization
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video
from latent2mp4.weights import known_families, load_vae, resolve_vae

from tiny_hunyuan15 import make_tiny_hunyuan15

PARITY = 1e-4
STREAM = 1e-5  # streamed vs whole clip: the same arithmetic, only conv shapes differ
WEIGHTS = "diffusion_pytorch_model.safetensors"
PRESET = load_preset("hunyuan1.5")


def load_saved(path: Path) -> tuple[Hunyuan15Decoder, dict[str, torch.Tensor], dict[str, Any]]:
    config = json.loads((path / "config.json").read_text())
    state = load_file(path / WEIGHTS)
    decoder = Hunyuan15Decoder(Hunyuan15Config.from_diffusers(config)).eval()
    decoder.load_state_dict({k: v for k, v in state.items() if k.startswith("decoder.")})
    return decoder, state, config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Hunyuan15Decoder, Path]:
    path = tmp_path_factory.mktemp("hunyuan15") / "vae"
    vae = make_tiny_hunyuan15(path, "tiny")
    return vae, load_saved(path)[0], path


def reference(vae: Any, z: torch.Tensor, tiles: int | None) -> torch.Tensor:
    """diffusers' decode, with `enable_tiling` at `tiles` latents (overlap 0.25) if given.

    diffusers' block-causal mask has the batch where the heads go (`(B, N, N)` against
    `(B, 1, N, N)` queries), so its decode fails for B > 1; slicing decodes one sample at a
    time, which is its own way to decode a batch.
    """
    vae.enable_slicing()
    if tiles is None:
        vae.disable_tiling()
    else:
        px = tiles * 16
        vae.enable_tiling(px, px, tiles, tiles, 0.25)
    with torch.no_grad():
        return vae.decode(z).sample


def ours(decoder: Hunyuan15Decoder, z: torch.Tensor, tiles: int | None, frames: int = 1):
    grid = None
    if tiles is not None:  # diffusers: stride int(tiles * 0.75) latents, blend tiles / 4
        grid = TileGrid((tiles, tiles), (tiles * 3 // 4,) * 2)
    return torch.cat(list(decode_stream(decoder, z, grid, max_chunk_frames=frames)), dim=2)


@pytest.mark.parametrize(
    "batch, frames, h, w, tiles",
    [
        (1, 1, 2, 3, None),  # one image frame
        (2, 2, 2, 2, None),  # batch 2
        (1, 4, 2, 2, None),  # keys/values of three earlier frames
        (2, 1, 5, 7, 4),  # tiles of 4 latents every 3: 2 x 3 tiles, blended over 16 px
        (1, 2, 5, 5, 4),  # a state per tile
    ],
)
def test_parity_with_diffusers(tiny, batch, frames, h, w, tiles) -> None:
    vae, decoder, _ = tiny
    torch.manual_seed(frames * 10 + h)
    z = torch.randn(batch, 32, frames, h, w)
    expected = reference(vae, z, tiles)
    got = ours(decoder, z, tiles)
    assert got.shape == expected.shape == (batch, 3, 4 * frames - 3, 16 * h, 16 * w)
    diff = (got - expected).abs().max().item()
    print(f"max abs diff {diff:.2e} for z {tuple(z.shape)} tiles {tiles}")
    assert diff <= PARITY


def test_stream_equals_whole_clip(tiny) -> None:
    """Frame by frame (the product path) and two frames per chunk give the whole clip decoded in
    one call; dropping either part of the carried state (conv history, earlier keys and values)
    between chunks changes the frames."""
    _, decoder, _ = tiny
    torch.manual_seed(5)
    z = torch.randn(1, 32, 4, 2, 2)
    with torch.inference_mode():
        whole = decoder.decode_chunk(z, decoder.new_state())
    assert [c.stop - c.start for c in decoder.time_chunks(4)] == [1] * 4
    assert [c.stop - c.start for c in decoder.time_chunks(6, 3)] == [1, 3, 2]
    for frames in (1, 2):
        diff = (ours(decoder, z, None, frames) - whole).abs().max().item()
        print(f"{frames} latent frame(s) per chunk: max abs diff to whole clip {diff:.2e}")
        assert diff <= STREAM
    for part in ("history", "keys_values"):
        state, chunks = decoder.new_state(), []
        with torch.inference_mode():
            for t in range(4):
                chunks.append(decoder.decode_chunk(z[:, :, t : t + 1], state))
                getattr(state, part).clear()
        assert (torch.cat(chunks, dim=2) - whole).abs().max() > 1e-3, part


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("hunyuan15_shortcut") / "vae"
    vae = make_tiny_hunyuan15(path, "shortcut", seed=1)
    return (vae, *load_saved(path))


def test_shortcut_variant_parity(shortcut) -> None:
    vae, decoder, state, config = shortcut
    assert any("conv_shortcut" in k for k in decoder.state_dict())
    assert not decoder.cfg.upsample_match_channel
    shapes = {k: tuple(v.shape) for k, v in state.items() if k.startswith("decoder.")}
    assert Hunyuan15Config.from_shapes(shapes) == Hunyuan15Config.from_diffusers(config)
    z = torch.randn(1, 32, 2, 2, 2)
    assert (ours(decoder, z, None) - reference(vae, z, None)).abs().max() <= PARITY


def test_released_architecture_keys_and_shapes() -> None:
    from diffusers import AutoencoderKLHunyuanVideo15

    with torch.device("meta"):
        theirs = AutoencoderKLHunyuanVideo15().state_dict()
        mine = Hunyuan15Decoder(Hunyuan15Config()).state_dict()
    expected = {k: v.shape for k, v in theirs.items() if k.startswith("decoder.")}
    assert {k: v.shape for k, v in mine.items()} == expected
    assert sum(v.numel() for v in mine.values()) == 871_309_571
    assert Hunyuan15Config.from_shapes(expected) == Hunyuan15Config()
    assert Hunyuan15Config().upscale == 16


def test_config_from_diffusers_and_tencent() -> None:
    minimal = {"latent_channels": 32, "block_out_channels": [128, 256, 512, 1024, 1024]}
    assert Hunyuan15Config.from_diffusers(minimal) == Hunyuan15Config()
    tencent = {**minimal, "_class_name": "AutoencoderKLConv3D", "ffactor_spatial": 16}
    assert Hunyuan15Config.from_diffusers({**tencent, "ffactor_temporal": 4}) == Hunyuan15Config()
    with pytest.raises(KeyError, match="block_out_channels"):
        Hunyuan15Config.from_diffusers({"latent_channels": 32})
    with pytest.raises(ValueError, match="spatial compression ratio 12"):
        Hunyuan15Config.from_diffusers({**minimal, "spatial_compression_ratio": 12})
    with pytest.raises(ValueError, match="not a multiple of latent_channels 48"):
        Hunyuan15Config.from_diffusers({**minimal, "latent_channels": 48})
    assert FAMILY.config_classes == ("AutoencoderKLHunyuanVideo15", "AutoencoderKLConv3D")


# The Tencent release's (LDM-style) names, written here in the forward direction of diffusers'
# scripts/convert_hunyuan_video1_5_to_diffusers.py. ComfyUI loads that file into modules whose
# 1x1 shortcut also wraps a `.conv` (comfy/ldm/hunyuan_video/vae_refiner.py).
def to_tencent(key: str, comfy: bool = False) -> str:
    rules = [
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", r"decoder.up.\1.block."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder.up.\1.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.to_([qkv])\.", r"mid.attn_1.\1."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"conv_shortcut\.", "nin_shortcut.conv." if comfy else "nin_shortcut."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


@pytest.mark.parametrize("comfy", [False, True], ids=["tencent", "comfyui"])
def test_original_naming_round_trip(shortcut, comfy: bool) -> None:
    _, decoder, state, config = shortcut
    original = {to_tencent(k, comfy): v for k, v in state.items()}
    assert "decoder.mid.attn_1.q.weight" in original and "decoder.up.4.block.0.norm1.gamma" in (
        original
    )
    assert any(".nin_shortcut.conv." in k for k in original) == comfy
    assert detect(original.keys())
    renamed = rename_keys(original.keys())
    assert renamed == {to_tencent(k, comfy): k for k in state if k.startswith("decoder.")}
    ours_state = {renamed[k]: v for k, v in original.items() if k in renamed}
    cfg = Hunyuan15Config.from_shapes({k: tuple(v.shape) for k, v in ours_state.items()})
    assert cfg == Hunyuan15Config.from_diffusers(config)
    single = Hunyuan15Decoder(cfg).eval()
    single.load_state_dict(ours_state, strict=True)
    z = torch.randn(1, 32, 2, 2, 2)
    with torch.inference_mode():
        expected = decoder.decode_chunk(z, decoder.new_state())
        assert torch.equal(single.decode_chunk(z, single.new_state()), expected)


def test_detect_tells_the_families_apart() -> None:
    import diffusers

    with torch.device("meta"):
        hv15 = diffusers.AutoencoderKLHunyuanVideo15().state_dict().keys()
        others = {
            name: getattr(diffusers, name)().state_dict().keys()
            for name in (
                "AutoencoderKLHunyuanVideo",
                "AutoencoderKLWan",
                "AutoencoderKLCogVideoX",
                "AutoencoderKLLTXVideo",
                "AutoencoderKLMochi",
            )
        }
    assert detect(hv15)
    assert [f.name for f in known_families() if f.detect(hv15)] == ["hunyuan1.5"]
    for name, keys in others.items():
        assert not detect(keys), name


def test_tencent_folder_config_and_shift_are_read(tiny, tmp_path) -> None:
    """The release's vae/ folder: `AutoencoderKLConv3D` config.json, original key names; its
    scaling and shift factors de-normalise (`z / scaling_factor + shift_factor`)."""
    _, decoder, path = tiny
    state = load_file(path / WEIGHTS)
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file({to_tencent(k): v for k, v in state.items()}, str(folder / WEIGHTS))
    diffusers_cfg = json.loads((path / "config.json").read_text())
    cfg = {
        "_class_name": "AutoencoderKLConv3D",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 32,
        "block_out_channels": diffusers_cfg["block_out_channels"],
        "layers_per_block": 1,
        "ffactor_spatial": 16,
        "ffactor_temporal": 4,
        "sample_size": 256,
        "sample_tsize": 64,
        "scaling_factor": 0.9,
        "shift_factor": 0.25,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    for spec in (folder, folder / WEIGHTS):  # the folder, and the file with its sibling config
        vae = load_vae(resolve_vae(str(spec), PRESET), PRESET, "cpu", torch.float32)
        assert vae.family is FAMILY
        assert vae.normalization == Normalization(scaling_factor=0.9, shift_factor=0.25)
        z = torch.randn(1, 32, 2, 2, 2)
        with torch.inference_mode():
            got = vae.decoder.decode_chunk(z, vae.decoder.new_state())
            assert torch.equal(got, decoder.decode_chunk(z, decoder.new_state()))
    hunyuan = load_preset("hunyuan")
    with pytest.raises(WeightsError, match="AutoencoderKLConv3D \\(a hunyuan1.5 VAE"):
        load_vae(resolve_vae(str(folder), hunyuan), hunyuan, "cpu", torch.float32)
    alone = tmp_path / "alone.safetensors"  # no config.json beside it: keys tell the family
    shutil.copy(path / WEIGHTS, alone)
    with pytest.raises(WeightsError, match="look like a hunyuan1.5 VAE"):
        load_vae(resolve_vae(str(alone), hunyuan), hunyuan, "cpu", torch.float32)
    norm = Normalization(scaling_factor=0.9, shift_factor=0.25)
    z = torch.randn(1, 32, 2, 2, 2)
    assert torch.allclose(denormalise(z, norm), z / 0.9 + 0.25)
    assert torch.allclose(normalise(denormalise(z, norm), norm), z, atol=1e-6)


def pipeline_frames(vae: Any, zv: torch.Tensor) -> np.ndarray:
    """diffusers' decode of VAE-space latents as the pipeline exports it: uint8 (F, H, W, 3)."""
    with torch.no_grad():
        video = vae.decode(zv).sample
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def assert_within_one_lsb(got: np.ndarray, expected: np.ndarray, label: str) -> None:
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    print(f"\n{label}: max {diff} LSB, {(got == expected).mean():.4%} exact")
    assert diff <= 1


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_lossless_matches_the_diffusers_pipeline(tiny, tiled, tmp_path, cli) -> None:
    vae, _, path = tiny
    folder = tmp_path / "vae"
    shutil.copytree(path, folder)
    cfg = json.loads((folder / "config.json").read_text()) | {"scaling_factor": 0.613}
    (folder / "config.json").write_text(json.dumps(cfg))
    z = torch.randn(1, 32, 3, 5, 4, generator=torch.Generator().manual_seed(1))  # model space
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "hunyuanvideo1.5", "--vae", folder]
    args += ["--lossless", "-o", tmp_path / "out.mkv"]
    if tiled:  # 64 px tiles every 48 px: diffusers' enable_tiling at a 4-latent tile
        args += ["--tile-size", "64", "--tile-stride", "48"]
        vae.enable_tiling(64, 64, 4, 4, 0.25)
    else:
        args += ["--no-tile"]
        vae.disable_tiling()
    run = cli(*args)
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "out.mkv")
    expected = pipeline_frames(vae, z / 0.613)
    assert_within_one_lsb(got, expected, f"hunyuan1.5 {'tiled' if tiled else 'untiled'}")


def test_comfyui_latent_file_is_raw_vae_space(tiny, tmp_path, cli) -> None:
    """ComfyUI's HunyuanVideo15 latent format scales by 1.03682 only inside the sampler
    (`process_in`/`process_out`), so its saved `.latent` holds raw VAE-space latents: they
    are decoded as they are, with ComfyUI-named weights loaded from a single file."""
    vae, _, path = tiny
    comfy_vae = tmp_path / "hunyuanvideo15_vae.safetensors"
    state = load_file(path / WEIGHTS)
    save_file({to_tencent(k, comfy=True): v for k, v in state.items()}, str(comfy_vae))
    zv = torch.randn(1, 32, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    latent = tmp_path / "ComfyUI_00001_.latent"
    save_file({"latent_tensor": zv, "latent_format_version_0": torch.tensor([])}, str(latent))
    out = tmp_path / "out.mkv"
    run = cli("decode", latent, "-m", "hunyuan1.5", "--vae", comfy_vae, "--lossless", "-o", out)
    assert run.exit_code == 0, run.output
    assert "ComfyUI .latent file" in run.output  # the latent space chosen, and why
    vae.disable_tiling()
    got, _ = read_video(out)
    assert_within_one_lsb(got, pipeline_frames(vae, zv), "ComfyUI .latent")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(tiny, dtype: torch.dtype) -> None:
    _, decoder, _ = tiny
    z = torch.randn(1, 32, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    expected = ours(decoder, z, None)
    low = Hunyuan15Decoder(decoder.cfg).eval()
    low.load_state_dict(decoder.state_dict())
    got = torch.cat(list(decode_stream(low.to(dtype), z, dtype=dtype)), dim=2)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < 0.1


def test_preview_decoder_frames_and_size(tmp_path, cli) -> None:
    z = torch.randn(1, 32, 3, 2, 3, generator=torch.Generator().manual_seed(4))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    out = tmp_path / "p.mkv"
    args = ["decode", tmp_path / "z.safetensors", "-m", "hunyuan1.5", "--decoder", "preview"]
    run = cli(*args, "--lossless", "-o", out)
    assert run.exit_code == 0, run.output
    frames, _ = read_video(out)
    assert frames.shape == (9, 32, 48, 3) and frames.std() > 0
