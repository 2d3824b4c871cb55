"""decode_file: one latent file in, one video per batch element out. The CLI calls this."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
from torch import Tensor

from latent2mp4 import __version__
from latent2mp4.device import pick_device, pick_dtype
from latent2mp4.engine import TileGrid, decode_stream
from latent2mp4.errors import InputError, UsageError
from latent2mp4.frames import prefetch, to_frames
from latent2mp4.latents import (
    LatentFile,
    LatentSpace,
    denormalise,
    normalise,
    read_latent_file,
    resolve_latent_space,
    select_video,
)
from latent2mp4.memory import chunk_frames
from latent2mp4.models.preview import PreviewDecoder
from latent2mp4.presets import Preset, builtin_presets, load_preset
from latent2mp4.tiling import choose_grid, tile_grid
from latent2mp4.video import EncodeOptions, check_output, write_video
from latent2mp4.weights import load_vae, resolve_vae

if TYPE_CHECKING:
    from latent2mp4.models.family import StreamModule

log = logging.getLogger(__name__)

PREFETCH_FRAMES = 8  # decoded frames that may wait for ffmpeg (two Wan chunks)
MAX_FRAME_SIDE = 16384  # libx264 and most encoders refuse larger frames
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class DecodeOptions:
    """Everything `latent2mp4 decode` can be told; defaults are the CLI's defaults."""

    model: str | None = None  # preset name/alias; None: from file metadata or channel count
    preset: Path | None = None  # a user's own preset YAML (wins over model)
    vae: str | None = None  # folder, single file or HF repo id; None: the preset's repo
    out: Path | None = None  # output file (B > 1 adds -0, -1, …)
    out_dir: Path | None = None  # output folder (name from the input)
    fps: float | None = None  # None: file metadata, else preset
    key: str | None = None
    index: str | int = -1  # trajectory steps of 6-D tensors: -1, "0,-1", "::10", "all"
    layout: str | None = None  # BCFHW / BFCHW; None: preset
    latent_space: LatentSpace = "auto"
    decoder: Literal["vae", "preview"] = "vae"
    device: str = "auto"
    dtype: str = "auto"
    tile_size: int | None = None  # output pixels; None: preset
    tile_stride: int | None = None
    no_tile: bool = False
    codec: str = "h264"
    crf: int | None = None
    bitrate: str | None = None
    pix_fmt: str | None = None
    lossless: bool = False
    overwrite: bool = False
    skip_existing: bool = False


@dataclass(frozen=True)
class VideoResult:
    source: Path
    output: Path
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    skipped: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Video:
    """One output video of a job: a trajectory step and batch element of the stored tensor."""

    pos: int  # position among the selected steps (axis 0 of Job.z)
    step: int | None  # the trajectory step, None without a trajectory axis
    batch: int
    output: Path


@dataclass(frozen=True)
class Job:
    """A validated latent file: what will be decoded and where it goes (no weights touched yet)."""

    latent: LatentFile
    preset: Preset
    z: Tensor  # (S, B, C, T, h, w) as stored (model or VAE space)
    space: str
    videos: tuple[Video, ...]
    fps: float
    notes: tuple[str, ...]
    grid: TileGrid | None = None  # spatial tiles, when a frame does not fit in memory untiled
    chunk_frames: int = 1  # latent frames per decode call (several on a GPU with room)

    @property
    def outputs(self) -> tuple[Path, ...]:
        return tuple(v.output for v in self.videos)

    @property
    def frames(self) -> int:
        """Frames of each output video."""
        return self.preset.frames_out(self.z.shape[3])

    def latents(self, video: Video) -> Tensor:
        """`(1, C, T, h, w)` latents of one output video, as stored."""
        return self.z[video.pos, video.batch : video.batch + 1]


def pick_preset(opts: DecodeOptions, lf: LatentFile | None = None) -> Preset:
    if opts.preset is not None:
        return load_preset(str(opts.preset))
    if opts.model is not None:
        return load_preset(opts.model)
    if lf is not None and lf.meta_model:
        return load_preset(lf.meta_model)
    if lf is not None and lf.tensor.ndim >= 4:
        channels = {lf.tensor.shape[-4], lf.tensor.shape[-3]}
        fits = [p for p in builtin_presets().values() if p.latent_channels in channels]
        if len({p.family for p in fits}) == 1 and len({p.latent_channels for p in fits}) == 1:
            return fits[0]
        names = ", ".join(p.name for p in fits) or "none"
        raise UsageError(
            f"{lf.path}: the file does not name its model; pass --model (fits: {names})"
        )
    raise UsageError("pass --model or --preset")


