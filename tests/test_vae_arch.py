"""The VAE in hand decides its own architecture: for every family, a VAE whose widths and latent
channels differ from the release decodes latents of its own channel count — checked against the
VAE's config.json (or its tensor shapes) before any weight loads — and matches diffusers' decode
of the same weights (≤ 1e-4 through the Python API, ≤ 1 LSB through the CLI's --lossless)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hunyuan15 import to_tencent

import latent2mp4
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error
from tiny_cogvideox import make_tiny_cogvideox
from tiny_hunyuan import make_tiny_hunyuan
from tiny_hunyuan15 import make_tiny_hunyuan15
from tiny_ltx import make_tiny_ltx
from tiny_mochi import make_tiny_mochi
from tiny_wan import make_tiny_wan

PARITY = 1e-4
WEIGHTS = "diffusion_pytorch_model.safetensors"


def ramp(n: int, start: float, step: float) -> list[float]:
    return [round(start + step * i, 3) for i in range(n)]


def reciprocal(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The Wan pipeline: z / (1 / std) + mean, with the VAE config's numbers."""
    c = vae.config
    std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
    return z / (1.0 / std) + torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)


def scaled(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo, HunyuanVideo 1.5 and CogVideoX pipelines: z / scaling_factor."""
    return z / vae.config.scaling_factor


def mochi_stats(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The Mochi pipeline: z * std / scaling_factor + mean, with the config's numbers."""
    c = vae.config
    std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
    return z * std / c.scaling_factor + torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)


def ltx_stats(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The LTX pipelines: z * std / scaling_factor + mean, the statistics being VAE buffers."""
    mean = vae.latents_mean.view(1, -1, 1, 1, 1)
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    return z * std / vae.config.scaling_factor + mean


@dataclass(frozen=True)
class Case:
    """One family's off-release VAE: its preset, builder, config overrides and latent shape."""

    preset: str
    make: Callable[..., Any]
    variant: str
    overrides: dict[str, Any]
    channels: int
    to_vae: Callable[[Any, torch.Tensor], torch.Tensor]
    frames: int = 2
    hw: tuple[int, int] = (3, 4)
    # A single file of the same family whose shapes the loader reads (the folder's own weights
    # where the shape reading needs no assumption the folder's config breaks, e.g. 32 groups)
    single: tuple[str, dict[str, Any]] | None = None
    single_normalised: bool = True  # the single file alone de-normalises model-space latents
    extra: dict[str, Any] = field(default_factory=dict)


CASES = {
    "wan": Case(
        "wan", make_tiny_wan, "2.1",
        dict(z_dim=12, base_dim=8, latents_mean=ramp(12, -0.3, 0.05),
             latents_std=ramp(12, 0.5, 0.1)),
        12, reciprocal, single=("2.1", {}), single_normalised=False,
    ),
    "wan2.2": Case(
        "wan2.2", make_tiny_wan, "2.2",
        dict(z_dim=24, latents_mean=ramp(24, -0.2, 0.02), latents_std=ramp(24, 0.6, 0.03)),
        24, reciprocal, hw=(2, 3), single=("2.2", {}), single_normalised=False,
    ),
    "hunyuan": Case(
        "hunyuan", make_tiny_hunyuan, "tiny", dict(latent_channels=8), 8, scaled,
        single=("groups32", dict(latent_channels=8)),
    ),
    "hunyuan1.5": Case(
        "hunyuan1.5", make_tiny_hunyuan15, "tiny", dict(latent_channels=16), 16, scaled,
        hw=(2, 3), single=("tiny", {}),
    ),
    "cogvideox": Case(
        "cogvideox", make_tiny_cogvideox, "tiny", dict(latent_channels=4), 4, scaled,
        frames=3, single=("groups32", dict(latent_channels=8)),
    ),
    "mochi": Case(
        "mochi", make_tiny_mochi, "tiny",
        dict(latent_channels=16, latents_mean=ramp(16, -0.1, 0.01),
             latents_std=ramp(16, 0.8, 0.02)),
        16, mochi_stats, single=("tiny", {}), single_normalised=False,
    ),
    "ltx": Case(
        "ltx", make_tiny_ltx, "v090", dict(latent_channels=16), 16, ltx_stats, hw=(2, 3),
        single=("v090", {}),
    ),
    "ltx2": Case(
        "ltx2", make_tiny_ltx, "ltx2", dict(latent_channels=16), 16, ltx_stats, hw=(2, 3),
        single=("ltx2", dict(decoder_causal=False)),  # shapes read as released: non-causal
    ),
}  # fmt: skip
FAMILIES = list(CASES)


def frames_of(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] → uint8 (F, H, W, 3), as the pipelines' postprocessing."""
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video.permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def reference(vae: Any, zv: torch.Tensor) -> torch.Tensor:
    """diffusers' untiled decode of VAE-space latents, one sample at a time (HunyuanVideo 1.5's
    attention mask does not batch)."""
    if hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
    if hasattr(vae, "use_framewise_decoding"):
        vae.use_framewise_decoding = False
    with torch.no_grad():
        return torch.cat([vae.decode(zv[i : i + 1]).sample for i in range(zv.shape[0])])


def stored(case: Case, z: torch.Tensor) -> torch.Tensor:
    """Latents as the preset's pipeline stores them (CogVideoX: frames before channels)."""
    return (
        z.permute(0, 2, 1, 3, 4).contiguous() if load_preset(case.preset).layout == "BFCHW" else z
    )


def sample(case: Case, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, case.channels, case.frames, *case.hw, generator=g)


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory) -> tuple[Case, Any, Path]:
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp("vae_arch") / "vae"
    vae = case.make(folder, case.variant, seed=7, **case.overrides)
    return case, vae, folder


