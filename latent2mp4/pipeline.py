"""Planning: what a latent input becomes, checked before any weights load (the options are in
options.py, re-exported here).

`decoder.py` holds the object that loads weights once and runs the plans made here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latent2mp4.audio import AudioResult, AudioSource, check_audio_options, plan_audio
from latent2mp4.device import pick_device, pick_dtype, slow_dtype_note
from latent2mp4.engine import TileGrid
from latent2mp4.errors import InputError, UsageError
from latent2mp4.latents import (
    LatentFile,
    LatentView,
    VaeLatents,
    read_latent_file,
    resolve_latent_space,
    select_video,
)
from latent2mp4.memory import chunk_frames, return_large_buffers_to_the_os
from latent2mp4.models.family import TimestepSettings
from latent2mp4.models.registry import get_family
from latent2mp4.models.tiny.loader import TINY_BYTES_PER_PIXEL, download_hint
from latent2mp4.options import DecodeOptions
from latent2mp4.packed import VideoSize
from latent2mp4.presets import Preset, builtin_presets, load_preset
from latent2mp4.tiling import choose_grid, tile_grid
from latent2mp4.video import EncodeOptions, check_output
from latent2mp4.weights import vae_latents

log = logging.getLogger(__name__)

MAX_FRAME_SIDE = 16384  # libx264 and most encoders refuse larger frames


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
    audio: AudioResult | None = None


@dataclass(frozen=True)
class Video:
    """One output video of a job: a trajectory step and batch element of the stored tensor."""

    pos: int  # position among the selected steps (axis 0 of Job.z)
    step: int | None  # the trajectory step, None without a trajectory axis
    batch: int
    output: Path


@dataclass(frozen=True)
class Job:
    """A validated latent input: what will be decoded and where it goes (no weights touched yet)."""

    latent: LatentFile
    preset: Preset
    view: LatentView  # (S, B, C, T, h, w) as stored (model or VAE space), read on demand
    space: str
    videos: tuple[Video, ...]
    fps: float
    notes: tuple[str, ...]
    grid: TileGrid | None = None  # spatial tiles, when a frame does not fit in memory untiled
    chunk_frames: int = 1  # latent frames per decode call (several when frames are small)
    audio: AudioSource | None = None  # every output's sound: audio latents or a file
    window: int | None = None  # --decode-chunk-size: latent frames per independent segment

    @property
    def outputs(self) -> tuple[Path, ...]:
        return tuple(v.output for v in self.videos)

    @property
    def frames(self) -> int:
        """Frames of each output video."""
        return self.preset.frames_out(self.view.shape[3], self.window)

    @property
    def segments(self) -> list[tuple[int, int]] | None:
        """Latent ranges decoded as separate clips (the preset's pipeline splits them)."""
        return self.preset.segment_ranges(self.view.shape[3], self.window)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        r = self.preset.spatial_ratio
        return self.view.shape[4] * r, self.view.shape[5] * r


def pick_preset(opts: DecodeOptions, lf: LatentFile | None = None) -> Preset:
    if opts.preset is not None:
        return load_preset(str(opts.preset))
    if opts.model is not None:
        return load_preset(opts.model)
    if lf is not None and lf.meta_model:
        return load_preset(lf.meta_model)
    if lf is not None and len(lf.array.shape) >= 4:
        channels = {lf.array.shape[-4], lf.array.shape[-3]}
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
    total_steps: int = 1,
) -> tuple[Video, ...]:
    """One video per selected step and batch element: `run.mp4`, `run-step049.mp4`, `run-1.mp4`.

    Steps are named whenever --index is not the default (the last step) or picks several.
    """
    bases = output_paths(source, opts, suffix, root)
    named = len(steps) > 1 or (steps[0] is not None and str(opts.index).strip() != "-1")
    # Padded for the whole trajectory, so a step has one name whichever steps a run picks.
    width = max(3, len(str(total_steps - 1)))
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
        below = source.parent.absolute().relative_to(root.absolute()) if root else Path()
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


VaeLookup = Callable[[Preset], VaeLatents | None]  # what the VAE for a preset decodes


def plan(
    path: Path, opts: DecodeOptions, root: Path | None = None, vae: VaeLookup | None = None
) -> Job:
    """Read and validate one latent file and work out its outputs; cheap, no weights.

    `root` is the folder an input was found under, mirrored below --out-dir. `vae` tells what
    the VAE for a preset decodes (a loaded decoder's, or a batch's cache); None: read it here.
    """
    return plan_latents(read_latent_file(path, opts.key), opts, root, vae)


def vae_for(opts: DecodeOptions, preset: Preset) -> VaeLatents | None:
    """What the VAE `--vae` names decodes, read from its config or tensor headers (no weights
    load); None where the preset's numbers apply: no --vae (the preset's own release VAE), or
    the preview and tiny decoders."""
    if opts.decoder != "vae" or opts.vae is None:
        return None
    return vae_latents(opts.vae, preset)


