"""Inputs for `compare`: videos and latent files as re-readable streams of uint8 RGB frames."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from latent2mp4.arrays import LATENT_SUFFIXES
from latent2mp4.decoder import Decoder
from latent2mp4.errors import InputError
from latent2mp4.frames import to_frames
from latent2mp4.pipeline import DecodeOptions, plan

Frames = Generator[np.ndarray, None, None]


@dataclass(frozen=True)
class FrameSource:
    """One input. Each `frames()` call streams its frames again from the first."""

    name: str  # the file name (the path where two inputs share a name); labels and CSV rows
    path: Path
    size: tuple[int, int]  # (height, width) of every frame
    count: int | None  # frame count when known without decoding (latent files), else None
    fps: float | None  # None: the container does not say
    opener: Callable[[], Frames]
    notes: tuple[str, ...] = ()

    def frames(self) -> Frames:
        """`(H, W, 3)` uint8 RGB frames, one at a time."""
        return self.opener()


def open_frames(path: Path, decode_opts: DecodeOptions | None = None) -> FrameSource:
    """A video (anything ffmpeg reads) or a latent file (any suffix `decode` reads).

    Latent files are decoded on the fly with `decode_opts`, exactly as `latent2mp4 decode` does;
    of a file that holds several videos (batch, trajectory steps) the first one `decode` would
    write is used and a note says so. Fails early, before any decoding, on unreadable inputs.
    """
    return open_all([path], decode_opts)[0]


def open_all(paths: Sequence[Path], decode_opts: DecodeOptions | None = None) -> list[FrameSource]:
    """`open_frames` for several inputs; latent files of one preset share one decoder."""
    opts = decode_opts or DecodeOptions()
    paths = [Path(p) for p in paths]
    decoders: dict[str, Decoder] = {}
    sources = []
    for path in paths:
        shared = {p for p in paths if p.name == path.name}  # a name two different files share
        name = path.name if len(shared) == 1 else str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        if path.suffix.lower() in LATENT_SUFFIXES:
            sources.append(_open_latent(path, name, opts, decoders))
        else:
            sources.append(_open_video(path, name))
    return sources


def _open_latent(
    path: Path, name: str, opts: DecodeOptions, decoders: dict[str, Decoder]
) -> FrameSource:
    job = plan(path, opts)
    key = job.preset.source or job.preset.name
    if key not in decoders:
        decoders[key] = Decoder(opts, job.preset)
    dec = decoders[key]
    first = job.videos[0]  # the last trajectory step (or --index), batch element 0
    notes = job.notes
    if len(job.videos) > 1:
        notes += (f"holds {len(job.videos)} videos; using the first ({first.output.stem})",)

    def frames() -> Frames:
        yield from to_frames(dec.stream(job, first))

    return FrameSource(name, path, job.size, job.frames, job.fps, frames, notes)


def _open_video(path: Path, name: str) -> FrameSource:
    # Decoding one frame shows the size ffmpeg will deliver (after any rotation) and the rate.
    probe = subprocess.run(
        [*_ffmpeg_in(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
    )
    text = probe.stderr.decode(errors="replace")
    video = [
        ln for ln in text.splitlines() if ln.lstrip().startswith("Stream #") and "Video:" in ln
    ]
    size = re.search(r" (\d+)x(\d+)[, ]", video[-1]) if video else None
    if probe.returncode != 0 or size is None:
        raise InputError(f"{path}: ffmpeg cannot read it as a video ({_last_line(text)})")
    w, h = int(size[1]), int(size[2])
    fps = re.search(r" (\d+(?:\.\d+)?) fps", video[0])

    def frames() -> Frames:
        argv = [*_ffmpeg_in(path, "error"), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            try:
                while buf := proc.stdout.read(h * w * 3):
                    if len(buf) < h * w * 3:
                        raise InputError(f"{path}: the last frame is cut short")
                    yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
                if proc.wait() != 0:
                    err.seek(0)
                    tail = _last_line(err.read().decode(errors="replace"))
                    raise InputError(f"{path}: ffmpeg stopped reading ({tail})")
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
                proc.wait()

    return FrameSource(name, path, (h, w), None, float(fps[1]) if fps else None, frames)


def _ffmpeg_in(path: Path, loglevel: str = "info") -> list[str]:
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", loglevel]
    return [*argv, "-i", str(path), "-map", "0:v:0"]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"
