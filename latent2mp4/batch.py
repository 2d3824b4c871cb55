"""Many latent files in one run: input expansion, sharding, one VAE load, per-file outcomes."""

from __future__ import annotations

import glob
import json
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from latent2mp4.arrays import LATENT_SUFFIXES
from latent2mp4.decoder import Decoder, ProgressFn
from latent2mp4.errors import Latent2Mp4Error, UsageError
from latent2mp4.latents import VaeLatents
from latent2mp4.pipeline import (
    DecodeOptions,
    Job,
    VideoResult,
    all_skipped,
    check_outputs,
    plan,
    vae_for,
)
from latent2mp4.presets import Preset
from latent2mp4.storage import RemotePath, RemoteReport, is_url, list_inputs


@dataclass(frozen=True)
class Input:
    path: Path
    root: Path | None  # the folder it was found under (mirrored below --out-dir)


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file."""

    source: Path
    results: tuple[VideoResult, ...] = ()
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    frames_total: int = 0
    trace: str | None = None  # the traceback of an internal error (a bug), for --verbose

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "skipped" if self.results and all(r.skipped for r in self.results) else "ok"

    def record(self) -> dict[str, object]:
        """One JSON-able line for --report."""
        first = self.results[0] if self.results else None
        return {
            "input": str(self.source),
            "status": self.status,
            "outputs": [str(r.output) for r in self.results],
            "frames": sum(r.frames for r in self.results),
            "width": first.width if first else None,
            "height": first.height if first else None,
            "fps": first.fps if first else None,
            "seconds": round(self.seconds, 3),
            "audio": [asdict(r.audio) if r.audio else None for r in self.results],
            "error": self.error,
        }


def collect_inputs(specs: Iterable[str | Path], recursive: bool = False) -> list[Input]:
    """Files, folders (their latent files; all levels with `recursive`) and glob patterns.

    Sorted and de-duplicated, so every process sees the same order (for --shard).
    """
    found: dict[Path, Input] = {}
    for spec in map(str, specs):
        if is_url(spec):  # an object, a prefix or a glob on a store (fsspec)
            objects, prefix = list_inputs(spec, recursive, LATENT_SUFFIXES)
            for obj in objects:
                found.setdefault(obj, Input(obj, prefix))
            continue
        path = Path(spec)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for p in sorted(path.glob(pattern)):
                latent = p.suffix.lower() in LATENT_SUFFIXES
                hidden = any(part.startswith(".") for part in p.relative_to(path).parts)
                if p.is_file() and latent and not hidden:
                    found.setdefault(p.resolve(), Input(p, path))
        elif not path.exists() and glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive))
            if not matches:
                raise UsageError(f"{spec}: no files match this pattern")
            for p in matches:
                if p.is_file():
                    found.setdefault(p.resolve(), Input(p, None))
        else:
            found.setdefault(path.resolve() if path.exists() else path, Input(path, None))
    # Files named one by one (or by a glob) mirror the tree below their common folder too, so
    # runs/a/latents.safetensors and runs/b/latents.safetensors keep apart under --out-dir.
    loose = [i.path.absolute().parent for i in found.values() if i.root is None]
    common = common_parent(loose)
    inputs = (i if i.root is not None else Input(i.path, common) for i in found.values())
    return sorted(inputs, key=lambda i: str(i.path))


def common_parent(folders: list[Path]) -> Path | None:
    """The deepest folder above all of `folders` (local paths or URLs of one kind); None when
    they share nothing (local files and objects together)."""
    if not folders or any(type(f) is not type(folders[0]) for f in folders):
        return None
    parts = list(folders[0].parts)
    for folder in folders[1:]:
        same = 0
        for a, b in zip(parts, folder.parts, strict=False):
            if a != b:
                break
            same += 1
        parts = parts[:same]
    return type(folders[0])(*parts) if parts else None


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1-based K) → (K, N)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like K/N (e.g. 2/8), not {text!r}") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard(inputs: list[Input], k: int, n: int) -> list[Input]:
    """The K-th of N interleaved slices of the sorted inputs: disjoint, covering, stable."""
    return inputs[k - 1 :: n]


@dataclass
class Batch:
    """Decodes inputs one by one, loading each preset's decoder once."""

    opts: DecodeOptions
    on_job: Callable[[Job], ProgressFn | None] = lambda job: None
    decoders: dict[str, Decoder | Latent2Mp4Error] = field(default_factory=dict)
    claimed: dict[Path, Path] = field(default_factory=dict)  # output → the input that made it
    vaes: dict[str, VaeLatents | None | Latent2Mp4Error] = field(default_factory=dict)

    def vae_for(self, preset: Preset) -> VaeLatents | None:
        """What this preset's VAE decodes: the loaded decoder's, else read once from its config
        or tensor headers (no weights load), for every file of the run."""
        key = preset.source or preset.name
        loaded = self.decoders.get(key)
        if isinstance(loaded, Decoder):
            return loaded.vae
        if key not in self.vaes:
            try:
                self.vaes[key] = vae_for(self.opts, preset)
            except Latent2Mp4Error as e:  # remembered, as a decoder that failed to load is
                self.vaes[key] = e
        cached = self.vaes[key]
        if isinstance(cached, Latent2Mp4Error):
            raise cached
        return cached

    def decoder_for(self, job: Job) -> Decoder:
        key = job.preset.source or job.preset.name
        if key not in self.decoders:
            try:
                self.decoders[key] = Decoder(self.opts, job.preset)
            except Latent2Mp4Error as e:  # remembered: every file of this preset fails the same way
                self.decoders[key] = e
        cached = self.decoders[key]
        if isinstance(cached, Latent2Mp4Error):
            raise cached
        return cached

    def claim(self, source: Path, outputs: Iterable[Path]) -> None:
        """Two inputs of one run must not write one file (the second would replace the first,
        or be skipped as done)."""
        outputs = list(outputs)
        for out in outputs:
            earlier = self.claimed.get(out.absolute())
            if earlier is not None:
                fix = (
                    "rename one (the same name in one folder)"
                    if earlier.absolute().parent == source.absolute().parent
                    else "rename one, or decode their common folder with --recursive --out-dir"
                )
                raise UsageError(
                    f"{source}: its output {out} is also {earlier}'s in this run; {fix}"
                )
        for out in outputs:
            self.claimed[out.absolute()] = source

    def run_one(self, item: Input) -> Outcome:
        start = time.perf_counter()
        doing = "reading the latents"
        try:
            job = plan(item.path, self.opts, item.root, self.vae_for)
            self.claim(item.path, job.outputs)
            check_outputs(job, self.opts)
            results = all_skipped(job, self.opts)
            if results is None:
                doing = "building and loading the VAE decoder"
                decoder = self.decoder_for(job)
                doing = "decoding"
                results = decoder.run(job, self.opts, self.on_job(job))
        except Latent2Mp4Error as e:
            return Outcome(
                item.path, error=str(e), exit_code=e.exit_code, seconds=time.perf_counter() - start
            )
        except (torch.OutOfMemoryError, MemoryError):
            msg = f"{item.path}: out of memory while decoding; try a smaller --tile-size or --dtype"
            return Outcome(item.path, error=msg, exit_code=1, seconds=time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback under --verbose
            msg = f"{item.path}: {internal_error(doing, e)}"
            return Outcome(
                item.path,
                error=msg,
                exit_code=1,
                seconds=time.perf_counter() - start,
                trace=traceback.format_exc(),
            )
        return Outcome(item.path, tuple(results), seconds=time.perf_counter() - start)


def internal_error(doing: str, e: BaseException) -> str:
    """The one line for an exception that is not ours (a bug, or a case we do not know yet)."""
    what = (str(e).strip().splitlines() or [""])[0][:160]
    kind = type(e).__name__ + (f": {what}" if what else "")
    return f"internal error while {doing} ({kind}); rerun with --verbose for the traceback"


class ReportFile:
    """--report: one JSON line per input, written as each finishes, to a local file (appended
    at once) or to an object on a store (re-uploaded whole; object stores have no append)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.remote: RemoteReport | None = None
        if isinstance(path, RemotePath):
            self.remote = RemoteReport(path)
        else:
            check_report(path)

    def add(self, outcome: Outcome) -> None:
        if self.remote is not None:
            self.remote.add(outcome.record())
        else:
            append_report(self.path, outcome)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


def check_report(path: Path) -> None:
    """Before any work: the report must be appendable, or the batch would stop after one file."""
    if path.is_dir():
        raise UsageError(f"--report {path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("a").close()
    except OSError as e:
        raise UsageError(f"--report {path}: cannot write ({e.strerror})") from None


def append_report(path: Path, outcome: Outcome) -> None:
    """One JSON line per input, written as each finishes so an interrupted batch keeps its log."""
    with path.open("a") as f:
        f.write(json.dumps(outcome.record()) + "\n")
