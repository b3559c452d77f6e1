"""The simple forecasters: persistence, EWMA level and seasonal naive (day and week).

Where it sits: candidates of the per-series back-test (``policies.forecast.selection``); the
fitted winner predicts at decide time. Each model is a frozen value with a ``point_path``: for
every requested origin ``t`` (an index of the grid) the point forecast of ``values[t + h]``
made with data up to ``t`` only, NaN where the model cannot say (not enough history).
Persistence is the reactive fallback of a cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from policies.forecast.grid import Grid

EWMA_ALPHAS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)


class PointModel(Protocol):
    """One way to forecast a series ``h`` steps ahead (the forecaster interface's core)."""

    @property
    def name(self) -> str: ...

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Persistence:
    """Tomorrow looks like now: the last value (reactive scaling's implicit forecast)."""

    name: str = "reactive"

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray:
        return np.asarray(grid.values[origins], dtype=float)


@dataclass(frozen=True, slots=True)
class EwmaLevel:
    """An exponentially weighted level; ``alpha`` was chosen on the training part."""

    alpha: float
    name: str = "ewma"

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray:
        level = pd.Series(grid.values).ewm(alpha=self.alpha, adjust=False).mean().to_numpy()
        return np.asarray(level[origins], dtype=float)


@dataclass(frozen=True, slots=True)
class SeasonalNaive:
    """The value one season (a day or a week) before the target time."""

    period_steps: int
    name: str = "seasonal_naive_day"

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray:
        source = origins + h - self.period_steps
        out = np.full(len(origins), np.nan)
        ok = (source >= 0) & (h <= self.period_steps)
        out[ok] = grid.values[source[ok]]
        return out


@dataclass(frozen=True, slots=True)
class SeasonalPeak:
    """The highest value near the target's time of day (``width`` steps either side) over the
    last ``seasons`` seasons: a daily job whose start wanders by a few minutes is still seen
    coming, where the seasonal naive value of one day misses it by a step."""

    period_steps: int
    seasons: int = 7
    width: int = 1
    name: str = "seasonal_peak_day"

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray:
        out = np.full(len(origins), -np.inf)
        if h + self.width > self.period_steps:
            return np.full(len(origins), np.nan)
        target = origins + h
        seen = np.zeros(len(origins), dtype=bool)
        for k in range(1, self.seasons + 1):
            for d in range(-self.width, self.width + 1):
                source = target - k * self.period_steps + d
                ok = (source >= 0) & (source <= origins)  # only what was known at the origin
                out[ok] = np.maximum(out[ok], grid.values[source[ok]])
                seen |= ok
        out[~seen] = np.nan
        return out


def fit_ewma(values: np.ndarray, h: int) -> EwmaLevel:
    """The EWMA whose ``h``-step forecasts had the smallest mean absolute error on ``values``."""
    best_alpha, best_error = 1.0, np.inf
    series = pd.Series(values)
    for alpha in EWMA_ALPHAS:
        level = series.ewm(alpha=alpha, adjust=False).mean().to_numpy()
        if len(values) <= h:
            break
        error = float(np.mean(np.abs(values[h:] - level[:-h])))
        if error < best_error - 1e-12:
            best_alpha, best_error = alpha, error
    return EwmaLevel(alpha=best_alpha)
