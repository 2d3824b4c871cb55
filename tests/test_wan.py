"""Wan 2.1 / 2.2 decoder: parity with diffusers' `AutoencoderKLWan.decode`, key naming, config.

Run with `-s` to see the max abs difference of every parity case.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.models.wan.decoder import FAMILY, WanConfig, WanDecoder, detect, rename_keys

from tiny_wan import make_tiny_wan

PARITY = 1e-4
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
VARIANTS = ["2.1", "2.2"]


class Tiny:
    def __init__(self, path: Path, variant: str) -> None:
        self.variant = variant
        self.vae = make_tiny_wan(path, variant, seed=1)
        self.config: dict[str, Any] = json.loads((path / "config.json").read_text())
        self.state = load_file(path / "diffusion_pytorch_model.safetensors")
        self.cfg = WanConfig.from_diffusers(self.config)
        self.decoder = build(self.cfg, self.state)


def build(cfg: WanConfig, state: dict[str, torch.Tensor]) -> WanDecoder:
    decoder = WanDecoder(cfg).eval()
    decoder.load_state_dict(
        {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}, strict=True
    )
    return decoder


@pytest.fixture(scope="module", params=VARIANTS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp(f"wan{request.param}"), request.param)


def latent(b: int, c: int, t: int, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, t, h, w, generator=torch.Generator().manual_seed(seed))


def ours(decoder: WanDecoder, z: torch.Tensor, grid: TileGrid | None = None, **kw: Any):
    return torch.cat(list(decode_stream(decoder, z, grid, **kw)), dim=2)


@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
@pytest.mark.parametrize("b,t", [(1, 1), (2, 2), (1, 5)])
def test_parity_with_diffusers(tiny: Tiny, b: int, t: int, tiled: bool) -> None:
    z = latent(b, tiny.cfg.z_dim, t)
    r = tiny.cfg.scale_factor_spatial
    grid = None
    if tiled:
        # 6x5 latents in 4x3 tiles every 3x2: 2 rows x 3 columns, blends in both directions.
        size, stride = (4 * r, 3 * r), (3 * r, 2 * r)
        grid = TileGrid.from_pixels(size, stride, ratio=r)
        tiny.vae.enable_tiling(size[0], size[1], stride[0], stride[1])
    try:
        with torch.no_grad():
            ref = tiny.vae.decode(z).sample
    finally:
        tiny.vae.use_tiling = False
    out = ours(tiny.decoder, z, grid)
    assert out.shape == ref.shape == (b, 3, 4 * t - 3, 6 * r, 5 * r)
    assert (ref.abs() < 1).float().mean() > 0.9  # the clamp hides little
    diff = (out - ref).abs().max().item()
    print(f"\nwan {tiny.variant} B={b} T={t} {'tiled' if tiled else 'whole'}: max abs {diff:.2e}")
    assert diff <= PARITY


def test_streamed_equals_whole_clip(tiny: Tiny) -> None:
    z = latent(1, tiny.cfg.z_dim, 4, seed=2)
    state = tiny.decoder.new_state()
    with torch.inference_mode():
        whole = tiny.decoder.finalize(tiny.decoder.decode_chunk(z, state))
    streamed = list(decode_stream(tiny.decoder, z))
    assert [c.shape[2] for c in streamed] == [1, 4, 4, 4]
    assert (torch.cat(streamed, dim=2) - whole).abs().max().item() <= 1e-5


def test_wrong_latent_channels_are_named(tiny: Tiny) -> None:
    with pytest.raises(ValueError, match=rf"expected \(B, {tiny.cfg.z_dim}, t, h, w\)"):
        tiny.decoder.decode_chunk(torch.zeros(1, 4, 1, 2, 2), tiny.decoder.new_state())


@pytest.mark.parametrize(
    "dtype,bound", [(torch.bfloat16, 0.2), (torch.float16, 0.05)], ids=["bf16", "fp16"]
)
def test_half_precision_is_close_to_fp32(tiny: Tiny, dtype: torch.dtype, bound: float) -> None:
    z = latent(1, tiny.cfg.z_dim, 3, seed=3)
    ref = ours(tiny.decoder, z)
    out = ours(build(tiny.cfg, tiny.state).to(dtype), z, dtype=dtype)
    assert out.dtype == dtype
    with torch.no_grad():  # diffusers' own error in this dtype, for scale
        theirs = tiny.vae.to(dtype).decode(z.to(dtype)).sample.float()
        tiny.vae.float()
    diff = (out.float() - ref).abs()
    print(
        f"\nwan {tiny.variant} {dtype} vs fp32: max abs {diff.max():.2e}, mean {diff.mean():.2e}"
        f" (diffusers: max abs {(theirs - ref).abs().max():.2e})"
    )
    assert diff.max() < bound and diff.mean() < bound / 10


# Test-side inverse of rename_keys: diffusers -> original Wan naming
# (Wan2.1_VAE.pth / Wan2.2_VAE.pth, ComfyUI wan_2.1_vae / wan2.2_vae).
RESNET_INNER = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
FIXED = [
    (r"^post_quant_conv\.", "conv2."),
    (r"^quant_conv\.", "conv1."),
    (r"^decoder\.conv_in\.", "decoder.conv1."),
    (r"^decoder\.norm_out\.", "decoder.head.0."),
    (r"^decoder\.conv_out\.", "decoder.head.2."),
    (r"^decoder\.mid_block\.resnets\.0\.", "decoder.middle.0."),
    (r"^decoder\.mid_block\.attentions\.0\.", "decoder.middle.1."),
    (r"^decoder\.mid_block\.resnets\.1\.", "decoder.middle.2."),
]


def to_original(key: str, variant: str, num_res_blocks: int) -> str:
    n = num_res_blocks + 1  # res blocks per stage; the upsampler follows them
    key = re.sub(
        r"(resnets\.\d+\.)(norm1|conv1|norm2|conv2|conv_shortcut)\.",
        lambda m: f"{m[1]}{RESNET_INNER[m[2]]}.",
        key,
    )
    if variant == "2.1":  # one flat Sequential over all stages
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.upsamples.{int(m[1]) * (n + 1) + int(m[2])}.",
            key,
        )
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.upsamples.{int(m[1]) * (n + 1) + n}.",
            key,
        )
    else:  # nested per stage
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.", r"decoder.upsamples.\1.upsamples.", key
        )
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsampler\.", rf"decoder.upsamples.\1.upsamples.{n}.", key
        )
    for pattern, repl in FIXED:
        key = re.sub(pattern, repl, key)
    return key


def test_original_naming_round_trip(tiny: Tiny) -> None:
    n_res = tiny.config["num_res_blocks"]
    original = {to_original(k, tiny.variant, n_res): v for k, v in tiny.state.items()}
    assert len(original) == len(tiny.state)
    assert detect(original.keys())
    mapping = rename_keys(original.keys())
    expected = {
        to_original(k, tiny.variant, n_res): k for k in tiny.state if k.startswith(DECODER_PREFIXES)
    }
    assert mapping == expected
    renamed = {new: original[old] for old, new in mapping.items()}
    shapes = {k: tuple(v.shape) for k, v in renamed.items()}
    assert WanConfig.from_shapes(shapes) == tiny.cfg
    z = latent(1, tiny.cfg.z_dim, 2, seed=4)
    assert torch.equal(ours(build(tiny.cfg, renamed), z), ours(tiny.decoder, z))


def test_original_key_spot_checks() -> None:
    keys = [
        "conv1.weight",
        "conv2.weight",
        "encoder.conv1.weight",
        "decoder.middle.0.residual.0.gamma",
        "decoder.upsamples.3.time_conv.weight",  # Wan 2.1, num_res_blocks 2
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.11.resample.1.weight",
        "decoder.upsamples.14.residual.6.bias",
    ]
    up = "decoder.up_blocks"
    assert rename_keys(keys) == {
        "conv2.weight": "post_quant_conv.weight",
        "decoder.middle.0.residual.0.gamma": "decoder.mid_block.resnets.0.norm1.gamma",
        "decoder.upsamples.3.time_conv.weight": f"{up}.0.upsamplers.0.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight": f"{up}.1.resnets.0.conv_shortcut.weight",
        "decoder.upsamples.11.resample.1.weight": f"{up}.2.upsamplers.0.resample.1.weight",
        "decoder.upsamples.14.residual.6.bias": f"{up}.3.resnets.2.conv2.bias",
    }
    nested = [
        "decoder.middle.0.residual.0.gamma",
        "decoder.upsamples.1.upsamples.3.resample.1.bias",
    ]
    assert rename_keys(nested)[nested[1]] == "decoder.up_blocks.1.upsampler.resample.1.bias"


def test_diffusers_naming_is_identity_on_the_decoder_side(tiny: Tiny) -> None:
    mapping = rename_keys(tiny.state.keys())
    assert mapping == {k: k for k in tiny.state if k.startswith(DECODER_PREFIXES)}
    assert set(mapping) == set(tiny.decoder.state_dict())
    assert detect(tiny.state.keys())
    shapes = {k: tuple(tiny.state[k].shape) for k in mapping}
    assert WanConfig.from_shapes(shapes) == tiny.cfg


OTHER_FAMILIES = {
    "hunyuan": [
        "decoder.conv_in.conv.weight",
        "decoder.mid_block.resnets.0.norm1.weight",
        "decoder.mid_block.attentions.0.to_q.weight",
        "post_quant_conv.weight",
    ],
    "cogvideox": [
        "decoder.conv_in.conv.weight",
        "decoder.mid_block.resnets.0.norm1.norm_layer.weight",
        "decoder.up_blocks.0.resnets.0.norm1.conv_y.conv.weight",
    ],
    "wan_encoder_only": ["encoder.conv1.weight", "encoder.middle.0.residual.0.gamma"],
}


@pytest.mark.parametrize("family", sorted(OTHER_FAMILIES))
def test_detect_rejects_other_key_sets(family: str) -> None:
    assert not detect(OTHER_FAMILIES[family])


def test_config_from_diffusers_defaults_and_errors() -> None:
    # Keys of the first Wan 2.1 hub upload (diffusers 0.33): everything else defaults.
    old = {"attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0}
    old |= {"num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16}
    assert WanConfig.from_diffusers(old) == WanConfig()
    assert WanConfig().scale_factor_spatial == 8
    with pytest.raises(KeyError, match="z_dim"):
        WanConfig.from_diffusers({"base_dim": 96})
    with pytest.raises(ValueError, match="scale_factor_spatial"):
        WanConfig.from_diffusers(old | {"scale_factor_spatial": 16})
    with pytest.raises(ValueError, match="patch_size"):
        WanConfig.from_diffusers(old | {"out_channels": 12})


def test_real_decoder_shapes_match_diffusers() -> None:
    """Parameter names and shapes of the real 2.1 / 2.2 decoders, built on the meta device."""
    from diffusers import AutoencoderKLWan

    real = {
        "2.1": {"base_dim": 96, "z_dim": 16},
        "2.2": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True}
        | {"in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16},
    }
    for config in real.values():
        with torch.device("meta"):
            ref = AutoencoderKLWan(**config).state_dict()
            mine = WanDecoder(WanConfig.from_diffusers(config)).state_dict()
        expected = {k: v.shape for k, v in ref.items() if k.startswith(DECODER_PREFIXES)}
        assert {k: v.shape for k, v in mine.items()} == expected


def test_family_record() -> None:
    assert FAMILY.name == "wan" and FAMILY.diffusers_class == "AutoencoderKLWan"
    assert FAMILY.build is WanDecoder and FAMILY.detect is detect


@pytest.mark.parametrize("variant", ["2.1", "2.2"])
def test_multi_frame_chunks_equal_one_frame_chunks(tmp_path, variant):
    # What a GPU run uses (memory.chunk_frames): several latent frames per call, same output.
    from latent2mp4.engine import decode_stream
    from latent2mp4.presets import load_preset
    from latent2mp4.weights import load_vae, resolve_vae

    from tiny_wan import make_tiny_wan

    make_tiny_wan(tmp_path / "vae", variant)
    preset = load_preset("wan" if variant == "2.1" else "wan2.2")
    vae = load_vae(resolve_vae(str(tmp_path / "vae"), preset), preset, "cpu", torch.float32)
    z = torch.randn(1, preset.latent_channels, 7, 4, 5, generator=torch.Generator().manual_seed(2))
    one = torch.cat(list(decode_stream(vae.decoder, z)), dim=2)
    assert [c.stop - c.start for c in vae.decoder.time_chunks(7, 3)] == [1, 3, 3]
    three = torch.cat(list(decode_stream(vae.decoder, z, max_chunk_frames=3)), dim=2)
    assert one.shape == three.shape and (one - three).abs().max() < 1e-5
