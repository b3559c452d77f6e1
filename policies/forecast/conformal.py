"""Quantiles of forecast errors, and the scores that compare forecasters.

Where it sits: used by the back-test (``policies.forecast.selection``) and by every fitted
forecaster at predict time. The upper quantile the controller provisions for is a point
forecast plus a split-conformal quantile of locally scaled residuals: with ``n`` residuals the
``ceil((n + 1) * tau)``-th smallest one covers a new error with probability at least ``tau``
when errors are exchangeable. When ``n`` is too small to resolve ``tau`` (for 99.95% that is
fewer than 1,999 residuals) the largest residual seen is used, and the back-test reports the
coverage that choice actually achieved.
"""

from __future__ import annotations

import math

import numpy as np


def conformal_quantile(residuals: np.ndarray, tau: float) -> float:
    """The split-conformal ``tau`` quantile of ``residuals`` (the largest one if n is small)."""
    finite = residuals[np.isfinite(residuals)]
    n = len(finite)
    if n == 0:
        return 0.0
    rank = math.ceil((n + 1) * tau)
    if rank >= n:
        return float(finite.max())
    return float(np.partition(finite, rank - 1)[rank - 1])


def expanding_conformal_quantile(residuals: np.ndarray, tau: float) -> np.ndarray:
    """For each i, the conformal quantile of ``residuals[:i]`` (NaN before the first one).

    Computed incrementally: while the sample cannot resolve ``tau`` it is the running maximum;
    after that a sorted insertion keeps it exact.
    """
    out = np.full(len(residuals), np.nan)
    finite_count = int(np.isfinite(residuals).sum())
    if finite_count == 0:
        return out
    if math.ceil(finite_count * tau) >= finite_count - 1:
        # The whole segment is too short to resolve tau: the answer is the running maximum.
        cleaned = np.where(np.isfinite(residuals), residuals, -np.inf)
        running = np.maximum.accumulate(cleaned)
        out[1:] = running[:-1]
        out[~np.isfinite(out)] = np.nan
        return out
    sample: list[float] = []
    running_max = -math.inf
    for i, value in enumerate(residuals):
        n = len(sample)
        if n:
            rank = math.ceil((n + 1) * tau)
            out[i] = running_max if rank >= n else sample[rank - 1]
        if math.isfinite(value):
            running_max = max(running_max, float(value))
            # Insertion keeps the sample sorted; n stays small (a back-test segment).
            lo, hi = 0, len(sample)
            while lo < hi:
                mid = (lo + hi) // 2
                if sample[mid] < value:
                    lo = mid + 1
                else:
                    hi = mid
            sample.insert(lo, float(value))
    return out


def pinball_loss(actual: np.ndarray, upper: np.ndarray, tau: float) -> float:
    """Mean pinball (quantile) loss of ``upper`` as the ``tau`` quantile of ``actual``."""
    diff = actual - upper
    return float(np.mean(np.maximum(tau * diff, (tau - 1.0) * diff)))


def coverage(actual: np.ndarray, upper: np.ndarray) -> float:
    """Share of ``actual`` values at or below ``upper``."""
    if len(actual) == 0:
        return math.nan
    return float(np.mean(actual <= upper))


def coverage_floor(tau: float, n: int) -> float:
    """Lowest empirical coverage consistent with ``tau`` over ``n`` draws (two binomial sigmas)."""
    if n <= 0:
        return tau
    return tau - 2.0 * math.sqrt(tau * (1.0 - tau) / n)
