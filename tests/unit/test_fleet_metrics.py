"""The fleet's gauges, read at scrape time from the last snapshot and Decision."""

from __future__ import annotations

from prometheus_client import generate_latest

from autoscaler.model import BackupCatalogue, BackupRecord, Controls, Scope, SignalName
from autoscaler.observability.exporter import ControllerMetrics
from autoscaler.observability.fleet_metrics import FleetView, last_backups
from autoscaler.runtime.figures import BusinessFigures
from policies.decide import decide
from policies.decision import Decision
from policies.state import DecisionState
from tests.unit.policies.builders import NOW, Fleet, history, policy


def _decision(fleet: Fleet) -> Decision:
    web = policy("web")
    state = DecisionState(demand={"web": history([0.3] * 12)})
    return decide(fleet.snapshot(web), {"web": web}, Controls(), state, NOW)


def _scrape(metrics: ControllerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_gauges_follow_the_last_decision_and_a_removed_rack_leaves_no_series() -> None:
    big, small = Fleet(racks_per_dc=2), Fleet(racks_per_dc=1)
    for fleet in (big, small):
        fleet.add_vms("web", 2)
    views = {"now": FleetView(decision=_decision(big))}
    metrics = ControllerMetrics()
    metrics.watch(lambda: views["now"])
    text = _scrape(metrics)
    assert 'autoscaler_rack_state{rack="ra-d1-k2",state="unknown"}' in text
    assert 'autoscaler_business_forecast_cores{business="web"}' in text
    views["now"] = FleetView(decision=_decision(small))
    text = _scrape(metrics)
    assert 'rack="ra-d1-k2"' not in text
    assert 'autoscaler_rack_health_score{rack="ra-d1-k1"}' in text


def test_business_figures_budget_signals_and_stale_scopes_are_served_once_each() -> None:
    fleet = Fleet()
    fleet.signal(Scope.RACK, "ra-d1-k1", SignalName.TEMPERATURE_CELSIUS, 30.0)
    fleet.signal(Scope.RACK, "ra-d1-k1", SignalName.TEMPERATURE_CELSIUS, 31.0)
    snapshot = fleet.snapshot(policy("web"))
    view = FleetView(
        figures={"web": BusinessFigures(ready=3, demand_cores=0.4, capacity_cores=0.75)},
        signals=snapshot.signals,
        stale=(("libvirt:h1", "host", "h1"), ("libvirt:h1", "host", "h1")),
        budget_left={"web": 0.5},
        objectives={"web": 0.9995},
        paused={"web": True},
    )
    metrics = ControllerMetrics()
    metrics.watch(lambda: view)
    lines = _scrape(metrics).splitlines()
    assert 'autoscaler_business_instances{business="web"} 3.0' in lines
    assert 'autoscaler_error_budget_remaining_ratio{business="web"} 0.5' in lines
    assert 'autoscaler_business_paused{business="web"} 1.0' in lines
    temperature = [ln for ln in lines if ln.startswith("autoscaler_signal_value{")]
    assert temperature == [
        'autoscaler_signal_value{name="temperature_celsius",scope="rack",target="ra-d1-k1"} 31.0'
    ]
    stale = [ln for ln in lines if ln.startswith("autoscaler_collector_stale{")]
    assert stale == ['autoscaler_collector_stale{scope="host",source="libvirt:h1",target="h1"} 1.0']
    # No decision yet (a standby): no rack or forecast series, and nothing wanted.
    assert not [ln for ln in lines if ln.startswith(("autoscaler_rack_", "autoscaler_business_f"))]


def test_last_backup_gauge_has_a_series_per_live_vm_with_a_backup() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2)
    fleet.backups.append(
        BackupCatalogue(
            business="web",
            listed_at=NOW,
            records=(
                BackupRecord(vm="web-000", last_success_at=NOW - 3600, count=3),
                BackupRecord(vm="web-001", last_success_at=None, last_failure_at=NOW - 60),
                BackupRecord(vm="web-gone", last_success_at=NOW - 7200, count=7),  # retired
            ),
        )
    )
    snapshot = fleet.snapshot(policy("web"))
    assert last_backups(snapshot) == {("web", "web-000"): NOW - 3600}
    assert last_backups(None) == {}
    metrics = ControllerMetrics()
    metrics.watch(lambda: FleetView(last_backups=last_backups(snapshot)))
    lines = [
        ln
        for ln in _scrape(metrics).splitlines()
        if ln.startswith("autoscaler_backup_last_success_timestamp_seconds{")
    ]
    assert len(lines) == 1
    series, value = lines[0].rsplit(" ", 1)
    assert series == 'autoscaler_backup_last_success_timestamp_seconds{business="web",vm="web-000"}'
    assert float(value) == NOW - 3600
