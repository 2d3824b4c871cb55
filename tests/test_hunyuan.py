"""HunyuanVideo decoder: parity with diffusers' `AutoencoderKLHunyuanVideo.decode`, key naming."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.models.hunyuan import (
    FAMILY,
    HunyuanConfig,
    HunyuanDecoder,
    detect,
    rename_keys,
)

from tiny_hunyuan import make_tiny_hunyuan

PARITY = 1e-4
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def load_saved(path: Path) -> tuple[HunyuanDecoder, dict[str, torch.Tensor], dict[str, Any]]:
    config = json.loads((path / "config.json").read_text())
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    decoder = HunyuanDecoder(HunyuanConfig.from_diffusers(config)).eval()
    decoder.load_state_dict(
        {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}, strict=True
    )
    return decoder, state, config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, HunyuanDecoder]:
    path = tmp_path_factory.mktemp("hunyuan_tiny")
    vae = make_tiny_hunyuan(path, "tiny", seed=0)
    return vae, load_saved(path)[0]


def reference(vae: Any, z: torch.Tensor, tile_px: tuple[int, int] | None) -> torch.Tensor:
    """diffusers' decode with default settings (framewise decoding on), optionally tiled."""
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


def ours(decoder: HunyuanDecoder, z: torch.Tensor, tile_px: tuple[int, int] | None) -> torch.Tensor:
    grid = (
        None if tile_px is None else TileGrid.from_pixels((tile_px[0],) * 2, (tile_px[1],) * 2, 8)
    )
    return torch.cat(list(decode_stream(decoder, z, grid)), dim=2)


def check_parity(vae: Any, decoder: HunyuanDecoder, z: torch.Tensor, tile_px=None) -> float:
    expected = reference(vae, z, tile_px)
    got = ours(decoder, z, tile_px)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    print(f"max abs diff {diff:.2e} for z {tuple(z.shape)} tiles {tile_px}")
    assert diff <= PARITY
    return diff


@pytest.mark.parametrize(
    "batch, frames, h, w, tile_px",
    [
        (1, 1, 8, 6, None),  # one image frame
        (2, 3, 8, 6, None),  # whole pass, batch 2
        (1, 4, 9, 7, None),  # longest whole pass
        (1, 6, 6, 8, None),  # temporal tiles [0,5) [3,6)
        (2, 7, 6, 5, None),
        (1, 9, 6, 6, None),
        (1, 3, 6, 7, (32, 24)),  # spatial tiles only: 2 x 3 tiles of 4 latents, stride 3
        (2, 4, 7, 6, (32, 24)),
        (1, 7, 6, 7, (32, 24)),  # spatial tiles inside temporal tiles
    ],
)
def test_parity_with_diffusers(tiny, batch, frames, h, w, tile_px) -> None:
    torch.manual_seed(frames * 100 + h)
    check_parity(*tiny, torch.randn(batch, 16, frames, h, w), tile_px)


@pytest.mark.parametrize("frames", range(1, 13))
def test_frame_plan_matches_diffusers(tiny, frames: int) -> None:
    torch.manual_seed(frames)
    check_parity(*tiny, torch.randn(1, 16, frames, 2, 3))


def test_time_chunks_cover_every_frame_once(tiny) -> None:
    for frames in range(1, 130):
        chunks = tiny[1].time_chunks(frames)
        emitted = 0
        for c in chunks:
            decoded = 4 * (c.stop - c.start - 1) + 1 - c.drop
            emitted += decoded if c.emit is None else min(c.emit, decoded)
        assert emitted == 4 * (frames - 1) + 1, frames
        if frames > 4:  # diffusers' temporal tiles: starts 0, 3, 6, ... covering 5 latents
            starts = [s for s in range(0, frames, 3) if s == 0 or frames - s > 1]
            assert [c.start for c in chunks] == starts
            assert all(c.stop == min(c.start + 5, frames) for c in chunks)


def test_released_architecture_keys_and_shapes() -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        theirs = AutoencoderKLHunyuanVideo().state_dict()
        mine = HunyuanDecoder(HunyuanConfig()).state_dict()
    expected = {k: v.shape for k, v in theirs.items() if k.startswith(DECODER_PREFIXES)}
    assert {k: v.shape for k, v in mine.items()} == expected
    assert sum(v.numel() for v in mine.values()) == pytest.approx(146.1e6, rel=1e-3)


def test_no_attention_variant(tmp_path: Path) -> None:
    vae = make_tiny_hunyuan(tmp_path, "noattn", seed=1)
    decoder = load_saved(tmp_path)[0]
    assert not any("attentions" in k for k in decoder.state_dict())
    torch.manual_seed(1)
    check_parity(vae, decoder, torch.randn(1, 16, 5, 4, 4))


