"""A fitted forecaster: the model a series' back-test chose, ready to predict cheaply.

Where it sits: produced by ``policies.forecast.selection.refit`` (slow, occasional), held in
``DecisionState.forecasters``, called by ``decide()`` at every decision through ``predict``
(fast). Predict also folds the errors made since the refit into the conformal sample, so a
surprise raises the band at the next decision instead of at the next refit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from policies.forecast.conformal import conformal_quantile
from policies.forecast.gbm import GbmModel, PooledGbm, features
from policies.forecast.grid import DAY_S, WEEK_S, Grid, datetime_index, horizon_steps, to_grid
from policies.forecast.models import Persistence, PointModel

MARGIN_QUANTILES: tuple[float, ...] = (0.99, 0.995, 0.999)
"""Upper quantiles every forecast computes besides its own (``policies.margins`` picks one)."""
COLD_START_MEMORY_S = 6 * 3600.0
"""How far back a cold-start (reactive) forecast looks for its errors."""
# Errors made since the last refit that predict folds into the conformal sample (at most).
RECALIBRATION_S = DAY_S


@dataclass(frozen=True, slots=True)
class QuantileForecast:
    """Demand expected at ``target_s``: a point and the ``quantile`` upper bound."""

    target_s: float
    horizon_s: float
    point: float
    upper: float
    quantile: float
    model: str
    residual_count: int
    uppers: tuple[tuple[float, float], ...] = ()
    """(quantile, upper bound) for each of ``MARGIN_QUANTILES``."""

    def upper_at(self, quantile: float) -> float:
        """The upper bound at ``quantile`` (this forecast's own when it was not computed)."""
        for q, upper in self.uppers:
            if abs(q - quantile) < 1e-12:
                return upper
        return self.upper


@dataclass(frozen=True, slots=True)
class BacktestScore:
    """How a candidate did on the rolling-origin back-test of one series."""

    model: str
    pinball: float
    coverage: float
    origins: int


@dataclass(frozen=True)
class FittedForecaster:
    """The chosen model of one series, its conformal sample and its back-test."""

    series: str
    model: PointModel
    step_s: float
    horizon_s: float
    quantile: float
    scale: float
    calibration: np.ndarray = field(repr=False)
    fitted_until_s: float
    backtest: tuple[BacktestScore, ...] = ()

    @property
    def name(self) -> str:
        return self.model.name

    def tail_grid(self, history: pd.Series, now: float) -> tuple[Grid, int]:
        """The part of ``history`` a prediction at ``now`` reads, and the horizon in steps."""
        h = horizon_steps(self.horizon_s, self.step_s)
        tail_steps = math.ceil((WEEK_S + RECALIBRATION_S) / self.step_s) + h + 2
        return to_grid(_until(history, now).iloc[-tail_steps:], self.step_s), h

    def predict(self, history: pd.Series, now: float) -> QuantileForecast:
        """The upper quantile of demand ``horizon_s`` after the last sample at or before now."""
        grid, h = self.tail_grid(history, now)
        return predict_on_grid(
            self.model, grid, h, self.quantile, self.scale, self.calibration, self.fitted_until_s
        )


def _until(history: pd.Series, now: float) -> pd.Series:
    if len(history) == 0:
        return history
    cut = pd.Timestamp(now, unit="s", tz="UTC")
    index = datetime_index(history.index)
    if index.tz is None:
        cut = cut.tz_localize(None)
    if index[-1] <= cut:
        return history
    return history.iloc[: int(index.searchsorted(cut, side="right"))]


def scaled_residuals(actual: np.ndarray, point: np.ndarray, scale: float) -> np.ndarray:
    """Errors divided by a local scale (the forecast plus the series' mean): neither purely
    additive (useless for a series that doubles) nor purely relative (explodes near zero)."""
    return np.asarray((actual - point) / (np.abs(point) + scale), dtype=float)


@dataclass(frozen=True)
class _Pending:
    """A prediction whose point forecasts are still to be computed (to batch the GBM)."""

    grid: Grid
    h: int
    recent: np.ndarray
    origins: np.ndarray


def _pending(grid: Grid, h: int, fitted_until_s: float) -> _Pending:
    n = len(grid.values)
    times = grid.times_s()
    # Origins whose target is known and after the refit: their errors are new information.
    since = max(fitted_until_s, float(times[-1]) - RECALIBRATION_S)
    first_new = int(np.searchsorted(times, since, "right"))
    recent = np.arange(max(first_new - h, 0), max(n - h, 0))
    return _Pending(grid=grid, h=h, recent=recent, origins=np.append(recent, n - 1))


def _finish(
    pending: _Pending,
    points: np.ndarray,
    model_name: str,
    quantile: float,
    scale: float,
    calibration: np.ndarray,
) -> QuantileForecast:
    grid, h, recent = pending.grid, pending.h, pending.recent
    if not math.isfinite(points[-1]):
        # The model cannot speak from here (e.g. a season not yet seen): say what persists.
        points = Persistence().point_path(grid, h, pending.origins)
    new_residuals = scaled_residuals(grid.values[recent + h], points[:-1], scale)
    sample = np.concatenate([calibration, new_residuals[np.isfinite(new_residuals)]])
    point = max(0.0, float(points[-1]))

    def upper(tau: float) -> float:
        margin = max(0.0, conformal_quantile(sample, tau)) * (abs(point) + scale)
        return max(point, point + margin, 0.0)

    return QuantileForecast(
        target_s=grid.end_s + h * grid.step_s,
        horizon_s=h * grid.step_s,
        point=point,
        upper=upper(quantile),
        quantile=quantile,
        model=model_name,
        residual_count=len(sample),
        uppers=tuple((q, upper(q)) for q in MARGIN_QUANTILES),
    )


def predict_on_grid(
    model: PointModel,
    grid: Grid,
    h: int,
    quantile: float,
    scale: float,
    calibration: np.ndarray,
    fitted_until_s: float,
) -> QuantileForecast:
    if len(grid.values) == 0:
        return QuantileForecast(fitted_until_s, h * grid.step_s, 0.0, 0.0, quantile, model.name, 0)
    pending = _pending(grid, h, fitted_until_s)
    points = model.point_path(grid, h, pending.origins)
    return _finish(pending, points, model.name, quantile, scale, calibration)


def predict_many(
    forecasters: Mapping[str, FittedForecaster], histories: Mapping[str, pd.Series], now: float
) -> dict[str, QuantileForecast]:
    """``predict`` for many series at once: the pooled GBM is called once for all of them."""
    out: dict[str, QuantileForecast] = {}
    batched: dict[int, list[tuple[str, _Pending, np.ndarray]]] = {}
    pooled_by_id: dict[int, PooledGbm] = {}
    for name in sorted(forecasters):
        forecaster = forecasters[name]
        history = histories.get(name)
        model = forecaster.model
        if history is None or len(history) == 0 or not isinstance(model, GbmModel):
            if history is not None:
                out[name] = forecaster.predict(history, now)
            continue
        grid, h = forecaster.tail_grid(history, now)
        pending = _pending(grid, h, forecaster.fitted_until_s)
        rows = features(grid, h, pending.origins, model.scale)
        batched.setdefault(id(model.pooled), []).append((name, pending, rows))
        pooled_by_id[id(model.pooled)] = model.pooled
    for key, group in batched.items():
        scaled = pooled_by_id[key].predict_scaled(np.vstack([rows for _, _, rows in group]))
        offset = 0
        for name, pending, rows in group:
            forecaster = forecasters[name]
            points = scaled[offset : offset + len(rows)] * forecaster.scale
            offset += len(rows)
            out[name] = _finish(
                pending,
                points,
                forecaster.name,
                forecaster.quantile,
                forecaster.scale,
                forecaster.calibration,
            )
    return out


def reactive_forecast(
    history: pd.Series, now: float, horizon_s: float, quantile: float
) -> QuantileForecast:
    """Cold start: persistence plus the conformal quantile of the errors the short history shows.

    With a single sample nothing is known about change, so the upper bound is the last value.
    Errors older than ``COLD_START_MEMORY_S`` are forgotten: one early burst must not hold the
    band at its height for the whole cold start.
    """
    recent = _until(history, now)
    if len(recent):
        index = datetime_index(recent.index)
        cut = index[-1] - pd.Timedelta(seconds=COLD_START_MEMORY_S)
        recent = recent.iloc[int(index.searchsorted(cut, side="left")) :]
    grid = to_grid(recent)
    h = horizon_steps(horizon_s, grid.step_s)
    scale = float(np.mean(np.abs(grid.values))) if len(grid.values) else 1.0
    scale = scale if scale > 1e-9 else 1.0
    return predict_on_grid(Persistence(), grid, h, quantile, scale, np.zeros(0), -math.inf)
