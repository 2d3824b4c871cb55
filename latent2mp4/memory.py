"""Up-front memory estimates: tile only when a frame would not fit, refuse what never fits."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from latent2mp4.engine import TileGrid
from latent2mp4.presets import Preset

GIB = 1024**3
# Share of the available memory a decode may plan to use; the rest is headroom for the allocator,
# ffmpeg and estimate error.
BUDGET_SHARE = 0.8
# Per output pixel of a stitched chunk: its float frames, the tiles they came from, and uint8.
STITCH_BYTES_PER_PIXEL_FRAME = 3 * 4 * 3 + 3
PREVIEW_BYTES_PER_PIXEL = 64  # a few RGB float frames at full size
MAX_CHUNK_FRAMES = 8  # latent frames per decode call; more gains little
# Output pixels one latent frame must hold to keep a GPU busy on its own. Measured on an H100:
# at 832x480, Wan 2.1 decodes 21 latent frames in the same time with 1, 2, 4 or 8 frames per call
# (fp32 9.6-9.8 s, bf16 1.3-1.4 s) while peak memory grows 4x, so smaller frames are grouped
# up to this size and larger ones go one at a time.
BUSY_PIXELS = 832 * 480
# Latent positions one CPU decode call should hold. The deepest convs (1024 channels) run at a
# third of the CPU's speed on a 16x16 latent frame alone and at full speed on 4 of them (one
# AVX2 machine, fp32: 29 against 78 GMAC/s), so small latent frames are grouped up to this.
CPU_BUSY_LATENT_PIXELS = 32 * 32
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20


def return_large_buffers_to_the_os() -> None:
    """Make glibc give every buffer of 1 MiB or more straight back to the OS when freed.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
    mid-sized buffers (a chunk's uint8 frames, say) come from the heap, fragment it, and a long
    decode's peak memory creeps up chunk after chunk (measured: +13 % over 641 720p frames;
    with a fixed threshold, flat). Fixing the threshold also turns that adaptation off. Other C
    libraries have no such knob and need none.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Estimate:
    bytes: int
    grid: TileGrid | None

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def estimate(
    preset: Preset,
    h: int,
    w: int,
    dtype: torch.dtype,
    grid: TileGrid | None,
    bytes_per_pixel: int | None = None,
) -> Estimate:
    """Peak bytes to decode one chunk of `h`×`w` latents, untiled or with `grid`."""
    r = preset.spatial_ratio
    tiled = grid is not None and grid.needed(h, w)
    th, tw = (min(h, grid.size[0]), min(w, grid.size[1])) if tiled and grid else (h, w)
    size = torch.finfo(dtype).bits // 8
    per_pixel = bytes_per_pixel if bytes_per_pixel is not None else preset.decode_bytes_per_pixel
    activations = per_pixel * size // 4 * th * r * tw * r
    stitched = preset.chunk_frames * h * r * w * r * STITCH_BYTES_PER_PIXEL_FRAME
    return Estimate(activations + stitched, grid if tiled else None)


def chunk_frames(
    preset: Preset, h: int, w: int, dtype: torch.dtype, grid: TileGrid | None, device: torch.device
) -> int:
    """Latent frames per decode call: enough to keep the device busy, as far as memory allows.

    A CPU is kept busy by `CPU_BUSY_LATENT_PIXELS` latent positions per call (the deepest convs
    see that many); on a GPU a small frame leaves the device idle between kernels, so frames are
    grouped up to `BUSY_PIXELS` of output each call. A large frame is busy enough alone and
    grouping would only multiply the memory it takes.
    """
    if preset.whole_clip:
        # A non-causal decoder's result depends on the split: the whole clip in one call when it
        # fits, else the family's temporal tiles. The estimate covers `chunk_frames` output frames.
        per_latent = estimate(preset, h, w, dtype, grid).bytes * preset.temporal_ratio
        per_latent //= max(preset.chunk_frames, 1)
        return max(1, int(available_bytes(device) * BUDGET_SHARE) // max(per_latent, 1))
    if device.type == "cuda":
        r = preset.spatial_ratio
        wanted = -(-BUSY_PIXELS // (h * r * w * r))  # ceil
    else:
        wanted = -(-CPU_BUSY_LATENT_PIXELS // (h * w))
    if wanted <= 1:
        return 1
    per_frame = estimate(preset, h, w, dtype, grid).bytes
    fit = int(available_bytes(device) * BUDGET_SHARE) // max(per_frame, 1)
    return max(1, min(MAX_CHUNK_FRAMES, wanted, fit))
