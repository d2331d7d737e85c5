"""Percentile bootstrap confidence intervals over queries.

Every reported figure carries a 95% interval from 1,000 resamples of the per-query values with a fixed seed
(see docs/EVALUATION.md). Comparing two systems uses the *paired* bootstrap: both systems are resampled on the
same query indices, so the per-query correlation between them (easy queries are easy for both) cancels and the
interval on the difference is much tighter than two separate intervals suggest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

# Resamples are drawn in blocks of at most this many indices, so memory stays bounded for large query sets.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval, over ``n`` queries."""

    mean: float  # the metric on the full query set (mean of the per-query values)
    low: float  # lower end of the percentile interval
    high: float  # upper end of the percentile interval
    n: int  # number of queries the estimate is over

    def to_dict(self) -> dict:
        """Plain JSON-ready form."""
        return {"mean": float(self.mean), "low": float(self.low), "high": float(self.high), "n": int(self.n)}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _as_values(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise EnclipError(f"{what} must be a non-empty 1-D array of per-query values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise EnclipError(f"{what} contains NaN or infinite values; fix the per-query metric before bootstrapping")
    return array


def _check_settings(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise EnclipError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise EnclipError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def _resample_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``."""
    rng = np.random.default_rng(seed)
    n = values.size
    rows_per_block = max(1, _BLOCK_ELEMENTS // n)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, rows_per_block):
        stop = min(start + rows_per_block, n_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[indices].mean(axis=1)
    return means


def _estimate(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> Estimate:
    means = _resample_means(values, n_resamples, seed)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(mean=float(values.mean()), low=float(low), high=float(high), n=int(values.size))


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of per-query ``values`` with a percentile bootstrap interval (resampling queries with replacement)."""
    _check_settings(n_resamples, confidence)
    return _estimate(_as_values(values, "values"), n_resamples, confidence, seed)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of ``a - b`` with an interval from resampling the same query indices for both systems.

    ``a[i]`` and ``b[i]`` must be the two systems' values on the same query ``i``. An interval excluding 0 says
    the difference is unlikely to be resampling noise.
    """
    _check_settings(n_resamples, confidence)
    a_values, b_values = _as_values(a, "a"), _as_values(b, "b")
    if a_values.shape != b_values.shape:
        raise EnclipError(
            f"paired bootstrap needs one value per query from each system, got {a_values.size} and {b_values.size}"
        )
    # Resampling indices of (a - b) is the same as resampling the same indices of a and of b, then subtracting.
    return _estimate(a_values - b_values, n_resamples, confidence, seed)
