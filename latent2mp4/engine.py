"""Drive any streaming decoder over time chunks and spatial tiles.

The engine knows no model family. A family decoder describes how time splits into chunks
(`time_chunks`), makes a fresh causal state (`new_state`) and decodes one chunk of one tile with
that state (`decode_chunk`). The engine owns one state per spatial tile, advances all tiles
together one chunk at a time, blends and crops tiles exactly as diffusers does, blends
overlapping time chunks, and yields pixel chunks as soon as they are final. Nothing is
concatenated along time, so peak memory is bounded by one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Chunk:
    """One step of a decoder's time plan, in latent frames `[start, stop)`."""

    start: int
    stop: int
    drop: int = 0  # leading decoded frames discarded (a temporal tile's image-like first frame)
    trim: int = 0  # trailing decoded frames discarded (LTX's framewise tiles)
    blend: int = 0  # leading frames cross-faded with the previous chunk's trailing frames
    emit: int | None = None  # frames passed on; the rest only feeds the next chunk's blend


@dataclass(frozen=True)
class Segments:
    """A pipeline that decodes its latents as independent clips of `frames` latent frames each
    (SVD's `decode_chunk_size` windows, Helios' chunks): every segment is decoded on its own,
    with fresh causal state, and the frames are concatenated. The split is part of the output.

    `frames` None is one segment (the whole clip). `align` "end" places the segments flush with
    the last latent frame and leaves the leading `T mod frames` undecoded (Helios' history
    prefix); "start" lets the last segment be shorter (SVD). `trim` "causal" cuts the
    concatenated frames to `1 + r*k` (Helios, r the temporal ratio).
    """

    frames: int | None = None
    align: str = "start"  # start | end
    trim: str = "none"  # none | causal

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"segment frames must be at least 1, not {self.frames}")
        if self.align not in ("start", "end") or self.trim not in ("none", "causal"):
            raise ValueError("segments: align must be start or end, trim none or causal")

    def ranges(self, num_frames: int) -> list[tuple[int, int]]:
        """Latent frame ranges `[start, stop)` decoded as separate clips, in time order."""
        n = self.frames or num_frames
        if self.align == "end":
            first = num_frames % n if num_frames >= n else 0
            return [(s, min(s + n, num_frames)) for s in range(first, num_frames, n)]
        return [(s, min(s + n, num_frames)) for s in range(0, num_frames, n)]


class StreamDecoder(Protocol):
    """What the engine needs from a family decoder (an `nn.Module` in practice)."""

    @property
    def upscale(self) -> int:
        """Pixels of `decode_chunk` output per latent pixel (before `finalize`)."""
        ...

    def time_chunks(self, num_frames: int, max_frames: int = 1) -> list[Chunk]:
        """Split `num_frames` latent frames into the chunks the reference decodes; a family
        whose result does not depend on the split may group up to `max_frames` per chunk."""
        ...

    def new_state(self) -> object:
        """A fresh causal state for one spatial tile."""
        ...

    def decode_chunk(self, z: Tensor, state: object) -> Tensor:
        """Decode latents `(B, C, t, h, w)` in VAE space; returns `(B, C', f, h*up, w*up)`."""
        ...

    def finalize(self, x: Tensor) -> Tensor:
        """Map stitched decode space to pixels `(B, 3, f, H, W)` in [-1, 1]."""
        ...


