"""CogVideoX decoder: parity with diffusers 0.42.1 `AutoencoderKLCogVideoX.decode`; weights."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latent2mp4.engine import Chunk, TileGrid, decode_stream
from latent2mp4.models.cogvideox import (
    FAMILY,
    CogVideoXConfig,
    CogVideoXDecoder,
    detect,
    rename_keys,
)

from tiny_cogvideox import make_tiny_cogvideox

TOL = 1e-4


def load_ours(path: Path) -> CogVideoXDecoder:
    """Our decoder from a saved diffusers folder, loaded strictly."""
    cfg = CogVideoXConfig.from_diffusers(json.loads((path / "config.json").read_text()))
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    dec = CogVideoXDecoder(cfg)
    dec.load_state_dict({k: v for k, v in state.items() if k.startswith("decoder.")}, strict=True)
    return dec.eval()


def decode(dec: CogVideoXDecoder, z: torch.Tensor, grid: TileGrid | None = None) -> torch.Tensor:
    return torch.cat(list(decode_stream(dec, z, grid)), dim=2)


def reference(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cogvideox")
    vae = make_tiny_cogvideox(path)
    return vae, load_ours(path)


def test_time_chunks_follow_diffusers_frame_batches():
    dec = CogVideoXDecoder(CogVideoXConfig(block_out_channels=(8, 8), norm_num_groups=4))
    assert dec.time_chunks(1) == [Chunk(0, 1)]
    assert dec.time_chunks(2) == [Chunk(0, 2)]
    assert dec.time_chunks(3) == [Chunk(0, 3)]
    assert dec.time_chunks(4) == [Chunk(0, 2), Chunk(2, 4)]
    assert dec.time_chunks(7) == [Chunk(0, 3), Chunk(3, 5), Chunk(5, 7)]
    with pytest.raises(ValueError):
        dec.time_chunks(0)


@pytest.mark.parametrize("frames,batch", [(1, 2), (2, 1), (3, 2), (4, 1), (5, 1)])
def test_matches_diffusers_untiled(tiny, frames, batch):
    vae, ours = tiny
    vae.disable_tiling()
    torch.manual_seed(frames)
    z = torch.randn(batch, 4, frames, 5, 7)
    out = decode(ours, z)
    # odd T -> 4T - 3 frames, even T -> 4T (a 2-frame chunk decodes to 8 frames)
    assert out.shape == (batch, 3, 4 * frames - 3 * (frames % 2), 40, 56)
    diff = (out - reference(vae, z)).abs().max().item()
    print(f"\ncogvideox B={batch} T={frames} whole: max abs {diff:.2e}")
    assert diff <= TOL


# diffusers' CogVideoX tiler has no final crop: it keeps `tile_sample - blend` pixels per tile,
# with latent stride int(tile_latent * (1 - factor)) and blend int(tile_sample * factor). That is
# right only when the kept size equals stride * 8, as at its defaults (tile 240x360 px, factors
# 1/6 and 1/5: stride 25x36 latents, blend 40x72 px, keep 200x288 px). Scaled down here: tile
# 32x48 px = 4x6 latents, factors 1/4 and 1/3 -> stride 3x4 latents, blend 8x16 px, keep 24x32 px
# = stride * 8, which is what the engine's TileGrid(size=(4, 6), stride=(3, 4)) does. An 8x10
# latent gives 3x3 tiles (the last row and column partial), so vertical and horizontal blends
# and their in-place chaining all occur.
TILE = TileGrid(size=(4, 6), stride=(3, 4))


def _diffusers_tiling(vae) -> None:
    vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=48,
        tile_overlap_factor_height=1 / 4,
        tile_overlap_factor_width=1 / 3,
    )
    assert (vae.tile_latent_min_height, vae.tile_latent_min_width) == TILE.size


@pytest.mark.parametrize("frames,batch", [(1, 1), (2, 2), (5, 1)])
def test_matches_diffusers_tiled(tiny, frames, batch):
    vae, ours = tiny
    _diffusers_tiling(vae)
    torch.manual_seed(10 + frames)
    z = torch.randn(batch, 4, frames, 8, 10)
    out = decode(ours, z, TILE)
    assert out.shape == (batch, 3, 4 * frames - 3 * (frames % 2), 64, 80)
    diff = (out - reference(vae, z)).abs().max().item()
    print(f"\ncogvideox B={batch} T={frames} tiled 3x3: max abs {diff:.2e}")
    assert diff <= TOL


def test_nondefault_tile_size_keeps_the_output_size(tiny):
    vae, ours = tiny
    # A 5x6-latent (40x48 px) tile with factors 1/4 and 1/3: diffusers strides 3 latents down but
    # keeps 40 - 10 = 30 px per tile row, so 8x10 latents decode to 76x80 px instead of 64x80
    # (diffusers 0.42.1). The engine keeps stride * 8 px and crops, so the size stays 8h x 8w.
    z = torch.randn(1, 4, 1, 8, 10)
    out = decode(ours, z, TileGrid(size=(5, 6), stride=(3, 4)))
    assert out.shape == (1, 3, 1, 64, 80)


def _to_sat(key: str) -> str:
    """diffusers -> original SAT naming (inverse of scripts/convert_cogvideox_to_diffusers.py)."""
    key = re.sub(
        r"^(\w+)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", key
    )
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{3 - int(m[1])}.", key)
    key = re.sub(r"^encoder\.down_blocks\.", "encoder.down.", key)
    key = key.replace(".resnets.", ".block.").replace(".conv_shortcut.", ".nin_shortcut.")
    return key.replace(".upsamplers.0.", ".upsample.").replace(".downsamplers.0.", ".downsample.")


def test_sat_naming_round_trip(tmp_path):
    vae = make_tiny_cogvideox(tmp_path, variant="groups32")
    diffusers_state = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    sat_state = {_to_sat(k): v for k, v in diffusers_state.items()}
    sat_state["loss.discriminator.conv.weight"] = torch.zeros(1)
    assert "decoder.up.3.block.0.norm1.conv_y.conv.weight" in sat_state
    assert "decoder.up.1.upsample.conv.weight" in sat_state
    assert "decoder.mid.block_2.conv2.conv.bias" in sat_state
    assert detect(sat_state) and detect(diffusers_state)

    mapping = rename_keys(sat_state)
    renamed = {mapping[k]: v for k, v in sat_state.items() if k in mapping}
    decoder_keys = {k for k in diffusers_state if k.startswith("decoder.")}
    assert set(renamed) == decoder_keys
    assert rename_keys(diffusers_state) == {k: k for k in decoder_keys}

    cfg = CogVideoXConfig.from_diffusers(json.loads((tmp_path / "config.json").read_text()))
    assert CogVideoXConfig.from_shapes({k: tuple(v.shape) for k, v in renamed.items()}) == cfg
    sat = CogVideoXDecoder(cfg)
    sat.load_state_dict(renamed, strict=True)
    torch.manual_seed(0)
    z = torch.randn(1, 16, 3, 3, 4)
    out = decode(sat.eval(), z)
    assert torch.equal(out, decode(load_ours(tmp_path), z))
    assert (out - reference(vae, z)).abs().max() <= TOL


def test_real_size_keys_and_shapes_equal_diffusers():
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX()
        ours = CogVideoXDecoder(CogVideoXConfig.from_diffusers(dict(vae.config)))
    theirs = {k: v.shape for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs
    assert len(theirs) == 308
    assert (
        CogVideoXConfig.from_shapes({k: tuple(v) for k, v in theirs.items()}) == CogVideoXConfig()
    )


def test_detect_rejects_other_families():
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    with torch.device("meta"):
        hunyuan = set(AutoencoderKLHunyuanVideo().state_dict())
        wan = set(AutoencoderKLWan().state_dict())
    assert "decoder.conv_in.conv.weight" in hunyuan
    assert not detect(hunyuan)
    assert not detect(wan)
    # ComfyUI's LDM-style names for HunyuanVideo look like SAT names (peers.md 2.4).
    comfy_hunyuan = {
        "decoder.conv_in.conv.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.mid.block_1.norm1.weight",
        "decoder.up.3.block.0.conv1.conv.weight",
        "decoder.up.3.upsample.conv.conv.weight",
    }
    assert not detect(comfy_hunyuan)
    assert not detect({"decoder.middle.0.residual.0.gamma", "decoder.conv1.weight", "conv2.weight"})


def test_config_from_diffusers_defaults_and_errors():
    assert CogVideoXConfig.from_diffusers({}) == CogVideoXConfig()
    with pytest.raises(ValueError, match="use_post_quant_conv"):
        CogVideoXConfig.from_diffusers({"use_post_quant_conv": True})
    with pytest.raises(KeyError, match="conv_in"):
        CogVideoXConfig.from_shapes({"decoder.up_blocks.0.resnets.0.conv1.conv.weight": (8, 8)})
    assert FAMILY.name == "cogvideox" and FAMILY.build is CogVideoXDecoder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_as_close_to_fp32_as_diffusers_in_the_same_dtype(tiny, dtype):
    # Our spatial norm rounds once (addcmul) where diffusers rounds twice, so half-precision
    # results are not bit-identical to diffusers'; they must be at least as close to fp32.
    vae, ours = tiny
    vae.disable_tiling()
    torch.manual_seed(3)
    z = torch.randn(1, 4, 3, 3, 4)
    out = torch.cat(list(decode_stream(copy.deepcopy(ours).to(dtype), z, dtype=dtype)), dim=2)
    theirs = reference(copy.deepcopy(vae).to(dtype), z.to(dtype)).float()
    exact = reference(vae, z)
    assert out.dtype == dtype
    ours_err, theirs_err = (out.float() - exact).abs().mean(), (theirs - exact).abs().mean()
    assert ours_err <= 1.1 * theirs_err and (out.float() - exact).abs().max() <= 0.1