def plan_videos(
    source: Path,
    opts: DecodeOptions,
    steps: tuple[int | None, ...],
    batch: int,
    suffix: str,
    root: Path | None = None,
) -> tuple[Video, ...]:
    """One video per selected step and batch element: `run.mp4`, `run-step049.mp4`, `run-1.mp4`.

    Steps are named whenever --index is not the default (the last step) or picks several.
    """
    bases = output_paths(source, opts, suffix, root)
    named = len(steps) > 1 or (steps[0] is not None and str(opts.index).strip() != "-1")
    width = max(3, len(str(max((s or 0) for s in steps))))
    videos = []
    for pos, step in enumerate(steps):
        stem = bases.stem + (f"-step{step:0{width}d}" if named and step is not None else "")
        for b in range(batch):
            name = stem + (f"-{b}" if batch > 1 else "") + bases.suffix
            videos.append(Video(pos, step, b, bases.with_name(name)))
    return tuple(videos)


def output_paths(source: Path, opts: DecodeOptions, suffix: str, root: Path | None = None) -> Path:
    """The base output name: next to the input, or under --out-dir mirroring its place below
    `root`, or --out."""
    if opts.out is not None:
        base = opts.out if opts.out.suffix else opts.out.with_suffix(suffix)
    elif opts.out_dir is not None:
        below = source.parent.relative_to(root) if root is not None else Path()
        base = opts.out_dir / below / (source.stem + suffix)
    else:
        base = source.parent / (source.stem + suffix)
    return base


def encode_options(opts: DecodeOptions, fps: float, metadata: dict[str, str]) -> EncodeOptions:
    return EncodeOptions(
        fps=fps,
        codec=opts.codec,
        crf=opts.crf,
        bitrate=opts.bitrate,
        pix_fmt=opts.pix_fmt,
        lossless=opts.lossless,
        metadata=metadata,
    )


def plan(path: Path, opts: DecodeOptions, root: Path | None = None) -> Job:
    """Read and validate one latent file and work out its outputs; cheap, no weights.

    `root` is the folder an input was found under, mirrored below --out-dir.
    """
    lf = read_latent_file(path, opts.key)
    preset = pick_preset(opts, lf)
    sel = select_video(lf, preset, opts.layout, opts.index)
    space, why = resolve_latent_space(lf, opts.latent_space)
    fps = opts.fps or lf.meta_fps or preset.fps
    suffix = encode_options(opts, fps, {}).default_suffix()
    videos = plan_videos(path, opts, sel.steps, sel.z.shape[1], suffix, root)
    notes = (*sel.notes, f"latent space: {space} ({why})")
    if opts.decoder == "preview" and preset.preview.approximate:
        notes += (f"preview colours for {preset.name} are approximate (no published factors)",)
    h, w = (d * preset.spatial_ratio for d in sel.z.shape[-2:])
    if max(h, w) > MAX_FRAME_SIDE:
        raise InputError(
            f"{path}: frames would be {w}x{h}; video encoders stop at {MAX_FRAME_SIDE} px"
        )
    device = pick_device(opts.device)
    dtype = (
        torch.float32
        if opts.decoder == "preview"
        else pick_dtype(opts.dtype, device, preset, opts.lossless)
    )
    grid, tiling_note = choose_grid(
        preset,
        (sel.z.shape[-2], sel.z.shape[-1]),
        device,
        dtype,
        path,
        tile_size=opts.tile_size,
        tile_stride=opts.tile_stride,
        no_tile=opts.no_tile,
        preview=opts.decoder == "preview",
    )
    notes += (tiling_note,) if tiling_note else ()
    per_call = chunk_frames(preset, sel.z.shape[-2], sel.z.shape[-1], dtype, grid, device)
    return Job(lf, preset, sel.z, space, videos, fps, notes, grid, per_call)


@dataclass(frozen=True)
class Decoder:
    """A ready decoder plus how to bring a job's latents into its input space."""

    module: StreamModule
    prepare: Callable[[Job, Tensor], Tensor]  # (job, stored latents) → decoder input
    device: torch.device
    dtype: torch.dtype
    description: str


