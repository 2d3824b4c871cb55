"""Per-frame PSNR, SSIM and mean absolute error between two uint8 RGB frames.

PSNR is over all three channels with peak 255; identical frames give `math.inf`.
SSIM is Wang et al. 2004 on BT.601 luma Y' = 0.299 R + 0.587 G + 0.114 B (unrounded, as
MATLAB's `rgb2gray` before its cast): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01,
K2 = 0.03, L = 255, population (not sample) statistics, averaged over the valid region (no
padding). That equals the authors' `ssim_index.m` on the same luma and skimage's
`structural_similarity(gaussian_weights=True, use_sample_covariance=False, data_range=255)`.
"""

from __future__ import annotations

import math

import numpy as np

from latent2mp4.errors import UsageError

PEAK = 255.0
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_C1 = (0.01 * PEAK) ** 2  # 6.5025
SSIM_C2 = (0.03 * PEAK) ** 2  # 58.5225
LUMA_BT601 = (0.299, 0.587, 0.114)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two `(H, W, 3)` uint8 frames; `math.inf` when they are equal."""
    mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    return math.inf if mse == 0.0 else 10.0 * math.log10(PEAK * PEAK / mse)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two `(H, W, 3)` uint8 frames, on the 0–255 scale."""
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D Gaussian that, as an outer product with itself, is SSIM's window; sums to 1."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def luma(frame: np.ndarray) -> np.ndarray:
    """BT.601 luma `(H, W)` float64 in [0, 255] of an `(H, W, 3)` uint8 frame."""
    return frame.astype(np.float64) @ np.array(LUMA_BT601)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two `(H, W, 3)` uint8 frames on their luma; 1.0 when they are equal."""
    h, w = a.shape[:2]
    if min(h, w) < SSIM_WINDOW:
        raise UsageError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, not {w}x{h}")
    if np.array_equal(a, b):
        return 1.0
    x, y = luma(a), luma(b)
    mx, my, xx, yy, xy = _window_mean(np.stack([x, y, x * x, y * y, x * y]))
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    num = (2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    return float((num / den).mean())


def _window_mean(maps: np.ndarray) -> np.ndarray:
    # The 2-D window is separable: filter rows, then columns, keeping the valid region only.
    # Shifted sums in float64 numpy beat torch's float64 conv2d on CPU about sevenfold.
    g = gaussian_window()
    n = len(g)
    h, w = maps.shape[-2:]
    rows = sum(g[k] * maps[..., :, k : w - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[..., k : h - n + 1 + k, :] for k in range(n))
