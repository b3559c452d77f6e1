"""Scaling one business: vertical hot-adds, horizontal clones, and retires.

Where it sits: called by ``decide()`` for each business (most SLA-critical first), after the
evacuations. Rules: capacity covers the forecast's upper quantile at the operating utilisation;
scale up at once (within the policy's step, bounds, cooldown and hourly action cap); hot-add vCPUs
to saturated VMs when the load is beyond capacity now (seconds, where a clone takes minutes) or
when no clone is possible (at the maximum, no room); hot-add a DIMM when the guest itself reports
its memory in use at the policy's threshold (never on QEMU's RSS); scale down only after the
stabilisation window, never on the forecast alone (the demand observed over the window must agree),
never while the error budget burns, never on stale data, never in a maintenance window. No
clone of a business on RBD while its pool is near full, PGs are inactive or Ceph's health is
unknown (``policies.storage``); its hot-adds and retires go on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from autoscaler.model import VM, Action, CloneFromTemplate, HotAddMemory, HotAddVcpu, Retire
from policies.assess import BusinessView, horizon_text
from policies.forecast.grid import datetime_index
from policies.placement import PlacementView
from policies.state import DecisionState


@dataclass
class Budget:
    """Actions a business may still take in this plan (its hourly cap)."""

    left: int
    names_taken: set[str] = field(default_factory=set)


def _facts(view: BusinessView) -> dict[str, str | int | float | bool]:
    f = view.forecast
    return {
        "demand_cores": round(view.demand_cores, 4),
        "forecast_upper_cores": round(view.forecast_upper, 4),
        "margin_quantile": view.margin.quantile if view.margin else f.quantile,
        "operating_utilisation": round(view.operating_utilisation, 4),
        "forecast_point_cores": round(f.point, 4),
        "forecast_quantile": f.quantile,
        "forecast_model": f.model,
        "horizon_s": round(f.horizon_s, 1),
        "capacity_cores": round(view.counted_capacity_cores, 4),
        "needed_cores": round(view.needed_cores, 4),
        "instances": len(view.ready) + len(view.pending),
        "data_stale": view.stale,
        # Ready VMs without a fresh memory-in-use figure (no balloon statistics): no memory
        # hot-add can be decided for them.
        "memory_unreported_vms": sum(1 for v in view.ready if v.memory_used_mib is None),
    }


def _forecast_text(view: BusinessView) -> str:
    f = view.forecast
    quantile = f"p{(view.margin.quantile if view.margin else f.quantile) * 100:g}"
    return (
        f"{quantile} forecast {view.forecast_upper:.2f} cores at {horizon_text(f.horizon_s)}"
        f" ({f.model}),"
        f" load now {view.demand_cores:.2f}"
    )


def new_vm_name(business: str, now: float, taken: set[str]) -> str:
    """A deterministic, unused, safe name for a clone."""
    for attempt in range(10_000):
        digest = hashlib.sha256(f"{business}|{now!r}|{attempt}".encode()).hexdigest()[:6]
        name = f"{business[:56]}-{digest}"
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError(f"no free name for a clone of {business}")  # pragma: no cover


def vertical(
    view: BusinessView, placement: PlacementView, state: DecisionState, budget: Budget
) -> tuple[list[Action], float]:
    """Hot-adds for saturated VMs; returns the actions and the cores they add."""
    policy = view.policy
    if not policy.scaling.vertical.enabled or budget.left <= 0:
        return [], 0.0
    actions: list[Action] = []
    added = 0.0
    shortfall = view.demand_cores / view.saturation - view.ready_capacity_cores
    step = policy.scaling.vertical.vcpu_step
    saturated = sorted(
        (v for v in view.ready if (v.cpu_utilisation or 0.0) >= view.saturation),
        key=lambda v: (-(v.cpu_utilisation or 0.0), v.name),
    )
    at_limit = {v.name for v in view.at_limit}
    for vm in saturated if shortfall > 0 else ():
        if (added >= shortfall and not at_limit) or budget.left <= 0:
            break
        # A VM at its limit hides how much more it would serve: it gets all it may have in
        # one hot-add (seconds), and the clones that cover the rest follow (minutes).
        grow = vm.max_vcpus if vm.name in at_limit else vm.vcpus + step
        target = min(grow, vm.max_vcpus, policy.template.vcpus.max)
        extra = (target - vm.vcpus) * (vm.cpu_quota or 1.0)
        if target <= vm.vcpus or not placement.host_fits(vm.host, extra, 0.0):
            continue
        placement.grow(vm.name, extra, 0.0)
        added += extra
        budget.left -= 1
        actions.append(
            HotAddVcpu(
                business=view.name,
                vm=vm.name,
                host=vm.host,
                vcpus=target,
                reason=f"{view.name}: {vm.name} at {vm.cpu_utilisation or 0:.0%} >= saturation"
                f" {view.saturation:.0%}; load {view.demand_cores:.2f} cores > ready capacity"
                f" {view.ready_capacity_cores:.2f} x {view.saturation:.0%}: +{target - vm.vcpus}"
                " vCPU now (faster than a clone)",
                facts={**_facts(view), "vcpus_before": vm.vcpus, "vcpus_after": target},
            )
        )
    actions += _memory(view, placement, budget)
    return actions, added


def _memory(view: BusinessView, placement: PlacementView, budget: Budget) -> list[Action]:
    """DIMM hot-adds for VMs whose guest reports memory in use at or above the threshold.

    Only the guest's own figure counts (``VM.memory_used_mib``, from its balloon statistics):
    QEMU's RSS only grows, so it would add memory forever. A VM without a fresh figure gets no
    memory hot-add (the business's facts count such VMs: ``memory_unreported_vms``).
    """
    policy = view.policy
    knobs = policy.scaling.vertical
    dimm = policy.template.dimm_mib
    step = max(dimm, math.ceil(knobs.memory_step_mib / dimm) * dimm)
    out: list[Action] = []
    for vm in view.ready:
        share = vm.memory_used_share
        if share is None or vm.name in view.stale_vm_names or budget.left <= 0:
            continue
        if share < knobs.memory_threshold:
            continue
        target = min(vm.memory_mib + step, vm.max_memory_mib, policy.template.memory_mib.max)
        if target <= vm.memory_mib or not placement.host_fits(vm.host, 0.0, target - vm.memory_mib):
            continue
        placement.grow(vm.name, 0.0, target - vm.memory_mib)
        budget.left -= 1
        used = vm.memory_used_mib or 0.0
        seen = vm.memory_guest_total_mib or float(vm.memory_mib)
        out.append(
            HotAddMemory(
                business=view.name,
                vm=vm.name,
                host=vm.host,
                memory_mib=target,
                reason=f"{view.name}: {vm.name}'s guest uses {used:.0f} of the {seen:.0f} MiB it"
                f" sees ({share:.0%} >= {knobs.memory_threshold:.0%}): memory"
                f" {vm.memory_mib} -> {target} MiB (+{target - vm.memory_mib} MiB DIMM)",
                facts={
                    "memory_used_mib": round(used, 1),
                    "memory_guest_total_mib": round(seen, 1),
                    "memory_used_share": round(share, 4),
                    "memory_threshold": knobs.memory_threshold,
                    "memory_before_mib": vm.memory_mib,
                    "memory_after_mib": target,
                },
            )
        )
    return out


class ScaleUp(NamedTuple):
    """What ``scale_up`` planned: the clones, the shortfall (cores) left uncovered, and why
    clones that were wanted were refused (``BusinessView.clone_block``), or None."""

    actions: list[Action]
    uncovered: float
    refused: str | None = None


def scale_up(
    view: BusinessView,
    placement: PlacementView,
    state: DecisionState,
    budget: Budget,
    extra_cores: float,
    now: float,
    version: str | None = None,
) -> ScaleUp:
    """Clones to cover the forecast, unless the storage gate refuses them."""
    policy = view.policy
    capacity = view.counted_capacity_cores + extra_cores
    shortfall = view.needed_cores - capacity
    if shortfall <= 1e-9:
        return ScaleUp([], 0.0)
    want = math.ceil(shortfall / view.instance_cores - 1e-9)
    room = policy.instances.max - len(view.vms)
    since_up = now - state.last_scale_up.get(view.name, -math.inf)
    if not policy.scaling.horizontal.enabled or since_up < policy.scaling.cooldowns.scale_up_s:
        return ScaleUp([], shortfall)
    count = max(0, min(want, policy.scaling.horizontal.max_step_up, room, budget.left))
    if count > 0 and view.clone_block is not None:
        # Stated only when a clone was wanted and allowed otherwise: the reason is then the
        # gate, not the cooldown, the maximum or the hourly cap. The shortfall stays uncovered,
        # so decide() still tries a hot-add (no new disk).
        return ScaleUp(
            [],
            shortfall,
            f"{view.clone_block}; {count} instance(s) wanted: {_forecast_text(view)}",
        )
    memory = float(policy.template.memory_mib.now)
    placed: list[tuple[str, str]] = []
    for _ in range(count):
        where = placement.choose(policy, view.instance_cores, memory)
        if where is None:
            break
        name = new_vm_name(view.name, now, budget.names_taken)
        placement.add_clone(name, where.host, view.name, view.instance_cores, memory)
        placed.append((name, where.host))
        budget.left -= 1
    uncovered = max(0.0, shortfall - len(placed) * view.instance_cores)
    if not placed:
        return ScaleUp([], uncovered)
    racks = ", ".join(sorted({placement.rack_of(h) for _, h in placed}))
    limit = ""
    if len(placed) < want:
        limit = f" ({want} wanted; at most {room} more within max {policy.instances.max})"
    reason = (
        f"{view.name}: {_forecast_text(view)} > capacity {capacity:.2f} x"
        f" {view.operating_utilisation:.0%}; +{len(placed)} instance(s) on {racks}{limit}"
    )
    facts = {**_facts(view), "instances_added": len(placed), "instances_wanted": want}
    actions: list[Action] = [
        CloneFromTemplate(
            business=view.name, vm=name, host=host, version=version, reason=reason, facts=facts
        )
        for name, host in placed
    ]
    return ScaleUp(actions, uncovered)


def observed_peak(history: pd.Series | None, now: float, window_s: float) -> float:
    """The highest demand seen over the window; infinite unless the history covers all of it."""
    if history is None or len(history) == 0:
        return math.inf
    cut = pd.Timestamp(now - window_s, unit="s", tz="UTC")
    index = datetime_index(history.index)
    if index.tz is None:
        cut = cut.tz_localize(None)
    if index[0] > cut:
        return math.inf
    recent = history.iloc[int(index.searchsorted(cut, side="left")) :]
    return float(recent.max()) if len(recent) else math.inf


def scale_down(
    view: BusinessView,
    placement: PlacementView,
    state: DecisionState,
    budget: Budget,
    now: float,
    out_of_date: frozenset[str] = frozenset(),
) -> list[Action]:
    """Retires, when every rule allows; VMs stuck on failing racks go first, then those of
    an out-of-date version (``out_of_date``: a rollout is under way)."""
    policy = view.policy
    scaling = policy.scaling
    stabilisation = scaling.scale_down_stabilisation_s
    if (
        view.stale
        or view.in_maintenance
        or view.sla.burning
        or not scaling.horizontal.enabled
        or now - state.last_scale_up.get(view.name, -math.inf) < stabilisation
        or now - state.last_scale_down.get(view.name, -math.inf) < scaling.cooldowns.scale_down_s
        or view.pending
    ):
        return []
    peak = observed_peak(state.demand.get(view.name), now, stabilisation)
    # What the decisions of the window asked for, not only this one's: a forecast that swings
    # with each sample must not retire now what it will clone again in a minute.
    asked = state.needed_since(view.name, now - stabilisation)
    needed = max(view.needed_cores, peak / view.operating_utilisation, asked)
    floor = needed * (1.0 + scaling.scale_down_tolerance)
    capacity = view.counted_capacity_cores
    count = len(view.ready)
    risky = {v.name for v in view.at_risk}
    candidates = sorted(view.ready, key=lambda v: _retire_order(v, placement, risky, out_of_date))
    actions: list[Action] = []
    for vm in candidates:
        if len(actions) >= scaling.horizontal.max_step_down or budget.left <= 0:
            break
        if count - 1 < policy.instances.min:
            break
        stuck = vm.name in risky
        after = capacity if stuck else capacity - vm.capacity_cores
        if after < floor:
            continue
        capacity, count = after, count - 1
        placement.retire(vm.name)
        budget.left -= 1
        why = "stuck on a failing rack and replaced" if stuck else "surplus"
        actions.append(
            Retire(
                business=view.name,
                vm=vm.name,
                host=vm.host,
                reason=f"{view.name}: {_forecast_text(view)}, peak {peak:.2f} over the last"
                f" {stabilisation / 60:.0f} min; capacity {after:.2f} cores still covers"
                f" {needed:.2f} needed (+{scaling.scale_down_tolerance:.0%} tolerance):"
                f" retire {vm.name} ({why})",
                facts={**_facts(view), "observed_peak_cores": round(peak, 4)},
            )
        )
    return actions


def _retire_order(
    vm: VM, placement: PlacementView, risky: set[str], old: frozenset[str]
) -> tuple[int, int, int, float, str]:
    crowd = placement.instances(vm.business or "", placement.rack_of(vm.host))
    return (
        0 if vm.name in risky else 1,
        0 if vm.name in old else 1,
        -crowd,
        -vm.capacity_cores,
        vm.name,
    )
