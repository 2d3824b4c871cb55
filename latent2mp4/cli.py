"""The `latent2mp4` command: parses options, calls the library, prints with rich."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from latent2mp4.arrays import LATENT_SUFFIXES
from latent2mp4.audio import AudioResult
from latent2mp4.batch import (
    Batch,
    Input,
    Outcome,
    append_report,
    check_report,
    collect_inputs,
    internal_error,
    parse_shard,
    shard,
)
from latent2mp4.compare import Comparison, open_all, plot_psnr, write_csv
from latent2mp4.compare import check_outputs as check_compare_outputs
from latent2mp4.compare import compare as run_compare
from latent2mp4.compare import side_by_side as make_side_by_side
from latent2mp4.errors import Interrupted, Latent2Mp4Error, UsageError
from latent2mp4.info import describe_file
from latent2mp4.pipeline import DecodeOptions, Job, validate
from latent2mp4.presets import builtin_presets, load_preset
from latent2mp4.video import EncodeOptions

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Decode video-diffusion latents to video."
)
out = Console()
err = Console(stderr=True)


class DecoderKind(str, Enum):
    vae = "vae"
    preview = "preview"
    tiny = "tiny"


class Dtype(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Space(str, Enum):
    auto = "auto"
    model = "model"
    vae = "vae"


class Layout(str, Enum):
    BCFHW = "BCFHW"
    BFCHW = "BFCHW"
    BFHWC = "BFHWC"


@contextmanager
def _errors(doing: str, verbose: bool = False) -> Iterator[None]:
    """Our errors and Ctrl-C become one line and an exit code; anything else (a bug) becomes one
    line too, with its traceback under --verbose."""
    try:
        yield
    except Latent2Mp4Error as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        partial = e.path if isinstance(e, Interrupted) else None
        said, code = ("terminated", 143) if _terminated.is_set() else ("interrupted", 130)
        text = f"{said}; the partial {partial} was removed" if partial else said
        err.print(text, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # noqa: BLE001 - nothing a user can feed us prints a traceback
        if verbose:
            err.print_exception()
        err.print(f"[red]error:[/red] {internal_error(doing, e)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@contextmanager
def _progress_factory(quiet: bool) -> Iterator[Callable[[Job], Callable[[int], None] | None]]:
    """Yields `on_job(job)`, which starts a progress bar for one file and returns its counter."""
    if quiet or not err.is_terminal:
        yield lambda job: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:

        def on_job(job: Job) -> Callable[[int], None]:
            task = bar.add_task(job.latent.path.name, total=job.frames * len(job.outputs))
            return lambda n: bar.advance(task, n)

        yield on_job


Opt = typer.Option


@app.command()
def decode(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Latent files, folders or glob patterns.", show_default=False),
    ],
    recursive: Annotated[
        bool, Opt("--recursive", "-r", help="Search folders recursively.")
    ] = False,
    shard_spec: Annotated[
        str | None, Opt("--shard", help="Take the K-th of N slices of the sorted inputs (K/N).")
    ] = None,
    report: Annotated[Path | None, Opt(help="Write one JSON line per input to this file.")] = None,
    model: Annotated[str | None, Opt("--model", "-m", help="Preset name (see `presets`).")] = None,
    preset: Annotated[Path | None, Opt(help="Your own preset YAML.")] = None,
    vae: Annotated[str | None, Opt(help="VAE folder, single file or Hugging Face repo id.")] = None,
    out_file: Annotated[Path | None, Opt("--out", "-o", help="Output file.")] = None,
    out_dir: Annotated[Path | None, Opt(help="Output folder.")] = None,
    fps: Annotated[
        float | None, Opt(help="Frame rate (default: file metadata, else preset).")
    ] = None,
    key: Annotated[str | None, Opt(help="Tensor name in the file.")] = None,
    index: Annotated[
        str, Opt(help="Trajectory steps of (steps,B,C,F,H,W) tensors: -1, 0,-1, ::10 or all.")
    ] = "-1",
    layout: Annotated[
        Layout | None,
        Opt(help="Latent axis order (default: the preset's, or the other when only it fits)."),
    ] = None,
    latent_space: Annotated[
        Space, Opt(help="model: normalised (diffusers); vae: raw (ComfyUI).")
    ] = Space.auto,
    decoder: Annotated[
        DecoderKind, Opt(help="vae; tiny (a taehv file as --vae); or preview (no weights).")
    ] = DecoderKind.vae,
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[Dtype, Opt(help="Decode precision.")] = Dtype.auto,
    tile_size: Annotated[int | None, Opt(help="Spatial tile size in output pixels.")] = None,
    tile_stride: Annotated[int | None, Opt(help="Spatial tile stride in output pixels.")] = None,
    no_tile: Annotated[bool, Opt("--no-tile", help="Never tile spatially.")] = False,
    num_frames: Annotated[
        int | None,
        Opt(help="The generation's frame count: packed LTX latents, CogVideoX 1.5's padding."),
    ] = None,
    height: Annotated[int | None, Opt(help="Packed LTX latents: the generation's height.")] = None,
    width: Annotated[int | None, Opt(help="Packed LTX latents: the generation's width.")] = None,
    decode_timestep: Annotated[
        float | None, Opt(help="Timestep-conditioned VAEs (LTX): decode timestep.")
    ] = None,
    decode_noise_scale: Annotated[
        float | None, Opt(help="Decode noise mixed into the latents (default: the timestep).")
    ] = None,
    seed: Annotated[int, Opt(help="Decode noise seed.")] = 0,
    decode_chunk_size: Annotated[
        int | None,
        Opt(help="SVD/Helios: latent frames per independently decoded window (the pipeline's)."),
    ] = None,
    codec: Annotated[
        str, Opt(help="h264, h265, vp9, av1, prores, ffv1 or an ffmpeg encoder.")
    ] = "h264",
    crf: Annotated[int | None, Opt(help="Constant rate factor (default: codec's).")] = None,
    bitrate: Annotated[str | None, Opt(help="Target bitrate, e.g. 8M (replaces CRF).")] = None,
    pix_fmt: Annotated[str | None, Opt(help="Output pixel format, e.g. yuv420p10le.")] = None,
    lossless: Annotated[
        bool, Opt("--lossless", help="Bit-exact RGB (libx264rgb QP 0, or FFV1).")
    ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool, Opt("--skip-existing", help="Skip inputs whose output exists.")
    ] = False,
    audio: Annotated[
        Path | None, Opt(help="Mux this audio file (wav, flac, mp3, m4a, …) into the video.")
    ] = None,
    audio_key: Annotated[
        str | None, Opt(help="Audio latents tensor name (default: the preset's).")
    ] = None,
    audio_vae: Annotated[
        str | None, Opt(help="Audio VAE folder or file (default: beside --vae).")
    ] = None,
    vocoder: Annotated[
        str | None, Opt(help="Vocoder folder or file (default: beside --vae).")
    ] = None,
    no_audio: Annotated[bool, Opt("--no-audio", help="Write video only.")] = False,
    audio_codec: Annotated[
        str | None,
        Opt(help="aac, flac, opus, mp3 or an ffmpeg encoder (default: aac; flac with --lossless)."),
    ] = None,
    audio_bitrate: Annotated[str | None, Opt(help="Lossy audio bitrate (default 192k).")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress or notes.")] = False,
    verbose: Annotated[
        bool, Opt("--verbose", "-v", help="Log the ffmpeg command and more.")
    ] = False,
) -> None:
    """Decode latents to video with the model's VAE (or the weightless preview)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    opts = DecodeOptions(
        model=model,
        preset=preset,
        vae=vae,
        out=out_file,
        out_dir=out_dir,
        fps=fps,
        key=key,
        index=index,
        layout=layout.value if layout else None,
        latent_space=latent_space.value,
        decoder=decoder.value,
        device=device,
        dtype=dtype.value,
        tile_size=tile_size,
        tile_stride=tile_stride,
        no_tile=no_tile,
        codec=codec,
        crf=crf,
        bitrate=bitrate,
        pix_fmt=pix_fmt,
        lossless=lossless,
        overwrite=overwrite,
        skip_existing=skip_existing,
        audio=audio,
        audio_key=audio_key,
        audio_vae=audio_vae,
        vocoder=vocoder,
        no_audio=no_audio,
        audio_codec=audio_codec,
        audio_bitrate=audio_bitrate,
        num_frames=num_frames,
        height=height,
        width=width,
        decode_timestep=decode_timestep,
        decode_noise_scale=decode_noise_scale,
        seed=seed,
        decode_chunk_size=decode_chunk_size,
    )
    with _errors("collecting the inputs", verbose):
        items = collect_inputs(inputs, recursive)
        validate(opts, len(items))
        if not items:
            raise UsageError(f"no latent files ({', '.join(LATENT_SUFFIXES)}) found in the inputs")
        if report is not None:
            check_report(report)
        if shard_spec:
            total = len(items)
            items = shard(items, *parse_shard(shard_spec))
            if not items:  # more array tasks than files: this one has nothing to do
                err.print(f"note: shard {shard_spec} of {total} file(s) is empty; nothing to do")
                return
        single = len(items) == 1 and not Path(inputs[0]).is_dir()
        with _progress_factory(quiet) as on_job:
            outcomes = [
                _report(o, single, quiet, report, verbose) for o in _run(items, opts, on_job)
            ]
    failed = [o for o in outcomes if o.error is not None]
    if not single:
        _summary(outcomes)
    if failed:
        raise typer.Exit(failed[0].exit_code if single else 1)