class LatentSource(Protocol):
    """Latents `(B, C, T, h, w)` read a time range at a time (files stay on disk)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def read(self, start: int, stop: int) -> Tensor:
        """Latent frames `[start, stop)` as `(B, C, stop - start, h, w)`, in the decoder's
        input space, on any device."""
        ...


@dataclass(frozen=True)
class TensorSource:
    """A latent tensor already in memory, as a `LatentSource`."""

    z: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.z.shape)

    def read(self, start: int, stop: int) -> Tensor:
        return self.z[:, :, start:stop]


@dataclass(frozen=True)
class TileGrid:
    """Spatial tiles in latent pixels: tile `size` placed every `stride`, as (height, width)."""

    size: tuple[int, int]
    stride: tuple[int, int]

    @classmethod
    def from_pixels(cls, size: tuple[int, int], stride: tuple[int, int], ratio: int) -> TileGrid:
        """Convert output-pixel tile sizes to latent units; both must be multiples of `ratio`."""
        for name, value in (("tile size", size), ("tile stride", stride)):
            if any(v <= 0 or v % ratio for v in value):
                raise ValueError(f"{name} {value} must be positive multiples of {ratio} pixels")
        if any(s > t for s, t in zip(stride, size, strict=False)):
            raise ValueError(f"tile stride {stride} must not exceed tile size {size}")
        return cls(
            size=(size[0] // ratio, size[1] // ratio),
            stride=(stride[0] // ratio, stride[1] // ratio),
        )

    def needed(self, h: int, w: int) -> bool:
        return h > self.size[0] or w > self.size[1]

    def origins(self, h: int, w: int) -> list[list[tuple[int, int]]]:
        return [[(i, j) for j in range(0, w, self.stride[1])] for i in range(0, h, self.stride[0])]


def blend(prev: Tensor, cur: Tensor, extent: int, dim: int) -> None:
    """Cross-fade the first positions of `cur` from the last ones of `prev`, in place.

    Matches the `blend_v`/`blend_h`/`blend_t` helpers of diffusers' video VAEs: the weight of
    `cur` rises by 1/e per position, arithmetic in the tensor dtype with Python-float weights.
    """
    e = min(prev.shape[dim], cur.shape[dim], extent)
    for p in range(e):
        mixed = prev.select(dim, prev.shape[dim] - e + p) * (1 - p / e) + cur.select(dim, p) * (
            p / e
        )
        cur.select(dim, p).copy_(mixed)


def _decode_tiled(
    decoder: StreamDecoder, z: Tensor, grid: TileGrid, states: list[object], up: int
) -> Tensor:
    h, w = z.shape[-2:]
    origins = grid.origins(h, w)
    blend_h, blend_w = ((t - s) * up for t, s in zip(grid.size, grid.stride, strict=False))
    keep_h, keep_w = (s * up for s in grid.stride)
    tiles: list[list[Tensor]] = []
    k = 0
    for origin_row in origins:
        tiles.append([])
        for i, j in origin_row:
            part = z[..., i : i + grid.size[0], j : j + grid.size[1]]
            tiles[-1].append(decoder.decode_chunk(part, states[k]))
            k += 1
    # Raster order with in-place blends, so later tiles see their neighbours' blended values
    # (diffusers, autoencoder_kl_wan.py tiled_decode).
    rows = []
    for r, row in enumerate(tiles):
        kept = []
        for c, tile in enumerate(row):
            if r > 0:
                blend(tiles[r - 1][c], tile, blend_h, dim=3)
            if c > 0:
                blend(row[c - 1], tile, blend_w, dim=4)
            kept.append(tile[..., :keep_h, :keep_w])
        rows.append(torch.cat(kept, dim=4))
    return torch.cat(rows, dim=3)[..., : h * up, : w * up]


@contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """fp32 on CUDA means fp32: no TF32 convolutions or matmuls while it lasts.

    PyTorch lets cuDNN convolve fp32 in TF32 by default, which moves a decode by ~1e-3 and costs
    the bit-faithful output fp32 (and --lossless) is asked for. The flags are process-wide, so
    they are restored afterwards.
    """
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def decode_stream(
    decoder: StreamDecoder,
    z: Tensor | LatentSource,
    grid: TileGrid | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_chunk_frames: int = 1,
    segments: list[tuple[int, int]] | None = None,
    frame_limit: int | None = None,
) -> Iterator[Tensor]:
    """Decode VAE-space latents chunk by chunk.

    Parameters
    ----------
    z : latents `(B, C, T, h, w)` in the decoder's input space, on any device, or a source that
        reads them a time range at a time; each chunk is read, moved to `device` and cast to
        `dtype` only when it is decoded, so the whole clip never needs to be in memory.
    grid : spatial tiles, used only when the latent is larger than one tile.
    max_chunk_frames : latent frames a chunk may hold, for families that allow it (see
        `StreamDecoder.time_chunks`).
    segments : latent frame ranges decoded as independent clips, each with fresh states and its
        own time plan (`Segments.ranges`); None: the whole clip is one.
    frame_limit : frames yielded at most (the rest of the last chunks is cut off).

    Yields
    ------
    Pixel chunks `(B, 3, f, H, W)` in [-1, 1] on `device`, in time order; their `f` add up to
    the decoder's frame count for `T`.
    """
    source = TensorSource(z) if isinstance(z, Tensor) else z
    T = source.shape[2]
    left = frame_limit
    for start, stop in segments or [(0, T)]:
        clip = _decode_segment(decoder, source, start, stop, grid, device, dtype, max_chunk_frames)
        for x in clip:
            if left is not None:
                x = x[:, :, :left]
                left -= x.shape[2]
            if x.shape[2]:
                yield x
            if left == 0:
                return


def _decode_segment(
    decoder: StreamDecoder,
    source: LatentSource,
    first: int,
    last: int,
    grid: TileGrid | None,
    device: torch.device | str,
    dtype: torch.dtype,
    max_chunk_frames: int,
) -> Iterator[Tensor]:
    """Latent frames `[first, last)` decoded as a clip of their own."""
    h, w = source.shape[3:]
    tiled = grid is not None and grid.needed(h, w)
    n_states = sum(len(row) for row in grid.origins(h, w)) if tiled and grid else 1
    states = [decoder.new_state() for _ in range(n_states)]
    up = decoder.upscale
    prev: Tensor | None = None
    with torch.inference_mode(), exact_fp32(torch.device(device), dtype):
        for chunk in decoder.time_chunks(last - first, max_chunk_frames):
            part = source.read(first + chunk.start, first + chunk.stop)
            part = part.to(device=device, dtype=dtype)
            if tiled and grid is not None:
                x = _decode_tiled(decoder, part, grid, states, up)
            else:
                x = decoder.decode_chunk(part, states[0])
            x = x[:, :, chunk.drop : x.shape[2] - chunk.trim]
            if prev is not None and chunk.blend:
                blend(prev, x, chunk.blend, dim=2)
            prev = x if chunk.blend or chunk.emit is not None else None
            out = x if chunk.emit is None else x[:, :, : chunk.emit]
            if out.shape[2]:
                yield decoder.finalize(out)
