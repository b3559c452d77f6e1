from __future__ import annotations

import math

import numpy as np
import pandas as pd

from policies.forecast import ForecastSpec, predict_many, reactive_forecast, refit
from policies.forecast.conformal import (
    conformal_quantile,
    coverage_floor,
    expanding_conformal_quantile,
)
from policies.forecast.grid import to_grid
from tests.unit.policies.builders import NOW, history

DAY_STEPS = 288


def _spec(models: tuple[str, ...] = ("seasonal_naive", "ewma", "gbm"), **kw: float) -> ForecastSpec:
    base = {
        "quantile": 0.99,
        "horizon_s": 300.0,
        "min_history_s": 86_400.0,
        "history_s": 14 * 86_400.0,
    }
    base.update(kw)
    return ForecastSpec(models=models, **base)


def _daily(days: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY_STEPS)
    values = 10 + 8 * np.sin(2 * np.pi * t / DAY_STEPS) ** 2 + rng.normal(0, 0.2, len(t))
    return history(values)


def test_conformal_quantile_is_the_largest_residual_when_the_sample_is_too_small() -> None:
    residuals = np.arange(10, dtype=float)
    assert conformal_quantile(residuals, 0.99) == 9.0


def test_conformal_quantile_takes_the_finite_sample_rank_on_large_samples() -> None:
    residuals = np.arange(1000, dtype=float)
    # ceil(1001 * 0.9) = 901st smallest = 900.
    assert conformal_quantile(residuals, 0.9) == 900.0


def test_expanding_quantile_uses_only_earlier_residuals() -> None:
    residuals = np.array([1.0, 5.0, 2.0, 9.0, 3.0])
    out = expanding_conformal_quantile(residuals, 0.9)
    assert math.isnan(out[0])
    assert list(out[1:]) == [1.0, 5.0, 5.0, 9.0]


def test_irregular_history_is_regularised_with_bucket_maxima_and_gaps_carried() -> None:
    index = pd.DatetimeIndex(
        pd.to_datetime(
            [
                "2024-01-01T00:00:00",
                "2024-01-01T00:01:00",
                "2024-01-01T00:02:30",
                "2024-01-01T00:05:00",
            ],
            utc=True,
        )
    )
    grid = to_grid(pd.Series([1.0, 4.0, 2.0, 3.0], index=index), step_s=120)
    assert list(grid.values) == [4.0, 2.0, 3.0]


def test_cold_start_series_get_no_forecaster() -> None:
    fitted = refit({"web": _daily(1)[-200:]}, {"web": _spec()}, NOW)
    assert fitted == {}


def test_a_daily_pattern_is_forecast_by_a_seasonal_model_not_persistence() -> None:
    series = _daily(6)
    fitted = refit({"web": series}, {"web": _spec(("seasonal_naive", "ewma"))}, NOW)["web"]
    assert fitted.name.startswith("seasonal_naive")
    scores = {b.model: b for b in fitted.backtest}
    assert scores[fitted.name].pinball < scores["reactive"].pinball
    assert scores[fitted.name].coverage >= coverage_floor(0.99, scores[fitted.name].origins)


def test_upper_bound_covers_the_next_value_of_a_seasonal_series() -> None:
    series = _daily(7)
    cut = len(series) - DAY_STEPS
    fitted = refit({"web": series.iloc[:cut]}, {"web": _spec()}, series.index[cut - 1].timestamp())[
        "web"
    ]
    covered = [
        fitted.predict(series.iloc[: i + 1], series.index[i].timestamp()).upper
        >= series.iloc[i + 1]
        for i in range(cut, len(series) - 1, 7)
    ]
    assert np.mean(covered) >= 0.95


def test_a_surprise_after_the_refit_raises_the_band_at_once() -> None:
    series = _daily(3)
    fitted = refit({"web": series}, {"web": _spec(("ewma",), quantile=0.9995)}, NOW)["web"]
    before = fitted.predict(series, NOW)
    spiked = pd.concat([series, history([series.iloc[-1] * 4, series.iloc[-1]], end=NOW + 600)])
    after = fitted.predict(spiked, NOW + 600)
    assert after.upper - after.point > (before.upper - before.point) * 2


def test_refit_is_deterministic_with_the_pooled_gbm() -> None:
    histories = {"a": _daily(4, seed=1), "b": _daily(4, seed=2) * 3}
    specs = {"a": _spec(("gbm",)), "b": _spec(("gbm",))}
    first = refit(histories, specs, NOW)
    second = refit(histories, specs, NOW)
    assert "gbm" in {score.model for score in first["a"].backtest}
    assert first["a"].predict(histories["a"], NOW) == second["a"].predict(histories["a"], NOW)


def test_batched_predictions_equal_one_by_one_predictions() -> None:
    histories = {"a": _daily(4, seed=1), "b": _daily(4, seed=2) * 3}
    fitted = refit(histories, {"a": _spec(), "b": _spec(("gbm",))}, NOW)
    batched = predict_many(fitted, histories, NOW)
    for name, forecaster in fitted.items():
        single = forecaster.predict(histories[name], NOW)
        assert math.isclose(batched[name].upper, single.upper, rel_tol=1e-9)


def test_reactive_forecast_holds_the_last_value_plus_the_largest_change_seen() -> None:
    series = history([1.0, 1.0, 3.0, 2.0])
    forecast = reactive_forecast(series, NOW, 300.0, 0.9995)
    assert forecast.model == "reactive"
    assert forecast.point == 2.0
    # The largest scaled rise (1 -> 3) is applied to the last value.
    assert forecast.upper > 3.0


def test_unknown_forecast_models_are_refused() -> None:
    try:
        ForecastSpec(models=("prophet",), quantile=0.9, horizon_s=60, min_history_s=1, history_s=2)
    except ValueError as exc:
        assert "prophet" in str(exc)
    else:
        raise AssertionError("an unknown model was accepted")
