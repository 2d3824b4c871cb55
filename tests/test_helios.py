"""Helios: the Wan 2.1 VAE decoding each 9-latent chunk as its own clip, as HeliosPipeline does
(pipelines/helios/pipeline_helios.py), checked against that arithmetic on a tiny random VAE."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_presets_extra import pipeline_source, tiny_vae

import latent2mp4
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

SOURCE = "helios/pipeline_helios.py"


def test_the_pipeline_decodes_as_the_preset_says() -> None:
    """The statements this file reproduces are the pipeline's (a changed pipeline fails here)."""
    text = pipeline_source(SOURCE)
    assert "num_latent_frames_per_chunk: int = 9" in text
    assert (
        "real_history_latents[:, :, -num_latent_frames_per_chunk:].to(vae_dtype) / latents_std"
        in text
    )
    assert "current_video = self.vae.decode(current_latents, return_dict=False)[0]" in text
    assert "history_video = torch.cat([history_video, current_video], dim=2)" in text
    assert "// self.vae_scale_factor_temporal * self.vae_scale_factor_temporal + 1" in text
    assert "latents_std = 1.0 / torch.tensor(self.vae.config.latents_std)" in text
    fps = re.search(r"export_to_video\([^)]*fps=(\d+)", text)
    p = load_preset("helios-distilled")
    assert p.name == "helios" and p.family == "wan" and fps and p.fps == float(fps[1])
    assert p.segments is not None and p.segments.frames == 9


def helios_decode(vae: Any, cfg: dict, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """HeliosPipeline's decode of its returned history `z` (model space): each generated chunk
    (the last `chunk` latents after each step; any leading remainder is the image latent) as
    `chunk / (1 / std) + mean` through `vae.decode`, concatenated, cut to 1 + 4k frames."""
    mean = torch.tensor(cfg["latents_mean"]).view(1, 16, 1, 1, 1)
    latents_std = 1.0 / torch.tensor(cfg["latents_std"]).view(1, 16, 1, 1, 1)
    t = z.shape[2]
    videos = []
    with torch.no_grad():
        for end in range(t % chunk + chunk, t + 1, chunk):
            current = z[:, :, end - chunk : end] / latents_std + mean
            videos.append(vae.decode(current, return_dict=False)[0])
    video = torch.cat(videos, dim=2)
    n = (video.shape[2] - 1) // 4 * 4 + 1
    return video[:, :, :n]


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, dict]:
    folder = tmp_path_factory.mktemp("helios") / "vae"
    vae, cfg = tiny_vae("wan", folder)
    return vae, folder, cfg


@pytest.mark.parametrize(
    "t, chunk, frames",
    [
        (19, None, 65),  # image latent + 2 chunks of 9: 2 x 33 = 66, cut to 65
        (7, 3, 17),  # --decode-chunk-size 3: image latent + 2 x 3 -> 2 x 9 = 18 -> 17
    ],
)
def test_python_api_and_cli_match_the_pipeline(wan, t, chunk, frames, tmp_path, cli) -> None:
    vae, folder, cfg = wan
    g = torch.Generator().manual_seed(t)
    z = torch.randn(1, 16, t, 2, 3, generator=g)  # the returned history, model space
    expected = helios_decode(vae, cfg, z, chunk or 9)
    assert expected.shape[2] == frames
    decoder = latent2mp4.load_decoder("helios", vae=folder, dtype="fp32", decode_chunk_size=chunk)
    got = decoder.decode(z)
    diff = (got - expected).abs().max().item()
    print(f"\nhelios T={t} chunk {chunk or 9}: {got.shape[2]} frames, max {diff:.2e}")
    assert got.shape == expected.shape and diff <= 1e-4
    # a plain decode of the same latents is different: the chunks are part of the output
    plain = latent2mp4.load_decoder("wan", vae=folder, dtype="fp32").decode(z)
    assert plain.shape[2] != frames or (plain - got).abs().max().item() > 1e-3

    save_file({"latents": z}, str(tmp_path / "z.safetensors"))
    args = ["decode", tmp_path / "z.safetensors", "-m", "helios", "--vae", folder, "--lossless"]
    args += ["--no-tile", "-o", tmp_path / "out.mkv"]
    args += ["--decode-chunk-size", str(chunk)] if chunk else []
    run = cli(*args)
    assert run.exit_code == 0, run.output
    assert "the first 1 not decoded" in run.output
    video, _ = read_video(tmp_path / "out.mkv")
    want = ((expected / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).numpy() * 255).round()
    assert video.shape == want.shape
    lsb = np.abs(video.astype(int) - want.astype(int)).max()
    print(f"helios CLI T={t}: max {lsb} LSB")
    assert lsb <= 1
