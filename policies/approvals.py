"""Approved plans admitted again on a fresh view: an approval means what was approved, once.

Where it sits: called by the Cycle (``autoscaler.runtime.cycle``) with the plans an operator
approved (``autoscaler approve ID``), before they join the cycle's executed plan. Pure: no I/O,
no clock. A plan is admitted only when every one of these holds, else it is refused whole and
the reason is said:

- its id is its content's digest (``Plan.content_id``): a plan edited after export is refused;
- it is younger than every one of its businesses' ``approval.expires_after_s``;
- none of its businesses was acted on after the view it was decided on was taken: two
  recommendations made from the same view cannot both run (the second would double a clone);
- on the fresh snapshot, every action still applies: the VM it acts on is still on the named
  host, a clone's name is still free, its host or destination is not cordoned;
- its businesses are known, not paused, not in a maintenance window (for migrations, retires
  and backups), and the plan fits what is left of each business's hourly action cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.model import (
    Action,
    CloneFromTemplate,
    Controls,
    LiveMigrate,
    Plan,
    ReplaceInstance,
    Snapshot,
)
from policies.schema import BusinessPolicy
from policies.state import DecisionState

DISRUPTIVE = frozenset({"live_migrate", "retire", "backup", "replace"})
"""Kinds never run in their business's maintenance window (a backup freezes and snapshots the
disk, and loads the storage)."""


@dataclass(frozen=True)
class Admission:
    plan: Plan
    refused: str | None
    """Why the plan was refused (None: admitted)."""

    @property
    def admitted(self) -> bool:
        return self.refused is None


def admit(
    plan: Plan,
    snapshot: Snapshot,
    policies: Mapping[str, BusinessPolicy],
    controls: Controls,
    state: DecisionState,
    now: float,
) -> Admission:
    """Whether the approved ``plan`` may run now (see the module's rules)."""
    if plan.id != plan.content_id():
        edited = f"its content does not match its id (edited after export: {plan.content_id()})"
        return Admission(plan, edited)
    decided_on = plan.snapshot_at if plan.snapshot_at is not None else plan.created_at
    per_business: dict[str, int] = {}
    for action in plan.actions:
        per_business[action.business] = per_business.get(action.business, 0) + 1
    for business, count in sorted(per_business.items()):
        why = _business_refusal(business, count, plan, decided_on, policies, controls, state, now)
        if why is not None:
            return Admission(plan, why)
    for action in plan.actions:
        stale = _stale_action(action, snapshot, controls, policies[action.business], now)
        if stale is not None:
            return Admission(plan, f"{action.key}: {stale}")
    return Admission(plan, None)


def _business_refusal(
    business: str,
    count: int,
    plan: Plan,
    decided_on: float,
    policies: Mapping[str, BusinessPolicy],
    controls: Controls,
    state: DecisionState,
    now: float,
) -> str | None:
    policy = policies.get(business)
    if policy is None:
        return f"business {business} has no policy"
    if now - plan.created_at > policy.approval.expires_after_s:
        return (
            f"expired: decided {now - plan.created_at:.0f} s ago, approvals of {business}"
            f" last {policy.approval.expires_after_s:.0f} s"
        )
    if controls.is_paused(business):
        return f"business {business} is paused"
    acted = [t for t in state.recent_actions.get(business, ()) if t > decided_on]
    if acted:
        return (
            f"{business} was acted on after the view this plan was decided on"
            f" ({len(acted)} action(s) since): decide again"
        )
    left = policy.scaling.max_actions_per_hour - state.actions_in_last_hour(business, now)
    if count > left:
        return f"{business} has {max(0, left)} action(s) left this hour, the plan needs {count}"
    return None


def _stale_action(
    action: Action,
    snapshot: Snapshot,
    controls: Controls,
    policy: BusinessPolicy,
    now: float,
) -> str | None:
    where = {vm.name: vm for vm in snapshot.vms}
    cordoned = controls.cordoned | {h.name for h in snapshot.hosts if h.cordoned}
    if action.kind in DISRUPTIVE and policy.in_maintenance(now):
        return f"{action.business} is in a maintenance window"
    if isinstance(action, CloneFromTemplate):
        if action.vm in where:
            return "a VM of that name exists now"
        if action.host in cordoned:
            return f"host {action.host} is cordoned"
        return None
    if isinstance(action, ReplaceInstance):
        if action.new_vm in where:
            return "a VM of the replacement's name exists now"
        if action.new_host in cordoned:
            return f"host {action.new_host} is cordoned"
    vm = where.get(action.vm)
    if vm is None:
        return "the VM is gone"
    if vm.business != action.business:
        return f"the VM belongs to {vm.business}, not {action.business}"
    if isinstance(action, LiveMigrate):
        if vm.host != action.source:
            return f"the VM is on {vm.host} now, not {action.source}"
        if action.destination in cordoned:
            return f"destination {action.destination} is cordoned"
        return None
    host = getattr(action, "host", None)
    if host is not None and vm.host != host:
        return f"the VM is on {vm.host} now, not {host}"
    return None
