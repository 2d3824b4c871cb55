"""LTX-Video 0.9.x and LTX-2 decoders: parity with diffusers' `decode`, packed input, timestep
conditioning, original checkpoint naming, and the CLI end to end (lossless, within 1 LSB)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.latents import save_latents
from latent2mp4.models.ltx.decoder import LtxConfig, detect
from latent2mp4.models.ltx.stack import Conditioned, LtxDecoder
from latent2mp4.models.registry import get_family
from latent2mp4.video import read_video

from tiny_ltx import make_tiny_ltx

PARITY = 1e-4
FAMILY_OF = {"v090": "ltx", "v095": "ltx", "ltx2": "ltx2"}
TIMESTEP = 0.05


def load_ours(path: Path, variant: str) -> LtxDecoder:
    fam = get_family(FAMILY_OF[variant])
    cfg = fam.config_from_diffusers(json.loads((path / "config.json").read_text()))
    state = load_file(path / "diffusion_pytorch_model.safetensors")
    decoder = fam.build(cfg).eval()
    decoder.load_state_dict({v: state[k] for k, v in fam.rename_keys(state).items()}, strict=True)
    assert isinstance(decoder, LtxDecoder)
    return decoder


@pytest.fixture(scope="module", params=list(FAMILY_OF))
def tiny(request, tmp_path_factory) -> tuple[str, Any, LtxDecoder, Path]:
    path = tmp_path_factory.mktemp(f"ltx_{request.param}") / "vae"
    vae = make_tiny_ltx(path, request.param)
    return request.param, vae, load_ours(path, request.param), path


def reference(vae: Any, z: torch.Tensor, tile_px: int | None, framewise: bool) -> torch.Tensor:
    vae.use_framewise_decoding = framewise
    if tile_px is None:
        vae.disable_tiling()
    else:
        stride = tile_px - 32 * (tile_px // 64)
        vae.enable_tiling(tile_px, tile_px, None, stride, stride)
    temb = torch.full((z.shape[0],), TIMESTEP) if vae.config.timestep_conditioning else None
    with torch.no_grad():
        return vae.decode(z, temb).sample


def ours(
    decoder: LtxDecoder, z: torch.Tensor, tile_px: int | None, framewise: bool
) -> torch.Tensor:
    grid = (
        None
        if tile_px is None
        else TileGrid.from_pixels((tile_px,) * 2, (tile_px - 32 * (tile_px // 64),) * 2, 32)
    )
    d = Conditioned(decoder, TIMESTEP, 0) if decoder.layout.conditioned else decoder
    max_frames = 1 if framewise else 1000
    return torch.cat(list(decode_stream(d, z, grid, max_chunk_frames=max_frames)), dim=2)


@pytest.mark.parametrize(
    "batch, frames, h, w, tile_px, framewise",
    [
        (2, 2, 2, 3, None, False),  # whole clip, batch 2
        (1, 4, 2, 2, None, True),  # framewise tiles: 3 latents every latent, 8 frames blended
        # spatial tiles of 3 latents every 2 (LTX-2's reflect padding needs tiles of 2 or more)
        (2, 2, 4, 4, 96, False),
    ],
)
def test_parity_with_diffusers(tiny, batch, frames, h, w, tile_px, framewise) -> None:
    variant, vae, decoder, _ = tiny
    torch.manual_seed(frames * 10 + h)
    z = torch.randn(batch, 128, frames, h, w)
    expected = reference(vae, z, tile_px, framewise)
    got = ours(decoder, z, tile_px, framewise)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    print(f"{variant} z {tuple(z.shape)} tiles {tile_px} framewise {framewise}: {diff:.2e}")
    assert diff <= PARITY


def test_spatial_tiles_inside_framewise_tiles(tiny) -> None:
    variant, vae, decoder, _ = tiny
    if variant != "v095":
        pytest.skip("one variant suffices: the engine path is the same")
    z = torch.randn(1, 128, 3, 4, 3, generator=torch.Generator().manual_seed(9))
    diff = (ours(decoder, z, 96, True) - reference(vae, z, 96, True)).abs().max().item()
    print(f"{variant} framewise + spatial tiles: {diff:.2e}")
    assert diff <= PARITY


def test_ltx2_one_latent_edge_tile_decodes(tiny) -> None:
    """diffusers cannot reflect-pad a 1-latent edge tile; ours replicates there instead."""
    variant, _, decoder, _ = tiny
    if variant != "ltx2":
        pytest.skip("reflect padding is LTX-2's")
    z = torch.randn(1, 128, 2, 3, 3)
    out = ours(decoder, z, 64, False)  # tiles of 2 latents every latent: the last is 1 wide
    assert out.shape == (1, 3, 9, 96, 96) and torch.isfinite(out).all()


def test_framewise_plan_covers_every_frame_once() -> None:
    with torch.device("meta"):
        decoder = LtxDecoder(LtxConfig().layout())
    for frames in range(1, 40):
        emitted = 0
        for c in decoder.time_chunks(frames, 1):
            decoded = 8 * (c.stop - c.start - 1) + 1 - c.drop - c.trim
            emitted += decoded if c.emit is None else min(c.emit, decoded)
        assert emitted == 8 * (frames - 1) + 1, frames
        assert len(decoder.time_chunks(frames, frames)) == 1  # the whole clip when it fits


# ---- original checkpoint naming ---------------------------------------------------------------


def to_original(state: dict[str, torch.Tensor], cfg: LtxConfig) -> dict[str, torch.Tensor]:
    """diffusers names → the original releases' flat `up_blocks.K` (single_file_utils.py)."""
    lay = cfg.layout()
    units = ["decoder.mid_block."]
    for i, spec in enumerate(lay.blocks):
        units += [f"decoder.up_blocks.{i}.conv_in."] if spec.conv_in is not None else []
        units += [f"decoder.up_blocks.{i}.upsamplers.0."] if spec.up else []
        units += [f"decoder.up_blocks.{i}."]
    out = {}
    for key, v in state.items():
        new = key
        for k, prefix in sorted(enumerate(units), key=lambda kv: -len(kv[1])):
            if new.startswith(prefix) and not re.match(r"\d", new[len(prefix) :]):
                if not (prefix.endswith(f"{prefix.split('.')[2]}.") and ".conv_in." in new):
                    new = f"decoder.up_blocks.{k}." + new[len(prefix) :]
                    break
        new = new.replace("resnets.", "res_blocks.").replace("norm3.", "norm3.norm.")
        new = new.replace("conv_shortcut.conv.", "conv_shortcut.")
        new = new.replace("decoder.time_embedder.", "decoder.last_time_embedder.")
        new = new.replace("decoder.scale_shift_table", "decoder.last_scale_shift_table")
        new = {"latents_mean": "per_channel_statistics.mean-of-means"}.get(new, new)
        new = {"latents_std": "per_channel_statistics.std-of-means"}.get(new, new)
        out["vae." + new] = v
    out["vae.per_channel_statistics.mean-of-stds"] = torch.ones(128)
    return out


