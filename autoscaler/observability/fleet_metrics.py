"""The fleet's gauges, read at scrape time from the last snapshot and the last Decision.

Where it sits: "reports", beside ``ControllerMetrics``. Instead of gauges the loop sets (and
has to clear, or a removed rack's series would stay forever), a prometheus-client custom
collector asks the controller for a ``FleetView`` at each scrape: what the last collection saw
(instances, demand, capacity, signals, stale scopes, the last backup of each VM), what the
last Decision saw (rack health,
forecasts, the instances the plan aims for) and the SLA memory (error budget left). A series
exists exactly while its subject does. Metric names and labels are those the dashboards and
rules in ``grafana/`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler.model import Health, Signal, Snapshot
from autoscaler.runtime.figures import BusinessFigures
from policies.decision import Decision


@dataclass(frozen=True)
class FleetView:
    """Everything the fleet's gauges show, as of one scrape."""

    figures: Mapping[str, BusinessFigures] = field(default_factory=dict)
    signals: tuple[Signal, ...] = ()
    stale: tuple[tuple[str, str, str], ...] = ()
    """(source, scope, target) a source cannot observe now."""
    decision: Decision | None = None
    budget_left: Mapping[str, float] = field(default_factory=dict)
    objectives: Mapping[str, float] = field(default_factory=dict)
    paused: Mapping[str, bool] = field(default_factory=dict)
    last_backups: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(business, vm) -> when its last backup succeeded (``last_backups``)."""


def last_backups(snapshot: Snapshot | None) -> dict[tuple[str, str], float]:
    """(business, vm) -> last successful backup, for the VMs the snapshot has now: a retired
    VM's backups stay at the target, but its series goes with it (else the overdue alert
    would fire for it forever). A VM without a backup has no series."""
    if snapshot is None:
        return {}
    out: dict[tuple[str, str], float] = {}
    for catalogue in snapshot.backups:
        live = {vm.name for vm in snapshot.vms_by_business.get(catalogue.business, [])}
        for record in catalogue.records:
            if record.vm in live and record.last_success_at is not None:
                out[(catalogue.business, record.vm)] = record.last_success_at
    return out


def _families() -> dict[str, GaugeMetricFamily]:
    specs: list[tuple[str, str, list[str]]] = [
        ("autoscaler_business_instances", "Ready instances per business.", ["business"]),
        (
            "autoscaler_business_instances_wanted",
            "Instances the last plan aims for.",
            ["business"],
        ),
        (
            "autoscaler_business_demand_cores",
            "Measured demand (busy cores) per business.",
            ["business"],
        ),
        (
            "autoscaler_business_forecast_cores",
            "Forecast demand quantile at the provisioning lead time.",
            ["business"],
        ),
        ("autoscaler_business_capacity_cores", "Capacity of the ready instances.", ["business"]),
        (
            "autoscaler_error_budget_remaining_ratio",
            "Share of the error budget left in the SLA window.",
            ["business"],
        ),
        ("autoscaler_sla_objective_ratio", "The business's SLA objective.", ["business"]),
        (
            "autoscaler_business_paused",
            "1 while the business is paused by an operator.",
            ["business"],
        ),
        (
            "autoscaler_rack_health_score",
            "Rack health score (0 healthy .. 1 failing).",
            ["rack"],
        ),
        ("autoscaler_rack_state", "1 for the rack's current health state.", ["rack", "state"]),
        (
            "autoscaler_backup_last_success_timestamp_seconds",
            "When the newest complete backup of a VM was taken (from the last listing of its"
            " business's backup target).",
            ["business", "vm"],
        ),
        (
            "autoscaler_collector_stale",
            "1 while a source cannot observe a scope.",
            ["source", "scope", "target"],
        ),
        (
            "autoscaler_signal_value",
            "Health signals of the last snapshot (rack temperature, OSDs up, DPDK drops...).",
            ["scope", "target", "name"],
        ),
    ]
    return {name: GaugeMetricFamily(name, text, labels=labels) for name, text, labels in specs}


class FleetCollector(Collector):
    def __init__(self, view: Callable[[], FleetView]) -> None:
        self.view = view

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        f = _families()
        for name, fig in sorted(view.figures.items()):
            f["autoscaler_business_instances"].add_metric([name], fig.ready)
            f["autoscaler_business_demand_cores"].add_metric([name], fig.demand_cores)
            f["autoscaler_business_capacity_cores"].add_metric([name], fig.capacity_cores)
        for name, left in sorted(view.budget_left.items()):
            f["autoscaler_error_budget_remaining_ratio"].add_metric([name], left)
        for name, objective in sorted(view.objectives.items()):
            f["autoscaler_sla_objective_ratio"].add_metric([name], objective)
        for name, paused in sorted(view.paused.items()):
            f["autoscaler_business_paused"].add_metric([name], 1.0 if paused else 0.0)
        # One series per (scope, target, name): the last signal of the snapshot wins.
        signals = {(s.scope.value, s.target, s.name): s.value for s in view.signals}
        for labels, value in sorted(signals.items()):
            f["autoscaler_signal_value"].add_metric(list(labels), value)
        for (business, vm), at in sorted(view.last_backups.items()):
            f["autoscaler_backup_last_success_timestamp_seconds"].add_metric([business, vm], at)
        for source, scope, target in sorted(set(view.stale)):
            f["autoscaler_collector_stale"].add_metric([source, scope, target], 1.0)
        decision = view.decision
        if decision is not None:
            ready = {name: fig.ready for name, fig in view.figures.items()}
            for name, n in sorted(decision.instances_wanted(ready).items()):
                f["autoscaler_business_instances_wanted"].add_metric([name], n)
            for name, forecast in sorted(decision.forecasts.items()):
                f["autoscaler_business_forecast_cores"].add_metric([name], forecast.upper)
            for rack, health in sorted(decision.rack_health.items()):
                f["autoscaler_rack_health_score"].add_metric([rack], health.score)
                for verdict in Health:
                    f["autoscaler_rack_state"].add_metric(
                        [rack, verdict.value], 1.0 if health.health is verdict else 0.0
                    )
        yield from f.values()
