"""Presets for pipelines built on a VAE we decode, each checked against its own decode arithmetic.

As in test_presets_extra.py, the pipelines need `transformers` to import, so each one's decode
step is taken from its diffusers 0.42.1 source as text (an inclusive range of statements, with
the constructor lines it relies on) and executed on a tiny random VAE whose config.json holds
normalisation values no preset has, the pipeline object stood in by a namespace. LongCat-Video
has no diffusers pipeline; its original repository's `denormalize_latents` is restated. Our side
is the real path: a file in the pipeline's latent form, `plan` + `Decoder` (VAE input compared
exactly, decoded frames within 1e-4 of `vae.decode`) and the CLI with `--lossless` (frames within
1 LSB of `(x / 2 + 0.5).clamp(0, 1)` x 255 rounded), batch 2.
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

from tiny_cogvideox import make_tiny_cogvideox
from tiny_ltx import make_tiny_ltx
from tiny_wan import make_tiny_wan


def pipeline_source(rel: str) -> str:
    import diffusers

    return (Path(diffusers.__file__).parent / "pipelines" / rel).read_text()


def statements(text: str, first: str, last: str) -> str:
    """The lines from the one holding `first` (unique) through the next one holding `last`."""
    assert text.count(first) == 1, first
    start = text.rindex("\n", 0, text.index(first)) + 1
    stop = text.index("\n", text.index(last, start))
    return textwrap.dedent(text[start:stop])


@dataclass(frozen=True)
class Case:
    preset: str
    alias: str
    vae: str  # tiny VAE kind: wan2.1, wan2.2, cogvideox, ltx2
    source: str | None  # diffusers/pipelines file; None: restated below (LongCat-Video)
    step: tuple[str, str]  # the decode statements, first and last line markers
    setup: tuple[str, str] | None = None  # constructor statements the step reads
    scope: tuple[tuple[str, str], ...] = ()  # extra names: (name, expression on `self`)
    doc_frames: int = 81  # num_frames of the docs' example (or the default)
    fps_source: str | None = None  # regex for the docs' fps; None: export_to_video's
    decode: bool = True  # False: a variant of a pipeline decoded above (VAE input checked only)


WAN_STEP = ("latents_mean = (", "latents = latents / latents_std + latents_mean")
CASES = {
    "lucy-edit": Case(
        "lucy-edit",
        "lucy",
        "wan2.2",
        "lucy/pipeline_lucy_edit.py",
        (
            "latents = latents.to(self.vae.dtype)\n            latents_mean = (",
            "latents = latents / latents_std + latents_mean",
        ),
    ),
    "motif-video": Case(
        "motif-video",
        "motif",
        "wan2.1",
        "motif_video/pipeline_motif_video.py",
        (
            "latents_mean = torch.tensor(latents_mean).view(1, -1, 1, 1, 1).to(latents.device, "
            "latents.dtype)\n        latents_std = torch.tensor(latents_std).view(1, -1, 1, 1, 1)"
            ".to(latents.device, latents.dtype)\n        latents = latents * latents_std",
            "latents = latents * latents_std + latents_mean",
        ),
        scope=(
            ("latents_mean", "self.vae.config.latents_mean"),
            ("latents_std", "self.vae.config.latents_std"),
        ),
        doc_frames=121,
    ),
    "motif-video-i2v": Case(
        "motif-video",
        "motif-video-i2v",
        "wan2.1",
        "motif_video/pipeline_motif_video_image2video.py",
        (
            "latents_mean = torch.tensor(latents_mean).view(1, -1, 1, 1, 1).to(latents.device, "
            "latents.dtype)\n        latents_std = torch.tensor(latents_std).view(1, -1, 1, 1, 1)"
            ".to(latents.device, latents.dtype)\n        latents = latents * latents_std",
            "latents = latents * latents_std + latents_mean",
        ),
        scope=(
            ("latents_mean", "self.vae.config.latents_mean"),
            ("latents_std", "self.vae.config.latents_std"),
        ),
        doc_frames=121,
        decode=False,
    ),
    "anyflow": Case(
        "anyflow",
        "anyflow",
        "wan2.1",
        "anyflow/pipeline_anyflow.py",
        ("latents = latents.to(self.vae.dtype)\n            latents_mean = (", WAN_STEP[1]),
    ),
    "anyflow-far": Case(
        "anyflow",
        "anyflow-far",
        "wan2.1",
        "anyflow/pipeline_anyflow_far.py",
        ("latents = latents.to(self.vae.dtype)\n            latents_mean = (", WAN_STEP[1]),
        decode=False,
    ),
    "cosmos-predict2.5": Case(
        "cosmos-predict2.5",
        "cosmos2.5",
        "wan2.1",
        "cosmos/pipeline_cosmos2_5_predict.py",
        (
            "latents_mean = self.latents_mean.to(latents.device, latents.dtype)",
            "latents = latents / latents_std + latents_mean",
        ),
        setup=(
            "latents_mean = torch.tensor(self.vae.config.latents_mean).view(1, "
            "self.vae.config.z_dim, 1, 1, 1).float()\n        latents_std = torch",
            "self.latents_std = 1.0 / latents_std",
        ),
        doc_frames=93,
    ),
    "cosmos-transfer2.5": Case(
        "cosmos-transfer2.5",
        "transfer2.5",
        "wan2.1",
        "cosmos/pipeline_cosmos2_5_transfer.py",
        (
            "latents = latents * latents_std + latents_mean\n            video = self.vae",
            "latents = latents * latents_std + latents_mean",
        ),
        setup=(
            "latents_mean = (\n            torch.tensor(self.vae.config.latents_mean)",
            "self.latents_std = latents_std",
        ),
        scope=(("latents_std", "self.latents_std"), ("latents_mean", "self.latents_mean")),
        doc_frames=93,
    ),
    "consisid": Case(
        "consisid",
        "consisid-preview",
        "cogvideox",
        "consisid/pipeline_consisid.py",
        (
            "latents = latents.permute(0, 2, 1, 3, 4)  # [batch_size",
            "latents = 1 / self.vae_scaling_factor_image * latents",
        ),
        setup=("self.vae_scaling_factor_image = (", "self.vae.config.scaling_factor if"),
        doc_frames=49,
    ),
    "sana-wm": Case(
        "sana-wm",
        "sanawm",
        "ltx2",
        "sana_wm/pipeline_sana_wm.py",
        (
            "latents = latents.to(self._execution_device, dtype=self.vae.dtype)",
            "latents = latents / self.vae.config.scaling_factor * latents_std + latents_mean",
        ),
        doc_frames=161,
        fps_source=r"fps: int = (\d+)",
    ),
    "longcat-video": Case("longcat-video", "longcat", "wan2.1", None, ("", ""), doc_frames=93),
}
# LongCat-Video's `denormalize_latents` (meituan-longcat/LongCat-Video pipeline_longcat_video.py):
# latents_std there holds 1 / latents_std, and the latents are divided by it.
LONGCAT_STEP = """
std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, self.vae.config.z_dim, 1, 1, 1)
mean = torch.tensor(self.vae.config.latents_mean).view(1, self.vae.config.z_dim, 1, 1, 1)
latents = latents / std + mean
"""
LONGCAT_FPS = 15  # run_demo_text_to_video.py writes 480p at fps=15


def decode_step(case: Case) -> tuple[str, str]:
    """(constructor setup, decode statements) from the pipeline's source."""
    if case.source is None:
        return "", LONGCAT_STEP
    text = pipeline_source(case.source)
    setup = statements(text, *case.setup) if case.setup else ""
    if case.preset == "consisid":  # the setup is a parenthesised expression: close it
        setup += "\n)"
    return setup, statements(text, *case.step)


