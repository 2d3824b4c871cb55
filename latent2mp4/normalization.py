"""How model-space latents map to VAE space: the numbers of a preset or a VAE's config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from latent2mp4.errors import UsageError

StdOp = Literal["reciprocal", "multiply"]

NUMERIC_KEYS = frozenset(
    ("latents_mean", "mean", "latents_std", "std", "scaling_factor", "shift_factor", "sigma_data")
)


@dataclass(frozen=True)
class Normalization:
    """How model-space latents map to VAE space: `z * std [/ scaling_factor] [/ sigma_data] +
    mean`, or `z / scaling_factor` (`+ shift_factor` where one is set).

    `std_op` is how the pipeline applies std: `reciprocal` divides by `1 / std` (the Wan, SkyReels
    and Sana-Video pipelines), `multiply` multiplies by std (Cosmos-Predict2, and always when a
    scaling factor comes with mean and std, as in Mochi and LTX-Video). Both are the same maths
    but round differently, and we reproduce the pipeline's floats. `sigma_data` is a further
    divisor (Cosmos' scheduler `sigma_data`); None: no division.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scaling_factor: float | None = None
    std_op: StdOp = "reciprocal"
    sigma_data: float | None = None
    shift_factor: float | None = None  # None or 0: no shift (pipelines test it for truth)

    @classmethod
    def from_mapping(cls, d: dict[str, Any], source: str) -> Normalization:
        if not isinstance(d, dict):
            raise UsageError(f"{source}: normalization must be a mapping (mean/std or scale)")
        for key in NUMERIC_KEYS & set(d):
            values = d[key] if isinstance(d[key], list) else [d[key]]
            finite = (isinstance(v, int | float) and math.isfinite(v) for v in values)
            if d[key] is not None and not all(finite):
                raise UsageError(f"{source}: {key} must hold finite numbers")
        mean, std, scale = (
            d.get("latents_mean", d.get("mean")),
            d.get("latents_std", d.get("std")),
            d.get("scaling_factor"),
        )
        std_op = d.get("std_op", "reciprocal")
        sigma = d.get("sigma_data")
        if std_op not in ("reciprocal", "multiply"):
            raise UsageError(f"{source}: std_op must be reciprocal or multiply, not {std_op}")
        if sigma is not None and not float(sigma) > 0:
            raise UsageError(f"{source}: sigma_data must be positive, not {sigma}")
        if scale is not None and float(scale) == 0:
            raise UsageError(f"{source}: scaling_factor is 0")
        if mean is not None and std is not None:
            if len(mean) != len(std):
                raise UsageError(f"{source}: mean has {len(mean)} values but std has {len(std)}")
            if any(float(s) == 0 for s in std):
                raise UsageError(f"{source}: std contains 0; latents cannot be de-normalised")
            return cls(
                mean=tuple(map(float, mean)),
                std=tuple(map(float, std)),
                std_op=std_op,
                sigma_data=None if sigma is None else float(sigma),
                scaling_factor=None if scale is None else float(scale),
            )
        if scale is not None:
            shift = d.get("shift_factor")
            return cls(scaling_factor=float(scale), shift_factor=float(shift) if shift else None)
        raise UsageError(f"{source}: normalization needs mean and std, or scaling_factor")

    @property
    def channels(self) -> int | None:
        return len(self.mean) if self.mean is not None else None

    def with_values_of(self, other: Normalization | None) -> Normalization:
        """`other`'s numbers (a VAE's config.json) in this preset's arithmetic (std_op, sigma)."""
        if other is None:
            return self
        return replace(other, std_op=self.std_op, sigma_data=self.sigma_data)
