"""The timed simulation's fleet: VMs whose actions take the time they take on a real cloud.

Where it sits: at the process boundary of ``autoscaler.runtime.cycle``, in place of the
collectors and the actuators, for ``autoscaler simulate --timed`` (the coarse simulator keeps
``autoscaler.simulation.fleet``). ``TimedFleet`` is both the Cycle's snapshot source and its
actuation, for one business:

- **Latencies.** A clone is defined (and paid for) when the plan runs and carries load
  ``clone_ready_s`` later; a vCPU hot-add gives its cores ``vcpu_hot_add_s`` later and a DIMM
  ``memory_hot_add_s`` later; a retire removes capacity and cost at once. There is no vCPU
  unplug (QEMU 7.2 crashes on it), so a VM only grows.
- **What the controller sees.** Demand is shared by the ready VMs in proportion to their
  capacity (as the access layer balances it); each VM's utilisation is averaged over the last
  ``collection_s`` (one collection) and capped at its capacity: demand beyond capacity shows
  only as saturation.
- **History.** ``ObservedHistory`` holds, per trace step, the most busy cores the collections
  saw in it (capped as above), up to the simulated present: what a live history would hold.

Every change of capacity is written to a ``TimelineBuilder`` at the moment it happens, which is
what the report accounts (``autoscaler.simulation.timeline``). Nothing here does I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoscaler.model import (
    VM,
    Action,
    CloneFromTemplate,
    HotAddMemory,
    HotAddVcpu,
    LiveMigrate,
    Plan,
    ReplaceInstance,
    Retire,
    Snapshot,
)
from autoscaler.runtime.ports import ActionOutcome
from autoscaler.simulation.fleet import Topology, new_vm
from autoscaler.simulation.timeline import StepDemand, TimelineBuilder
from policies.schema import BusinessPolicy


@dataclass(frozen=True, slots=True)
class Latencies:
    """How long each action takes to become capacity, and what one collection averages."""

    vcpu_hot_add_s: float = 3.0
    memory_hot_add_s: float = 1.0
    clone_ready_s: float = 60.0
    collection_s: float = 5.0


@dataclass(order=True, frozen=True, slots=True)
class _Due:
    at_s: float
    order: int
    vm: str
    kind: str
    value: int


class ObservedHistory:
    """Busy cores the collections saw, one value per trace step (the step's busiest
    collection), shown up to the simulated present; the cycle's SLI figures are dropped (the
    report accounts the SLI itself)."""

    def __init__(self, business: str, demand: StepDemand) -> None:
        self.business = business
        self.starts_s = demand.starts_s
        self.index = pd.DatetimeIndex(pd.to_datetime(demand.starts_s, unit="s", utc=True))
        self.observed = np.full(len(demand.starts_s), np.nan)
        self.present = -math.inf

    def observe(self, now: float, busy_cores: float) -> None:
        step = int(np.searchsorted(self.starts_s, now, side="right")) - 1
        if step >= 0:
            seen = self.observed[step]
            self.observed[step] = busy_cores if np.isnan(seen) else max(seen, busy_cores)
        self.present = now

    def busy_cores(
        self, business: str, *, start: float | None = None, end: float | None = None
    ) -> pd.Series:
        if business != self.business:
            return pd.Series(dtype="float64", index=pd.DatetimeIndex([], tz="UTC"))
        last = min(end if end is not None else math.inf, self.present)
        lo = int(np.searchsorted(self.starts_s, start, side="left")) if start is not None else 0
        hi = int(np.searchsorted(self.starts_s, last, side="right"))
        values = self.observed[lo:hi]
        keep = ~np.isnan(values)
        return pd.Series(values[keep].copy(), index=self.index[lo:hi][keep])

    def record_business(self, business: str, when: float, **figures: float) -> None:
        del business, when, figures


class TimedFleet:
    """One business's VMs on a simulated topology, with action latencies."""

    def __init__(
        self,
        policy: BusinessPolicy,
        topology: Topology,
        demand: StepDemand,
        history: ObservedHistory,
        latencies: Latencies,
        start_instances: int,
    ) -> None:
        self.policy = policy
        self.business = policy.business
        self.topology = topology
        self.demand = demand
        self.history = history
        self.latencies = latencies
        self.now = demand.start_s
        self.vms: dict[str, VM] = {}
        self._due: list[_Due] = []
        self._order = 0
        hosts = topology[3]
        for i in range(start_instances):
            name = f"{self.business[:50]}-seed{i}"
            self.vms[name] = new_vm(name, hosts[i % len(hosts)].name, policy)
        self.timeline = TimelineBuilder(demand.start_s, self.ready_cores(), self.defined_cores())
        # Ready capacity from each change on, to average utilisation over a collection.
        self._capacity_changes: list[tuple[float, float]] = [(demand.start_s, self.ready_cores())]
        self._snapshot: Snapshot | None = None

    # -- capacity ---------------------------------------------------------------------------
    def ready_cores(self) -> float:
        return sum(vm.capacity_cores for vm in self.vms.values() if vm.ready)

    def defined_cores(self) -> float:
        """What is paid for: every defined VM at the size it was last given (a hot-add is paid
        from the moment it is asked for)."""
        billed = self._billed
        return sum(max(billed.get(n, 0.0), vm.capacity_cores) for n, vm in self.vms.items())

    @property
    def _billed(self) -> dict[str, float]:
        billed: dict[str, float] = {}
        quota = self.policy.template.cpu_quota or 1.0
        for due in self._due:
            if due.kind == "vcpus":
                billed[due.vm] = max(billed.get(due.vm, 0.0), due.value * quota)
        return billed

    def next_change_s(self) -> float:
        """When the next pending action becomes capacity (inf if none)."""
        return self._due[0].at_s if self._due else math.inf

    def last_change_s(self) -> float:
        return self._capacity_changes[-1][0]

    def _record(self, at_s: float) -> None:
        ready = self.ready_cores()
        self.timeline.set(at_s, ready, self.defined_cores())
        if ready != self._capacity_changes[-1][1]:
            self._capacity_changes.append((at_s, ready))
            horizon = at_s - self.latencies.collection_s
            while len(self._capacity_changes) > 1 and self._capacity_changes[1][0] <= horizon:
                self._capacity_changes.pop(0)

    def advance(self, now: float) -> None:
        """Apply every pending change due at or before ``now``, each at its own time."""
        while self._due and self._due[0].at_s <= now:
            due = heapq.heappop(self._due)
            vm = self.vms.get(due.vm)
            if vm is not None:
                if due.kind == "ready":
                    self.vms[due.vm] = vm.model_copy(update={"ready": True})
                elif due.kind == "vcpus":
                    self.vms[due.vm] = vm.model_copy(update={"vcpus": max(vm.vcpus, due.value)})
                elif due.kind == "memory":
                    update = {"memory_mib": max(vm.memory_mib, due.value)}
                    self.vms[due.vm] = vm.model_copy(update=update)
                elif due.kind == "retired":  # replaced: its surge clone is ready now
                    del self.vms[due.vm]
                self._record(due.at_s)
        self.now = max(self.now, now)

    def _later(self, at_s: float, vm: str, kind: str, value: int = 0) -> None:
        self._order += 1
        heapq.heappush(self._due, _Due(at_s, self._order, vm, kind, value))

    # -- what the collectors would see ------------------------------------------------------
    def utilisation(self, now: float) -> float:
        """Ready VMs' utilisation averaged over the last collection (all share it alike)."""
        start = now - self.latencies.collection_s
        starts = self.demand.starts_s
        cuts = [start, now]
        lo = int(np.searchsorted(starts, start, side="right"))
        hi = int(np.searchsorted(starts, now, side="left"))
        cuts += [float(s) for s in starts[lo:hi]]
        cuts += [t for t, _ in self._capacity_changes if start < t < now]
        edges = np.unique(np.asarray(cuts, dtype=float))
        if len(edges) < 2:
            return self._utilisation_at(now)
        lengths = np.diff(edges)
        values = np.array([self._utilisation_at(float(t)) for t in edges[:-1]])
        return float((values * lengths).sum() / lengths.sum())

    def _utilisation_at(self, t: float) -> float:
        demand = float(self.demand.at(np.array([t]))[0])
        capacity = self._capacity_changes[0][1]
        for at_s, ready in self._capacity_changes:
            if at_s <= t:
                capacity = ready
        if capacity <= 0:
            return 1.0 if demand > 0 else 0.0
        return min(demand, capacity) / capacity

    def observe(self, now: float) -> Snapshot:
        """The snapshot at ``now`` (after applying what became due), and the history's value."""
        self.advance(now)
        share = self.utilisation(now)
        vms = tuple(
            vm.model_copy(update={"cpu_utilisation": share if vm.ready else 0.0})
            for vm in self.vms.values()
        )
        self.history.observe(now, share * self.ready_cores())
        regions, dcs, racks, hosts = self.topology
        self._snapshot = Snapshot(
            now=now,
            regions=regions,
            datacenters=dcs,
            racks=racks,
            hosts=hosts,
            vms=vms,
            businesses=(self.policy.to_business(),),
        )
        return self._snapshot

    # -- SnapshotSource ---------------------------------------------------------------------
    def latest(self) -> Snapshot | None:
        return self._snapshot

    def snapshot_since(self, since: float) -> Snapshot | None:
        snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.now >= since else None

    # -- Actuation --------------------------------------------------------------------------
    def execute(self, plan: Plan) -> Sequence[ActionOutcome]:
        outcomes = []
        for action in plan.actions:
            done, why, seconds = self._apply(action)
            outcomes.append(
                ActionOutcome(
                    key=action.key,
                    kind=action.kind,
                    business=action.business,
                    result="done" if done else "skipped",
                    reason=action.reason if done else why,
                    duration_s=seconds,
                )
            )
            if done:
                self.timeline.actions += 1
        self._record(self.now)
        return outcomes

    def _apply(self, action: Action) -> tuple[bool, str, float]:
        now, lat = self.now, self.latencies
        if isinstance(action, CloneFromTemplate):
            if action.business != self.business or action.vm in self.vms:
                return False, "another business, or the name is taken", 0.0
            self.vms[action.vm] = new_vm(action.vm, action.host, self.policy, ready=False)
            self._later(now + lat.clone_ready_s, action.vm, "ready")
            return True, "", lat.clone_ready_s
        vm = self.vms.get(action.vm)
        if vm is None:
            return False, "no such VM", 0.0
        if isinstance(action, Retire):
            del self.vms[vm.name]
            self._due = [d for d in self._due if d.vm != vm.name]
            heapq.heapify(self._due)
        elif isinstance(action, ReplaceInstance):
            # The surge clone boots as any clone does; the old one stays until it is ready.
            if action.new_vm in self.vms:
                return False, "the replacement's name is taken", 0.0
            self.vms[action.new_vm] = new_vm(
                action.new_vm, action.new_host, self.policy, ready=False
            )
            self._later(now + lat.clone_ready_s, action.new_vm, "ready")
            self._later(now + lat.clone_ready_s, vm.name, "retired")
            return True, "", lat.clone_ready_s
        elif isinstance(action, HotAddVcpu):
            self._later(now + lat.vcpu_hot_add_s, vm.name, "vcpus", action.vcpus)
            return True, "", lat.vcpu_hot_add_s
        elif isinstance(action, HotAddMemory):
            self._later(now + lat.memory_hot_add_s, vm.name, "memory", action.memory_mib)
            return True, "", lat.memory_hot_add_s
        elif isinstance(action, LiveMigrate):
            self.vms[vm.name] = vm.model_copy(update={"host": action.destination})
        return True, "", 0.0

    def reconcile(self) -> int:
        return 0  # a simulated action never stops half-way: nothing is left to settle

    def unfinished(self) -> int:
        return 0

    def waiting(self) -> dict[str, str]:
        return {}  # simulated hosts always answer