def test_decodes_the_vae_own_channels_like_diffusers(built, tmp_path, cli) -> None:
    """Model-space latents with the VAE's channel count, de-normalised with the VAE's own
    numbers: the Python API within 1e-4 of diffusers, the CLI's --lossless batch within 1 LSB."""
    case, vae, folder = built
    z = sample(case)
    expected = reference(vae, case.to_vae(vae, z))
    decoder = latent2mp4.load_decoder(case.preset, vae=folder, device="cpu", dtype="fp32")
    ours = decoder.decode(stored(case, z), latent_space="model")
    assert ours.shape == expected.shape
    diff = (ours - expected).abs().max().item()
    print(f"\n{case.preset} folder, {case.channels} channels: max abs {diff:.2e}")
    assert diff <= PARITY
    save_file({"latents": stored(case, z)}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", case.preset, "--vae", folder,
        "--latent-space", "model", "--lossless", "--no-tile", "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    for b in range(2):
        got, _ = read_video(tmp_path / f"o-{b}.mkv")
        want = frames_of(expected[b])
        assert got.shape == want.shape
        lsb = np.abs(got.astype(int) - want.astype(int)).max()
        print(f"{case.preset} CLI batch {b}: max {lsb} LSB")
        assert lsb <= 1


def test_latents_that_do_not_fit_the_vae_name_both_numbers(built, tmp_path, cli) -> None:
    """Refused before the weights load, naming the latents' count and tensor and the VAE's count
    and the config key it came from; the preset's count (the release) is no longer the test."""
    case, _, folder = built
    release = load_preset(case.preset).latent_channels
    z = torch.randn(1, release, case.frames, *case.hw)
    save_file({"latents": stored(case, z)}, str(tmp_path / "r.safetensors"))
    run = cli("decode", tmp_path / "r.safetensors", "-m", case.preset, "--vae", folder)
    key = "z_dim" if case.preset.startswith("wan") else "latent_channels"
    assert_one_line_error(
        run, 1, f"latents have {release} channels (tensor 'latents', shape",
        f"the VAE has {case.channels} latent channels ({key} in {folder / 'config.json'})",
    )  # fmt: skip
    assert not list(tmp_path.glob("*.mp4"))
    # Without a VAE the preset's numbers serve: the preview takes the release's channels.
    run = cli(
        "decode", tmp_path / "r.safetensors", "-m", case.preset, "--decoder", "preview",
        "-o", tmp_path / "p.mp4",
    )  # fmt: skip
    assert run.exit_code == 0, run.output


@pytest.fixture(scope="module", params=FAMILIES)
def single(request, tmp_path_factory) -> tuple[Case, Any, Path]:
    """The family's off-release VAE as one weights file with no config.json beside it."""
    case = CASES[request.param]
    assert case.single is not None
    variant, extra = case.single
    root = tmp_path_factory.mktemp("vae_arch_single")
    overrides = {**case.overrides, **extra}
    vae = case.make(root / "folder", variant, seed=11, **overrides)
    path = root / "file" / "vae.safetensors"
    path.parent.mkdir()
    shutil.copy(root / "folder" / WEIGHTS, path)
    return case, vae, path


def test_single_file_decides_from_its_shapes(single, tmp_path, cli) -> None:
    """No config.json: the tensor shapes give the architecture and channel count."""
    case, vae, path = single
    channels = vae.config.get("latent_channels") or vae.config["z_dim"]
    zv = torch.randn(1, channels, case.frames, *case.hw, generator=torch.Generator().manual_seed(2))
    save_file({"latents": stored(case, zv)}, str(tmp_path / "v.safetensors"))
    args = ["decode", tmp_path / "v.safetensors", "-m", case.preset, "--vae", path]
    run = cli(*args, "--latent-space", "vae", "--lossless", "--no-tile", "-o", tmp_path / "o.mkv")
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "o.mkv")
    lsb = np.abs(got.astype(int) - frames_of(reference(vae, zv)[0]).astype(int)).max()
    print(f"\n{case.preset} single file, {channels} channels: max {lsb} LSB")
    assert lsb <= 1
    if case.single_normalised:
        return  # model space de-normalises as for the folder (one scaling factor, or LTX's
        # statistics in the weights)
    # Per-channel preset numbers that do not fit, and no statistics in the file: one line,
    # before anything is written.
    preset = load_preset(case.preset)
    assert preset.normalization.channels is not None
    model = cli(*args, "--latent-space", "model", "-o", tmp_path / "m.mkv")
    assert_one_line_error(
        model, 1,
        f"--model {case.preset}'s normalization has {preset.normalization.channels} per-channel "
        f"values ({preset.source})",
        f"the VAE has {channels} latent channels (the decoder weights' shapes in {path})",
        "--latent-space vae",
    )  # fmt: skip
    assert not list(tmp_path.glob("m*.mkv"))


