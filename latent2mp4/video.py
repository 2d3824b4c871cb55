"""Stream uint8 RGB frames into imageio-ffmpeg's ffmpeg binary and publish the file atomically."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO

import imageio_ffmpeg
import numpy as np

from latent2mp4.errors import Interrupted, OutputError, UsageError
from latent2mp4.storage import RemotePath, check_remote_output

log = logging.getLogger(__name__)

# name → (ffmpeg encoder, default pixel format, default CRF or None, default container suffix)
CODECS: dict[str, tuple[str, str, int | None, str]] = {
    "h264": ("libx264", "yuv420p", 17, ".mp4"),
    "h265": ("libx265", "yuv420p", 20, ".mp4"),
    "vp9": ("libvpx-vp9", "yuv420p", 24, ".webm"),
    "av1": ("libsvtav1", "yuv420p", 30, ".mp4"),
    "prores": ("prores_ks", "yuv422p10le", None, ".mov"),
    "ffv1": ("ffv1", "gbrp", None, ".mkv"),
}
CONTAINERS = (".mp4", ".mkv", ".mov", ".webm")
# Containers the bundled ffmpeg muxes each named codec into (others fail at its header write).
FITS: dict[str, tuple[str, ...]] = {
    "h264": (".mp4", ".mkv", ".mov"),
    "h265": (".mp4", ".mkv", ".mov"),
    "vp9": (".webm", ".mkv", ".mp4"),
    "av1": (".mp4", ".mkv", ".webm"),
    "prores": (".mov", ".mkv"),
    "ffv1": (".mkv",),
}
STDERR_TAIL_LINES = 5


@dataclass(frozen=True)
class EncodeOptions:
    """How frames are encoded. Defaults: H.264, yuv420p, CRF 17, preset medium, BT.709 tags."""

    fps: float = 16.0
    codec: str = "h264"  # a name in CODECS or any ffmpeg encoder name
    crf: int | None = None  # None: the codec's default
    bitrate: str | None = None  # e.g. "8M"; replaces CRF
    pix_fmt: str | None = None  # None: the codec's default
    preset: str = "medium"  # x264/x265 speed preset
    lossless: bool = False  # bit-exact RGB: libx264rgb QP 0 (.mp4/.mkv) or FFV1 (.mkv)
    metadata: dict[str, str] = field(default_factory=dict)

    def encoder(self) -> str:
        if self.lossless:
            return "ffv1" if self.codec == "ffv1" else "libx264rgb"
        return CODECS[self.codec][0] if self.codec in CODECS else self.codec

    def pixel_format(self) -> str:
        if self.lossless:
            return "gbrp" if self.codec == "ffv1" else "rgb24"
        if self.pix_fmt:
            return self.pix_fmt
        return CODECS[self.codec][1] if self.codec in CODECS else "yuv420p"

    def default_suffix(self) -> str:
        if self.lossless:
            return ".mkv" if self.codec == "ffv1" else ".mp4"
        return CODECS[self.codec][3] if self.codec in CODECS else ".mp4"

    def check(self, path: Path) -> None:
        if path.suffix.lower() not in CONTAINERS:
            raise UsageError(f"{path}: unknown container; use one of {', '.join(CONTAINERS)}")
        if self.lossless and self.codec not in ("h264", "ffv1", "libx264rgb"):
            raise UsageError("--lossless works with --codec h264 (libx264rgb) or ffv1")
        if self.lossless and path.suffix.lower() not in (".mp4", ".mkv"):
            raise UsageError(f"{path}: lossless output needs an .mp4 or .mkv file")
        given = [f for f, v in (("--crf", self.crf), ("--bitrate", self.bitrate),
                                ("--pix-fmt", self.pix_fmt)) if v is not None]  # fmt: skip
        if self.lossless and given:
            raise UsageError(f"--lossless fixes the encoding (RGB, QP 0); it excludes {given[0]}")
        fits = FITS.get(self.codec, ())
        if fits and path.suffix.lower() not in fits:
            raise UsageError(
                f"{path}: {self.codec} goes in {' or '.join(fits)} files, not this one"
            )
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise UsageError(f"--fps must be positive (frames per second), not {self.fps:g}")


@dataclass(frozen=True)
class AudioTrack:
    """An audio file muxed beside the streamed frames by the same ffmpeg process."""

    path: Path
    input_args: tuple[str, ...]  # ffmpeg options before its `-i` (e.g. raw sample layout)
    codec: str  # ffmpeg audio encoder
    bitrate: str | None  # e.g. "192k"; None for lossless encoders
    seconds: float  # output duration: the audio is padded with silence or trimmed to it


def needs_even_size(pix_fmt: str) -> bool:
    """Chroma-subsampled formats (4:2:0, 4:2:2) need even frame sizes."""
    return pix_fmt.startswith(("yuv420", "yuv422", "nv12", "p010", "yuvj420", "yuvj422"))


def ffmpeg_argv(
    path: Path, width: int, height: int, opts: EncodeOptions, audio: AudioTrack | None = None
) -> list[str]:
    """The full ffmpeg command: raw rgb24 frames on stdin (and an audio file), one file out."""
    encoder, pix_fmt = opts.encoder(), opts.pixel_format()
    fps = Fraction(opts.fps).limit_denominator(1001)
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    argv += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)]
    argv += ["-i", "-"]
    if audio is None:
        argv += ["-an"]
    else:
        # The frames set the length: the audio is padded with silence or trimmed to it.
        end = f"{audio.seconds:.6f}"
        argv += [*audio.input_args, "-i", str(audio.path), "-map", "0:v:0", "-map", "1:a:0"]
        argv += ["-c:a", audio.codec, "-af", f"apad=whole_dur={end},atrim=end={end}"]
        argv += ["-b:a", audio.bitrate] if audio.bitrate else []
    argv += ["-c:v", encoder]
    if encoder == "libx264rgb":
        argv += ["-qp", "0", "-preset", opts.preset]
    elif encoder == "ffv1":
        argv += ["-level", "3", "-g", "1"]
    elif opts.bitrate:
        argv += ["-b:v", opts.bitrate]
    else:
        crf = opts.crf if opts.crf is not None else (CODECS.get(opts.codec, (0, 0, None))[2])
        if crf is not None:
            argv += ["-crf", str(crf)]
            if encoder == "libvpx-vp9":
                argv += ["-b:v", "0"]  # constant-quality mode needs an unlimited bitrate
    if encoder in ("libx264", "libx265"):
        argv += ["-preset", opts.preset]
    if encoder == "libx265" and path.suffix.lower() in (".mp4", ".mov"):
        argv += ["-tag:v", "hvc1"]  # Apple players need this tag for HEVC
    if encoder == "prores_ks":
        argv += ["-profile:v", "3"]
    # Primaries and transfer are BT.709 (sRGB-like display RGB) for every output. ffmpeg 7+ takes
    # a stream's colour tags from the frames, which raw RGB input leaves unset, so `setparams`
    # stamps them on the frames; the encoder options alone would leave them "unknown".
    tags = "color_primaries=bt709:color_trc=bt709"
    if pix_fmt.startswith(("yuv", "nv", "p01")):
        # ffmpeg's default RGB→YUV matrix is BT.601; convert and tag as BT.709 limited range.
        scale = "scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd+full_chroma_int"
        argv += ["-vf", f"{scale},setparams=colorspace=bt709:{tags}:range=tv"]
        argv += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"]
        argv += ["-color_range", "tv"]
    else:  # RGB: the matrix is the identity (gbr); only primaries and transfer to state
        argv += ["-vf", f"setparams={tags}", "-color_primaries", "bt709", "-color_trc", "bt709"]
    argv += ["-pix_fmt", pix_fmt]
    for k, v in opts.metadata.items():
        argv += ["-metadata", f"{k}={v}"]
    if path.suffix.lower() in (".mp4", ".mov"):
        argv += ["-movflags", "+faststart+use_metadata_tags"]
    argv += [
        "-f",
        {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}[path.suffix.lower()],
    ]
    argv += ["-y", str(path)]
    return argv


def check_output(path: Path, overwrite: bool) -> None:
    """Fail early if `path` exists (without `overwrite`) or its folder is not writable."""
    if isinstance(path, RemotePath):  # written locally, then uploaded whole
        check_remote_output(path, overwrite)
        return
    if path.exists() and not overwrite:
        raise OutputError(
            f"{path}: output exists; pass --overwrite to replace it or --skip-existing"
        )
    if path.is_dir():
        raise OutputError(f"{path}: output is a directory")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create output folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable")


def temp_path(path: Path) -> Path:
    """A hidden sibling name that is never mistaken for a finished output."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")