def check_normalization(preset: Preset, vae: VaeLatents, where: Path) -> None:
    """Model-space latents are de-normalised with the VAE's own numbers where it has them,
    else with the preset's, which must then fit the VAE's channel count."""
    if vae.statistics_in_weights or vae.channels is None:
        return
    norm = preset.normalization.with_values_of(vae.normalization)
    if norm.channels is not None and norm.channels != vae.channels:
        raise InputError(
            f"{where}: --model {preset.name}'s normalization has {norm.channels} per-channel "
            f"values ({preset.source or 'preset'}) but the VAE has {vae.channels} latent "
            f"channels ({vae.origin}) and no latents_mean/latents_std of its own; pass "
            "VAE-space latents (--latent-space vae) or a preset whose numbers fit (--preset)"
        )


def plan_latents(
    lf: LatentFile, opts: DecodeOptions, root: Path | None = None, vae: VaeLookup | None = None
) -> Job:
    """`plan` for latents already opened (a file, or a tensor in memory)."""
    return_large_buffers_to_the_os()  # before the first large buffer: the NaN/Inf scan's
    path = lf.path
    preset = pick_preset(opts, lf)
    size = VideoSize(opts.num_frames, opts.height, opts.width)
    in_hand = vae(preset) if vae is not None else vae_for(opts, preset)
    sel = select_video(lf, preset, opts.layout, opts.index, size, in_hand)
    space, why = resolve_latent_space(lf, opts.latent_space, preset)
    if in_hand is not None and space == "model":
        check_normalization(preset, in_hand, path)
    fps = opts.fps or lf.meta_fps or preset.fps
    suffix = encode_options(opts, fps, {}).default_suffix()
    total = lf.array.shape[0] if len(lf.array.shape) == 6 else 1
    videos = plan_videos(path, opts, sel.steps, sel.view.shape[1], suffix, root, total)
    notes = (*sel.notes, f"latent space: {space} ({why})")
    if opts.decoder == "preview" and preset.preview.approximate:
        notes += (f"preview colours for {preset.name} are approximate (no published factors)",)
    stats_from_vae = opts.decoder == "preview" and opts.vae is not None
    if opts.decoder != "vae" and space == "vae" and get_family(preset.family).normalization:
        # LTX keeps its latent statistics in the VAE weights: the preview reads them from a
        # --vae; the tiny decoder's --vae is its own file, so it has none to read.
        if stats_from_vae:
            notes += (f"VAE-space latents normalised with the statistics in {opts.vae}",)
        else:
            where = (
                "--decoder preview --vae VAE reads them"
                if opts.decoder == "preview"
                else "the tiny decoder's --vae is its taehv file"
            )
            notes += (
                f"VAE-space latents go to the {opts.decoder} decoder un-normalised: the "
                f"{preset.name} statistics live in its VAE weights ({where}); colours may be off",
            )
    lh, lw = sel.view.shape[-2:]
    h, w = lh * preset.spatial_ratio, lw * preset.spatial_ratio
    if max(h, w) > MAX_FRAME_SIDE:
        raise InputError(
            f"{path}: frames would be {w}x{h}; video encoders stop at {MAX_FRAME_SIDE} px"
        )
    if preset.decode_mode is not None:  # refused before any output exists
        try:
            pieces = preset.decode_mode.pieces(sel.view.shape[3], preset.temporal_ratio)
        except ValueError as e:
            mode = preset.decode_mode.kind
            raise InputError(f"{path}: {preset.name} decodes as {mode}: {e}") from None
        if len(pieces) > 1:
            notes += (f"{preset.decode_mode.kind} decode: {len(pieces)} clips, as the pipeline",)
    device = pick_device(opts.device)
    dtype = (
        torch.float32
        if opts.decoder == "preview"
        else pick_dtype(opts.dtype, device, preset, opts.lossless)
    )
    try:
        grid, tiling_note = choose_grid(
            preset,
            (lh, lw),
            device,
            dtype,
            path,
            tile_size=opts.tile_size,
            tile_stride=opts.tile_stride,
            no_tile=opts.no_tile,
            preview=opts.decoder == "preview",
            bytes_per_pixel=_bytes_per_pixel(preset, opts, sel.view.shape[3]),
            vae=opts.decoder == "vae",
        )
    except InputError as e:
        if preset.segments is None or not preset.whole_clip:
            raise
        # A window's frames are decoded in one call: fewer frames per window is the other lever.
        raise InputError(
            f"{e} (--decode-chunk-size N decodes N frames per window, as the pipeline's argument)"
        ) from None
    notes += (tiling_note,) if tiling_note else ()
    if slow := slow_dtype_note(dtype, device):  # preview decodes in fp32: never said
        notes += (slow,)
    per_call = chunk_frames(preset, lh, lw, dtype, grid, device)
    audio, audio_notes = plan_audio(path, preset, opts, sel.view.shape[1])
    window = opts.decode_chunk_size
    if window is not None and preset.segments is None:
        raise UsageError(
            f"--decode-chunk-size: the {preset.name} pipeline does not decode in windows "
            "(frames per call follow the memory available)"
        )
    if preset.segments is not None:
        notes += (segment_note(preset, sel.view.shape[3], window),)
    return Job(
        lf, preset, sel.view, space, videos, fps, notes + audio_notes, grid, per_call, audio, window
    )


