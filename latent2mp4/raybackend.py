"""`decode --ray`: the local batch's files, decoded by a pool of Ray actors.

Scheduling: one long-lived actor per worker (one GPU each where the cluster has GPUs, else a
CPU count), each holding a `Batch` — so the VAE loads once per worker — and the driver hands out
one file at a time to whichever actor is idle. A long file keeps one actor busy while the others
work through the short ones: the balance is dynamic with no estimate of lengths. Ray Data's
`map_batches` with a callable class would give the same actor pool, but it batches rows, retries
whole tasks on its own terms, brings pyarrow, and hides the per-file outcomes the contract needs
as each file finishes (report rows, notes, the retry count per file).

Faults: a worker's death (killed, out of memory, node lost) surfaces as an actor error on the
file it held; that file goes back to the front of the queue, a fresh actor replaces the dead
one, and after `retries` further deaths on the same file it is reported failed. A file that fails
by itself (bad latents, missing weights) comes back as an ordinary failed `Outcome` and is
reported once — never retried, since it would fail the same way. Outputs are published
atomically by the worker (as locally), so a death never leaves a finished-looking file; the
partial a killed worker leaves is removed before its file is retried.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from latent2mp4.batch import Batch, Input, Outcome
from latent2mp4.errors import Latent2Mp4Error, UsageError
from latent2mp4.pipeline import DecodeOptions, Job, encode_options, output_paths
from latent2mp4.storage import RemotePath

EXTRA = "pip install 'latent2mp4[ray]'"
POLL_SECONDS = 0.25  # how often the driver looks at the cluster's progress
TALLY_SECONDS = 0.5  # how often a worker reports the frames it wrote
STOP_GRACE_SECONDS = 20.0  # Ctrl-C: how long workers get to remove their partial files


class ClusterError(Latent2Mp4Error):
    """The Ray cluster cannot be reached or cannot run the workers."""


@dataclass(frozen=True)
class RayOptions:
    address: str  # "auto", "local" or "HOST:PORT"
    workers: int | None = None  # None: one per GPU, else as many as the CPUs fit
    cpus: int | None = None  # per worker; None: 2 beside a GPU, else up to 4
    retries: int = 2  # further attempts for a file whose worker died

    @classmethod
    def parse(cls, address: str, workers: int | None, cpus: int | None) -> RayOptions:
        address = address.strip()
        if address not in ("auto", "local"):
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"--ray must be auto, local or HOST:PORT, not {address!r}")
        for flag, n in (("--ray-workers", workers), ("--ray-cpus", cpus)):
            if n is not None and n < 1:
                raise UsageError(f"{flag} must be at least 1, not {n}")
        return cls(address, workers, cpus)


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray; install it with {EXTRA}") from None
    return ray


def connect(ray: Any, address: str) -> None:
    """Join a running cluster, or start a private one bound to loopback (`local`)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    # ray.init installs a SIGTERM handler that aborts the process; ours cleans up first.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address == "local":
            # Without this, Ray 2.60 replaces 127.0.0.1 with the machine's interface address and
            # the instance listens on the network.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(
                address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **common
            )
        else:
            host = address.removeprefix("ray://").rpartition(":")[0]
            if host in ("127.0.0.1", "localhost"):  # a loopback cluster: stay on loopback
                common["_node_ip_address"] = "127.0.0.1"
            ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as e:
        what = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ClusterError(f"--ray {address}: cannot connect to Ray ({what})") from None
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)


@dataclass(frozen=True)
class Sizing:
    workers: int
    cpus: int
    gpus: int  # 0 or 1 per worker


