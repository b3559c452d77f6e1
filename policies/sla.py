"""The SLA ledger: per-interval SLI, attainment, error budget, burn rates and alert states.

Where it sits: the controller (or the simulator) appends one interval per decision with
``SlaLedger.record`` (a new ledger; the old one is unchanged) and keeps it in
``DecisionState.sla``; ``decide()`` reads ``sla_status`` to order evacuations by SLA risk and
to refuse a scale-down while the error budget burns. The SLI of an interval is either the
built-in capacity SLI (enough healthy instances, demand within capacity at the saturation
threshold; weighted by the interval's seconds) or the policy's PromQL good/total pair.
Alerting follows the SRE workbook's multi-window, multi-burn-rate rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from autoscaler.model import Scope, SignalName, Snapshot
from policies.schema import Sla

BURN_WINDOWS_S: dict[str, float] = {
    "5m": 300.0,
    "30m": 1800.0,
    "1h": 3600.0,
    "6h": 21_600.0,
    "1d": 86_400.0,
    "3d": 259_200.0,
}
# (long window, short window, burn rate) — page on either pair, ticket on the last.
PAGE_RULES: tuple[tuple[str, str, float], ...] = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
TICKET_RULES: tuple[tuple[str, str, float], ...] = (("3d", "6h", 1.0),)


class AlertState(StrEnum):
    OK = "ok"
    TICKET = "ticket"
    PAGE = "page"


def _frozen(values: np.ndarray) -> np.ndarray:
    values.setflags(write=False)
    return values


@dataclass(frozen=True)
class SlaLedger:
    """Intervals ending at ``ends_s`` with their ``good`` and ``total`` amounts (oldest first)."""

    ends_s: np.ndarray = field(default_factory=lambda: _frozen(np.zeros(0)))
    good: np.ndarray = field(default_factory=lambda: _frozen(np.zeros(0)))
    total: np.ndarray = field(default_factory=lambda: _frozen(np.zeros(0)))

    def record(self, end_s: float, good: float, total: float, keep_s: float) -> SlaLedger:
        """A ledger with one more interval, forgetting intervals older than ``keep_s``."""
        if total < 0 or not 0 <= good <= total + 1e-9:
            raise ValueError(f"an interval needs 0 <= good <= total, got {good}/{total}")
        if len(self.ends_s) and end_s < self.ends_s[-1]:
            raise ValueError(f"interval ending {end_s} is older than the last one recorded")
        first = int(np.searchsorted(self.ends_s, end_s - keep_s, side="right"))
        return SlaLedger(
            ends_s=_frozen(np.append(self.ends_s[first:], end_s)),
            good=_frozen(np.append(self.good[first:], min(good, total))),
            total=_frozen(np.append(self.total[first:], total)),
        )

    def totals_since(self, since_s: float) -> tuple[float, float]:
        """(good, total) of the intervals ending after ``since_s``."""
        first = int(np.searchsorted(self.ends_s, since_s, side="right"))
        return float(self.good[first:].sum()), float(self.total[first:].sum())


@dataclass(frozen=True, slots=True)
class SlaStatus:
    objective: float
    attainment: float
    error_budget_left: float
    burn_rates: dict[str, float]
    alert: AlertState

    @property
    def burning(self) -> bool:
        """Spending budget faster than the window allows right now (no scale-down then): a page,
        or both the last hour and the last five minutes above the budget's rate. A slow burn
        (a ticket) or one bad interval an hour ago does not block scale-down once the last five
        minutes are clean (the short window of the workbook's multi-window rule)."""
        return self.alert is AlertState.PAGE or (
            self.burn_rates["1h"] > 1.0 and self.burn_rates["5m"] > 1.0
        )


def capacity_interval(
    *,
    demand_cores: float,
    ready_capacity_cores: float,
    ready_instances: int,
    min_instances: int,
    saturation: float,
    duration_s: float,
) -> tuple[float, float]:
    """The built-in capacity SLI of one interval, as (good seconds, seconds)."""
    enough = ready_instances >= max(min_instances, 1 if demand_cores > 0 else 0)
    within = demand_cores <= ready_capacity_cores * saturation + 1e-9
    return (duration_s if enough and within else 0.0), duration_s


def promql_interval(
    snapshot: Snapshot, business: str, duration_s: float
) -> tuple[float, float] | None:
    """Good and total events of one interval from the business's SLI rate signals, if present."""
    good = total = None
    for signal in snapshot.signals_for(Scope.BUSINESS, business):
        if signal.name == SignalName.SLI_GOOD:
            good = signal.value
        elif signal.name == SignalName.SLI_TOTAL:
            total = signal.value
    if good is None or total is None or total <= 0:
        return None
    return min(max(good, 0.0), total) * duration_s, total * duration_s


def sla_status(ledger: SlaLedger, sla: Sla, now: float) -> SlaStatus:
    """Attainment and budget over the SLA window, burn rates, and the alert state at ``now``."""
    allowed = 1.0 - sla.objective / 100.0
    good, total = ledger.totals_since(now - sla.window_days * 86_400.0)
    attainment = good / total if total > 0 else 1.0
    budget_left = 1.0 - (1.0 - attainment) / allowed
    burn: dict[str, float] = {}
    for label, span in BURN_WINDOWS_S.items():
        window_good, window_total = ledger.totals_since(now - span)
        bad_share = 1.0 - window_good / window_total if window_total > 0 else 0.0
        burn[label] = bad_share / allowed
    alert = AlertState.OK
    if any(burn[lw] >= rate and burn[sw] >= rate for lw, sw, rate in TICKET_RULES):
        alert = AlertState.TICKET
    if any(burn[lw] >= rate and burn[sw] >= rate for lw, sw, rate in PAGE_RULES):
        alert = AlertState.PAGE
    return SlaStatus(
        objective=sla.objective,
        attainment=attainment,
        error_budget_left=budget_left,
        burn_rates=burn,
        alert=alert,
    )