# ComfyUI's internal (LDM-style) names, written here in the forward direction of
# comfy/diffusers_convert.py::convert_vae_state_dict (up blocks counted 3 - i).
def to_comfy(key: str) -> str:
    rules = [
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{3 - int(m[1])}.block."),
        (
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{3 - int(m[1])}.upsample.",
        ),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_([qkv])\.", r"mid.attn_1.\1."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"conv_shortcut", "nin_shortcut"),
        (r"conv_norm_out", "norm_out"),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


@pytest.fixture(scope="module")
def groups32(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("hunyuan_groups32")
    vae = make_tiny_hunyuan(path, "groups32", seed=2)
    return (vae, *load_saved(path))


def test_groups32_parity(groups32) -> None:
    vae, decoder, _, _ = groups32
    torch.manual_seed(2)
    check_parity(vae, decoder, torch.randn(1, 16, 5, 3, 3))


def test_comfy_single_file_round_trip(groups32) -> None:
    _, decoder, state, config = groups32
    comfy = {to_comfy(k): v for k, v in state.items()}
    for k, v in comfy.items():  # ComfyUI stores the attention projections as 1x1x1 convs
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", k):
            comfy[k] = v.reshape(*v.shape, 1, 1, 1)
    assert detect(comfy.keys())

    renamed = rename_keys(comfy.keys())
    assert renamed == {to_comfy(k): k for k in state if k.startswith(DECODER_PREFIXES)}
    ours_state = {renamed[k]: v for k, v in comfy.items() if k in renamed}
    cfg = HunyuanConfig.from_shapes({k: tuple(v.shape) for k, v in ours_state.items()})
    assert cfg == HunyuanConfig.from_diffusers(config)

    single = HunyuanDecoder(cfg).eval()
    single.load_state_dict(ours_state, strict=True)
    z = torch.randn(1, 16, 2, 2, 2)
    with torch.inference_mode():
        assert torch.equal(single.decode_chunk(z, None), decoder.decode_chunk(z, None))


def test_diffusers_naming_is_identity(groups32) -> None:
    _, _, state, config = groups32
    renamed = rename_keys(state.keys())
    assert renamed == {k: k for k in state if k.startswith(DECODER_PREFIXES)}
    assert HunyuanConfig.from_shapes({k: tuple(state[k].shape) for k in renamed}) == (
        HunyuanConfig.from_diffusers(config)
    )
    assert detect(state.keys())


def test_detect_rejects_other_families() -> None:
    import diffusers

    for name in (
        "AutoencoderKLCogVideoX",  # shares decoder.conv_in.conv.weight, no attention
        "AutoencoderKLWan",
        "AutoencoderKLHunyuanVideo15",  # same attention key names, RMS norms
        "AutoencoderKLLTXVideo",
    ):
        with torch.device("meta"):
            keys = getattr(diffusers, name)().state_dict().keys()
        assert not detect(keys), name
    wan_original = {"decoder.conv1.weight", "decoder.middle.0.residual.0.gamma"}
    assert not detect(wan_original)


def test_config_from_diffusers() -> None:
    minimal = {"latent_channels": 16, "block_out_channels": [128, 256, 512, 512]}
    assert HunyuanConfig.from_diffusers(minimal) == HunyuanConfig()
    with pytest.raises(KeyError, match="block_out_channels"):
        HunyuanConfig.from_diffusers({"latent_channels": 16})
    with pytest.raises(ValueError, match="temporal_compression_ratio"):
        HunyuanConfig.from_diffusers({**minimal, "temporal_compression_ratio": 8})
    with pytest.raises(ValueError, match="up_block_types"):
        HunyuanConfig.from_diffusers({**minimal, "up_block_types": ["UpDecoderBlock2D"] * 4})
    assert FAMILY.name == "hunyuan" and FAMILY.diffusers_class == "AutoencoderKLHunyuanVideo"
    assert HunyuanDecoder(HunyuanConfig(block_out_channels=(32, 32, 32, 32))).upscale == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(tiny, dtype: torch.dtype) -> None:
    _, decoder = tiny
    torch.manual_seed(3)
    z = torch.randn(1, 16, 5, 4, 4)
    expected = ours(decoder, z, None)
    low = HunyuanDecoder(decoder.cfg).eval()
    low.load_state_dict(decoder.state_dict())
    got = torch.cat(list(decode_stream(low.to(dtype), z, dtype=dtype)), dim=2)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < 0.1
