"""Compare videos and latent files frame by frame (PSNR, SSIM, MAE) and tile them side by side.

Every input is a `FrameSource` (latent2mp4.sources) that streams `(H, W, 3)` uint8 frames:
videos through ffmpeg, latent files through the decoder `latent2mp4 decode` would use. Frames are
compared as they arrive, so memory does not grow with the length of the inputs.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
import torch.nn.functional as F

from latent2mp4.errors import InputError, OutputError, UsageError
from latent2mp4.metrics import mae, psnr, ssim
from latent2mp4.sources import Frames, FrameSource, open_all, open_frames
from latent2mp4.video import EncodeOptions, VideoInfo, check_output, temp_path, write_video

__all__ = [
    "Comparison",
    "FrameMetrics",
    "FrameSource",
    "InputSummary",
    "SideBySide",
    "compare",
    "open_all",
    "open_frames",
    "plot_psnr",
    "side_by_side",
    "write_csv",
]

LABEL_SHADE = 0.35  # the label strip keeps this fraction of the picture's brightness
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class FrameMetrics:
    frame: int
    input: str  # FrameSource.name of the input compared with the reference
    psnr: float  # dB; math.inf for an identical frame
    ssim: float  # luma SSIM, 1.0 for an identical frame (see latent2mp4.metrics)
    mae: float  # mean absolute error, 0–255 scale


@dataclass(frozen=True)
class InputSummary:
    input: str
    frames: int  # frames compared
    identical: int  # frames equal to the reference (PSNR inf)
    mean_psnr: float  # mean over the frames that differ; inf when none differ
    min_psnr: float
    worst_frame: int | None  # the frame with the lowest PSNR; None when all are identical
    mean_ssim: float
    min_ssim: float
    mean_mae: float
    max_mae: float


@dataclass(frozen=True)
class Comparison:
    reference: str
    rows: tuple[FrameMetrics, ...]  # frame-major, inputs in the order given
    summaries: tuple[InputSummary, ...]  # one per compared input, in the order given
    notes: tuple[str, ...]


@dataclass(frozen=True)
class SideBySide:
    video: VideoInfo
    grid: tuple[int, int]  # (rows, columns) of tiles
    notes: tuple[str, ...]


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def compare(
    reference: FrameSource,
    others: Sequence[FrameSource],
    resize: bool = False,
    progress: ProgressFn | None = None,
) -> Comparison:
    """PSNR, SSIM and MAE of every frame of each of `others` against `reference`.

    Inputs must match in size and frame count; with `resize` the others are scaled to the
    reference's size (bilinear) and only the frames all inputs have are compared, with notes.
    `progress(1)` is called per reference frame.
    """
    if not others:
        raise UsageError("compare needs a reference and at least one more input")
    sources = [reference, *others]
    notes = [f"{s.name}: {n}" for s in sources for n in s.notes]
    for s in others:
        if s.size != reference.size and not resize:
            raise UsageError(
                f"{reference.path} is {_wxh(reference.size)} but {s.path} is {_wxh(s.size)}; "
                "pass --resize to scale it to the reference"
            )
        if s.size != reference.size:
            notes.append(f"{s.name}: resized {_wxh(s.size)} -> {_wxh(reference.size)} (bilinear)")
        if (
            s.count is not None
            and reference.count is not None
            and not resize
            and s.count != reference.count
        ):
            raise UsageError(_count_mismatch(reference, reference.count, s, s.count))
    per_input: list[list[FrameMetrics]] = [[] for _ in others]
    iters = [s.frames() for s in sources]
    n = 0
    try:
        while True:
            frames = [next(it, None) for it in iters]
            read = [f for f in frames if f is not None]
            if len(read) < len(frames):
                break
            a = read[0]
            for s, b, rows in zip(others, read[1:], per_input, strict=True):
                if b.shape != a.shape:
                    b = _resize(b, reference.size)
                rows.append(FrameMetrics(n, s.name, psnr(a, b), ssim(a, b), mae(a, b)))
            n += 1
            if progress is not None:
                progress(1)
        if any(f is not None for f in frames):
            # Count what is left of the longer inputs, for an exact message.
            counts = [
                n if f is None else _total(s, n, it)
                for s, f, it in zip(sources, frames, iters, strict=True)
            ]
            if not resize:
                k = next(i for i, c in enumerate(counts) if c != counts[0])
                raise UsageError(_count_mismatch(reference, counts[0], sources[k], counts[k]))
            notes += [
                f"{s.name}: compared the first {n} of its {c} frames"
                for s, c in zip(sources, counts, strict=True)
                if c > n
            ]
    finally:
        for it in iters:
            it.close()
    if n == 0:
        raise InputError(f"{reference.path}: no frames to compare")
    frame_major = tuple(r for frame in zip(*per_input, strict=True) for r in frame)
    summaries = tuple(_summary(s.name, r) for s, r in zip(others, per_input, strict=True))
    return Comparison(reference.name, frame_major, summaries, tuple(notes))


def _total(source: FrameSource, seen: int, rest: Frames) -> int:
    # `seen` frames were compared and one more was read before the shorter input ended.
    return source.count if source.count is not None else seen + 1 + sum(1 for _ in rest)


def _count_mismatch(a: FrameSource, na: int, b: FrameSource, nb: int) -> str:
    return (
        f"{a.path} has {na} frames but {b.path} has {nb}; "
        f"pass --resize to compare the first {min(na, nb)}"
    )


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _summary(name: str, rows: list[FrameMetrics]) -> InputSummary:
    p = [r.psnr for r in rows]
    finite = [v for v in p if math.isfinite(v)]
    return InputSummary(
        input=name,
        frames=len(rows),
        identical=len(p) - len(finite),
        mean_psnr=fmean(finite) if finite else math.inf,
        min_psnr=min(p),
        worst_frame=rows[p.index(min(p))].frame if finite else None,
        mean_ssim=fmean(r.ssim for r in rows),
        min_ssim=min(r.ssim for r in rows),
        mean_mae=fmean(r.mae for r in rows),
        max_mae=max(r.mae for r in rows),
    )


def write_csv(path: Path, comparison: Comparison, overwrite: bool = False) -> Path:
    """One row per frame and input: `frame,input,psnr,ssim,mae` (identical frames: psnr `inf`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["frame", "input", "psnr", "ssim", "mae"])
            for r in comparison.rows:
                out.writerow([r.frame, r.input, f"{r.psnr:.4f}", f"{r.ssim:.6f}", f"{r.mae:.4f}"])

    return _write_atomic(Path(path), overwrite, write)


