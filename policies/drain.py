"""Drain: live-migrate every VM off hosts an operator asked to drain.

Where it sits: the last step of ``decide()``, which adds these actions to the cycle's plan while
a host is in the operator's drain list (``autoscaler drain HOST``). Pure: same inputs, same
actions. Destinations come from the same placement as every other move, on a view that already
holds the plan's earlier actions; VMs that cannot be live-migrated (SR-IOV) are left and said so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

from autoscaler.model import Action, LiveMigrate, Snapshot, VmState
from policies.placement import PlacementView
from policies.rack_health import RackHealth, score_racks
from policies.schema import BusinessPolicy
from policies.state import DecisionState


def drain_actions(
    snapshot: Snapshot,
    policies: Mapping[str, BusinessPolicy],
    draining: Collection[str],
    state: DecisionState,
    now: float,
    already: Collection[Action] = (),
    health: Mapping[str, RackHealth] | None = None,
) -> tuple[list[LiveMigrate], list[str]]:
    """(migrations, reasons a VM stays) for every VM on a draining host; ``health`` is the
    racks' health at ``now`` when the caller has scored them already."""
    if not any(snapshot.vms_by_host.get(host) for host in draining):
        return [], []
    if health is None:
        health = score_racks(snapshot, state.temperatures, now, state.settings.rack_health)
    placement = PlacementView(snapshot, health, state.settings.placement)
    moving = {a.vm for a in already}
    outgoing: Counter[str] = Counter(a.source for a in already if isinstance(a, LiveMigrate))
    actions: list[LiveMigrate] = []
    stays: list[str] = []
    for host in sorted(draining):
        for vm in sorted(snapshot.vms_by_host.get(host, []), key=lambda v: v.name):
            if vm.name in moving or vm.state is not VmState.RUNNING:
                continue
            policy = policies.get(vm.business) if vm.business else None
            if policy is None:
                stays.append(f"{vm.name}: not managed by the controller")
                continue
            if not vm.live_migratable:
                stays.append(f"{vm.name}: {vm.nic_model.value} NIC, not live-migratable")
                continue
            if outgoing[host] >= state.settings.max_outgoing_migrations_per_host:
                stays.append(f"{vm.name}: {host} already has its maximum of outgoing migrations")
                continue
            where = placement.choose(policy, vm.capacity_cores, vm.memory_mib, migrating=vm)
            if where is None:
                stays.append(f"{vm.name}: no host has room under the placement rules")
                continue
            placement.migrate(vm.name, where.host)
            outgoing[host] += 1
            actions.append(
                LiveMigrate(
                    business=policy.business,
                    vm=vm.name,
                    source=host,
                    destination=where.host,
                    max_downtime_ms=policy.scaling.migration_max_downtime_ms,
                    reason=f"operator drains {host}: move {vm.name} -> {where.host}",
                    facts={"drain": host, "destination_rack": where.rack},
                )
            )
    return actions, stays
