"""Every family end to end through the CLI, against diffusers' pipeline arithmetic.

Tiny random VAEs are saved as real diffusers folders with odd normalisation values in their
config.json; latents are saved as model-space files in the preset's layout; the CLI writes lossless
video; the frames read back must be within 1 LSB of diffusers: de-normalise as the pipeline does,
`vae.decode`, `(x / 2 + 0.5).clamp(0, 1)`, ×255 rounded.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latent2mp4.video import read_video

from tiny_cogvideox import make_tiny_cogvideox
from tiny_hunyuan import make_tiny_hunyuan
from tiny_wan import make_tiny_wan


@dataclass(frozen=True)
class Case:
    model: str
    make: object
    variant: str
    channels: int
    ratio: int
    frames: int  # latent frames
    tiling: dict  # enable_tiling(...) overlap arguments, for VAEs that take no stride


CASES = {
    "wan": Case("wan", make_tiny_wan, "2.1", 16, 8, 3, {}),
    "wan2.2": Case("wan2.2", make_tiny_wan, "2.2", 48, 16, 2, {}),
    "hunyuan": Case("hunyuan", make_tiny_hunyuan, "tiny", 16, 8, 6, {}),
    # diffusers' CogVideoX tiler takes overlap factors; at 1/4 its stride is 3 latents and it keeps
    # 24 px, i.e. stride x 8 (see tests/test_cogvideox.py), so it equals --tile-stride 24.
    "cogvideox": Case(
        "cogvideox",
        make_tiny_cogvideox,
        "groups32",
        16,
        8,
        3,
        {"tile_overlap_factor_height": 1 / 4, "tile_overlap_factor_width": 1 / 4},
    ),
}


def odd_normalisation(folder: Path, channels: int) -> dict:
    """Rewrite config.json with values no preset has; returns what was written."""
    cfg = json.loads((folder / "config.json").read_text())
    g = torch.Generator().manual_seed(7)
    if "latents_std" in cfg and cfg.get("_class_name") == "AutoencoderKLWan":
        cfg["latents_mean"] = (torch.randn(channels, generator=g) * 0.3).tolist()
        cfg["latents_std"] = (torch.rand(channels, generator=g) * 1.5 + 0.5).tolist()
    else:
        cfg["scaling_factor"] = 0.613
    (folder / "config.json").write_text(json.dumps(cfg))
    return cfg


def pipeline_frames(vae, z: torch.Tensor, cfg: dict) -> np.ndarray:
    """What the diffusers pipelines hand to export: uint8 (F, H, W, 3) for batch element 0."""
    if cfg["_class_name"] == "AutoencoderKLWan":
        mean = torch.tensor(cfg["latents_mean"]).view(1, -1, 1, 1, 1)
        inv = 1.0 / torch.tensor(cfg["latents_std"]).view(1, -1, 1, 1, 1)
        zv = z / inv + mean
    elif cfg["_class_name"] == "AutoencoderKLCogVideoX":
        zv = z * (1 / cfg["scaling_factor"])
    else:
        zv = z / cfg["scaling_factor"]
    with torch.no_grad():
        video = vae.decode(zv).sample
    video = (video / 2 + 0.5).clamp(0, 1)
    return (video[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module", params=list(CASES))
def family(request, tmp_path_factory):
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(case.model) / "vae"
    vae = case.make(folder, case.variant)
    cfg = odd_normalisation(folder, case.channels)
    return case, vae, folder, cfg


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_cli_lossless_frames_match_the_diffusers_pipeline(family, tiled, tmp_path, cli):
    case, vae, folder, cfg = family
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, case.channels, case.frames, 8, 7, generator=g)  # BCFHW, model space
    stored = z.permute(0, 2, 1, 3, 4).contiguous() if case.model.startswith("cog") else z
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", case.model, "--vae", folder, "--lossless"]
    args += ["-o", tmp_path / "out.mkv"]
    px = 4 * case.ratio  # a 4-latent tile with stride 3: several tiles and blends on 8x7 latents
    if tiled:
        args += ["--tile-size", str(px), "--tile-stride", str(3 * case.ratio)]
        stride = 3 * case.ratio
        overlap = case.tiling or {
            "tile_sample_stride_height": stride,
            "tile_sample_stride_width": stride,
        }
        vae.enable_tiling(tile_sample_min_height=px, tile_sample_min_width=px, **overlap)
    else:
        args += ["--no-tile"]
        vae.disable_tiling()
    run = cli(*args)
    assert run.exit_code == 0, run.output
    got, _ = read_video(tmp_path / "out.mkv")
    expected = pipeline_frames(vae, z, cfg)
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    exact = (got == expected).mean()
    print(f"\n{case.model} {'tiled' if tiled else 'untiled'}: max {diff} LSB, {exact:.4%} exact")
    assert diff <= 1, diff