@pytest.mark.parametrize("variant", ["v090", "v095"])
def test_original_single_file_round_trip(variant, tmp_path) -> None:
    vae = make_tiny_ltx(tmp_path / "vae", variant)
    state = {k: v for k, v in vae.state_dict().items() if not k.startswith("encoder.")}
    decoder = load_ours(tmp_path / "vae", variant)
    cfg = LtxConfig.from_diffusers(json.loads((tmp_path / "vae" / "config.json").read_text()))
    original = {k.removeprefix("vae."): v for k, v in to_original(state, cfg).items()}
    assert detect(original.keys())
    fam = get_family("ltx")
    renamed = fam.rename_keys(original)
    single_state = {renamed[k]: v for k, v in original.items() if k in renamed}
    assert set(single_state) == set(decoder.state_dict())
    shaped = LtxConfig.from_shapes({k: tuple(v.shape) for k, v in single_state.items()})
    assert shaped.layout() == cfg.layout()


def test_released_architectures_match_diffusers_keys() -> None:
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLLTXVideo

    v095 = dict(
        decoder_block_out_channels=(256, 512, 1024),
        decoder_layers_per_block=(5, 5, 5, 5),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
    )
    cases = [(AutoencoderKLLTXVideo, {}, "ltx"), (AutoencoderKLLTXVideo, v095, "ltx")]
    cases.append((AutoencoderKLLTX2Video, {}, "ltx2"))
    for cls, kwargs, name in cases:
        with torch.device("meta"):
            theirs = cls(**kwargs).state_dict()
            fam = get_family(name)
            mine = fam.build(fam.config_from_diffusers({**cls(**kwargs).config})).state_dict()
        expected = {k: v.shape for k, v in theirs.items() if not k.startswith("encoder.")}
        assert {k: v.shape for k, v in mine.items()} == expected


# ---- the CLI end to end -----------------------------------------------------------------------


def frames_of(video: torch.Tensor) -> np.ndarray:
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def denormalised(vae: Any, z: torch.Tensor) -> torch.Tensor:
    mean = vae.latents_mean.view(1, -1, 1, 1, 1)
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    return z * std / vae.config.scaling_factor + mean