def test_single_file_mismatch_names_the_shapes(tmp_path, cli) -> None:
    case = CASES["ltx2"]
    make_tiny_ltx(tmp_path / "folder", "ltx2", seed=3, latent_channels=16)
    (tmp_path / "file").mkdir()
    shutil.copy(tmp_path / "folder" / WEIGHTS, tmp_path / "file" / "ltx2.safetensors")
    save_file({"latents": torch.randn(1, 128, 2, *case.hw)}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "ltx2",
        "--vae", tmp_path / "file" / "ltx2.safetensors", "-o", tmp_path / "o.mp4",
    )  # fmt: skip
    assert_one_line_error(
        run, 1, "latents have 128 channels",
        "the VAE has 16 latent channels (the decoder weights' shapes in",
    )  # fmt: skip


def test_config_stats_must_fit_the_config_channels(tmp_path, cli) -> None:
    """diffusers keeps its class's default latents_mean when only the channel count changes:
    such a config contradicts itself and is named, not broadcast into a crash."""
    make_tiny_wan(tmp_path / "vae", "2.1", seed=1, z_dim=12, base_dim=8)  # 16 default stats
    save_file({"latents": torch.randn(1, 12, 2, 3, 4)}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "wan", "--vae", tmp_path / "vae")
    assert_one_line_error(
        run, 1, "config.json: latents_mean has 16 values; the VAE has 12 latent channels",
        "(z_dim in",
    )  # fmt: skip