def plot_psnr(path: Path, comparison: Comparison, overwrite: bool = False) -> Path:
    """A per-frame PSNR curve per input; the format follows the suffix (`.png`, `.svg`, …).

    Identical frames (infinite PSNR) are drawn as triangles above the curves. Needs matplotlib.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "plotting needs matplotlib; install it with: pip install 'latent2mp4[plot]'"
        ) from None
    finite = [r.psnr for r in comparison.rows if math.isfinite(r.psnr)]
    top = max(finite, default=50.0) + 3.0
    fig = Figure(figsize=(8, 4), dpi=100, layout="tight")
    ax = fig.add_subplot()
    for i, s in enumerate(comparison.summaries):
        rows = [r for r in comparison.rows if r.input == s.input]
        if s.identical < s.frames:
            y = [r.psnr if math.isfinite(r.psnr) else math.nan for r in rows]
            ax.plot([r.frame for r in rows], y, color=f"C{i}", label=s.input)
        if s.identical:
            same = [r.frame for r in rows if not math.isfinite(r.psnr)]
            ax.plot(same, [top] * len(same), "^", color=f"C{i}", label=f"{s.input} (identical)")
    ax.set(xlabel="frame", ylabel="PSNR (dB)", title=f"PSNR against {comparison.reference}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _write_atomic(Path(path), overwrite, fig.savefig)


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_outputs(inputs: list[Path], outputs: dict[str, Path | None], overwrite: bool) -> None:
    """Before any decoding: each output distinct, none an input (even with --overwrite), in a
    format it can be written in, and not already there unless `overwrite`."""
    given = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    sources = {i.resolve() for i in inputs}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        where = path.resolve()
        if where in sources:
            raise UsageError(f"{flag} {path} is one of the inputs; name another file")
        if where in seen:
            raise UsageError(f"{seen[where]} and {flag} name the same file {path}")
        seen[where] = flag
        if flag == "--plot" and path.suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(f"--plot {path}: use a {', '.join(PLOT_SUFFIXES)} file")
        if flag == "--side-by-side":
            EncodeOptions(fps=1.0).check(path)
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: output exists; pass --overwrite to replace it")
        check_output(path, overwrite=True)  # a folder, or an unwritable one


def _write_atomic(path: Path, overwrite: bool, write: Callable[[Path], object]) -> Path:
    check_output(path, overwrite)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def side_by_side(
    sources: Sequence[FrameSource],
    out: Path,
    opts: EncodeOptions,
    overwrite: bool = False,
    labels: bool = True,
    progress: ProgressFn | None = None,
) -> SideBySide:
    """Tile the inputs into one video: two side by side, more in a near-square grid.

    Every tile has the largest input's size; smaller inputs are centred on black. Each tile is
    labelled with its input's name. The video ends with the shortest input.
    """
    if not sources:
        raise UsageError("side by side needs at least one input")
    cols = math.ceil(math.sqrt(len(sources)))
    rows = math.ceil(len(sources) / cols)
    th, tw = max(s.size[0] for s in sources), max(s.size[1] for s in sources)
    strips = [_label(s.name, tw, th) for s in sources] if labels else []
    notes = [f"{s.name}: {n}" for s in sources for n in s.notes]
    if len({s.size for s in sources}) > 1:
        notes.append(f"inputs of different sizes are centred on {tw}x{th} tiles")
    ended: list[str] = []

    def frames() -> Frames:
        iters = [s.frames() for s in sources]
        try:
            while True:
                got = [next(it, None) for it in iters]
                tiles = [f for f in got if f is not None]
                if len(tiles) < len(got):
                    ended.extend(s.name for s, f in zip(sources, got, strict=True) if f is None)
                    return
                canvas = np.zeros((rows * th, cols * tw, 3), np.uint8)
                for i, f in enumerate(tiles):
                    y, x = i // cols * th, i % cols * tw
                    h, w = f.shape[:2]
                    oy, ox = y + (th - h) // 2, x + (tw - w) // 2
                    canvas[oy : oy + h, ox : ox + w] = f
                    if strips:
                        _apply_label(canvas[y : y + th, x : x + tw], strips[i])
                yield canvas
                if progress is not None:
                    progress(1)
        finally:
            for it in iters:
                it.close()

    info = write_video(frames(), out, opts, overwrite)
    if info.padded:
        notes.append("odd size padded by edge replication for the pixel format")
    if len(ended) < len(sources):
        notes.append(f"stopped after {info.frames} frames, where {', '.join(ended)} ended")
    return SideBySide(info, (rows, cols), tuple(notes))


def _label(text: str, width: int, height: int) -> np.ndarray:
    """Text coverage `(strip_h, width)` float32 in [0, 1], drawn with PIL's built-in font."""
    from PIL import Image, ImageDraw, ImageFont

    strip_h = min(height, max(12, height // 20))
    try:
        font = ImageFont.load_default(size=strip_h - 3)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType: bitmap font
        font = ImageFont.load_default()
    img = Image.new("L", (width, strip_h), 0)
    draw = ImageDraw.Draw(img)
    left, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((3 - left, (strip_h - (bottom - top)) // 2 - top), text, fill=255, font=font)
    return np.asarray(img, np.float32) / 255.0


def _apply_label(tile: np.ndarray, coverage: np.ndarray) -> None:
    strip = tile[: coverage.shape[0]].astype(np.float32) * LABEL_SHADE
    alpha = coverage[..., None]
    tile[: coverage.shape[0]] = (strip + (255.0 - strip) * alpha + 0.5).astype(np.uint8)