def worker_sizing(ray: Any, opts: DecodeOptions, ropts: RayOptions) -> Sizing:
    """One GPU per worker where the cluster has GPUs (and --device allows them), with 2 CPUs
    for ffmpeg and the frame conversion; else CPU workers of up to 4 cores (more threads per
    decode scale poorly, more workers scale with files). A worker never asks for more CPUs
    than the largest node has, or it could never start."""
    total = ray.cluster_resources()
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    gpus = int(total.get("GPU", 0)) if not opts.device.startswith("cpu") else 0
    if gpus and opts.decoder != "preview":
        cpus = ropts.cpus or min(2, max(int(largest), 1))
        return Sizing(ropts.workers or gpus, cpus, 1)
    cpus = ropts.cpus or min(4, max(int(largest), 1))
    if cpus > largest:
        raise ClusterError(f"--ray-cpus {cpus}: no node of the cluster has {cpus} CPUs")
    return Sizing(ropts.workers or max(1, int(total.get("CPU", 1) // cpus)), cpus, 0)


class Tally:
    """Frames written across the cluster, for the driver's frames-per-second."""

    def __init__(self) -> None:
        self.frames = 0

    def add(self, n: int) -> None:
        self.frames += n

    def total(self) -> int:
        return self.frames


class Worker:
    """One decoder process: a `Batch` (one VAE load per preset), one file at a time. Its
    second thread answers `stop`, which makes the decode raise Ctrl-C at the next frames, so
    the writer removes its partial file as a local Ctrl-C does."""

    def __init__(self, opts: DecodeOptions, threads: int, tally: Any) -> None:
        import torch

        torch.set_num_threads(threads)  # the CPUs Ray gave this worker, no more
        self.opts, self.tally = opts, tally
        self.stopping = threading.Event()
        self.unsent, self.sent_at = 0, time.monotonic()
        self.batch = Batch(opts, self._on_job)

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        self.stopping.set()

    def run(self, item: Input, stale_pid: int | None) -> Outcome | None:
        if stale_pid is not None:
            remove_partials(item, self.opts, stale_pid)
        try:
            return self.batch.run_one(item)
        except KeyboardInterrupt:  # stopped by the driver; the partial is already removed
            return None
        finally:
            self._send()

    def _on_job(self, job: Job) -> Callable[[int], None]:
        def advance(n: int) -> None:
            if self.stopping.is_set():
                raise KeyboardInterrupt
            self.unsent += n
            if time.monotonic() - self.sent_at >= TALLY_SECONDS:
                self._send()

        return advance

    def _send(self) -> None:
        if self.unsent:
            self.tally.add.remote(self.unsent)
        self.unsent, self.sent_at = 0, time.monotonic()


def remove_partials(item: Input, opts: DecodeOptions, pid: int) -> None:
    """The hidden partial files (video, audio) a killed worker process `pid` left for this
    input's outputs. Only that process's names: another run's partials are never touched."""
    base = output_paths(item.path, opts, encode_options(opts, 1.0, {}).default_suffix(), item.root)
    if isinstance(base, RemotePath):
        return  # a URL's partial was in the dead worker's own temporary folder
    stem = glob.escape(base.stem)
    for pattern in (f".{stem}*.partial-{pid}.*", f".{stem}*.audio-{pid}.f32"):
        for p in base.parent.glob(pattern):
            p.unlink(missing_ok=True)


def run_on_ray(
    items: list[Input],
    opts: DecodeOptions,
    ropts: RayOptions,
    progress: Callable[[int, int], None],
    note: Callable[[str], None],
) -> Iterator[Outcome]:
    """Yields each input's outcome as it finishes, in whatever order the cluster finishes."""
    ray = require_ray()
    connect(ray, ropts.address)
    pool = Pool(ray, opts, ropts, note)
    try:
        yield from pool.run(items, progress)
    finally:
        pool.close()
        if ropts.address == "local":
            ray.shutdown()


class Pool:
    def __init__(self, ray: Any, opts: DecodeOptions, ropts: RayOptions, note: Any) -> None:
        self.ray, self.opts, self.ropts, self.note = ray, opts, ropts, note
        self.sizing = worker_sizing(ray, opts, ropts)
        self.tally = ray.remote(num_cpus=0)(Tally).remote()
        self.actor_class = ray.remote(
            num_cpus=self.sizing.cpus,
            num_gpus=self.sizing.gpus,
            max_concurrency=2,  # `run` and `stop`
            max_restarts=0,  # a dead worker is replaced by the driver, which knows its file
        )(Worker)
        self.pids: dict[Any, Any] = {}
        self.actors = [self._start() for _ in range(self.sizing.workers)]
        self.busy: dict[Any, tuple[Any, int]] = {}  # task → (actor, input index)

    def _start(self) -> Any:
        actor = self.actor_class.remote(self.opts, self.sizing.cpus, self.tally)
        self.pids[actor] = actor.pid.remote()
        return actor

    def run(self, items: list[Input], progress: Callable[[int, int], None]) -> Iterator[Outcome]:
        ray = self.ray
        from ray.exceptions import (
            ActorDiedError,
            OutOfMemoryError,
            RayActorError,
            WorkerCrashedError,
        )

        queue, deaths, stale = deque(range(len(items))), Counter[int](), dict[int, int]()
        idle = list(self.actors)
        done = 0
        for outcome in claim_outputs(items, self.opts, queue):
            done += 1
            yield outcome
        while queue or self.busy:
            while queue and idle:
                idx = queue.popleft()
                actor = idle.pop()
                task = actor.run.remote(items[idx], stale.pop(idx, None))
                self.busy[task] = (actor, idx)
            ready, _ = ray.wait(list(self.busy), num_returns=1, timeout=POLL_SECONDS)
            progress(done, ray.get(self.tally.total.remote()))
            for task in ready:
                actor, idx = self.busy.pop(task)
                item = items[idx]
                try:
                    got = ray.get(task)
                except (ActorDiedError, RayActorError, WorkerCrashedError, OutOfMemoryError) as e:
                    if getattr(e, "actor_init_failed", False):  # the same on every retry
                        raise ClusterError(
                            f"a Ray worker could not start ({_first_line(e)}); is latent2mp4 "
                            "installed, at this version, on every node?"
                        ) from None
                    deaths[idx] += 1
                    pid = self._pid(actor)
                    self._replace(actor, idle)
                    why = _first_line(e)
                    if deaths[idx] <= self.ropts.retries:
                        self.note(
                            f"{item.path}: its worker was lost ({why}); retrying "
                            f"({deaths[idx]} of {self.ropts.retries})"
                        )
                        queue.appendleft(idx)
                        if pid is not None:
                            stale[idx] = pid
                        continue
                    got = Outcome(
                        item.path,
                        error=f"{item.path}: its worker died {deaths[idx]} times while decoding "
                        "it (killed, out of memory or its node lost); giving up",
                        exit_code=1,
                    )
                except Exception as e:  # noqa: BLE001 - e.g. an outcome that cannot be sent
                    idle.append(actor)
                    got = Outcome(item.path, error=f"{item.path}: Ray task failed ({e})")
                else:
                    idle.append(actor)
                if got is None:  # the worker was stopped; the driver is on its way out
                    raise KeyboardInterrupt
                done += 1
                progress(done, ray.get(self.tally.total.remote()))
                yield got

    def _pid(self, actor: Any) -> int | None:
        try:
            return int(self.ray.get(self.pids[actor], timeout=5))
        except Exception:  # noqa: BLE001 - it died before it ever started
            return None

    def _replace(self, actor: Any, idle: list[Any]) -> None:
        self.ray.kill(actor, no_restart=True)
        self.actors.remove(actor)
        self.pids.pop(actor, None)
        fresh = self._start()
        self.actors.append(fresh)
        idle.append(fresh)

    def close(self) -> None:
        """Ctrl-C, SIGTERM or the end: running files are stopped (their partials removed by
        their workers), then every worker is ended."""
        ray = self.ray
        if self.busy:
            for actor, _ in self.busy.values():
                actor.stop.remote()
            try:
                ray.wait(list(self.busy), num_returns=len(self.busy), timeout=STOP_GRACE_SECONDS)
            except Exception:  # noqa: BLE001 - a worker died meanwhile: nothing to wait for
                pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        ray.kill(self.tally, no_restart=True)


def claim_outputs(items: list[Input], opts: DecodeOptions, queue: deque[int]) -> list[Outcome]:
    """Two inputs whose outputs would share a name fail before any decode, as locally (each
    worker sees only its own files, so the driver checks). Removes them from `queue`."""
    batch, failed = Batch(opts), []
    suffix = encode_options(opts, 1.0, {}).default_suffix()
    for idx in list(queue):
        item = items[idx]
        try:
            batch.claim(item.path, [output_paths(item.path, opts, suffix, item.root)])
        except UsageError as e:
            queue.remove(idx)
            failed.append(Outcome(item.path, error=str(e), exit_code=e.exit_code))
    return failed


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
