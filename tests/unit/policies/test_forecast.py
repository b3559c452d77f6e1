from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from policies.forecast import ForecastSpec, conformal, gbm, predict_many, reactive_forecast, refit
from policies.forecast.conformal import (
    conformal_quantile,
    coverage_floor,
    expanding_conformal_quantile,
)
from policies.forecast.grid import Grid, to_grid
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


def _prefix_quantiles(residuals: np.ndarray, tau: float) -> np.ndarray:
    """The definition: the conformal quantile of each prefix, computed from scratch."""
    out = np.full(len(residuals), np.nan)
    for i in range(1, len(residuals)):
        if np.isfinite(residuals[:i]).any():
            out[i] = conformal_quantile(residuals[:i], tau)
    return out


@pytest.mark.parametrize("deepest", [conformal._MAX_VECTOR_RANK, 0])
def test_expanding_quantile_is_the_conformal_quantile_of_every_prefix(
    deepest: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deepest 0: every call takes the sorted-insertion path.
    monkeypatch.setattr(conformal, "_MAX_VECTOR_RANK", deepest)
    rng = np.random.default_rng(5)
    for trial in range(150):
        n = int(rng.integers(0, 400))
        # Small integers for ties, NaN (no forecast yet) and infinities, trailing ones too.
        residuals = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)
        residuals[rng.random(n) < 0.08] = np.nan
        residuals[rng.random(n) < 0.02] = np.inf
        if trial % 5 == 0:
            residuals[-3:] = np.nan
        tau = (0.55, 0.9, 0.97, 0.99, 0.9995)[trial % 5]
        expected = _prefix_quantiles(residuals, tau)
        np.testing.assert_array_equal(expanding_conformal_quantile(residuals, tau), expected)


def _parts(count: int) -> list[tuple[Grid, float]]:
    grids = [to_grid(_daily(3, seed=s) * (1 + s)) for s in range(count)]
    return [(g, gbm.series_scale(g.values)) for g in grids]


def test_the_pooled_gbm_learns_from_a_seeded_subsample_of_all_training_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[np.ndarray] = []

    class Recording(HistGradientBoostingRegressor):  # type: ignore[misc]
        def fit(self, x: np.ndarray, y: np.ndarray) -> Recording:
            seen.extend([x, y])
            return self

    monkeypatch.setattr(gbm, "HistGradientBoostingRegressor", Recording)
    monkeypatch.setattr(gbm, "MAX_TRAINING_ROWS", 500)
    stops = (400, 0, 300)
    parts = [gbm.TrainingPart(g, 1, stop, s) for (g, s), stop in zip(_parts(3), stops, strict=True)]
    pooled = gbm.fit_pooled(parts, seed=3)
    # The rows of every part stacked, then 500 of them drawn with the seed.
    x = np.vstack([gbm.features(p.grid, 1, np.arange(p.stop), p.scale) for p in parts])
    y = np.concatenate([p.grid.values[np.arange(p.stop) + 1] / p.scale for p in parts])
    keep = np.sort(np.random.default_rng(3).choice(len(y), 500, replace=False))
    assert pooled is not None and pooled.training_rows == 500
    np.testing.assert_array_equal(seen[0], x[keep])
    np.testing.assert_array_equal(seen[1], y[keep])


def test_batched_back_test_paths_equal_each_series_own_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gbm, "PREDICT_BATCH_ROWS", 1000)  # several batches
    parts = _parts(4)
    pooled = gbm.fit_pooled([gbm.TrainingPart(g, 2, 500, s) for g, s in parts])
    assert pooled is not None
    requests = [
        gbm.PathRequest(g, 2, np.arange(len(g.values) - 2 - 7 * i), s)
        for i, (g, s) in enumerate(parts)
    ]
    requests.insert(1, gbm.PathRequest(parts[0][0], 2, np.arange(0), parts[0][1]))
    paths = gbm.pooled_paths(pooled, requests)
    assert len(paths) == len(requests)
    for request, path in zip(requests, paths, strict=True):
        model = gbm.GbmModel(pooled=pooled, scale=request.scale)
        np.testing.assert_array_equal(path, model.point_path(request.grid, 2, request.origins))


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
    assert fitted.name.startswith(("seasonal_naive", "seasonal_peak"))
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