def pack(z: torch.Tensor) -> torch.Tensor:
    b, c, f, h, w = z.shape
    return z.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c).contiguous()


def check_video(path: Path, expected: np.ndarray, label: str) -> None:
    got, _ = read_video(path)
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    print(f"\n{label}: max {diff} LSB, {(got == expected).mean():.4%} exact")
    assert diff <= 1


@pytest.fixture(scope="module")
def v090(tmp_path_factory) -> tuple[Any, Path]:
    path = tmp_path_factory.mktemp("ltx_cli") / "vae"
    return make_tiny_ltx(path, "v090", seed=3), path


def test_packed_without_size_is_one_line_error(v090, tmp_path, cli) -> None:
    z = torch.randn(1, 128, 3, 2, 3)
    save_file({"latents": pack(z)}, str(tmp_path / "p.safetensors"))
    run = cli(
        "decode",
        tmp_path / "p.safetensors",
        "-m",
        "ltx",
        "--vae",
        v090[1],
        "-o",
        tmp_path / "o.mp4",
    )
    assert run.exit_code != 0
    msg = run.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "needs --num-frames, --height and --width" in msg
    assert "--num-frames 17 --height 64 --width 96" in msg
    assert not (tmp_path / "o.mp4").exists()
    run = cli(
        "decode", tmp_path / "p.safetensors", "-m", "ltx", "--vae", v090[1],
        "--num-frames", "17", "--height", "64", "--width", "64", "-o", tmp_path / "o.mp4",
    )  # fmt: skip
    assert run.exit_code != 0 and "give 3x2x2 = 12 tokens, not 18" in run.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_packed_lossless_matches_pipeline(v090, tiled, tmp_path, cli) -> None:
    vae, folder = v090
    z = torch.randn(1, 128, 3, 3, 4, generator=torch.Generator().manual_seed(1))
    save_file({"latents": pack(z)}, str(tmp_path / "p.safetensors"))
    args = ["decode", tmp_path / "p.safetensors", "-m", "ltx", "--vae", folder, "--lossless"]
    tiling = ["--tile-size", "96", "--tile-stride", "64"] if tiled else ["--no-tile"]
    args += ["--num-frames", "17", "--height", "96", "--width", "128", *tiling]
    run = cli(*args, "-o", tmp_path / "o.mkv")
    assert run.exit_code == 0, run.output
    assert "unpacked tokens (1, 36, 128) to (1, 128, 3, 3, 4) (flags)" in run.output
    vae.use_framewise_decoding = False
    if tiled:
        vae.enable_tiling(96, 96, None, 64, 64)
    else:
        vae.disable_tiling()
    with torch.no_grad():
        expected = frames_of(vae.decode(denormalised(vae, z)).sample)
    check_video(tmp_path / "o.mkv", expected, f"ltx 0.9.0 packed {'tiled' if tiled else 'untiled'}")
    # The same tokens saved with their size need no flags.
    save_latents(
        tmp_path / "m.safetensors", pack(z), model="ltx", num_frames=17, height=96, width=128
    )
    run = cli(
        "decode", tmp_path / "m.safetensors", "--vae", folder, "--lossless", *tiling,
        "-o", tmp_path / "m.mkv",
    )  # fmt: skip
    assert run.exit_code == 0 and "(file metadata)" in run.output, run.output
    check_video(tmp_path / "m.mkv", expected, "same tokens, size from save_latents metadata")


def test_cli_ignores_timestep_for_unconditioned_vae(v090, tmp_path, cli) -> None:
    z = torch.randn(1, 128, 2, 2, 2)
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", v090[1],
        "--decode-timestep", "0.1", "-o", tmp_path / "o.mp4",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "no timestep conditioning" in run.output


