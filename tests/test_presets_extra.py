"""Presets for models built on our VAEs, checked against their own diffusers 0.42.1 pipelines.

The pipelines need `transformers` to import, so each one's decode step is taken from its source
file as text: the statements between `output_type="latent"` and `vae.decode(...)` are executed on a
tiny random VAE (odd normalisation values in its config.json) with the pipeline object stood in by
a namespace holding that VAE. Our side is the real path: a file in the pipeline's latent form,
`plan` + `build_decoder` (VAE input, compared exactly) and the CLI with `--lossless` (frames
within 1 LSB of `vae.decode` → `(x / 2 + 0.5).clamp(0, 1)` × 255 rounded).
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latent2mp4.decoder import Decoder
from latent2mp4.pipeline import DecodeOptions, plan
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from tiny_hunyuan import make_tiny_hunyuan
from tiny_wan import make_tiny_wan


def pipeline_source(rel: str) -> str:
    import diffusers

    return (Path(diffusers.__file__).parent / "pipelines" / rel).read_text()


@dataclass(frozen=True)
class Case:
    preset: str
    source: str  # the pipeline file under diffusers/pipelines
    after: str  # the decode step starts on the line after this (unique in the file)
    until: str  # … and ends with the first line containing this
    result: str  # the variable holding the VAE input afterwards
    family: str  # "wan" or "hunyuan"
    doc_frames: int  # num_frames of the docs' example (or the default)
    alias: str


CASES = {
    "skyreels-v2": Case(
        "skyreels-v2",
        "skyreels_v2/pipeline_skyreels_v2.py",
        'if not output_type == "latent":',
        "latents = latents / latents_std + latents_mean",
        "latents",
        "wan",
        97,
        "skyreels",
    ),
    "kandinsky5": Case(
        "kandinsky5",
        "kandinsky5/pipeline_kandinsky.py",
        'if output_type != "latent":',
        "video = video / self.vae.config.scaling_factor",
        "video",
        "hunyuan",
        121,
        "kandinsky-5",
    ),
    "cosmos-predict2": Case(
        "cosmos-predict2",
        "cosmos/pipeline_cosmos2_video2world.py",
        'if not output_type == "latent":',
        "latents = latents * latents_std / self.scheduler.config.sigma_data + latents_mean",
        "latents",
        "wan",
        93,
        "cosmos2",
    ),
    "sana-video": Case(
        "sana-video",
        "sana_video/pipeline_sana_video.py",
        'if output_type == "latent":\n            video = latents\n        else:',
        "latents = latents / latents_std + latents_mean",
        "latents",
        "wan",
        81,
        "sanavideo",
    ),
}


def decode_step(case: Case) -> str:
    """The pipeline's own statements from its latents to the VAE input, dedented."""
    text = pipeline_source(case.source)
    assert text.count(case.after) == 1, case.after
    start = text.index("\n", text.index(case.after) + len(case.after)) + 1
    stop = text.index("\n", text.index(case.until, start))
    return textwrap.dedent(text[start:stop])


def constructor_constant(case: Case, name: str) -> float:
    """A value the pipeline's constructor sets, e.g. `self.sigma_data = 1.0`."""
    found = re.search(rf"self\.{name} = ([0-9.]+)", pipeline_source(case.source))
    assert found, name
    return float(found.group(1))


def docs_fps(case: Case) -> float:
    found = re.search(r"export_to_video\([^)]*fps=(\d+)", pipeline_source(case.source))
    assert found
    return float(found.group(1))


def tiny_vae(family: str, folder: Path) -> tuple[Any, dict]:
    """A tiny diffusers VAE saved to `folder`, with normalisation values no preset has."""
    vae = make_tiny_wan(folder, "2.1") if family == "wan" else make_tiny_hunyuan(folder, "tiny")
    cfg = json.loads((folder / "config.json").read_text())
    g = torch.Generator().manual_seed(7)
    if family == "wan":
        cfg["latents_mean"] = (torch.randn(16, generator=g) * 0.3).tolist()
        cfg["latents_std"] = (torch.rand(16, generator=g) * 1.5 + 0.5).tolist()
    else:
        cfg["scaling_factor"] = 0.613
    (folder / "config.json").write_text(json.dumps(cfg))
    vae.register_to_config(
        **{k: cfg[k] for k in ("latents_mean", "latents_std", "scaling_factor") if k in cfg}
    )
    return vae, cfg


