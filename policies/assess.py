"""What ``decide()`` knows about one business at ``now``: its VMs, demand, forecast and SLA.

Where it sits: the first step of ``decide()``, after rack health. It sorts the business's VMs
into ready, pending (cloned, not ready yet) and at-risk (on a failing rack and unable to leave
it), measures demand, says whether that measurement is stale, computes the capacity the
forecast asks for, and says whether a clone may be made now (``policies.storage``). Scaling
and evacuation read the resulting ``BusinessView``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from autoscaler.model import VM, Health, Scope, Snapshot, VmState
from policies.forecast import QuantileForecast, reactive_forecast, spec_quantile
from policies.forecast.grid import datetime_index
from policies.margins import Margin, margin_for
from policies.rack_health import RackHealth
from policies.schema import BusinessPolicy, CapacitySli
from policies.sla import AlertState, SlaLedger, SlaStatus, sla_status
from policies.state import DecisionState
from policies.storage import clone_block

_ALERT_RANK = {AlertState.PAGE: 0, AlertState.TICKET: 1, AlertState.OK: 2}
DEFAULT_SATURATION = 0.9
AT_LIMIT = 0.98
"""A VM this busy is at its limit: what it would serve with more is not measured."""


@dataclass(frozen=True)
class BusinessView:
    policy: BusinessPolicy
    vms: tuple[VM, ...]
    ready: tuple[VM, ...]
    pending: tuple[VM, ...]
    at_risk: tuple[VM, ...]
    demand_cores: float
    stale: bool
    stale_why: str
    forecast: QuantileForecast
    sla: SlaStatus
    saturation: float
    in_maintenance: bool
    stale_vm_names: frozenset[str] = frozenset()
    """Ready VMs whose own or whose host's figures are stale (nothing is decided on them)."""
    history_peak: float | None = None
    """The highest demand in the history decide reads, once it spans ``min_history_hours``:
    no forecast provisions beyond it without evidence (load now above it is such evidence)."""
    margin: Margin | None = None
    """The margin the error budget left allows (``policies.margins``); None: the policy's
    quantile at its target utilisation."""
    clone_block: str | None = None
    """Why no clone of this business may be made now (``policies.storage``: its RBD pool near
    full, PGs inactive, or Ceph's health unknown), or None. Hot-adds and retires are not
    gated: they make no new disk."""

    @property
    def name(self) -> str:
        return self.policy.business

    @property
    def operating_utilisation(self) -> float:
        """Utilisation the forecast quantile is provisioned at (never above saturation)."""
        if self.margin is not None:
            return min(self.margin.utilisation, self.saturation)
        return min(self.policy.scaling.target_utilisation, self.saturation)

    @property
    def forecast_upper(self) -> float:
        """The forecast's upper bound at the margin's quantile."""
        upper = (
            self.forecast.upper
            if self.margin is None
            else self.forecast.upper_at(self.margin.quantile)
        )
        if self.history_peak is not None:
            upper = min(upper, max(self.history_peak, self.demand_cores))
        return upper

    @property
    def at_limit(self) -> tuple[VM, ...]:
        """Ready VMs using all they have: their demand beyond it is unknown."""
        return tuple(v for v in self.ready if (v.cpu_utilisation or 0.0) >= AT_LIMIT)

    @property
    def instance_cores(self) -> float:
        template = self.policy.template
        return template.vcpus.now * (template.cpu_quota or 1.0)

    @property
    def counted_capacity_cores(self) -> float:
        """Capacity that will carry load: ready and pending VMs, minus those stuck on bad racks."""
        risky = {vm.name for vm in self.at_risk}
        return sum(vm.capacity_cores for vm in (*self.ready, *self.pending) if vm.name not in risky)

    @property
    def ready_capacity_cores(self) -> float:
        return sum(vm.capacity_cores for vm in self.ready)

    @property
    def needed_cores(self) -> float:
        """Capacity for the forecast's upper quantile (or the load now, if higher). While some
        VM is at its limit, demand is unknown beyond what it serves: at least twice that."""
        needed = max(self.forecast_upper, self.demand_cores) / self.operating_utilisation
        if self.at_limit:
            needed = max(needed, 2 * self.demand_cores)
        return needed

    @property
    def sla_rank(self) -> tuple[int, float, str]:
        """Most SLA-critical first: paging, then ticketing, then least budget left."""
        return (_ALERT_RANK[self.sla.alert], self.sla.error_budget_left, self.name)