@pytest.fixture(scope="module")
def v095(tmp_path_factory) -> tuple[Any, Path]:
    path = tmp_path_factory.mktemp("ltx_cli095") / "vae"
    return make_tiny_ltx(path, "v095", seed=4), path


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_timestep_conditioned_noise_zero(v095, tiled, tmp_path, cli) -> None:
    vae, folder = v095
    z = torch.randn(2, 128, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", folder, "--lossless"]
    args += ["--decode-timestep", "0.05", "--decode-noise-scale", "0", "-o", tmp_path / "o.mkv"]
    args += ["--tile-size", "96", "--tile-stride", "64"] if tiled else ["--no-tile"]
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert "decode timestep 0.05, noise scale 0, seed 0" in run.output
    vae.use_framewise_decoding = False
    if tiled:
        vae.enable_tiling(96, 96, None, 64, 64)
    else:
        vae.disable_tiling()
    with torch.no_grad():
        video = vae.decode(denormalised(vae, z), torch.tensor([0.05, 0.05])).sample
    for b in range(2):
        check_video(tmp_path / f"o-{b}.mkv", frames_of(video[b : b + 1]), f"ltx 0.9.5 b{b}")


def test_cli_decode_noise_is_seeded(v095, tmp_path, cli) -> None:
    z = torch.randn(1, 128, 2, 2, 2)
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    outs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.mkv"
        run = cli(
            "decode", tmp_path / "z.safetensors", "-m", "ltx", "--vae", v095[1], "--lossless",
            "--seed", seed, "-o", out,
        )  # fmt: skip
        assert run.exit_code == 0, run.output
        assert "noise scale 0.025, seed" in run.output  # the preset's 0.9.5+ defaults
        outs.append(read_video(out)[0])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_ltx2_vae_space_pipeline_latents(tiled, tmp_path, cli) -> None:
    vae = make_tiny_ltx(tmp_path / "vae", "ltx2", seed=5)
    zv = torch.randn(1, 128, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    save_file({"latents": zv}, str(tmp_path / "z.safetensors"))  # LTX2Pipeline output: VAE space
    args = ["decode", tmp_path / "z.safetensors", "-m", "ltx-2", "--vae", tmp_path / "vae"]
    args += ["--lossless", "-o", tmp_path / "o.mkv"]
    args += ["--tile-size", "96", "--tile-stride", "64"] if tiled else ["--no-tile"]
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert "latent space: vae (the ltx2 pipeline's output_type='latent' is de-normalised)" in (
        run.output
    )
    if tiled:
        vae.enable_tiling(96, 96, None, 64, 64)
    with torch.no_grad():
        expected = frames_of(vae.decode(zv).sample)
    check_video(tmp_path / "o.mkv", expected, f"ltx2 vae space {'tiled' if tiled else 'untiled'}")


@pytest.mark.parametrize("space", ["model", "vae"])
def test_comfyui_latent_files(v090, space, tmp_path, cli) -> None:
    """ComfyUI's LTX VAE un-normalises inside decode, so its .latent files are model space."""
    vae, folder = v090
    z = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    save_file(
        {"latent_tensor": z, "latent_format_version_0": torch.tensor([])},
        str(tmp_path / "c.latent"),
    )
    args = ["decode", tmp_path / "c.latent", "-m", "ltx", "--vae", folder, "--lossless"]
    args += ["-o", tmp_path / "o.mkv"] + (["--latent-space", "vae"] if space == "vae" else [])
    run = cli(*args)
    assert run.exit_code == 0, run.output
    if space == "model":
        assert "ComfyUI .latent file (ltx: ComfyUI's VAE un-normalises internally)" in run.output
    vae.disable_tiling()
    zv = denormalised(vae, z) if space == "model" else z
    with torch.no_grad():
        expected = frames_of(vae.decode(zv).sample)
    check_video(tmp_path / "o.mkv", expected, f"ComfyUI .latent {space} space")


def test_python_api_packed_and_conditioned(v095) -> None:
    from latent2mp4 import load_decoder

    vae, folder = v095
    z = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(6))
    dec = load_decoder("ltx", folder, device="cpu", dtype="fp32", decode_noise_scale=0.0)
    got = dec.decode(pack(z), num_frames=9, height=64, width=96)
    vae.disable_tiling()
    vae.use_framewise_decoding = False
    with torch.no_grad():
        expected = vae.decode(denormalised(vae, z), torch.tensor([0.05])).sample
    assert (got - expected).abs().max().item() <= PARITY


def test_python_api_takes_ltx2_pipeline_latents_as_vae_space(tmp_path) -> None:
    """The API's default latent space is the CLI's `auto`: LTX2Pipeline's de-normalised output
    must not be de-normalised a second time."""
    from latent2mp4 import load_decoder

    vae = make_tiny_ltx(tmp_path / "vae", "ltx2", seed=7)
    zv = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(8))
    dec = load_decoder("ltx2", tmp_path / "vae", device="cpu", dtype="fp32")
    with torch.no_grad():
        expected = vae.decode(zv).sample
    assert (dec.decode(zv) - expected).abs().max().item() <= PARITY
    assert next(iter(dec.frames(zv))).shape == (64, 64, 3)


