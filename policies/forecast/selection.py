"""Refit: back-test every candidate model per series and keep the best calibrated one.

Where it sits: the slow, occasional step (the controller runs it every few hours; the simulator
once a simulated day), separate from the fast ``FittedForecaster.predict`` that ``decide()``
calls. For each series: the last ``EVALUATION_SHARE`` of its history is a rolling-origin
back-test segment. Every candidate forecasts each origin of that segment from data up to the
origin only; its upper bound at an origin uses the conformal quantile of the errors made at
all earlier origins (so the score includes the calibration, as in production), and the errors
of the whole history become the conformal sample the fitted forecaster predicts with (for the
GBM, errors on its own training part are in-sample, hence slightly optimistic). The
winner has the lowest pinball loss among candidates whose empirical coverage is consistent with
the quantile; if none is, the best covering one. The pooled GBM is fitted once for all series
on the parts before their segments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from policies.forecast.conformal import (
    coverage,
    coverage_floor,
    expanding_conformal_quantile,
    pinball_loss,
)
from policies.forecast.fitted import BacktestScore, FittedForecaster, scaled_residuals
from policies.forecast.gbm import (
    GbmModel,
    PathRequest,
    PooledGbm,
    TrainingPart,
    fit_pooled,
    pooled_paths,
    series_scale,
)
from policies.forecast.grid import (
    DAY_S,
    WEEK_S,
    Grid,
    datetime_index,
    horizon_steps,
    season_steps,
    to_grid,
)
from policies.forecast.models import (
    Persistence,
    PointModel,
    SeasonalNaive,
    SeasonalPeak,
    fit_ewma,
)

EVALUATION_SHARE = 0.4
MIN_EVALUATION_ORIGINS = 24

KNOWN_MODELS = frozenset({"seasonal_naive", "ewma", "gbm"})


@dataclass(frozen=True, slots=True)
class ForecastSpec:
    """What to fit for one series (from its business policy and the provisioning lead time)."""

    models: tuple[str, ...]
    quantile: float
    horizon_s: float
    min_history_s: float
    history_s: float
    selection_quantile: float | None = None
    """The quantile candidates are scored and checked for calibration at (default:
    ``quantile``): the loosest one the controller provisions for, where a back-test of a
    few thousand origins can still tell a calibrated model from one that is not."""

    @property
    def scored_quantile(self) -> float:
        return self.selection_quantile if self.selection_quantile is not None else self.quantile

    def __post_init__(self) -> None:
        unknown = set(self.models) - KNOWN_MODELS
        if unknown:
            raise ValueError(
                f"unknown forecast models {sorted(unknown)}; known: {sorted(KNOWN_MODELS)}"
            )
        if not 0.5 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0.5, 1), got {self.quantile}")


@dataclass(frozen=True)
class _Prepared:
    name: str
    spec: ForecastSpec
    grid: Grid
    h: int
    evaluation_start: int
    scale: float


def _window(history: pd.Series, now: float, span_s: float) -> pd.Series:
    index = datetime_index(history.index)
    end = pd.Timestamp(now, unit="s", tz="UTC")
    start = pd.Timestamp(now - span_s, unit="s", tz="UTC")
    if index.tz is None:
        end, start = end.tz_localize(None), start.tz_localize(None)
    lo = int(index.searchsorted(start, side="left"))
    hi = int(index.searchsorted(end, side="right"))
    return history.iloc[lo:hi]


def _prepare(name: str, history: pd.Series, spec: ForecastSpec, now: float) -> _Prepared | None:
    recent = _window(history, now, spec.history_s)
    if len(recent) < 2:
        return None
    grid = to_grid(recent)
    if grid.end_s - grid.start_s < spec.min_history_s:
        return None
    h = horizon_steps(spec.horizon_s, grid.step_s)
    n = len(grid.values)
    evaluation_origins = n - h - max(1, int(n * (1 - EVALUATION_SHARE)))
    if evaluation_origins < MIN_EVALUATION_ORIGINS:
        return None
    start = n - h - evaluation_origins
    return _Prepared(name, spec, grid, h, start, series_scale(grid.values[:start]))


def _candidates(prepared: _Prepared, pooled: PooledGbm | None) -> list[PointModel]:
    spec, grid, h = prepared.spec, prepared.grid, prepared.h
    training = grid.values[: prepared.evaluation_start + h]
    out: list[PointModel] = [Persistence()]
    if "ewma" in spec.models:
        out.append(fit_ewma(training, h))
    if "seasonal_naive" in spec.models:
        for label, period_s in (("day", DAY_S), ("week", WEEK_S)):
            period = season_steps(period_s, grid.step_s)
            if period is not None and h <= period and prepared.evaluation_start >= period:
                out.append(SeasonalNaive(period_steps=period, name=f"seasonal_naive_{label}"))
        day = season_steps(DAY_S, grid.step_s)
        if day is not None and h + 1 <= day and prepared.evaluation_start >= day:
            out.append(SeasonalPeak(period_steps=day))
    if "gbm" in spec.models and pooled is not None:
        out.append(GbmModel(pooled=pooled, scale=prepared.scale))
    return out


def _origins(prepared: _Prepared) -> np.ndarray:
    """Every origin whose target is known: the back-test scores the last ones."""
    return np.arange(0, len(prepared.grid.values) - prepared.h)


def _evaluate(
    model: PointModel, prepared: _Prepared, points: np.ndarray | None = None
) -> tuple[BacktestScore, np.ndarray] | None:
    """The back-test of ``model`` (``points``: its point path, when already computed)."""
    grid, h, start = prepared.grid, prepared.h, prepared.evaluation_start
    origins = _origins(prepared)
    if points is None:
        points = model.point_path(grid, h, origins)
    if not np.all(np.isfinite(points[start:])):
        return None
    actual = grid.values[origins + h]
    residuals = scaled_residuals(actual, points, prepared.scale)
    # Each origin's quantile rests on the errors of all earlier origins (rare events, such as a
    # daily job, stay in the sample); scoring is on the evaluation segment only.
    quantiles = expanding_conformal_quantile(residuals, prepared.spec.scored_quantile)
    scored = slice(start, len(origins))
    upper = points[scored] + np.maximum(np.nan_to_num(quantiles[scored], nan=0.0), 0.0) * (
        np.abs(points[scored]) + prepared.scale
    )
    score = BacktestScore(
        model=model.name,
        pinball=pinball_loss(actual[scored], upper, prepared.spec.scored_quantile),
        coverage=coverage(actual[scored], upper),
        origins=len(upper),
    )
    return score, residuals


def _choose(results: list[tuple[PointModel, BacktestScore, np.ndarray]], quantile: float) -> int:
    floor = coverage_floor(quantile, results[0][1].origins)
    calibrated = [i for i, (_, s, _) in enumerate(results) if s.coverage >= floor]
    if calibrated:
        return min(calibrated, key=lambda i: (results[i][1].pinball, i))
    return max(
        range(len(results)),
        key=lambda i: (results[i][1].coverage, -results[i][1].pinball, -i),
    )


def refit(
    histories: Mapping[str, pd.Series], specs: Mapping[str, ForecastSpec], now: float
) -> dict[str, FittedForecaster]:
    """Fit a forecaster for every series with enough history (the others stay reactive)."""
    prepared = {
        name: p
        for name in sorted(histories)
        if name in specs and (p := _prepare(name, histories[name], specs[name], now)) is not None
    }
    wants_gbm = [p for p in prepared.values() if "gbm" in p.spec.models]
    pooled = fit_pooled(
        [TrainingPart(p.grid, p.h, p.evaluation_start - p.h, p.scale) for p in wants_gbm]
    )
    # The GBM's back-test paths of all series in a few batched predictions.
    gbm_paths: dict[str, np.ndarray] = {}
    if pooled is not None:
        requests = [PathRequest(p.grid, p.h, _origins(p), p.scale) for p in wants_gbm]
        paths = pooled_paths(pooled, requests)
        gbm_paths = {p.name: path for p, path in zip(wants_gbm, paths, strict=True)}
    fitted: dict[str, FittedForecaster] = {}
    for name, p in prepared.items():
        results = []
        for model in _candidates(p, pooled):
            points = gbm_paths[name] if isinstance(model, GbmModel) else None
            if (outcome := _evaluate(model, p, points)) is not None:
                results.append((model, *outcome))
        winner_model, _, residuals = results[_choose(results, p.spec.scored_quantile)]
        fitted[name] = FittedForecaster(
            series=name,
            model=winner_model,
            step_s=p.grid.step_s,
            horizon_s=p.spec.horizon_s,
            quantile=p.spec.quantile,
            scale=p.scale,
            calibration=residuals[np.isfinite(residuals)],
            fitted_until_s=p.grid.end_s,
            backtest=tuple(score for _, score, _ in results),
        )
    return fitted


def spec_quantile(configured: float | None, objective_percent: float) -> float:
    """The quantile to provision for: the policy's, else the SLA objective's per interval."""
    if configured is not None:
        return configured
    return min(0.9999, max(0.5 + 1e-6, objective_percent / 100.0))
