"""A business's SLI from Prometheus: the policy's PromQL good/total pair, evaluated per window.

Where it sits: a collector, first stage of the flow, for businesses whose policy names a
``promql`` SLI (``good`` and ``total`` are PromQL expressions giving rates of events). For each
window (``5m``, ``1h``, ...) the pair is evaluated at ``now`` as average rates over the window:
an expression containing ``$window`` gets the window put in its range selectors; any other is
averaged with a subquery, ``avg_over_time((expr)[window:])``. Results are summed over series.
Emitted for the business: ``sli_good``/``sli_total`` (events per second over the first window,
what the SLA ledger multiplies by its interval) and per window (label ``window``) the rates,
the event counts and the good ratio. An empty result is missing data (stale), never zero.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from prometheus_api_client import PrometheusConnect

from autoscaler.model import Collection, PermanentError, Sample, Scope, SignalName, TemporaryError
from autoscaler.model.bounded import BoundedCaller
from autoscaler.model.names import check_name
from collectors.base import LastGood
from collectors.common import (
    MalformedReply,
    all_stale,
    scoped,
    single_scope_result,
)
from collectors.prometheus_query import instant_query

WINDOW_PLACEHOLDER = "$window"
_WINDOW = re.compile(r"\A([1-9][0-9]{0,5})(s|m|h|d|w)\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def window_seconds(window: str) -> int:
    """Seconds in a PromQL duration like ``5m`` (one unit only), else ``ValueError``."""
    match = _WINDOW.match(window)
    if not match:
        raise ValueError(f"window {window!r} must be a number and one of s, m, h, d, w")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def windowed(expression: str, window: str) -> str:
    """``expression`` as a single average rate over ``window``."""
    window_seconds(window)
    if WINDOW_PLACEHOLDER in expression:
        return f"sum({expression.replace(WINDOW_PLACEHOLDER, window)})"
    return f"sum(avg_over_time(({expression})[{window}:]))"


class PromqlSliCollector:
    """One business's good/total PromQL pair, evaluated over each of ``windows``."""

    name = "promql_sli"
    scope = Scope.BUSINESS

    def __init__(
        self,
        prometheus: PrometheusConnect,
        business: str,
        good: str,
        total: str,
        *,
        windows: Sequence[str] = ("5m", "1h"),
        timeout_s: float = 5.0,
    ) -> None:
        if not good.strip() or not total.strip():
            raise ValueError("good and total must be PromQL expressions")
        if not windows:
            raise ValueError("at least one window is needed")
        self.prometheus = prometheus
        self.target = check_name(business, what="business")
        self.good = good
        self.total = total
        self.windows = tuple(sorted(windows, key=window_seconds))
        self.timeout_s = timeout_s
        self._calls: BoundedCaller[Any] = BoundedCaller(f"promql sli of {self.target}")
        self.last_good = LastGood()

    def _evaluate(self, expression: str, window: str, now: float) -> float | None:
        values = instant_query(self.prometheus, windowed(expression, window), now, self.timeout_s)
        if not values:
            return None
        if len(values) != 1:
            raise MalformedReply(f"sum(...) over {window} gave {len(values)} series")
        if values[0].value < 0:
            raise MalformedReply(f"a rate of events over {window} is negative: {values[0].value}")
        return values[0].value

    def read(self, now: float) -> dict[str, tuple[float | None, float | None]]:
        """Window -> (good rate, total rate), None where Prometheus has no data."""
        return {
            w: (self._evaluate(self.good, w, now), self._evaluate(self.total, w, now))
            for w in self.windows
        }

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        scopes = [(self.scope, self.target)]
        try:
            rates = self._calls.call(lambda: self.read(now), self.timeout_s)
        except (TemporaryError, PermanentError) as exc:
            return all_stale(self.name, scopes, self.last_good, str(exc), started)
        samples: list[Sample] = []
        missing = [w for w, (good, total) in rates.items() if good is None or total is None]
        for window, (good, total) in rates.items():
            if good is None or total is None:
                continue
            samples += self._window_samples(window, good, total, now)
        first_good, first_total = rates[self.windows[0]]
        if first_good is not None and first_total is not None:
            samples += [
                scoped(SignalName.SLI_GOOD, first_good, now, self.scope, self.target),
                scoped(SignalName.SLI_TOTAL, first_total, now, self.scope, self.target),
            ]
        problem = f"no data from Prometheus for windows {missing}" if missing else None
        return single_scope_result(
            self.name, self.scope, self.target, self.last_good, now, started, samples, problem
        )

    def _window_samples(self, window: str, good: float, total: float, now: float) -> list[Sample]:
        seconds = window_seconds(window)
        figures = {
            "sli_good_rate": good,
            "sli_total_rate": total,
            "sli_good_events": good * seconds,
            "sli_total_events": total * seconds,
        }
        if total > 0:
            figures["sli_good_ratio"] = good / total
        return [
            scoped(m, v, now, self.scope, self.target, window=window) for m, v in figures.items()
        ]