def saturation_of(policy: BusinessPolicy) -> float:
    sli = policy.sla.sli
    return sli.saturation if isinstance(sli, CapacitySli) else DEFAULT_SATURATION


def _vm_stale(snapshot: Snapshot, vm: VM) -> bool:
    return snapshot.is_stale(Scope.VM, vm.name) or snapshot.is_stale(Scope.HOST, vm.host)


def assess(
    snapshot: Snapshot,
    policy: BusinessPolicy,
    state: DecisionState,
    health: Mapping[str, RackHealth],
    forecast: QuantileForecast | None,
    now: float,
) -> BusinessView:
    business = policy.business
    vms = tuple(sorted(snapshot.vms_by_business.get(business, []), key=lambda v: v.name))
    live = [v for v in vms if not v.draining and v.state in (VmState.RUNNING, VmState.MIGRATING)]
    ready = tuple(v for v in live if v.ready)
    pending = tuple(v for v in live if not v.ready)
    at_risk = tuple(
        v
        for v in live
        if _rack_health(health, snapshot, v) is Health.FAILING
        and (
            not v.live_migratable
            or policy.in_maintenance(now)
            or not snapshot.host_by_name[v.host].reachable
        )
    )
    why: list[str] = []
    if snapshot.is_stale(Scope.BUSINESS, business):
        why.append("business metrics stale")
    stale_vms = [v.name for v in ready if v.cpu_utilisation is None or _vm_stale(snapshot, v)]
    if stale_vms:
        why.append(f"no fresh utilisation for {', '.join(stale_vms[:3])}")
    demand = sum(v.busy_cores or 0.0 for v in ready)
    history = state.demand.get(business)
    if stale_vms and history is not None and len(history):
        # Part of the fleet is unmeasured: its last known demand is the better estimate.
        demand = max(demand, float(history.iloc[-1]))
    if forecast is None:
        series = history if history is not None and len(history) else _point(demand, now)
        quantile = spec_quantile(policy.forecast.quantile, policy.sla.objective)
        forecast = reactive_forecast(series, now, state.lead_time_s(business), quantile)
    ledger = state.sla.get(business, SlaLedger())
    sla = sla_status(ledger, policy.sla, now)
    saturation = saturation_of(policy)
    margin = margin_for(
        sla.error_budget_left,
        spec_quantile(policy.forecast.quantile, policy.sla.objective),
        policy.scaling.target_utilisation,
        saturation,
    )
    peak = None
    if history is not None and len(history) >= 2:
        index = datetime_index(history.index)
        span_s = (index[-1] - index[0]).total_seconds()
        if span_s >= policy.forecast.min_history_hours * 3600:
            peak = float(history.max())
    return BusinessView(
        history_peak=peak,
        policy=policy,
        vms=vms,
        ready=ready,
        pending=pending,
        at_risk=at_risk,
        demand_cores=demand,
        stale=bool(why),
        stale_why="; ".join(why),
        forecast=forecast,
        sla=sla,
        saturation=saturation,
        in_maintenance=policy.in_maintenance(now),
        stale_vm_names=frozenset(v.name for v in ready if _vm_stale(snapshot, v)),
        margin=margin,
        clone_block=clone_block(snapshot, policy, state.settings.storage, now),
    )


def _rack_health(health: Mapping[str, RackHealth], snapshot: Snapshot, vm: VM) -> Health:
    rack = snapshot.host_by_name[vm.host].rack
    found = health.get(rack)
    return found.health if found is not None else Health.UNKNOWN


def _point(value: float, now: float) -> pd.Series:
    return pd.Series([value], index=pd.DatetimeIndex([pd.Timestamp(now, unit="s", tz="UTC")]))


def horizon_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"+{seconds / 3600:.1f} h"
    return f"+{math.ceil(seconds / 60)} min"
