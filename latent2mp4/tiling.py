"""Whether and how to tile a decode: the grid asked for, weighed against the memory available."""

from __future__ import annotations

from pathlib import Path

import torch

from latent2mp4.engine import TileGrid
from latent2mp4.errors import InputError, UsageError
from latent2mp4.memory import BUDGET_SHARE, GIB, PREVIEW_BYTES_PER_PIXEL, available_bytes, estimate
from latent2mp4.presets import Preset


def tile_grid(preset: Preset, tile_size: int | None, tile_stride: int | None) -> TileGrid:
    """The tiles --tile-size/--tile-stride (output pixels) ask for, else the preset's."""
    size = (tile_size,) * 2 if tile_size else preset.tile_size
    r = preset.spatial_ratio
    if tile_stride:
        stride = (tile_stride,) * 2
    elif tile_size and preset.tile_cover:
        # covering tiles keep the preset's minimum overlap (diffusers' enable_tiling(size))
        overlap = preset.tile_size[0] - preset.tile_stride[0]
        stride = (max(r, tile_size - overlap),) * 2
    elif tile_size:
        stride = (max(r, tile_size * 3 // 4 // r * r),) * 2
    else:
        stride = preset.tile_stride
    try:
        return TileGrid.from_pixels(size, stride, r, preset.tile_cover)
    except ValueError as e:
        raise UsageError(f"--tile-size/--tile-stride: {e}") from None


def grid_needed(preset: Preset, latent_hw: tuple[int, int]) -> bool:
    return tile_grid(preset, None, None).needed(*latent_hw)


def choose_grid(
    preset: Preset,
    latent_hw: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    where: Path,
    *,
    tile_size: int | None = None,
    tile_stride: int | None = None,
    no_tile: bool = False,
    preview: bool = False,
    bytes_per_pixel: int | None = None,
    vae: bool = True,
) -> tuple[TileGrid | None, str | None]:
    """Untiled when it fits in memory (exactly diffusers' default decode), else tiles.

    A tile size or stride forces tiles, and so does a preset whose reference decode always tiles
    (`tile_always`, for its own VAE: `vae`); `no_tile` forbids them. A decode that cannot fit
    either way is refused before any weights are loaded. `bytes_per_pixel` replaces the preset's
    estimate (another decoder for the same latents). Returns the grid and a note when auto-tiling
    kicked in, or when --no-tile moves the picture away from the reference's.
    """
    h, w = latent_hw
    size = f"{w * preset.spatial_ratio}x{h * preset.spatial_ratio}"
    budget = available_bytes(device) * BUDGET_SHARE
    avail = f"{budget / GIB:.1f} GiB usable on {device.type}"
    if preview:
        est = estimate(preset, h, w, dtype, None, bytes_per_pixel=PREVIEW_BYTES_PER_PIXEL)
        if est.bytes > budget:
            raise InputError(f"{where}: {size} frames need about {est.gib:.1f} GiB; {avail}")
        return None, None
    always = preset.tile_always and vae
    forced = tile_size is not None or tile_stride is not None or always
    grid = None if no_tile else tile_grid(preset, tile_size, tile_stride)
    untiled = estimate(preset, h, w, dtype, None, bytes_per_pixel)
    changed = None
    if no_tile and always and grid_needed(preset, latent_hw):
        changed = (
            f"--no-tile changes the picture: {preset.name}'s reference decode tiles "
            f"{preset.tile_size[1]}x{preset.tile_size[0]} px"
        )
    if (not forced or no_tile) and untiled.bytes <= budget:
        return None, changed
    if grid is None:
        raise InputError(
            f"{where}: decoding {size} frames untiled needs about {untiled.gib:.1f} GiB; {avail} "
            "(drop --no-tile)"
        )
    tiled = estimate(preset, h, w, dtype, grid, bytes_per_pixel)
    if tiled.bytes > budget:
        raise InputError(
            f"{where}: {size} frames need about {tiled.gib:.1f} GiB even in tiles; {avail}"
        )
    if forced:
        return tiled.grid, None
    tile = f"{grid.size[1] * preset.spatial_ratio}x{grid.size[0] * preset.spatial_ratio}"
    return (
        tiled.grid,
        f"tiled in {tile} px tiles: untiled needs about {untiled.gib:.1f} GiB; {avail}",
    )
