"""Rack health: a score, a verdict (healthy, degraded, failing) and the reasons, per rack.

Where it sits: ``decide()`` scores every rack first; placement never puts anything on a failing
rack, and evacuation moves VMs off failing racks (and off degraded ones when a business's SLA is
at risk). Inputs are the Snapshot's hosts and signals and the rack's temperature history from
``DecisionState``. Findings come from hosts unreachable, bond redundancy lost, Ceph OSDs down in
the rack, DPDK drop and error shares, and temperature: its level outside the band the rack
normally lives in, or its trend forecast to leave that band within the horizon (rises and drops
alike). A rack whose own data is stale is UNKNOWN: stale data never starts an evacuation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model import Health, Scope, Signal, SignalName, Snapshot
from policies.forecast.grid import epoch_seconds

_ORDER = {Health.HEALTHY: 0, Health.UNKNOWN: 1, Health.DEGRADED: 2, Health.FAILING: 3}
_PENALTY = {Health.DEGRADED: 0.3, Health.FAILING: 0.7}


class RackHealthSettings(BaseModel):
    """Thresholds of the rack health score (controller configuration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_signal_age_s: float = Field(default=300, gt=0, description="older signals are ignored")
    unreachable_share_failing: float = Field(default=0.5, gt=0, le=1)
    osds_down_share_failing: float = Field(default=0.5, gt=0, le=1)
    dpdk_drop_share_degraded: float = Field(default=0.001, gt=0, description="of received packets")
    dpdk_drop_share_failing: float = Field(default=0.05, gt=0)
    dpdk_error_share_degraded: float = Field(default=0.0001, gt=0)
    dpdk_error_share_failing: float = Field(default=0.01, gt=0)
    temperature_baseline_s: float = Field(default=7 * 86400, gt=0)
    temperature_min_baseline_s: float = Field(default=86400, gt=0)
    temperature_band_quantiles: tuple[float, float] = (0.01, 0.99)
    temperature_band_margin: float = Field(
        default=0.1, ge=0, description="share of the band's width added on each side"
    )
    temperature_level_window_s: float = Field(default=900, gt=0)
    temperature_trend_window_s: float = Field(default=3600, gt=0)
    temperature_horizon_s: float = Field(default=3600, gt=0)
    temperature_trend_min_t: float = Field(
        default=3.0, gt=0, description="slope / its standard error needed to trust a trend"
    )


@dataclass(frozen=True, slots=True)
class Finding:
    level: Health
    reason: str


@dataclass(frozen=True, slots=True)
class RackHealth:
    rack: str
    health: Health
    score: float
    findings: tuple[Finding, ...]

    @property
    def explanation(self) -> str:
        if not self.findings:
            return f"rack {self.rack} healthy"
        reasons = "; ".join(f.reason for f in self.findings)
        return f"rack {self.rack} {self.health.value}: {reasons}"


@dataclass(frozen=True, slots=True)
class TemperatureBand:
    low: float
    high: float


def temperature_band(
    times_s: np.ndarray, values: np.ndarray, now: float, settings: RackHealthSettings
) -> TemperatureBand | None:
    """The band the rack normally lives in: quantiles of the baseline, widened by a margin.

    The baseline ends where the recent (trend) window starts, so a developing anomaly does not
    widen its own band. (A median +- MADs band was also tried on the NAB machine trace: it
    flagged long anomalies for longer but missed one window and raised more false alarms.)
    """
    start = now - settings.temperature_baseline_s
    end = now - settings.temperature_trend_window_s
    lo_i, hi_i = np.searchsorted(times_s, [start, end], side="right")
    if hi_i - lo_i < 2 or times_s[hi_i - 1] - times_s[lo_i] < settings.temperature_min_baseline_s:
        return None
    q_lo, q_hi = np.quantile(values[lo_i:hi_i], settings.temperature_band_quantiles)
    margin = (q_hi - q_lo) * settings.temperature_band_margin
    return TemperatureBand(low=float(q_lo - margin), high=float(q_hi + margin))


def assess_temperature(
    times_s: np.ndarray, values: np.ndarray, now: float, settings: RackHealthSettings
) -> Finding | None:
    """A finding if the level is outside the band, or its trend will leave it within horizon."""
    band = temperature_band(times_s, values, now, settings)
    if band is None:
        return None
    lo_i, hi_i = np.searchsorted(
        times_s, [now - settings.temperature_trend_window_s, now], side="right"
    )
    recent_t, recent_v = times_s[lo_i:hi_i], values[lo_i:hi_i]
    if len(recent_v) == 0:
        return None
    level_from = int(np.searchsorted(recent_t, now - settings.temperature_level_window_s, "right"))
    level = float(np.median(recent_v[min(level_from, len(recent_v) - 1) :]))
    where = f"band {band.low:.1f}-{band.high:.1f}"
    if level > band.high:
        return Finding(Health.FAILING, f"temperature {level:.1f} above its normal {where}")
    if level < band.low:
        return Finding(Health.FAILING, f"temperature {level:.1f} below its normal {where}")
    if len(recent_v) < 4:
        return None
    x = recent_t - recent_t.mean()
    slope, intercept = np.polyfit(x, recent_v, 1)
    residual = recent_v - (slope * x + intercept)
    spread = float(np.sqrt(np.sum(residual**2) / max(1, len(x) - 2) / max(1e-12, np.sum(x**2))))
    if spread > 0 and abs(slope) / spread < settings.temperature_trend_min_t:
        return None
    projected = level + float(slope) * settings.temperature_horizon_s
    minutes = settings.temperature_horizon_s / 60
    per_hour = float(slope) * 3600
    if projected > band.high or projected < band.low:
        way = "rising" if slope > 0 else "falling"
        return Finding(
            Health.DEGRADED,
            f"temperature {level:.1f} {way} {abs(per_hour):.1f}/h, forecast {projected:.1f} in"
            f" {minutes:.0f} min, outside its normal {where}",
        )
    return None


def _fresh(signal: Signal, now: float, settings: RackHealthSettings) -> bool:
    return now - signal.observed_at <= settings.max_signal_age_s


def _signal_index(snapshot: Snapshot) -> dict[tuple[Scope, str], dict[str, Signal]]:
    index: dict[tuple[Scope, str], dict[str, Signal]] = defaultdict(dict)
    for signal in snapshot.signals:
        kept = index[(signal.scope, signal.target)].get(signal.name)
        if kept is None or kept.observed_at <= signal.observed_at:
            index[(signal.scope, signal.target)][signal.name] = signal
    return index


def score_racks(
    snapshot: Snapshot,
    temperatures: Mapping[str, pd.Series],
    now: float,
    settings: RackHealthSettings | None = None,
) -> dict[str, RackHealth]:
    """Health of every rack of ``snapshot`` at ``now``."""
    settings = settings or RackHealthSettings()
    signals = _signal_index(snapshot)
    out: dict[str, RackHealth] = {}
    for rack in snapshot.racks:
        out[rack.name] = _score_rack(snapshot, rack.name, signals, temperatures, now, settings)
    return out


def _value(
    signals: Mapping[tuple[Scope, str], dict[str, Signal]],
    scope: Scope,
    target: str,
    name: SignalName,
    now: float,
    settings: RackHealthSettings,
) -> float | None:
    signal = signals.get((scope, target), {}).get(name)
    if signal is None or not _fresh(signal, now, settings):
        return None
    return signal.value


def _score_rack(
    snapshot: Snapshot,
    rack: str,
    signals: Mapping[tuple[Scope, str], dict[str, Signal]],
    temperatures: Mapping[str, pd.Series],
    now: float,
    settings: RackHealthSettings,
) -> RackHealth:
    if snapshot.is_stale(Scope.RACK, rack):
        return RackHealth(rack, Health.UNKNOWN, 0.5, (Finding(Health.UNKNOWN, "rack data stale"),))
    hosts = snapshot.hosts_by_rack.get(rack, [])
    findings: list[Finding] = []
    fresh_hosts = [h for h in hosts if not snapshot.is_stale(Scope.HOST, h.name)]
    unreachable = [
        h.name
        for h in hosts
        if not h.reachable
        or _value(signals, Scope.HOST, h.name, SignalName.HOST_REACHABLE, now, settings) == 0.0
    ]
    if unreachable and hosts:
        share = len(unreachable) / len(hosts)
        level = Health.FAILING if share >= settings.unreachable_share_failing else Health.DEGRADED
        named = ", ".join(unreachable[:3])
        what = f"{len(unreachable)}/{len(hosts)} hosts unreachable ({named})"
        findings.append(Finding(level, what))
    lost = SignalName.BOND_REDUNDANCY_LOST
    bonds = [
        h.name
        for h in fresh_hosts
        if (_value(signals, Scope.HOST, h.name, lost, now, settings) or 0.0) > 0
    ]
    if bonds:
        findings.append(Finding(Health.DEGRADED, f"bond redundancy lost on {', '.join(bonds[:3])}"))
    up = _value(signals, Scope.RACK, rack, SignalName.CEPH_OSDS_UP, now, settings)
    total = _value(signals, Scope.RACK, rack, SignalName.CEPH_OSDS_TOTAL, now, settings)
    if up is not None and total is not None and total > 0 and up < total:
        share = (total - up) / total
        level = Health.FAILING if share >= settings.osds_down_share_failing else Health.DEGRADED
        findings.append(Finding(level, f"{total - up:.0f}/{total:.0f} Ceph OSDs down"))
    findings += _dpdk_findings([h.name for h in fresh_hosts], signals, now, settings)
    history = temperatures.get(rack)
    if history is not None and len(history):
        times = epoch_seconds(history.index)
        values = np.asarray(history.to_numpy(), dtype=float)
        finding = assess_temperature(times, values, now, settings)
        if finding is not None:
            findings.append(finding)
    worst = max((f.level for f in findings), key=_ORDER.__getitem__, default=Health.HEALTHY)
    score = max(0.0, 1.0 - sum(_PENALTY.get(f.level, 0.0) for f in findings))
    return RackHealth(rack, worst, score, tuple(findings))


def _dpdk_findings(
    hosts: list[str],
    signals: Mapping[tuple[Scope, str], dict[str, Signal]],
    now: float,
    settings: RackHealthSettings,
) -> list[Finding]:
    findings: list[Finding] = []
    s = settings
    drop, error = SignalName.DPDK_RX_DROP_RATE, SignalName.DPDK_RX_ERROR_RATE
    limits = (
        (drop, "drop", s.dpdk_drop_share_degraded, s.dpdk_drop_share_failing),
        (error, "error", s.dpdk_error_share_degraded, s.dpdk_error_share_failing),
    )
    for name, label, degraded, failing in limits:
        worst_host, worst = "", -math.inf
        for host in hosts:
            value = _value(signals, Scope.HOST, host, name, now, settings)
            if value is not None and value > worst:
                worst_host, worst = host, value
        what = f"DPDK rx {label} share {worst:.2%} on {worst_host}"
        if worst >= failing:
            findings.append(Finding(Health.FAILING, what))
        elif worst >= degraded:
            findings.append(Finding(Health.DEGRADED, what))
    return findings
