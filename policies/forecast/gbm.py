"""Gradient boosting with quantile loss, pooled across series, on calendar and lag features.

Where it sits: one candidate of the per-series back-test. ``fit_pooled`` trains ONE
scikit-learn ``HistGradientBoostingRegressor`` on the training parts of many series at once
(features and target divided by each series' own scale, so a busy and a quiet business share
one model); that is what keeps a refit of 1,000 series within a minute. It learns a moderately
high conditional quantile (``BASE_QUANTILE``); the conformal step on top then widens it to the
SLA's quantile (conformalised quantile regression), so the band follows the level of the load.
Training rows are subsampled with a fixed seed: same inputs, same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from policies.forecast.grid import DAY_S, WEEK_S, Grid, season_steps

BASE_QUANTILE = 0.9
MISSING = -1.0
MAX_TRAINING_ROWS = 250_000
FEATURE_NAMES: tuple[str, ...] = (
    "lag0",
    "lag1",
    "lag2",
    "lag3",
    "mean_1h",
    "max_1h",
    "same_time_yesterday",
    "same_time_last_week",
    "hour_sin",
    "hour_cos",
    "weekday",
    "horizon_h",
)


def series_scale(values: np.ndarray) -> float:
    """A positive scale to pool series of different sizes (their mean magnitude)."""
    magnitude = float(np.mean(np.abs(values))) if len(values) else 0.0
    return magnitude if magnitude > 1e-9 else 1.0


def features(grid: Grid, h: int, origins: np.ndarray, scale: float) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` per origin, from data up to that origin only."""
    values = grid.values / scale
    # Lags the history cannot supply get a sentinel below any (non-negative) scaled demand; a
    # NaN would do for the trees, but a column that is NaN everywhere breaks the binning.
    rows = np.full((len(origins), len(FEATURE_NAMES)), MISSING)
    for lag in range(4):
        source = origins - lag
        ok = source >= 0
        rows[ok, lag] = values[source[ok]]
    window = max(1, round(3600.0 / grid.step_s))
    series = pd.Series(values)
    rows[:, 4] = series.rolling(window, min_periods=1).mean().to_numpy()[origins]
    rows[:, 5] = series.rolling(window, min_periods=1).max().to_numpy()[origins]
    for column, period_s in ((6, DAY_S), (7, WEEK_S)):
        period = season_steps(period_s, grid.step_s)
        if period is None or h > period:
            continue
        source = origins + h - period
        ok = source >= 0
        rows[ok, column] = values[source[ok]]
    target_s = grid.start_s + (origins + h) * grid.step_s
    hour = (target_s % DAY_S) / 3600.0
    rows[:, 8] = np.sin(2 * np.pi * hour / 24.0)
    rows[:, 9] = np.cos(2 * np.pi * hour / 24.0)
    # 1970-01-01 was a Thursday: shift so Monday is 0.
    rows[:, 10] = np.floor((target_s / DAY_S + 3) % 7)
    rows[:, 11] = h * grid.step_s / 3600.0
    return rows


@dataclass(frozen=True)
class TrainingPart:
    """The part of one series the pooled model may learn from: origins ``[0, stop)``."""

    grid: Grid
    h: int
    stop: int
    scale: float


@dataclass(frozen=True)
class PooledGbm:
    """The fitted pooled model (shared by every series that chose it)."""

    estimator: HistGradientBoostingRegressor = field(repr=False)
    base_quantile: float
    training_rows: int

    def predict_scaled(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(rows), dtype=float)


def fit_pooled(parts: Sequence[TrainingPart], seed: int = 0) -> PooledGbm | None:
    """Fit one quantile GBM on the training parts of all ``parts``; None if there is no data."""
    matrices: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for part in parts:
        if part.stop <= 0:
            continue
        origins = np.arange(part.stop)
        matrices.append(features(part.grid, part.h, origins, part.scale))
        targets.append(part.grid.values[origins + part.h] / part.scale)
    if not matrices:
        return None
    x = np.vstack(matrices)
    y = np.concatenate(targets)
    if len(y) > MAX_TRAINING_ROWS:
        # Seeded subsample: deterministic, and bounded cost whatever the number of series.
        keep = np.sort(np.random.default_rng(seed).choice(len(y), MAX_TRAINING_ROWS, replace=False))
        x, y = x[keep], y[keep]
    estimator = HistGradientBoostingRegressor(
        loss="quantile",
        quantile=BASE_QUANTILE,
        max_iter=120,
        learning_rate=0.1,
        max_leaf_nodes=31,
        min_samples_leaf=40,
        early_stopping=False,
        random_state=seed,
    )
    estimator.fit(x, y)
    return PooledGbm(estimator=estimator, base_quantile=BASE_QUANTILE, training_rows=len(y))


@dataclass(frozen=True)
class GbmModel:
    """One series' view of the pooled model: its own scale, the shared estimator."""

    pooled: PooledGbm
    scale: float
    name: str = "gbm"

    def point_path(self, grid: Grid, h: int, origins: np.ndarray) -> np.ndarray:
        if len(origins) == 0:
            return np.zeros(0)
        rows = features(grid, h, origins, self.scale)
        return self.pooled.predict_scaled(rows) * self.scale