def _run(items: list[Input], opts: DecodeOptions, on_job: Callable) -> Iterator[Outcome]:
    batch = Batch(opts, on_job)
    for item in items:
        yield batch.run_one(item)


def _report(
    o: Outcome, single: bool, quiet: bool, report: Path | None, verbose: bool = False
) -> Outcome:
    if report is not None:
        append_report(report, o)
    if o.error is not None:
        if verbose and o.trace:
            err.print(o.trace, highlight=False, soft_wrap=True, markup=False)
        err.print(f"[red]error:[/red] {o.error}", highlight=False, soft_wrap=True)
        return o
    for r in o.results:
        if not quiet:
            where = "" if single else f"{r.output}: "  # in a batch, say which file
            for note in r.notes:
                err.print(f"[dim]note:[/dim] {where}{note}", highlight=False, soft_wrap=True)
        if r.skipped:
            status = "skipped (exists)"
        else:
            status = f"{r.frames} frames {r.width}x{r.height} @ {r.fps:g} fps"
            if r.audio is not None:
                status += f", audio {_audio(r.audio)}"
        if single:
            out.print(f"{r.output}  {status}", highlight=False, soft_wrap=True)
    return o


def _summary(outcomes: list[Outcome]) -> None:
    table = Table(title="latent2mp4 decode", show_edge=False)
    for col in ("file", "frames", "resolution", "audio", "seconds", "status"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        rec = o.record()
        res = f"{rec['width']}x{rec['height']}" if rec["width"] else "-"
        style = {"ok": "green", "skipped": "yellow", "failed": "red"}[o.status]
        table.add_row(
            str(o.source),
            str(rec["frames"]),
            res,
            _audio(o.results[0].audio) if o.results and o.results[0].audio else "-",
            f"{o.seconds:.1f}",
            f"[{style}]{o.status}[/{style}]",
        )
    out.print(table)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items()))