def build_decoder(opts: DecodeOptions, preset: Preset) -> Decoder:
    """Load the VAE (or make the preview decoder) once; it can serve many jobs of this preset."""
    device = pick_device(opts.device)
    if opts.decoder == "preview":
        module = cast("StreamModule", PreviewDecoder(preset).to(device))

        def to_model_space(job: Job, z: Tensor) -> Tensor:
            z = z.float()
            return normalise(z, job.preset.normalization) if job.space == "vae" else z

        return Decoder(module, to_model_space, device, torch.float32, "preview (no weights)")
    dtype = pick_dtype(opts.dtype, device, preset, opts.lossless)
    loaded = load_vae(resolve_vae(opts.vae, preset), preset, device, dtype)
    norm = loaded.normalization or preset.normalization

    def to_vae_space(job: Job, z: Tensor) -> Tensor:
        # Denormalise in fp32 on the host; chunks are cast to the decode dtype as they go.
        return denormalise(z, norm) if job.space == "model" else z.float()

    return Decoder(loaded.decoder, to_vae_space, device, dtype, loaded.description)


def _count(frames: Iterable[np.ndarray], progress: ProgressFn | None) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame
        if progress is not None:
            progress(1)


def run_job(
    job: Job, decoder: Decoder, opts: DecodeOptions, progress: ProgressFn | None = None
) -> list[VideoResult]:
    """Decode every video of `job` to its output, streaming frames into ffmpeg."""
    results = []
    for video in job.videos:
        out = video.output
        if out.exists() and opts.skip_existing:
            results.append(_skipped(job, out))
            continue
        z = decoder.prepare(job, job.latents(video))
        meta = {
            "latent2mp4_version": __version__,
            "latent2mp4_model": job.preset.name,
            "latent2mp4_source": str(job.latent.path),
            "latent2mp4_key": job.latent.key,
            "latent2mp4_batch_index": str(video.batch),
            **({"latent2mp4_step": str(video.step)} if video.step is not None else {}),
            "comment": f"decoded by latent2mp4 {__version__} ({decoder.description})",
        }
        start = time.perf_counter()
        chunks = decode_stream(
            decoder.module, z, job.grid, decoder.device, decoder.dtype, job.chunk_frames
        )
        info = write_video(
            _count(prefetch(to_frames(chunks), PREFETCH_FRAMES), progress),
            out,
            encode_options(opts, job.fps, meta),
            opts.overwrite,
        )
        notes = job.notes + (
            ("odd size padded by edge replication for the pixel format",) if info.padded else ()
        )
        results.append(
            VideoResult(
                job.latent.path,
                out,
                info.frames,
                info.width,
                info.height,
                job.fps,
                time.perf_counter() - start,
                False,
                notes,
            )
        )
    return results


def _skipped(job: Job, out: Path) -> VideoResult:
    return VideoResult(
        job.latent.path, out, 0, 0, 0, job.fps, 0.0, skipped=True, notes=("output exists",)
    )


def all_skipped(job: Job, opts: DecodeOptions) -> list[VideoResult] | None:
    """Results for a job whose every output exists under --skip-existing; None otherwise."""
    if opts.skip_existing and all(out.exists() for out in job.outputs):
        return [_skipped(job, out) for out in job.outputs]
    return None


def validate(opts: DecodeOptions, n_inputs: int = 1) -> None:
    """Usage errors that do not depend on any input file, raised before any work starts."""
    if n_inputs > 1 and opts.out is not None:
        raise UsageError("--out names one file; use --out-dir with several inputs")
    if opts.out is not None and opts.out_dir is not None:
        raise UsageError("--out and --out-dir exclude each other")
    if opts.overwrite and opts.skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    name = str(opts.preset) if opts.preset else opts.model
    preset = load_preset(name) if name else None
    device = pick_device(opts.device)
    if preset is not None:
        pick_dtype(opts.dtype, device, preset, opts.lossless)
        if opts.decoder == "vae":
            tile_grid(preset, opts.tile_size, opts.tile_stride)
    enc = encode_options(opts, opts.fps or 1.0, {})
    enc.check(
        opts.out if opts.out is not None and opts.out.suffix else Path("x" + enc.default_suffix())
    )


def check_outputs(job: Job, opts: DecodeOptions) -> None:
    for out in job.outputs:
        if not (opts.skip_existing and out.exists()):
            check_output(out, opts.overwrite)


def decode_file(
    path: str | Path, opts: DecodeOptions | None = None, progress: ProgressFn | None = None
) -> list[VideoResult]:
    """Decode one latent file to video(s) with `opts`; returns one result per batch element."""
    opts = opts or DecodeOptions()
    validate(opts)
    job = plan(Path(path), opts)
    check_outputs(job, opts)
    skipped = all_skipped(job, opts)
    if skipped is not None:
        return skipped
    return run_job(job, build_decoder(opts, job.preset), opts, progress)
