"""The decoder object: weights loaded once, then latents (files or tensors) to videos or frames.

`load_decoder` is the Python entry point; `decode_file`, batch decoding, `compare` and the CLI
all run through the same `Decoder`, so there is one decode path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from latent2mp4 import __version__
from latent2mp4.audio import AudioModels, audio_loader, audio_track
from latent2mp4.device import pick_device, pick_dtype
from latent2mp4.engine import LatentSource, StreamDecoder, decode_stream
from latent2mp4.errors import DecodeError, UsageError
from latent2mp4.frames import prefetch, to_frames
from latent2mp4.latents import (
    Latents,
    LatentSpace,
    VaeLatents,
    check_channels,
    denormalise,
    latents_in_memory,
    normalise,
)
from latent2mp4.memory import return_large_buffers_to_the_os
from latent2mp4.models.family import Conditioning, NoiseMix
from latent2mp4.models.preview import PreviewDecoder
from latent2mp4.models.tiny.loader import load_tiny
from latent2mp4.modes import stream_pieces
from latent2mp4.pipeline import (
    DecodeOptions,
    Job,
    Video,
    VideoResult,
    all_skipped,
    check_outputs,
    encode_options,
    pick_preset,
    plan,
    plan_latents,
    skipped,
    timestep_settings,
    validate,
)
from latent2mp4.presets import Preset
from latent2mp4.storage import local_output
from latent2mp4.video import write_video
from latent2mp4.weights import LoadedVae, load_vae, resolve_vae, statistics_from_weights

if TYPE_CHECKING:
    from latent2mp4.models.family import StreamModule

PREFETCH_FRAMES = 8  # decoded frames that may wait for ffmpeg (two Wan chunks)
ProgressFn = Callable[[int], None]


class VideoResults(tuple[VideoResult, ...]):
    """The videos one call wrote, in order (one per batch element and trajectory step).

    With exactly one video (the common case) its fields read directly: `results.output`.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in VideoResult.__dataclass_fields__:
            raise AttributeError(name)
        if len(self) != 1:
            raise AttributeError(
                f"{len(self)} videos were written; index the results (results[0].{name})"
            )
        return getattr(self[0], name)


class _LatentReader:
    """One video's latents as the engine's `LatentSource`: each time range is read from where
    it is stored, moved to the device and brought into the decoder's input space there."""

    def __init__(
        self,
        job: Job,
        video: Video,
        prepare: Callable[[Tensor], Tensor],
        mix: NoiseMix | None = None,
    ) -> None:
        self.job, self.video, self.prepare, self.mix = job, video, prepare, mix
        s, b, c, t, h, w = job.view.shape
        self.shape = (1, c, t, h, w)

    def read(self, start: int, stop: int) -> Tensor:
        raw = self.job.view.read(self.video.pos, self.video.batch, start, stop)
        z = self.prepare(raw)
        return z if self.mix is None else self.mix(z, start, stop)


