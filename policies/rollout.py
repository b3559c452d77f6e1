"""Replacing instances: rollouts of a template version, and scale-down by replacement.

Where it sits: pure functions ``decide()`` calls for each business after scaling, when scaling
took no action for it. Both plan ``ReplaceInstance`` actions: the actuator surges a clone,
waits until it is ready and, behind a load balancer, serving there, and only then drains and
retires the instance it replaces. One per business per decision, so a fleet is replaced one
instance at a time and never has fewer serving instances than before.

A rollout needs no state of its own: the business's target version is the policy's
``template.version`` unless an operator's rollout (``Controls.rollouts``) names another, and
every running instance of another version is out of date. A rollout interrupted anywhere
(a SIGKILL of the controller included) is where the fleet says it is: the journal finishes the
replacement in flight and the next decision plans the next one.

A rollout step is held, with the reason stated, while:
- the operator paused the rollout (or the business);
- the business is in a maintenance window (nothing disruptive);
- its page alert condition holds (burning fast: 14.4x over 1 h and 5 min, or 6x over 6 h and
  30 min): replacing instances then would add risk to a business already in trouble;
- an instance of the business is not ready yet (a clone still booting, a step in flight);
- the fleet is frozen, the hourly cap is spent, or its balancer cannot drain (stale).

Scale-down by replacement (VPA's "recreate"): a VM that holds hot-added vCPUs or memory it has
not needed for the policy's stabilisation window, while the business's forecast, its observed
peak and what the window's decisions asked for all fit in the capacity left with that VM at
template size, is replaced by a template-size clone. vCPUs are never unplugged (QEMU 7.2
crashes), and memory is only ever added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from autoscaler.model import VM, Action, Controls, ReplaceInstance, Snapshot
from autoscaler.model.access import AccessView
from policies.access import retire_hold
from policies.assess import BusinessView
from policies.placement import PlacementView
from policies.scaling import Budget, new_vm_name, observed_peak
from policies.schema import BusinessPolicy
from policies.sla import AlertState
from policies.state import DecisionState

ROLLOUT_PAUSED = "rollout paused by an operator"
HELD_PREFIX = "rollout to"
"""How every reason a rollout step waits for begins (the cycle logs it when it changes)."""


def target_version(policy: BusinessPolicy, controls: Controls) -> str | None:
    """The version every instance of the business should run (None: no versions known)."""
    rollout = controls.rollouts.get(policy.business)
    return rollout.to if rollout is not None else policy.template.version


def out_of_date(vm: VM, target: str | None) -> bool:
    """An instance of a known version that is not the target (an unknown one is left be)."""
    return target is not None and vm.version is not None and vm.version != target


@dataclass
class Replacements:
    actions: list[Action] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _held(
    view: BusinessView,
    snapshot: Snapshot,
    budget: Budget,
    freeze: str | None,
) -> str | None:
    if view.in_maintenance:
        return "in a maintenance window"
    if view.sla.alert is AlertState.PAGE:
        return "its SLA page alert holds (the error budget burns fast)"
    if view.pending:
        names = ", ".join(v.name for v in view.pending[:3])
        return f"waiting for {names} to be ready"
    if freeze is not None:
        return f"frozen: {freeze}"
    if budget.left <= 0:
        return "the hourly cap is spent"
    return retire_hold(snapshot, view.name)


def _serving(vm: VM, access: AccessView | None) -> bool:
    if access is None:
        return True
    server = access.server(vm.name)
    return server is not None and server.serving


def plan_rollout(
    view: BusinessView,
    snapshot: Snapshot,
    controls: Controls,
    placement: PlacementView,
    budget: Budget,
    freeze: str | None,
    now: float,
) -> Replacements:
    """At most one replacement of an out-of-date instance, or why none."""
    out = Replacements()
    target = target_version(view.policy, controls)
    old = [v for v in view.vms if out_of_date(v, target)]
    if not old or target is None:
        return out
    progress = f"{len(view.vms) - len(old)} of {len(view.vms)} at {target}"
    rollout = controls.rollouts.get(view.name)
    if rollout is not None and rollout.paused:
        out.reasons.append(f"{HELD_PREFIX} {target} ({progress}): {ROLLOUT_PAUSED}")
        return out
    why = _held(view, snapshot, budget, freeze)
    access = snapshot.access_by_business.get(view.name)
    if why is None and view.policy.access is not None:
        unserved = [
            v.name for v in view.ready if not out_of_date(v, target) and not _serving(v, access)
        ]
        if unserved:
            why = f"waiting for {', '.join(unserved[:3])} to serve in its load balancer"
    if why is not None:
        out.reasons.append(f"{HELD_PREFIX} {target} ({progress}) held: {why}")
        return out
    # The oldest instance first (the longest since its version was current).
    vm = min(old, key=lambda v: (v.created_at if v.created_at is not None else -math.inf, v.name))
    action = _replace(view, vm, placement, budget, now, version=target, cause="rollout")
    if action is None:
        out.reasons.append(f"{HELD_PREFIX} {target} ({progress}) held: no room for a surge clone")
        return out
    out.actions.append(action)
    return out


def plan_shrink(
    view: BusinessView,
    snapshot: Snapshot,
    controls: Controls,
    placement: PlacementView,
    state: DecisionState,
    budget: Budget,
    freeze: str | None,
    now: float,
) -> Replacements:
    """At most one replacement of a grown VM by a template-size clone, when nothing in the
    stabilisation window needed what it was grown by."""
    out = Replacements()
    policy = view.policy
    template = policy.template
    grown = [
        v
        for v in view.ready
        if v.vcpus > template.vcpus.now or v.memory_mib > template.memory_mib.now
    ]
    if not grown or view.stale or view.sla.burning or not policy.scaling.horizontal.enabled:
        return out
    stabilisation = policy.scaling.scale_down_stabilisation_s
    if now - state.last_scale_up.get(view.name, -math.inf) < stabilisation:
        return out
    if _held(view, snapshot, budget, freeze) is not None:
        return out
    peak = observed_peak(state.demand.get(view.name), now, stabilisation)
    asked = state.needed_since(view.name, now - stabilisation)
    needed = max(view.needed_cores, peak / view.operating_utilisation, asked)
    floor = needed * (1.0 + policy.scaling.scale_down_tolerance)
    small = template.vcpus.now * (template.cpu_quota or 1.0)
    for vm in sorted(grown, key=lambda v: (-v.capacity_cores, v.name)):
        after = view.counted_capacity_cores - vm.capacity_cores + small
        if after < floor:
            continue
        if vm.memory_mib > template.memory_mib.now and (
            vm.memory_used_mib is None
            or vm.memory_used_mib
            > template.memory_mib.now * policy.scaling.vertical.memory_threshold
        ):
            continue  # its guest uses (or may use) the memory it was given: kept
        action = _replace(
            view,
            vm,
            placement,
            budget,
            now,
            version=target_version(policy, controls),
            cause="shrink",
            detail=f"{vm.vcpus} vCPU / {vm.memory_mib} MiB unneeded for"
            f" {stabilisation / 60:.0f} min (peak {peak:.2f}, needed {needed:.2f} cores;"
            f" {after:.2f} left at template size)",
        )
        if action is not None:
            out.actions.append(action)
        break
    return out


def _replace(
    view: BusinessView,
    vm: VM,
    placement: PlacementView,
    budget: Budget,
    now: float,
    *,
    version: str | None,
    cause: str,
    detail: str = "",
) -> ReplaceInstance | None:
    policy = view.policy
    memory = float(policy.template.memory_mib.now)
    where = placement.choose(policy, view.instance_cores, memory)
    if where is None:
        return None
    name = new_vm_name(view.name, now, budget.names_taken)
    placement.add_clone(name, where.host, view.name, view.instance_cores, memory)
    budget.left -= 1
    if cause == "rollout":
        reason = f"{view.name}: rollout to {version}: replace {vm.name} ({vm.version}) by {name}"
    else:
        reason = f"{view.name}: shrink {vm.name} by replacement with template-size {name}: {detail}"
    return ReplaceInstance(
        business=view.name,
        vm=vm.name,
        host=vm.host,
        new_vm=name,
        new_host=where.host,
        version=version,
        cause="rollout" if cause == "rollout" else "shrink",
        reason=reason,
        facts={"from_version": vm.version or "", "to_version": version or "", "cause": cause},
    )
