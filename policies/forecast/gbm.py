"""Gradient boosting with quantile loss, pooled across series, on calendar and lag features.

Where it sits: one candidate of the per-series back-test. ``fit_pooled`` trains ONE
scikit-learn ``HistGradientBoostingRegressor`` on the training parts of many series at once
(features and target divided by each series' own scale, so a busy and a quiet business share
one model); that is what keeps a refit of 1,000 series within a minute. It learns a moderately
high conditional quantile (``BASE_QUANTILE``); the conformal step on top then widens it to the
SLA's quantile (conformalised quantile regression), so the band follows the level of the load.
Training rows are subsampled with a fixed seed: same inputs, same model. The back-test's
predictions of every series go through ``pooled_paths`` in a few large batches; fit and
back-test run on one OpenMP thread (``REFIT_THREADS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from policies.forecast.grid import DAY_S, WEEK_S, Grid, season_steps

BASE_QUANTILE = 0.9
MISSING = -1.0
MAX_TRAINING_ROWS = 250_000
# Rows of features held at once when the back-test predicts many series.
PREDICT_BATCH_ROWS = 250_000
# OpenMP threads of the refit's fit and back-test predictions. One: the refit is background
# work on a shared machine, and scikit-learn's many short parallel regions (one per tree
# node while fitting) turn into waits for a descheduled thread when another process holds
# the other cores (measured on 2 shared cores: fit 4 s on one thread, 39 s on two).
REFIT_THREADS = 1
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


MAX_KNOWN_ROWS = 200_000
"""Predictions a pooled model keeps (a few MiB); past it they are forgotten and made again."""


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
    _known: dict[bytes, float] = field(default_factory=dict, repr=False, compare=False)
    """Predictions already made, by feature row: the rows of the origins since the fit are
    the same at every cycle until the next refit, and a tree ensemble scores each row on its
    own, so a row seen before is not scored again (same result, bounded size)."""

    def predict_scaled(self, rows: np.ndarray) -> np.ndarray:
        keys = [row.tobytes() for row in np.ascontiguousarray(rows, dtype=float)]
        known = self._known
        if len(known) + len(keys) > MAX_KNOWN_ROWS:
            known.clear()
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            scored = np.asarray(self.estimator.predict(rows[missing]), dtype=float)
            known.update(zip((keys[i] for i in missing), scored.tolist(), strict=True))
        return np.array([known[key] for key in keys], dtype=float)


def fit_pooled(parts: Sequence[TrainingPart], seed: int = 0) -> PooledGbm | None:
    """Fit one quantile GBM on the training parts of all ``parts``; None if there is no data.

    The rows are those of all parts stacked in order; above ``MAX_TRAINING_ROWS`` a seeded
    subsample of them, drawn before any feature is computed so only the kept rows are built.
    """
    counts = np.array([max(part.stop, 0) for part in parts], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return None
    keep: np.ndarray | None = None
    if total > MAX_TRAINING_ROWS:
        # Seeded subsample: deterministic, and bounded cost whatever the number of series.
        keep = np.sort(np.random.default_rng(seed).choice(total, MAX_TRAINING_ROWS, replace=False))
    matrices: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    offset = 0
    for part, count in zip(parts, counts.tolist(), strict=True):
        origins = np.arange(count)
        if keep is not None:
            lo, hi = np.searchsorted(keep, (offset, offset + count))
            origins = keep[lo:hi] - offset
        offset += count
        if len(origins) == 0:
            continue
        matrices.append(features(part.grid, part.h, origins, part.scale))
        targets.append(part.grid.values[origins + part.h] / part.scale)
    x = np.vstack(matrices)
    y = np.concatenate(targets)
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
    with threadpool_limits(limits=REFIT_THREADS, user_api="openmp"):
        estimator.fit(x, y)
    return PooledGbm(estimator=estimator, base_quantile=BASE_QUANTILE, training_rows=len(y))


@dataclass(frozen=True)
class PathRequest:
    """Point forecasts wanted from the pooled model for one series: at ``origins``."""

    grid: Grid
    h: int
    origins: np.ndarray
    scale: float


def pooled_paths(pooled: PooledGbm, requests: Sequence[PathRequest]) -> list[np.ndarray]:
    """``GbmModel.point_path`` for many series at once (the same values, one per request).

    Rows are predicted in batches of about ``PREDICT_BATCH_ROWS``: a few large calls instead
    of one per series (each call runs every tree over its rows), with bounded memory.
    """
    out: list[np.ndarray] = []
    batch: list[tuple[PathRequest, np.ndarray]] = []
    rows_held = 0
    with threadpool_limits(limits=REFIT_THREADS, user_api="openmp"):
        for i, request in enumerate(requests):
            rows = features(request.grid, request.h, request.origins, request.scale)
            batch.append((request, rows))
            rows_held += len(rows)
            if rows_held >= PREDICT_BATCH_ROWS or i == len(requests) - 1:
                out.extend(_predict_batch(pooled, batch))
                batch, rows_held = [], 0
    return out


def _predict_batch(
    pooled: PooledGbm, batch: Sequence[tuple[PathRequest, np.ndarray]]
) -> list[np.ndarray]:
    stacked = np.vstack([rows for _, rows in batch])
    scaled = pooled.predict_scaled(stacked) if len(stacked) else np.zeros(0)
    bounds = np.cumsum([0] + [len(rows) for _, rows in batch])
    return [
        scaled[lo:hi] * request.scale
        for (request, _), lo, hi in zip(batch, bounds[:-1], bounds[1:], strict=True)
    ]


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