class Decoder:
    """A model's decoder, loaded once: VAE or tiny-decoder weights on a device, or the preview.

    Make one with `load_decoder`. Every method takes latents as a file path, a torch tensor (any
    device, any float dtype) or a NumPy array, in any shape the CLI accepts: `(C, F, H, W)`,
    `(B, C, F, H, W)`, `(steps, B, C, F, H, W)` or a list of equally shaped tensors (a
    trajectory, `index` picks steps). One object serves any number of calls, from any thread;
    `to_video` and `decode` calls run one at a time.
    """

    def __init__(self, options: DecodeOptions, preset: Preset) -> None:
        """Load the decoder `options` describe for `preset` (prefer `load_decoder`)."""
        return_large_buffers_to_the_os()
        self.options = options
        self.preset = preset
        self.device = pick_device(options.device)
        self.kind = options.decoder
        self._lock = threading.Lock()
        self.audio: Callable[[], AudioModels] | None = None  # loads on first audio latents
        self._condition: Callable[[int, tuple[int, ...]], Conditioning] | None = None
        self.notes: tuple[str, ...] = ()  # said with every video (naming, conditioning)
        # What the loaded VAE decodes (its channels and own normalisation); None: the preset's
        self.vae: VaeLatents | None = None
        if options.decoder == "preview":
            self.module = cast("StreamModule", PreviewDecoder(preset).to(self.device))
            self.dtype = torch.float32
            # A VAE named with the preview lends its latent statistics where they live in its
            # weights (LTX): read alone, no decoder built.
            stats = statistics_from_weights(options.vae, preset) if options.vae else None
            self.normalization = preset.normalization.with_values_of(stats)
            self.description = "preview (no weights)"
            return
        self.dtype = pick_dtype(options.dtype, self.device, preset, options.lossless)
        if options.decoder == "tiny":
            self.module, self.description = load_tiny(options.vae, preset, self.device, self.dtype)
            self.normalization = preset.normalization
            return
        loaded = load_vae(resolve_vae(options.vae, preset), preset, self.device, self.dtype)
        self.module = loaded.decoder
        self.vae = loaded.latents
        self.normalization = preset.normalization.with_values_of(loaded.normalization)
        self.description = loaded.description
        self.audio = audio_loader(options, preset, self.device)
        self._condition, conditioning_notes = _conditioning(options, preset, loaded)
        self.notes = loaded.notes + conditioning_notes

    # ---- the Python API --------------------------------------------------------------------

    def to_video(
        self,
        latents: Latents | str | Path,
        out: str | Path,
        *,
        fps: float | None = None,
        latent_space: LatentSpace = "auto",
        index: str | int = -1,
        key: str | None = None,
        layout: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        decode_chunk_size: int | None = None,
        overwrite: bool = False,
        skip_existing: bool = False,
        codec: str = "h264",
        crf: int | None = None,
        bitrate: str | None = None,
        pix_fmt: str | None = None,
        lossless: bool = False,
        audio: str | Path | None = None,
        no_audio: bool = False,
        progress: ProgressFn | None = None,
    ) -> VideoResults:
        """Decode `latents` and stream the frames into ffmpeg, exactly as `latent2mp4 decode`.

        Several videos (a batch, trajectory steps) are written as `out-0.mp4`, `out-1.mp4`,
        `out-step049.mp4`, … like the CLI. The file is published atomically; an existing `out`
        is an `OutputError` unless `overwrite`. `latent_space`: "auto" (as the CLI: file
        metadata, else what the preset's pipeline returns with `output_type="latent"` — model
        space, or VAE space for LTX-2), "model" or "vae" (ComfyUI) to force it. `lossless`
        writes bit-exact RGB; decode with `load_decoder(..., dtype="fp32")` for bit-exact values.
        A file's audio latents (presets with sound) become the audio track unless `no_audio`;
        `audio` muxes an audio file instead.
        `num_frames`, `height`, `width`: the generation's size, to unpack LTX's packed tokens.
        `decode_chunk_size`: SVD/Helios window length in latent frames (None: `load_decoder`'s,
        else the preset's).
        """
        opts = self._options(
            out=Path(out),
            fps=fps,
            latent_space=latent_space,
            index=index,
            key=key,
            layout=layout,
            num_frames=num_frames,
            height=height,
            width=width,
            decode_chunk_size=decode_chunk_size or self.options.decode_chunk_size,
            overwrite=overwrite,
            skip_existing=skip_existing,
            codec=codec,
            crf=crf,
            bitrate=bitrate,
            pix_fmt=pix_fmt,
            lossless=lossless,
            audio=None if audio is None else Path(audio),
            no_audio=no_audio,
        )
        job = self.plan(latents, opts)
        check_outputs(job, opts)
        return VideoResults(all_skipped(job, opts) or self.run(job, opts, progress))

    def frames(
        self,
        latents: Latents | str | Path,
        *,
        latent_space: LatentSpace = "auto",
        index: str | int = -1,
        key: str | None = None,
        layout: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        decode_chunk_size: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the frames of one video as uint8 `(H, W, 3)` arrays, each as soon as it is
        decoded (memory stays flat whatever the length). For a batch, pass one element."""
        opts = self._options(
            latent_space=latent_space,
            index=index,
            key=key,
            layout=layout,
            num_frames=num_frames,
            height=height,
            width=width,
            decode_chunk_size=decode_chunk_size or self.options.decode_chunk_size,
        )
        job = self.plan(latents, opts)
        if len(job.videos) != 1:
            raise UsageError(
                f"the latents hold {len(job.videos)} videos; frames() takes one "
                "(pass latents[i], or one trajectory step with index=)"
            )
        return to_frames(self.stream(job, job.videos[0]))

    def decode(
        self,
        latents: Latents | str | Path,
        *,
        latent_space: LatentSpace = "auto",
        index: str | int = -1,
        key: str | None = None,
        layout: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        decode_chunk_size: int | None = None,
    ) -> Tensor:
        """The whole video as one float32 tensor `(B, 3, F, H, W)` in [-1, 1] on the decoder's
        device (one trajectory step). Memory grows with the clip: prefer `frames` or `to_video`
        for long videos."""
        opts = self._options(
            latent_space=latent_space,
            index=index,
            key=key,
            layout=layout,
            num_frames=num_frames,
            height=height,
            width=width,
            decode_chunk_size=decode_chunk_size or self.options.decode_chunk_size,
        )
        job = self.plan(latents, opts)
        if len({v.pos for v in job.videos}) != 1:
            raise UsageError("decode() takes one trajectory step; pick it with index=")
        with self._lock:
            videos = [torch.cat([c.float() for c in self.stream(job, v)], 2) for v in job.videos]
        return torch.cat(videos, dim=0)

    # ---- shared with the CLI, batch decoding and compare --------------------------------------

    def plan(self, latents: Latents | str | Path, opts: DecodeOptions) -> Job:
        """Validate `latents` (a path or in memory) for this decoder's preset; no decoding."""

        def in_hand(preset: Preset) -> VaeLatents | None:
            return self.vae if preset.name == self.preset.name else None

        if isinstance(latents, str | Path):
            job = plan(Path(latents), opts, vae=in_hand)
        else:
            job = plan_latents(latents_in_memory(latents), opts, vae=in_hand)
        if job.preset.name != self.preset.name:
            raise UsageError(
                f"{job.latent.path}: these latents are for {job.preset.name}; "
                f"this decoder is {self.preset.name}"
            )
        return job

    def stream(self, job: Job, video: Video) -> Iterator[Tensor]:
        """Pixel chunks `(1, 3, f, H, W)` in [-1, 1] of one video of `job`, in time order."""
        if self.vae is not None and self.vae.channels is not None:
            # A job planned before its VAE was known (a repo id downloaded only at load)
            check_channels(job.view.shape[2], job.latent, job.preset, self.vae)
        prepare = self._input_space(job.space)
        module: StreamDecoder = self.module
        mix = None
        if self._condition is not None:
            module, mix = self._condition(video.batch, _LatentReader(job, video, prepare).shape)
        reader = _LatentReader(job, video, prepare, mix)

        def clip(source: LatentSource) -> Iterator[Tensor]:
            return decode_stream(
                module,
                source,
                job.grid,
                self.device,
                self.dtype,
                job.chunk_frames,
                job.segments,
                job.frames if job.segments else None,  # a segmented pipeline's trim (Helios)
            )

        mode = job.preset.decode_mode
        if mode is None:
            yield from clip(reader)
        else:  # parts decoded as separate clips, their pixels joined (modes.py)
            yield from stream_pieces(
                clip, reader, mode.pieces(reader.shape[2], job.preset.temporal_ratio)
            )

    def run(
        self, job: Job, opts: DecodeOptions, progress: ProgressFn | None = None
    ) -> list[VideoResult]:
        """Decode every video of `job` to its output, streaming frames into ffmpeg."""
        results = []
        with self._lock:
            for video in job.videos:
                if video.output.exists() and opts.skip_existing:
                    results.append(skipped(job, video.output))
                else:
                    results.append(self._write(job, video, opts, progress))
        return results

    def _write(
        self, job: Job, video: Video, opts: DecodeOptions, progress: ProgressFn | None
    ) -> VideoResult:
        meta = {
            "latent2mp4_version": __version__,
            "latent2mp4_model": job.preset.name,
            "latent2mp4_source": str(job.latent.path),
            "latent2mp4_key": job.latent.key,
            "latent2mp4_batch_index": str(video.batch),
            **({"latent2mp4_step": str(video.step)} if video.step is not None else {}),
            "comment": f"decoded by latent2mp4 {__version__} ({self.description})",
        }
        start = time.perf_counter()
        out, seconds = video.output, job.frames / job.fps
        # The audio is decoded first (it is small); the frames stream after it.
        # A URL's video is written to a local file and uploaded whole once finished.
        with (
            local_output(out, opts.overwrite) as target,
            audio_track(job.audio, video.batch, self.audio, target, seconds, opts) as sound,
        ):
            track, audio, audio_notes = sound
            frames = prefetch(to_frames(self.stream(job, video)), PREFETCH_FRAMES)
            try:
                info = write_video(
                    _count(frames, progress),
                    target,
                    encode_options(opts, job.fps, meta),
                    opts.overwrite,
                    track,
                )
            except DecodeError as e:  # raised where the file is unknown; name it
                raise DecodeError(f"{job.latent.path}: {e}") from None
        padded = ("odd size padded by edge replication for the pixel format",)
        return VideoResult(
            job.latent.path,
            video.output,
            info.frames,
            info.width,
            info.height,
            job.fps,
            time.perf_counter() - start,
            False,
            job.notes + self.notes + audio_notes + (padded if info.padded else ()),
            audio,
        )

    def _input_space(self, space: str) -> Callable[[Tensor], Tensor]:
        """Stored latents → this decoder's input: the preview and tiny decoders read model
        space, a VAE reads VAE space. Arithmetic in fp32 on the device, as the reference
        pipelines do it."""
        cuda = self.device.type == "cuda"
        norm = self.normalization
        convert = None
        model_space = self.kind in ("preview", "tiny")
        if model_space and space == "vae":
            convert = normalise
        elif not model_space and space == "model":
            convert = denormalise

        def prepare(raw: Tensor) -> Tensor:
            if cuda and raw.device.type == "cpu":
                raw = raw.pin_memory()
            z = raw.to(self.device, non_blocking=True).float()
            return convert(z, norm) if convert is not None else z

        return prepare

    def _options(self, **changes: Any) -> DecodeOptions:
        opts = replace(self.options, **changes)
        validate(opts)  # the CLI's usage checks, for the per-call choices too
        return opts

    def __repr__(self) -> str:
        return (
            f"Decoder({self.preset.name}, {self.kind}, {self.description}, "
            f"{self.device}, {str(self.dtype).removeprefix('torch.')})"
        )


def _conditioning(
    opts: DecodeOptions, preset: Preset, loaded: LoadedVae
) -> tuple[Callable[[int, tuple[int, ...]], Conditioning] | None, tuple[str, ...]]:
    """A timestep-conditioned VAE's binding per video (batch index, latent shape) and a note
    with the settings; a note that the settings are ignored for other VAEs when asked for."""
    hook = loaded.family.condition
    settings, origin = timestep_settings(opts, preset)
    if hook is None or hook(loaded.decoder, settings, 0, (1, 1, 1, 1, 1)) is None:
        asked = opts.decode_timestep is not None or opts.decode_noise_scale is not None
        note = (
            "this VAE has no timestep conditioning: "
            "--decode-timestep/--decode-noise-scale/--seed ignored"
        )
        return None, (note,) if asked else ()

    def condition(batch: int, shape: tuple[int, ...]) -> Conditioning:
        assert hook is not None
        bound = hook(loaded.decoder, settings, batch, shape)
        assert bound is not None
        return bound

    note = (
        f"decode timestep {settings.timestep:g}, noise scale {settings.noise_scale:g}, "
        f"seed {settings.seed} ({origin})"
    )
    return condition, (note,)


def _count(frames: Iterable[np.ndarray], progress: ProgressFn | None) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame
        if progress is not None:
            progress(1)


def load_decoder(
    model: str | Path | None = None,
    vae: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    decoder: str = "vae",
    *,
    tile_size: int | None = None,
    tile_stride: int | None = None,
    no_tile: bool = False,
    lossless: bool = False,
    decode_timestep: float | None = None,
    decode_noise_scale: float | None = None,
    seed: int = 0,
    decode_chunk_size: int | None = None,
) -> Decoder:
    """Load a model's decoder once, to decode many latents.

    Parameters
    ----------
    model : a preset name or alias (`latent2mp4 presets`), or a preset YAML file.
    vae : a diffusers VAE or pipeline folder, a single weights file, or a Hugging Face repo id
        (local cache first); None: the preset's default repo. Ignored by the preview decoder.
    device : "auto" (first CUDA device, else CPU), "cpu", "cuda", "cuda:1", …
    dtype : "auto" (bf16 where the hardware makes it fast, else fp32), "fp32", "bf16", "fp16".
    decoder : "vae" (the model's VAE), "tiny" (a madebyollin/taehv file as `vae`) or "preview"
        (weightless linear preview).
    tile_size, tile_stride, no_tile : spatial tiling in output pixels, as the CLI's options.
    lossless : with dtype "auto", decode in fp32 (for bit-exact `to_video(lossless=True)`).
    decode_timestep, decode_noise_scale, seed : timestep-conditioned VAEs (LTX), as the CLI's.
    decode_chunk_size : latent frames per independently decoded window, for presets whose
        pipeline decodes in windows (SVD: default the whole clip; Helios: 9); as the CLI's.

    Returns
    -------
    A `Decoder`; errors are `Latent2Mp4Error`s with the CLI's one-line messages.
    """
    if model is None:
        raise UsageError("load_decoder needs a model (a preset name or a preset YAML file)")
    is_file = Path(str(model)).suffix.lower() in (".yaml", ".yml")
    opts = DecodeOptions(
        model=None if is_file else str(model),
        preset=Path(model) if is_file else None,
        vae=None if vae is None else str(vae),
        device=device,
        dtype=dtype,
        decoder=cast(Any, decoder),
        tile_size=tile_size,
        tile_stride=tile_stride,
        no_tile=no_tile,
        lossless=lossless,
        decode_timestep=decode_timestep,
        decode_noise_scale=decode_noise_scale,
        seed=seed,
        decode_chunk_size=decode_chunk_size,
    )
    if decoder not in ("vae", "preview", "tiny"):
        raise UsageError(f"decoder must be 'vae', 'tiny' or 'preview', not {decoder!r}")
    validate(opts)
    return Decoder(opts, pick_preset(opts))


def decode_file(
    path: str | Path, opts: DecodeOptions | None = None, progress: ProgressFn | None = None
) -> list[VideoResult]:
    """Decode one latent file to video(s) with `opts`; returns one result per video written."""
    opts = opts or DecodeOptions()
    validate(opts)
    job = plan(Path(path), opts)
    check_outputs(job, opts)
    done = all_skipped(job, opts)
    if done is not None:
        return done
    return Decoder(opts, job.preset).run(job, opts, progress)
