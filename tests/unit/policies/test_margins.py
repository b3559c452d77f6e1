"""Margins that follow the error budget, the seasonal peak, and a cold start that forgets."""

from __future__ import annotations

import numpy as np
import pytest

from policies.forecast import reactive_forecast
from policies.forecast.grid import Grid
from policies.forecast.models import SeasonalNaive, SeasonalPeak
from policies.margins import margin_for
from tests.unit.policies.builders import NOW, history


@pytest.mark.parametrize(
    ("left", "quantile", "utilisation"),
    [
        (1.0, 0.99, 0.9),
        (0.5, 0.99, 0.9),
        (0.4, 0.995, 0.75),
        (0.1, 0.999, 0.6),
        (-2.0, 0.9995, 0.6),
    ],
)
def test_the_margin_tightens_in_steps_as_the_error_budget_is_spent(
    left: float, quantile: float, utilisation: float
) -> None:
    margin = margin_for(left, 0.9995, 0.6, 0.9)
    assert margin.quantile == quantile
    assert margin.utilisation == pytest.approx(utilisation)


def test_the_margin_never_asks_for_more_than_the_sla_quantile() -> None:
    assert margin_for(1.0, 0.95, 0.6, 0.9).quantile == 0.95


def _daily_job(days: int, slots: list[int]) -> np.ndarray:
    values = np.full(days * 288, 0.2)
    for day, slot in zip(range(days), slots, strict=False):
        values[day * 288 + slot] = 3.0
    return values


def test_the_seasonal_peak_sees_a_daily_job_that_wanders_by_a_step() -> None:
    values = _daily_job(4, [100, 101, 99, 100])
    grid = Grid(values=values, start_s=0.0, step_s=300.0)
    origin = np.array([3 * 288 + 99])  # the job starts at the next step
    peak = SeasonalPeak(period_steps=288).point_path(grid, 1, origin)
    naive = SeasonalNaive(period_steps=288).point_path(grid, 1, origin)
    assert peak[0] == 3.0
    assert naive[0] == pytest.approx(0.2)  # yesterday's job ran a step earlier


def test_the_seasonal_peak_reads_only_what_was_known_at_the_origin() -> None:
    grid = Grid(values=np.arange(600, dtype=float), start_s=0.0, step_s=300.0)
    origins = np.array([290, 400])
    out = SeasonalPeak(period_steps=288, width=1).point_path(grid, 1, origins)
    assert list(out) == [4.0, 114.0]  # max of [t+1-288-1, t+1-288+1] within the past


def test_a_cold_start_forgets_a_burst_older_than_six_hours() -> None:
    calm = np.full(100, 0.3)
    burst = calm.copy()
    burst[10] = 3.0  # more than 6 h (72 steps of 5 min) before the end
    band = reactive_forecast(history(burst, end=NOW), NOW, 70.0, 0.99).upper
    assert band == pytest.approx(reactive_forecast(history(calm, end=NOW), NOW, 70.0, 0.99).upper)
    recent = calm.copy()
    recent[90] = 3.0
    assert reactive_forecast(history(recent, end=NOW), NOW, 70.0, 0.99).upper > 1.0
