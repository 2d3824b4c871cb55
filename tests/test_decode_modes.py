"""Decode modes (modes.py) against the pipelines' own decode statements, run on tiny VAEs.

ChronoEdit (endpoint-tail) and HunyuanVideo-FramePack (soft-append, both sampling orders)
decode parts of their latents as separate clips and join the pixels. The pipelines need
`transformers` to import, so their statements are taken from the diffusers 0.42.1 sources as
text and executed with the pipeline object stood in by a namespace: ChronoEdit's decode branch;
FramePack's latent bookkeeping and per-section decode, which runs after each section's
denoising, fed random section latents, once with output_type "latent" (what a user saves: the
last history snapshot) and once decoding (the pipeline's video). Ours: that saved file through
`plan` + `Decoder` (within 1e-4) and the CLI with `--lossless` (within 1 LSB); and the mode
matters (a plain decode of the same latents differs).
"""

from __future__ import annotations

import textwrap
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latent2mp4.decoder import Decoder
from latent2mp4.modes import DecodeMode, Piece
from latent2mp4.pipeline import DecodeOptions, plan
from latent2mp4.presets import load_preset
from latent2mp4.video import read_video

from conftest import assert_one_line_error
from tiny_hunyuan import make_tiny_hunyuan
from tiny_wan import make_tiny_wan


def source(rel: str) -> str:
    import diffusers

    return (Path(diffusers.__file__).parent / "pipelines" / rel).read_text()


def statements(text: str, first: str, last: str, start: int = 0) -> str:
    """The lines from the first holding `first` (at or after `start`) through the next holding
    `last`, dedented."""
    at = text.index(first, start)
    begin = text.rindex("\n", 0, at) + 1
    stop = text.index("\n", text.index(last, at))
    return textwrap.dedent(text[begin:stop])


def ours_and_cli(name: str, z: torch.Tensor, folder: Path, tmp: Path, cli) -> tuple[Any, Path]:
    """Our decode of `z` (B, C, T, h, w) through plan + Decoder, and the CLI's output files."""
    save_file({"latents": z.contiguous()}, str(tmp / "z.safetensors"))
    opts = DecodeOptions(model=name, vae=str(folder), no_tile=True, lossless=True)
    job = plan(tmp / "z.safetensors", opts)
    decoder = Decoder(opts, job.preset)
    ours = torch.cat([torch.cat(list(decoder.stream(job, v)), 2) for v in job.videos])
    run = cli("decode", tmp / "z.safetensors", "-m", name, "--vae", folder, "--lossless",
              "--no-tile", "-o", tmp / "out.mkv")  # fmt: skip
    assert run.exit_code == 0, run.output
    return ours, tmp