def test_packed_sizes_checked_and_merged_with_metadata(tmp_path, cli) -> None:
    """Sizes must be positive; a flag overrides just its own field of the recorded size."""
    tokens = pack(torch.randn(1, 128, 2, 2, 3))
    path = tmp_path / "m.safetensors"
    save_latents(path, tokens, model="ltx", num_frames=9, height=96, width=64)  # 2x3x2: wrong
    base = ["decode", path, "--decoder", "preview", "-o", tmp_path / "o.mp4"]
    for flags, message in (
        (["--num-frames", "0"], "--num-frames must be a positive integer, not 0"),
        (["--height", "-64", "--width", "-96"], "--height must be a positive integer, not -64"),
    ):
        run = cli(*base, *flags)
        assert run.exit_code == 2 and message in run.stderr, run.output
        assert len(run.stderr.strip().splitlines()) == 1
    run = cli(*base, "--height", "64", "--width", "96")
    assert run.exit_code == 0, run.output
    assert "to (1, 128, 2, 2, 3) (flags over file metadata)" in run.output
    assert read_video(tmp_path / "o.mp4")[0].shape == (9, 64, 96, 3)
    info = cli("info", path)
    assert info.exit_code == 0 and "2×3×2 (from 12 packed tokens)" in info.stdout, info.output
    save_file({"latents": tokens}, str(tmp_path / "p.safetensors"))
    info = cli("info", tmp_path / "p.safetensors")
    assert "12 packed tokens" in info.stdout and "needs --num-frames" in info.stdout, info.output


def test_each_spatial_tile_draws_its_own_injected_noise() -> None:
    """One state per tile (the engine's order); the first keeps the seed of an untiled decode."""
    bound = Conditioned(None, 0.05, 3)  # type: ignore[arg-type]  # no decoder needed
    seeds = [bound.new_state().seed for _ in range(3)]
    assert seeds[0] == 3 and len(set(seeds)) == 3
    draws = [torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in seeds]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_weightless_decoders_say_vae_space_ltx2_latents_are_not_normalised(tmp_path, cli) -> None:
    z = torch.randn(1, 128, 2, 2, 2)
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))  # LTX2Pipeline output: VAE space
    base = ["decode", tmp_path / "z.safetensors", "-m", "ltx2", "--decoder", "preview"]
    run = cli(*base, "-o", tmp_path / "a.mp4")
    assert run.exit_code == 0 and "un-normalised" in run.stderr, run.output
    run = cli(*base, "--latent-space", "model", "-o", tmp_path / "b.mp4")
    assert run.exit_code == 0 and "un-normalised" not in run.stderr, run.output


def test_preview_reads_the_statistics_of_the_vae_it_is_given(tmp_path, cli) -> None:
    """LTX-2 pipeline latents (VAE space) with --vae: normalised with the VAE's own statistics,
    read alone (a file with the two statistics and no decoder serves), exactly as the same
    latents normalised by hand and given as model space."""
    vae = make_tiny_ltx(tmp_path / "vae", "ltx2", seed=12)
    zv = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(13))
    save_file({"latents": zv}, str(tmp_path / "z.safetensors"))
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    save_file({"latents": (zv - mean) / std}, str(tmp_path / "m.safetensors"))
    stats_only = tmp_path / "stats.safetensors"
    save_file(
        {
            "decoder.conv_in.conv.weight": torch.zeros(1),  # no decoder could be built from it
            "latents_mean": vae.latents_mean.detach().clone(),
            "latents_std": vae.latents_std.detach().clone(),
        },
        str(stats_only),
    )
    base = ["--decoder", "preview", "-m", "ltx2", "--lossless"]
    run = cli("decode", tmp_path / "m.safetensors", *base, "--latent-space", "model",
              "-o", tmp_path / "ref.mkv")  # fmt: skip
    assert run.exit_code == 0, run.output
    expected = read_video(tmp_path / "ref.mkv")[0]
    for name, vae_arg in (("folder", tmp_path / "vae"), ("stats", stats_only)):
        out = tmp_path / f"{name}.mkv"
        run = cli("decode", tmp_path / "z.safetensors", *base, "--vae", vae_arg, "-o", out)
        assert run.exit_code == 0, run.output
        assert "un-normalised" not in run.output and "normalised with the statistics" in run.output
        got = read_video(out)[0]
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        print(f"\npreview, VAE-space LTX-2 latents, statistics from {name}: max {diff} LSB")
        assert diff <= 1
    # A --vae without statistics is a one-line error, not a silent un-normalised preview.
    bare = tmp_path / "bare.safetensors"
    save_file({"decoder.conv_in.conv.weight": torch.zeros(1)}, str(bare))
    run = cli("decode", tmp_path / "z.safetensors", *base, "--vae", bare, "-o", tmp_path / "x.mkv")
    assert run.exit_code == 1 and len(run.stderr.strip().splitlines()) == 1, run.output
    assert not (tmp_path / "x.mkv").exists()