def _audio(a: AudioResult) -> str:
    rate = f" {a.sample_rate / 1000:g} kHz" if a.sample_rate else ""
    return f"{a.seconds:.2f} s {a.codec}{rate}"


@app.command()
def compare(
    inputs: Annotated[
        list[Path], typer.Argument(help="Reference A, then B [C …]: videos or latents.")
    ],
    csv: Annotated[Path | None, Opt("--csv", help="Per-frame metrics as CSV.")] = None,
    plot: Annotated[Path | None, Opt("--plot", help="Per-frame PSNR curve as PNG.")] = None,
    side_by_side: Annotated[
        Path | None, Opt(help="Write the inputs side by side to this video.")
    ] = None,
    resize: Annotated[
        bool, Opt("--resize", help="Scale inputs to A's size; compare common frames.")
    ] = False,
    model: Annotated[str | None, Opt("--model", "-m", help="Preset for latent inputs.")] = None,
    vae: Annotated[str | None, Opt(help="VAE for latent inputs.")] = None,
    decoder: Annotated[DecoderKind, Opt(help="Decoder for latent inputs.")] = DecoderKind.vae,
    key: Annotated[str | None, Opt(help="Tensor name in latent inputs.")] = None,
    index: Annotated[str, Opt(help="Trajectory step of latent inputs.")] = "-1",
    latent_space: Annotated[Space, Opt(help="Latent space of latent inputs.")] = Space.auto,
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[Dtype, Opt(help="Decode precision.")] = Dtype.auto,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace existing output files.")] = False,
    verbose: Annotated[bool, Opt("--verbose", "-v", help="Tracebacks of internal errors.")] = False,
) -> None:
    """Per-frame PSNR, SSIM and MAE of B, C, … against the reference A."""
    if len(inputs) < 2:
        err.print("[red]error:[/red] compare needs a reference and at least one other input")
        raise typer.Exit(2)
    opts = DecodeOptions(
        model=model,
        vae=vae,
        decoder=decoder.value,
        key=key,
        index=index,
        latent_space=latent_space.value,
        device=device,
        dtype=dtype.value,
    )
    with _errors("comparing", verbose):
        wanted = {"--csv": csv, "--plot": plot, "--side-by-side": side_by_side}
        check_compare_outputs(inputs, wanted, overwrite)
        sources = open_all(inputs, opts)
        result = run_compare(sources[0], sources[1:], resize=resize)
        if csv:
            write_csv(csv, result, overwrite)
        if plot:
            plot_psnr(plot, result, overwrite)
        sbs = None
        if side_by_side:
            fps = sources[0].fps or 16.0
            sbs = make_side_by_side(sources, side_by_side, EncodeOptions(fps=fps), overwrite)
    _comparison_table(result)
    for note in (*result.notes, *(sbs.notes if sbs else ())):
        err.print(f"[dim]note:[/dim] {note}", highlight=False, soft_wrap=True)
    if sbs:
        v = sbs.video
        out.print(f"{v.path}  {v.frames} frames {v.width}x{v.height}", highlight=False)


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def _comparison_table(result: Comparison) -> None:
    table = Table(title=f"vs {result.reference}", show_edge=False)
    for col in (
        "input",
        "frames",
        "identical",
        "PSNR mean",
        "PSNR min",
        "worst frame",
        "SSIM mean",
        "MAE mean",
    ):
        table.add_column(col, overflow="fold")
    for s in result.summaries:
        worst = "-" if s.worst_frame is None else str(s.worst_frame)
        table.add_row(
            s.input,
            str(s.frames),
            str(s.identical),
            _db(s.mean_psnr),
            _db(s.min_psnr),
            worst,
            f"{s.mean_ssim:.4f}",
            f"{s.mean_mae:.3f}",
        )
    out.print(table)


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Latent file.")],
    preset: Annotated[Path | None, Opt(help="Your own preset YAML, considered too.")] = None,
    verbose: Annotated[bool, Opt("--verbose", "-v", help="Tracebacks of internal errors.")] = False,
) -> None:
    """Tensors, metadata and what each fitting model would decode them to."""
    with _errors(f"reading {path}", verbose):
        d = describe_file(path, load_preset(str(preset)) if preset else None)
    table = Table(title=str(path), show_edge=False)
    for col in ("tensor", "dtype", "shape"):
        table.add_column(col)
    for name, (dt, shape) in d["tensors"].items():
        table.add_row(name, dt, str(tuple(shape)))
    out.print(table)
    for k, v in d["metadata"].items():
        out.print(f"[bold]{k}[/bold]: {_short(v)}", highlight=False)
    fits = Table(title="models that fit", show_edge=False)
    for col in ("model", "latents", "frames", "resolution", "duration"):
        fits.add_column(col)
    for row in d["fits"]:
        fits.add_row(*row)
    if d["empty"]:
        out.print(f"'{d['key']}' has an empty dimension: there is nothing to decode")
    else:
        out.print(fits if d["fits"] else "no preset fits this tensor's channel count")
    if d["audio"]:
        sound = Table(title="audio", show_edge=False)
        for col in ("model", "tensor", "shape", "duration"):
            sound.add_column(col)
        for row in d["audio"]:
            sound.add_row(*row)
        out.print(sound)


def _short(v: Any, n: int = 200) -> str:
    s = str(v)
    return s if len(s) <= n else s[:n] + f"… ({len(s)} chars)"


@app.command()
def presets() -> None:
    """The built-in model presets."""
    with _errors("listing the presets"):
        table = Table(show_edge=False)
        presets = builtin_presets().values()
        widths = {"name": max(len(p.name) for p in presets), "aliases": 12}
        for col in ("name", "aliases", "channels", "scale", "fps", "default VAE"):
            wrap = col in ("aliases", "default VAE")  # names and numbers stay whole
            table.add_column(col, no_wrap=not wrap, overflow="fold", min_width=widths.get(col))
        for p in presets:
            scale = f"{p.spatial_ratio}x{p.temporal_ratio}"
            table.add_row(
                p.name, " ".join(p.aliases), str(p.latent_channels), scale, f"{p.fps:g}", p.hub_repo
            )
        out.print(table)


_terminated = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    # scancel, a SLURM time limit and `timeout` send SIGTERM: clean up exactly as for Ctrl-C.
    _terminated.set()
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except BrokenPipeError:  # `latent2mp4 presets | head`
        sys.exit(0)