def _edge_pad(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    return np.pad(frame, ((0, height - h), (0, width - w), (0, 0)), mode="edge")


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    width: int
    height: int
    padded: bool  # an odd size was padded by edge replication for the pixel format


def write_video(
    frames: Iterable[np.ndarray],
    path: Path,
    opts: EncodeOptions,
    overwrite: bool = False,
    audio: AudioTrack | None = None,
) -> VideoInfo:
    """Encode `(H, W, 3)` uint8 frames to `path`, streaming, and rename into place on success;
    `audio` is muxed in by the same ffmpeg process.

    On any error or Ctrl-C the temporary file is removed and `path` is untouched.
    """
    opts.check(path)
    check_output(path, overwrite)
    it: Iterator[np.ndarray] = iter(frames)
    first = next(it, None)
    if first is None:
        raise OutputError(f"{path}: no frames to write")
    h, w = first.shape[:2]
    padded = needs_even_size(opts.pixel_format()) and (h % 2 or w % 2)
    height, width = (h + h % 2, w + w % 2) if padded else (h, w)
    tmp = temp_path(path)
    argv = ffmpeg_argv(tmp, width, height, opts, audio)
    log.debug("ffmpeg: %s", " ".join(argv))
    count = 0
    with tempfile.TemporaryFile() as err:
        # A new session keeps Ctrl-C from killing ffmpeg before we can clean up after it.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=err, start_new_session=True)
        assert proc.stdin is not None
        try:
            for frame in _chain(first, it):
                if frame.shape[:2] != (h, w) or frame.dtype != np.uint8:
                    raise OutputError(f"{path}: frame {count} is {frame.shape} {frame.dtype}")
                proc.stdin.write(np.ascontiguousarray(_edge_pad(frame, height, width)).data)
                count += 1
            proc.stdin.close()
            rc = proc.wait()
            if rc != 0:
                raise OutputError(f"{path}: ffmpeg failed ({_tail(err) or _exit_reason(rc)})")
        except BrokenPipeError:
            rc = proc.wait()
            tmp.unlink(missing_ok=True)
            raise OutputError(
                f"{path}: ffmpeg stopped ({_tail(err) or _exit_reason(rc)})"
            ) from None
        except KeyboardInterrupt:
            _kill(proc)
            tmp.unlink(missing_ok=True)
            raise Interrupted(path) from None
        except BaseException:
            _kill(proc)
            tmp.unlink(missing_ok=True)
            raise
    _publish(tmp, path, overwrite)
    return VideoInfo(path=path, frames=count, width=w, height=h, padded=bool(padded))


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _tail(err: IO[bytes]) -> str:
    err.seek(0)
    lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:])


def _exit_reason(rc: int) -> str:
    """What a silent ffmpeg exit means: a signal (negative code) is named, SIGXFSZ explained."""
    if rc >= 0:
        return f"exit code {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        return f"killed by signal {-rc}"
    hint = ": file-size limit reached or disk full" if name == "SIGXFSZ" else ""
    return f"killed by {name}{hint}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    proc.wait()


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        # link() refuses to replace an existing file: racing writers never clobber each other.
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(
            f"{path}: output appeared while decoding; kept the existing file"
        ) from None
    except OSError as e:
        if not overwrite and e.errno in (1, 18, 38, 95):  # no hard links here: fall back to rename
            if path.exists():
                raise OutputError(f"{path}: output appeared while decoding") from None
            os.replace(tmp, path)
            return
        raise OutputError(f"{path}: cannot publish output ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames `(F, H, W, 3)` uint8 and the frame rate; for tests and `compare`."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    return np.stack(frames), float(meta["fps"])