def check(name: str, ours: torch.Tensor, reference: torch.Tensor, tmp: Path) -> None:
    gap = (ours - reference).abs().max().item()
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    pixels = (reference / 2 + 0.5).clamp(0, 1)
    for b in range(reference.shape[0]):
        got, _ = read_video(tmp / f"out-{b}.mkv")
        want = (pixels[b].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
        lsb = np.abs(got.astype(int) - want.astype(int)).max()
        print(f"\n{name}[{b}]: {got.shape}, max abs {gap:.2e}, max {lsb} LSB")
        assert got.shape == want.shape and lsb <= 1
    assert gap <= 1e-4


# ---- ChronoEdit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [2, 4])
def test_chronoedit_temporal_reasoning_decode(t: int, tmp_path: Path, cli) -> None:
    vae = make_tiny_wan(tmp_path / "vae", "2.1")
    text = source("chronoedit/pipeline_chronoedit.py")
    branch = text.index('if not output_type == "latent":')
    step = statements(
        text,
        "latents = latents.to(self.vae.dtype)",
        "video = self.vae.decode(latents, return_dict=False)[0]",
        branch,
    )
    z = torch.randn(2, 16, t, 3, 4, generator=torch.Generator().manual_seed(1))
    scope: dict[str, Any] = {"self": SimpleNamespace(vae=vae), "torch": torch, "latents": z}
    scope["enable_temporal_reasoning"] = True  # T > 2 only arises with it (and all steps)
    with torch.no_grad():
        exec(step, scope)  # noqa: S102 - the pipeline's own statements
        reference = scope["video"]
        ours, tmp = ours_and_cli("chronoedit", z, tmp_path / "vae", tmp_path, cli)
        check(f"chronoedit T={t}", ours, reference, tmp)
        plain = vae.decode(scope["latents"]).sample  # the de-normalised latents, whole
    assert plain.shape == reference.shape
    if t > 2:  # the split is part of the output
        assert (plain - reference).abs().max() > 1e-3
    else:
        assert torch.equal(plain, reference)


# ---- FramePack ----------------------------------------------------------------------------------

FRAMEPACK = "hunyuan_video/pipeline_hunyuan_video_framepack.py"


def framepack_pipeline(vae: Any, order: str, sections: list[torch.Tensor], image: torch.Tensor,
                       ws: int, decode: bool) -> Any:  # fmt: skip
    """Run the pipeline's statements around its denoising loop with `sections` as each step's
    denoised latents; returns its video (decode) or its output_type="latent" list."""
    text = source(FRAMEPACK)
    enum_src = statements(
        text, "class FramepackSamplingType(str, Enum):", "INVERTED_ANTI_DRIFTING = "
    )
    soft_append = statements(text, "def _soft_append(self", "return output.to(history)")
    prepare = statements(text, "window_num_frames = (latent_window_size - 1)", "assert False")
    loop_head = statements(
        text,
        "if sampling_type == FramepackSamplingType.INVERTED_ANTI_DRIFTING:\n"
        "                latent_paddings",
        "is_last_section = k == num_latent_sections - 1",
    )
    bookkeeping = statements(
        text,
        "if sampling_type == FramepackSamplingType.INVERTED_ANTI_DRIFTING:\n"
        "                    if is_last_section:",
        "history_video.append(real_history_latents)",
    )
    scope: dict[str, Any] = {"torch": torch, "Enum": Enum}
    exec(enum_src + "\n" + soft_append, scope)  # noqa: S102 - the pipeline's own statements
    b, c, _, h, w = image.shape
    pipe = SimpleNamespace(vae=vae, vae_scale_factor_temporal=4, vae_scale_factor_spatial=8)
    pipe._soft_append = lambda *a: scope["_soft_append"](pipe, *a)
    pipe.prepare_image_latents = lambda *a, **k: image
    kinds = scope["FramepackSamplingType"]
    window_frames = (ws - 1) * 4 + 1
    kind = kinds.VANILLA if order == "forward" else kinds.INVERTED_ANTI_DRIFTING
    scope.update(self=pipe, latent_window_size=ws, batch_size=b, num_channels_latents=c,
                 height=h * 8, width=w * 8, device="cpu", generator=None, last_image=None,
                 image=None, image_latents=image, vae_dtype=torch.float32,
                 num_frames=len(sections) * window_frames,
                 output_type="pil" if decode else "latent", sampling_type=kind)  # fmt: skip
    exec(prepare, scope)  # noqa: S102
    assert scope["num_latent_sections"] == len(sections)
    for k, latents in enumerate(sections):
        scope.update(k=k, latents=latents)
        exec(textwrap.dedent(loop_head), scope)  # noqa: S102 - is_last_section
        exec(bookkeeping, scope)  # noqa: S102
    return scope["history_video"]


@pytest.fixture(scope="module")
def hunyuan(tmp_path_factory) -> tuple[Any, Path]:
    folder = tmp_path_factory.mktemp("hunyuan") / "vae"
    return make_tiny_hunyuan(folder, "tiny"), folder


@pytest.mark.parametrize("order", ["backward", "forward"])
def test_framepack_sections_soft_appended(order: str, hunyuan, tmp_path: Path, cli) -> None:
    vae, folder = hunyuan
    name = "framepack" if order == "backward" else "framepack-f1"
    preset = load_preset(name)
    assert preset.decode_mode == DecodeMode("soft-append", 9, order)
    ws = 2  # a small latent_window_size keeps it tiny; the preset's is 9 (written here)
    user = tmp_path / f"{name}.yaml"
    text = Path(preset.source).read_text().replace("section: 9", f"section: {ws}")
    user.write_text(text.replace(f"name: {name}\n", f"name: {name}-ws{ws}\n"))
    g = torch.Generator().manual_seed(4)
    image = torch.randn(2, 16, 1, 3, 4, generator=g)
    sections = [torch.randn(2, 16, ws, 3, 4, generator=g) for _ in range(3)]
    with torch.no_grad():
        saved = framepack_pipeline(vae, order, sections, image, ws, decode=False)[-1]
        reference = framepack_pipeline(vae, order, sections, image, ws, decode=True)
        assert saved.shape[2] == 1 + 3 * ws
        # the pipeline then trims to 1 + 4k frames: its count already is
        assert reference.shape[2] == preset.frames_out(saved.shape[2])
        ours, tmp = ours_and_cli(str(user), saved, folder, tmp_path, cli)
        check(f"{name} ws={ws}", ours, reference, tmp)
        plain = vae.decode(saved / vae.config.scaling_factor).sample
    assert (plain - reference).abs().max() > 1e-3  # the sections are part of the output


def test_pieces_cover_the_frames_the_pipelines_make() -> None:
    assert DecodeMode("endpoint-tail").pieces(5, 4) == [
        Piece((0, 1, 2, 3)), Piece((0, 4), drop=1)
    ]  # fmt: skip
    for order in ("forward", "backward"):
        mode = DecodeMode("soft-append", 9, order)
        for n in (1, 2, 3, 7):
            t = 1 + 9 * n
            pieces = mode.pieces(t, 4)
            frames = sum(1 + 4 * (len(p.frames) - 1) - p.drop - p.blend for p in pieces)
            assert len(pieces) == n and frames == 1 + 4 * (t - 1)
            assert sorted({i for p in pieces for i in p.frames}) == list(range(t))


def test_a_history_the_pipeline_cannot_make_is_one_line(tmp_path: Path, cli) -> None:
    save_file({"latents": torch.randn(1, 16, 12, 3, 4)}, str(tmp_path / "z.safetensors"))
    run = cli("decode", tmp_path / "z.safetensors", "-m", "framepack", "--decoder", "preview",
              "-o", tmp_path / "o.mp4")  # fmt: skip
    assert_one_line_error(run, 1, "12 latent frames are not 1 + k x 9", "section")
    assert not list(tmp_path.glob("o*"))