def tiny_vae(kind: str, folder: Path) -> Any:
    """A tiny diffusers VAE saved to `folder`, with normalisation values no preset has."""
    g = torch.Generator().manual_seed(7)
    if kind == "ltx2":  # its statistics are buffers in the weights (randomised by the builder)
        return make_tiny_ltx(folder, "ltx2")
    if kind == "cogvideox":
        vae = make_tiny_cogvideox(folder, "groups32")
        changes: dict[str, Any] = {"scaling_factor": 0.613}
    else:
        vae = make_tiny_wan(folder, kind.removeprefix("wan"))
        n = vae.config.z_dim
        changes = {
            "latents_mean": (torch.randn(n, generator=g) * 0.3).tolist(),
            "latents_std": (torch.rand(n, generator=g) * 1.5 + 0.5).tolist(),
        }
    cfg = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(cfg))
    vae.register_to_config(**changes)
    return vae


def run_pipeline_step(case: Case, vae: Any, z: torch.Tensor) -> torch.Tensor:
    """Execute the pipeline's decode step on `z` (its `output_type="latent"` form)."""
    pipe = SimpleNamespace(vae=vae, _execution_device=torch.device("cpu"))
    setup, step = decode_step(case)
    scope: dict[str, Any] = {"self": pipe, "torch": torch}
    exec(setup, scope)  # noqa: S102 - the pipeline's own constructor statements
    scope.update({name: eval(expr, scope) for name, expr in case.scope})  # noqa: S307
    scope["latents"] = z.clone()
    exec(step, scope)  # noqa: S102 - the pipeline's own statements
    return scope["latents"]


