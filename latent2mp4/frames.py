"""Pixel chunks → uint8 frames, and a producer thread so decoding overlaps encoding."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from latent2mp4.arrays import all_finite
from latent2mp4.errors import DecodeError

T = TypeVar("T")
_DONE = object()


def quantise(x: Tensor) -> Tensor:
    """`(3, f, H, W)` in [-1, 1] → `(f, H, W, 3)` uint8, rounded (diffusers truncates)."""
    # One float copy, then in place: the same fp32 arithmetic with a single temporary.
    q = x.to(torch.float32, copy=True).add_(1.0).mul_(127.5).round_().clamp_(0, 255)
    q = q.to(torch.uint8)
    return q.permute(1, 2, 3, 0)


def to_frames(chunks: Iterable[Tensor]) -> Iterator[np.ndarray]:
    """Pixel chunks `(1, 3, f, H, W)` → uint8 frames `(H, W, 3)`, in order.

    On CUDA the quantisation runs on the device and each chunk is copied into pinned host memory
    without blocking; a chunk's frames are handed out only after the next chunk's decode has been
    queued, so the copy overlaps the GPU's work.

    A chunk holding NaN/Inf raises `DecodeError` before any of its frames is handed out:
    quantisation would turn them into black or saturated frames silently.
    """
    pending: tuple[Tensor, torch.cuda.Event, Tensor, int, torch.dtype] | None = None
    first = 0  # index of the chunk's first frame
    for x in chunks:
        finite = all_finite(x)  # on the device; read once the chunk is ready
        q = quantise(x[0])
        if q.is_cuda:
            host = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(q, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            if pending is not None:
                yield from _wait(*pending)
            pending = (host, done, finite, first, x.dtype)
        else:
            _check(bool(finite), first, x.dtype)
            yield from q.contiguous().numpy()
        first += x.shape[2]
    if pending is not None:
        yield from _wait(*pending)


def _wait(
    host: Tensor, done: torch.cuda.Event, finite: Tensor, first: int, dtype: torch.dtype
) -> Iterator[np.ndarray]:
    done.synchronize()
    _check(bool(finite), first, dtype)
    yield from host.numpy()


def _check(finite: bool, first: int, dtype: torch.dtype) -> None:
    if finite:
        return
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.float16:
        why, fix = "float16 overflowed", "rerun with --dtype bf16 or --dtype fp32"
    elif dtype == torch.bfloat16:
        why, fix = "in bfloat16", "rerun with --dtype fp32"
    else:
        why, fix = f"in {name}", "check the VAE weights and the latents' range"
    raise DecodeError(
        f"decoded frames from frame {first} on hold NaN/Inf ({why}); nothing was written; {fix}"
    )


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` ahead of the consumer.

    The consumer (ffmpeg writes) and the producer (the decoder, which releases the GIL inside
    torch) then run at the same time. Errors in the producer are re-raised in the consumer; when
    the consumer stops early (an error, Ctrl-C), the producer is told to stop at its next item.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            failure.append(e)
        finally:
            if not stop.is_set():
                q.put(_DONE)

    worker = threading.Thread(target=produce, name="latent2mp4-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                if failure:
                    raise failure[0]
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():  # let the producer notice `stop` and unwind
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