def segment_note(preset: Preset, t: int, window: int | None) -> str:
    ranges = preset.segment_ranges(t, window) or []
    n = ranges[0][1] - ranges[0][0] if ranges else t
    origin = "--decode-chunk-size" if window is not None else f"{preset.name} preset"
    skipped = f"; the first {ranges[0][0]} not decoded" if ranges and ranges[0][0] else ""
    return (
        f"decoded in {len(ranges)} independent window(s) of {n} latent frame(s) ({origin}){skipped}"
    )


def _bytes_per_pixel(preset: Preset, opts: DecodeOptions, t: int) -> int | None:
    """The memory estimate's bytes per pixel when not the preset's own: the tiny decoder's, or
    a non-causal decoder's for one whole window of a segmented pipeline (SVD)."""
    if opts.decoder == "tiny":
        return TINY_BYTES_PER_PIXEL
    ranges = preset.segment_ranges(t, opts.decode_chunk_size)
    if opts.decoder == "vae" and preset.whole_clip and ranges:
        longest = max(b - a for a, b in ranges)
        return preset.decode_bytes_per_pixel * max(1, longest // preset.chunk_frames)
    return None


def timestep_settings(opts: DecodeOptions, preset: Preset) -> tuple[TimestepSettings, str]:
    """The decode timestep, noise scale and seed to use, and where they came from."""
    if opts.decode_timestep is not None:
        t, origin = opts.decode_timestep, "--decode-timestep"
        noise = opts.decode_noise_scale if opts.decode_noise_scale is not None else t
    else:
        t, origin = preset.decode_timestep, f"{preset.name} preset"
        if opts.decode_noise_scale is not None:
            noise = opts.decode_noise_scale
        else:
            noise = preset.decode_noise_scale if preset.decode_noise_scale is not None else t
    return TimestepSettings(t, noise, opts.seed), origin


def skipped(job: Job, out: Path) -> VideoResult:
    return VideoResult(
        job.latent.path, out, 0, 0, 0, job.fps, 0.0, skipped=True, notes=("output exists",)
    )


def all_skipped(job: Job, opts: DecodeOptions) -> list[VideoResult] | None:
    """Results for a job whose every output exists under --skip-existing; None otherwise."""
    if opts.skip_existing and all(out.exists() for out in job.outputs):
        return [skipped(job, out) for out in job.outputs]
    return None


def validate(opts: DecodeOptions, n_inputs: int = 1) -> None:
    """Usage errors that do not depend on any input file, raised before any work starts."""
    if n_inputs > 1 and opts.out is not None:
        raise UsageError("--out names one file; use --out-dir with several inputs")
    if opts.out is not None and opts.out_dir is not None:
        raise UsageError("--out and --out-dir exclude each other")
    if opts.out is not None and opts.out.is_dir():
        raise UsageError(f"--out {opts.out} is a folder; use --out-dir to write into it")
    if opts.overwrite and opts.skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    if opts.latent_space not in ("auto", "model", "vae"):
        raise UsageError(f"--latent-space must be auto, model or vae, not {opts.latent_space!r}")
    if opts.no_audio and (opts.audio is not None or opts.audio_codec is not None):
        raise UsageError("--no-audio excludes --audio and --audio-codec")
    if opts.audio is not None and opts.audio_key is not None:
        raise UsageError("--audio excludes --audio-key (a file's audio latents)")
    if opts.decode_chunk_size is not None and opts.decode_chunk_size < 1:
        raise UsageError(f"--decode-chunk-size must be at least 1, not {opts.decode_chunk_size}")
    for flag, value in (("--tile-size", opts.tile_size), ("--tile-stride", opts.tile_stride)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be a positive number of pixels, not {value}")
        if value is not None and opts.no_tile:
            raise UsageError(f"--no-tile excludes {flag}")
    name = str(opts.preset) if opts.preset else opts.model
    preset = load_preset(name) if name else None
    device = pick_device(opts.device)
    if preset is not None:
        pick_dtype(opts.dtype, device, preset, opts.lossless)
        if opts.decode_chunk_size is not None and preset.segments is None:
            raise UsageError(
                f"--decode-chunk-size: the {preset.name} pipeline does not decode in windows "
                "(frames per call follow the memory available)"
            )
        if opts.decoder == "tiny" and opts.vae is None:
            raise UsageError(f"--decoder tiny needs --vae FILE; {download_hint(preset)}")
        if opts.decoder != "preview":
            tile_grid(preset, opts.tile_size, opts.tile_stride)
    enc = encode_options(opts, opts.fps if opts.fps is not None else 1.0, {})
    target = (
        opts.out if opts.out is not None and opts.out.suffix else Path("x" + enc.default_suffix())
    )
    enc.check(target)
    check_audio_options(opts, target.suffix)


def check_outputs(job: Job, opts: DecodeOptions) -> None:
    for out in job.outputs:
        if not (opts.skip_existing and out.exists()):
            check_output(out, opts.overwrite)
