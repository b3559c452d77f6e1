from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from autoscaler.model import Health, Scope, SignalName, Stale
from policies.rack_health import RackHealthSettings, assess_temperature, score_racks
from tests.unit.policies.builders import NOW, Fleet, history

DATA = Path(__file__).resolve().parents[3] / "data" / "nab"
RACK = "ra-d1-k1"


def _health(fleet: Fleet, temperatures: dict[str, pd.Series] | None = None) -> Health:
    return score_racks(fleet.snapshot(), temperatures or {}, NOW)[RACK].health


def _temperature(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    series = history(values)
    return np.asarray(series.index.asi8, dtype=np.int64) / 1e9, series.to_numpy()


def _steady(days: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = days * 288
    return 70 + 2 * np.sin(np.arange(n) / 288 * 2 * np.pi) + rng.normal(0, 0.3, n)


def test_a_rack_with_fresh_good_signals_is_healthy() -> None:
    fleet = Fleet()
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_UP, 2)
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_TOTAL, 2)
    result = score_racks(fleet.snapshot(), {}, NOW)[RACK]
    assert result.health is Health.HEALTHY
    assert result.score == 1.0


def test_one_host_unreachable_degrades_and_most_hosts_unreachable_fail_the_rack() -> None:
    fleet = Fleet(hosts_per_rack=4)
    fleet.unreachable = {f"{RACK}-h1"}
    assert _health(fleet) is Health.DEGRADED
    fleet.unreachable = {f"{RACK}-h1", f"{RACK}-h2"}
    result = score_racks(fleet.snapshot(), {}, NOW)[RACK]
    assert result.health is Health.FAILING
    assert "2/4 hosts unreachable" in result.explanation


def test_bond_redundancy_lost_degrades_the_rack() -> None:
    fleet = Fleet()
    fleet.signal(Scope.HOST, f"{RACK}-h2", SignalName.BOND_REDUNDANCY_LOST, 1)
    result = score_racks(fleet.snapshot(), {}, NOW)[RACK]
    assert result.health is Health.DEGRADED
    assert "bond" in result.explanation


def test_ceph_osds_down_degrade_then_fail_the_rack() -> None:
    fleet = Fleet()
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_UP, 3)
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_TOTAL, 4)
    assert _health(fleet) is Health.DEGRADED
    fleet.signals.clear()
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_UP, 1)
    fleet.signal(Scope.RACK, RACK, SignalName.CEPH_OSDS_TOTAL, 4)
    assert _health(fleet) is Health.FAILING


def test_dpdk_drops_and_errors_are_graded_by_share() -> None:
    fleet = Fleet()
    fleet.signal(Scope.HOST, f"{RACK}-h1", SignalName.DPDK_RX_DROP_RATE, 0.002)
    assert _health(fleet) is Health.DEGRADED
    fleet.signal(Scope.HOST, f"{RACK}-h1", SignalName.DPDK_RX_ERROR_RATE, 0.05)
    assert _health(fleet) is Health.FAILING


def test_signals_older_than_the_allowed_age_are_ignored() -> None:
    fleet = Fleet()
    fleet.signal(Scope.HOST, f"{RACK}-h1", SignalName.DPDK_RX_DROP_RATE, 0.5, age_s=3600)
    assert _health(fleet) is Health.HEALTHY


def test_a_stale_rack_is_unknown_whatever_its_signals_say() -> None:
    fleet = Fleet()
    fleet.unreachable = {f"{RACK}-h1", f"{RACK}-h2"}
    fleet.stale.append(Stale(scope=Scope.RACK, target=RACK, source="node", last_good=NOW - 900))
    assert _health(fleet) is Health.UNKNOWN


def test_steady_temperature_raises_nothing() -> None:
    times, values = _temperature(_steady())
    assert assess_temperature(times, values, NOW, RackHealthSettings()) is None


def test_temperature_above_its_band_fails_the_rack() -> None:
    values = _steady()
    values[-6:] = 95
    fleet = Fleet()
    result = score_racks(fleet.snapshot(), {RACK: history(values)}, NOW)[RACK]
    assert result.health is Health.FAILING
    assert "above its normal band" in result.explanation


def test_a_steep_drop_still_inside_the_band_is_flagged_as_forecast_to_leave_it() -> None:
    values = _steady()
    values[-12:] = 70 + np.linspace(0, -2.5, 12)
    times, v = _temperature(values)
    finding = assess_temperature(times, v, NOW, RackHealthSettings())
    assert finding is not None
    assert finding.level is Health.DEGRADED
    assert "falling" in finding.reason


def test_too_short_a_baseline_gives_no_temperature_verdict() -> None:
    times, values = _temperature(_steady(days=1)[:200])
    values[-3:] = 200
    assert assess_temperature(times, values, NOW, RackHealthSettings()) is None


def test_the_real_machine_failure_drop_is_flagged_inside_its_labelled_window() -> None:
    frame = pd.read_csv(DATA / "machine_temperature_system_failure.csv")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    times = np.asarray(index.asi8, dtype=np.int64) / 1e9
    values = frame["value"].to_numpy(dtype=float)
    windows = json.loads((DATA / "combined_windows.json").read_text())
    start, end = (
        pd.Timestamp(x, tz="UTC").timestamp()
        for x in windows["realKnownCause/machine_temperature_system_failure.csv"][-1]
    )
    settings = RackHealthSettings()
    inside = np.flatnonzero((times >= start) & (times <= end))[::3]
    flagged = [
        assess_temperature(times[: i + 1], values[: i + 1], times[i], settings) for i in inside
    ]
    assert any(f is not None for f in flagged)
