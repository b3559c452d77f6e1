"""Demand forecasts per business: several models behind one interface, chosen per series.

Where it sits: ``refit`` (slow, occasional) turns demand histories into ``FittedForecaster``
values kept in ``DecisionState``; ``decide()`` calls ``FittedForecaster.predict(history, now)``
for the upper quantile of demand at the provisioning lead time, or ``reactive_forecast`` when a
business has too little history (cold start).
"""

from __future__ import annotations

from policies.forecast.fitted import (
    MARGIN_QUANTILES,
    BacktestScore,
    FittedForecaster,
    QuantileForecast,
    predict_many,
    reactive_forecast,
)
from policies.forecast.models import PointModel
from policies.forecast.selection import ForecastSpec, refit, spec_quantile

__all__ = [
    "MARGIN_QUANTILES",
    "BacktestScore",
    "FittedForecaster",
    "ForecastSpec",
    "PointModel",
    "QuantileForecast",
    "predict_many",
    "reactive_forecast",
    "refit",
    "spec_quantile",
]
