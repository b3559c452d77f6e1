"""Regular time grids for the forecasters: a demand history as evenly spaced values.

Where it sits: the first step of every forecaster (refit and predict). ``DecisionState`` holds
each business's demand as a pandas Series of busy cores on a UTC ``DatetimeIndex`` at one-minute
or coarser resolution; the models work on numpy arrays with a fixed step, so irregular or
gappy histories are regularised here (the maximum within a step, since capacity must cover the
busiest moment; a gap carries the last value forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_STEP_S = 60.0
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, slots=True)
class Grid:
    """Evenly spaced values: ``values[i]`` is the demand at ``start_s + i * step_s``."""

    values: np.ndarray
    start_s: float
    step_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + (len(self.values) - 1) * self.step_s

    def times_s(self) -> np.ndarray:
        return self.start_s + self.step_s * np.arange(len(self.values), dtype=float)


def epoch_seconds(index: pd.Index) -> np.ndarray:
    """Seconds since the epoch of a (UTC or naive-UTC) DatetimeIndex (an aware index holds
    UTC nanoseconds whatever its zone)."""
    return np.asarray(datetime_index(index).asi8, dtype=np.int64) / 1e9


def datetime_index(index: pd.Index) -> pd.DatetimeIndex:
    """The index as a DatetimeIndex, without a copy when it is one already (this runs for
    every series at every cycle)."""
    return index if isinstance(index, pd.DatetimeIndex) else pd.DatetimeIndex(index)


def natural_step_s(history: pd.Series) -> float:
    """The history's own resolution: its median spacing, never finer than a minute."""
    if len(history) < 2:
        return MIN_STEP_S
    seconds = epoch_seconds(history.index)
    return max(MIN_STEP_S, float(np.median(np.diff(seconds))))


def to_grid(history: pd.Series, step_s: float | None = None) -> Grid:
    """Regularise ``history`` on a grid of ``step_s`` (default: its natural step)."""
    step = natural_step_s(history) if step_s is None else step_s
    if len(history) == 0:
        return Grid(values=np.zeros(0), start_s=0.0, step_s=step)
    seconds = epoch_seconds(history.index)
    values = np.asarray(history.to_numpy(), dtype=float)
    spacing = np.diff(seconds)
    if len(spacing) == 0 or (np.all(spacing == step) and np.all(np.isfinite(values))):
        return Grid(values=values, start_s=float(seconds[0]), step_s=step)
    # Irregular: bucket by step, keep each bucket's maximum, carry the last value over gaps.
    slots = np.floor((seconds - seconds[0]) / step).astype(np.int64)
    out = np.full(int(slots[-1]) + 1, np.nan)
    finite = np.isfinite(values)
    np.fmax.at(out, slots[finite], values[finite])
    filled = pd.Series(out).ffill().fillna(0.0).to_numpy()
    return Grid(values=filled, start_s=float(seconds[0]), step_s=step)


def horizon_steps(horizon_s: float, step_s: float) -> int:
    """Steps needed to look at least ``horizon_s`` ahead (one at least)."""
    return max(1, math.ceil(horizon_s / step_s - 1e-9))


def season_steps(period_s: float, step_s: float) -> int | None:
    """Steps in one season, or None when the step does not divide the period."""
    ratio = period_s / step_s
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 2:
        return None
    return round(ratio)