def test_another_release_of_the_family_is_named(tmp_path, cli) -> None:
    """A Wan 2.1 VAE (x8) for --model wan2.2 (x16) would make frames of another size: refused
    at once, naming the preset it fits, whichever latents come with it."""
    make_tiny_wan(tmp_path / "vae", "2.1", seed=1)
    for c in (16, 48):
        save_file({"latents": torch.randn(1, c, 2, 3, 4)}, str(tmp_path / f"z{c}.safetensors"))
        run = cli(
            "decode", tmp_path / f"z{c}.safetensors", "-m", "wan2.2", "--vae", tmp_path / "vae"
        )
        assert_one_line_error(
            run, 1, "a wan VAE with x8 spatial compression and 16 latent channels (--model ",
            " or wan); --model wan2.2 decodes x16 latents",
        )  # fmt: skip


def test_batch_plans_every_file_against_the_vae(tmp_path, cli) -> None:
    """A folder of inputs: each file is checked against the VAE's own channel count (read once);
    a file that does not fit fails alone with the one-line reason, the others decode."""
    case = CASES["hunyuan"]
    folder = tmp_path / "vae"
    case.make(folder, case.variant, seed=7, **case.overrides)
    (tmp_path / "in").mkdir()
    save_file({"latents": sample(case, 1)}, str(tmp_path / "in" / "a.safetensors"))
    save_file({"latents": torch.randn(1, 16, 2, 3, 4)}, str(tmp_path / "in" / "b.safetensors"))
    run = cli(
        "decode", tmp_path / "in", "-m", case.preset, "--vae", folder, "--out-dir",
        tmp_path / "out",
    )  # fmt: skip
    assert run.exit_code == 1
    assert (tmp_path / "out" / "a.mp4").is_file() and not (tmp_path / "out" / "b.mp4").exists()
    assert (
        "latents have 16 channels" in run.output and "the VAE has 8 latent channels" in run.output
    )


def test_hunyuan15_release_folder_with_its_own_channels(tmp_path, cli) -> None:
    """Tencent's vae/ folder (AutoencoderKLConv3D config.json, original key names) whose config
    says 16 latent channels decodes 16-channel latents with its own scaling and shift."""
    case = CASES["hunyuan1.5"]
    vae = case.make(tmp_path / "diffusers", case.variant, seed=5, **case.overrides)
    folder = tmp_path / "vae"
    folder.mkdir()
    state = load_file(tmp_path / "diffusers" / WEIGHTS)
    save_file({to_tencent(k): v for k, v in state.items()}, str(folder / WEIGHTS))
    config = {
        "_class_name": "AutoencoderKLConv3D", "in_channels": 3, "out_channels": 3,
        "latent_channels": 16, "block_out_channels": list(vae.config.block_out_channels),
        "layers_per_block": 1, "ffactor_spatial": 16, "ffactor_temporal": 4,
        "scaling_factor": 0.9, "shift_factor": 0.25,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    z = sample(case, 1, seed=4)
    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    run = cli(
        "decode", tmp_path / "z.safetensors", "-m", "hunyuan1.5", "--vae", folder,
        "--latent-space", "model", "--lossless", "--no-tile", "-o", tmp_path / "o.mkv",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "o.mkv")
    want = frames_of(reference(vae, z / 0.9 + 0.25)[0])
    lsb = np.abs(got.astype(int) - want.astype(int)).max()
    print(f"\nhunyuan1.5 Tencent release folder, 16 channels: max {lsb} LSB")
    assert lsb <= 1