def run_pipeline_step(case: Case, vae: Any, z: torch.Tensor, frames: int) -> torch.Tensor:
    """Execute the pipeline's decode step on `z` (its `output_type="latent"` form)."""
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLWan

    pipe = SimpleNamespace(
        vae=vae,
        vae_scale_factor_temporal=4,
        vae_scale_factor_spatial=8,
        scheduler=SimpleNamespace(
            config=SimpleNamespace(sigma_data=constructor_constant(case, "sigma_data"))
            if "sigma_data" in case.until
            else None
        ),
    )
    b, h, w = z.shape[0], z.shape[-3], z.shape[-2]  # only Kandinsky reads these (BFHWC)
    scope: dict[str, Any] = {
        "self": pipe,
        "torch": torch,
        "latents": z.clone(),
        "AutoencoderKLWan": AutoencoderKLWan,
        "AutoencoderKLLTX2Video": AutoencoderKLLTX2Video,
        "batch_size": 1,
        "num_videos_per_prompt": b,
        "num_frames": frames,
        "height": h * 8,
        "width": w * 8,
        "num_channels_latents": 16,
    }
    exec(decode_step(case), scope)  # noqa: S102 - the pipeline's own statements
    return scope[case.result]


@pytest.fixture(scope="module")
def vaes(tmp_path_factory) -> dict[str, tuple[Any, Path, dict]]:
    out = {}
    for family in ("wan", "hunyuan"):
        folder = tmp_path_factory.mktemp(family) / "vae"
        vae, cfg = tiny_vae(family, folder)
        out[family] = (vae, folder, cfg)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_preset_matches_its_pipeline_docs(name):
    case = CASES[name]
    p = load_preset(case.alias)
    assert p.name == name and p.family == case.family
    assert p.fps == docs_fps(case)
    # The pipelines round num_frames to 4k + 1 and make (num_frames - 1) // 4 + 1 latent frames.
    assert p.frames_out((case.doc_frames - 1) // 4 + 1) == case.doc_frames
    if name == "cosmos-predict2":
        assert p.normalization.sigma_data == constructor_constant(case, "sigma_data")
        assert p.normalization.std_op == "multiply"


@pytest.mark.parametrize("name", list(CASES))
def test_vae_input_and_frames_match_the_pipeline(name, vaes, tmp_path, cli):
    case = CASES[name]
    vae, folder, _ = vaes[case.family]
    preset = load_preset(name)
    t, h, w = 2, 4, 5
    frames = 1 + 4 * (t - 1)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 16, t, h, w, generator=g)  # model space, (B, C, F, H, W)
    stored = z.permute(0, 2, 3, 4, 1).contiguous() if preset.layout == "BFHWC" else z
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))

    expected_in = run_pipeline_step(case, vae, stored, frames)
    opts = DecodeOptions(model=name, vae=str(folder), no_tile=True, lossless=True)
    job = plan(tmp_path / "z.safetensors", opts)
    decoder = Decoder(opts, job.preset)
    prepare = decoder._input_space(job.space)  # what the decoder is fed, read by time range
    ours_in = torch.cat([prepare(job.view.read(v.pos, v.batch, 0, t)) for v in job.videos])
    gap_in = (ours_in - expected_in).abs().max().item()
    with torch.no_grad():
        reference = vae.decode(expected_in).sample
        ours = torch.cat([torch.cat(list(decoder.stream(job, v)), 2) for v in job.videos])
    gap_out = (ours - reference).abs().max().item()
    print(f"\n{name}: VAE input max abs {gap_in:.2e}, decoded max abs {gap_out:.2e}")
    assert torch.equal(ours_in, expected_in)
    assert ours.shape == reference.shape and reference.shape[2] == frames
    assert gap_out <= 1e-4

    run = cli(
        "decode",
        tmp_path / "z.safetensors",
        "-m",
        case.alias,
        "--vae",
        folder,
        "--lossless",
        "--no-tile",
        "-o",
        tmp_path / "out.mkv",
    )
    assert run.exit_code == 0, run.output
    pixels = (reference / 2 + 0.5).clamp(0, 1)
    for b in range(2):
        got, _ = read_video(tmp_path / f"out-{b}.mkv")
        want = (pixels[b].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_normalise_inverts_the_pipeline_arithmetic_and_bad_values_are_refused(tmp_path):
    from latent2mp4.errors import UsageError
    from latent2mp4.latents import denormalise, normalise

    norm = load_preset("cosmos-predict2").normalization
    z = torch.randn(1, 16, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(normalise(denormalise(z, norm), norm), z, atol=1e-5)
    text = (Path(__file__).parents[1] / "configs" / "cosmos-predict2.yaml").read_text()
    for edit, message in [
        (("std_op: multiply", "std_op: divide"), "std_op"),
        (("sigma_data: 1.0", "sigma_data: 0"), "sigma_data"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(*edit))
        with pytest.raises(UsageError, match=message):
            load_preset(str(bad))