@pytest.fixture(scope="module")
def vaes(tmp_path_factory) -> dict[str, tuple[Any, Path]]:
    out = {}
    for kind in sorted({c.vae for c in CASES.values()}):
        folder = tmp_path_factory.mktemp(kind.replace(".", "")) / "vae"
        out[kind] = (tiny_vae(kind, folder), folder)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_preset_matches_its_pipeline_docs(name: str) -> None:
    case = CASES[name]
    p = load_preset(case.alias)
    assert p.name == case.preset
    if case.source is None:
        fps = LONGCAT_FPS
    else:
        pattern = case.fps_source or r"export_to_video\([^)]*fps=(\d+)"
        found = re.search(pattern, pipeline_source(case.source))
        assert found
        fps = int(found.group(1))
    assert p.fps == fps
    t = (case.doc_frames - 1) // p.temporal_ratio + 1  # the pipelines' latent frame count
    assert p.frames_out(t) == case.doc_frames


@pytest.mark.parametrize("name", list(CASES))
def test_vae_input_and_frames_match_the_pipeline(name: str, vaes, tmp_path: Path, cli) -> None:
    case = CASES[name]
    vae, folder = vaes[case.vae]
    preset = load_preset(case.preset)
    c = preset.latent_channels
    t, h, w = (2, 2, 2) if case.vae == "ltx2" else (2, 3, 4)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, c, t, h, w, generator=g)  # model space, (B, C, F, H, W)
    stored = z.transpose(1, 2).contiguous() if preset.layout == "BFCHW" else z
    save_file({"latents": stored}, str(tmp_path / "z.safetensors"))

    expected_in = run_pipeline_step(case, vae, stored)
    opts = DecodeOptions(model=case.alias, vae=str(folder), no_tile=True, lossless=True)
    job = plan(tmp_path / "z.safetensors", opts)
    decoder = Decoder(opts, job.preset)
    prepare = decoder._input_space(job.space)  # what the decoder is fed, read by time range
    ours_in = torch.cat([prepare(job.view.read(v.pos, v.batch, 0, t)) for v in job.videos])
    gap_in = (ours_in - expected_in).abs().max().item()
    print(f"\n{name}: VAE input max abs {gap_in:.2e}")
    if case.preset == "consisid":  # `1 / s * z` there, `z / s` here: within an ulp
        assert gap_in <= 1e-6
    else:  # the same operations in the same order: the same floats
        assert torch.equal(ours_in, expected_in)
    if not case.decode:
        return
    with torch.no_grad():
        reference = vae.decode(expected_in).sample
        ours = torch.cat([torch.cat(list(decoder.stream(job, v)), 2) for v in job.videos])
    gap_out = (ours - reference).abs().max().item()
    print(f"{name}: decoded max abs {gap_out:.2e}")
    assert ours.shape == reference.shape and reference.shape[2] == preset.frames_out(t)
    assert gap_out <= 1e-4

    out = tmp_path / "out.mkv"
    run = cli("decode", tmp_path / "z.safetensors", "-m", case.alias, "--vae", folder,
              "--lossless", "--no-tile", "-o", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    pixels = (reference / 2 + 0.5).clamp(0, 1)
    for b in range(2):
        got, _ = read_video(tmp_path / f"out-{b}.mkv")
        want = (pixels[b].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
        assert got.shape == want.shape
        lsb = np.abs(got.astype(int) - want.astype(int)).max()
        print(f"{name}[{b}]: {got.shape}, max {lsb} LSB")
        assert lsb <= 1
