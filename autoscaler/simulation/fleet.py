"""The simulator's fleet: what the Cycle runs on when it is not a libvirt cloud.

Where it sits: at the process boundary of ``autoscaler.runtime.cycle``, in place of the
collectors and the actuators. ``SimulatedFleet`` is both the snapshot source (each business's
VMs share its demand evenly, as the access-layer load balancer does) and the actuation (a
clone is added at once, ready for the next snapshot; a retire frees its capacity at once; a
hot-add grows its VM; a migration moves it). ``TraceHistory`` is an in-memory history that
shows a trace only up to the simulated present, ``MemoryPlans`` keeps exported plans and
``FixedControls`` the operator's controls. Nothing here does I/O.

The time model is the coarse one of the simulator: capacity decided at one trace step is ready
at the next.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from autoscaler.model import (
    VM,
    Action,
    CloneFromTemplate,
    Controls,
    Datacenter,
    Host,
    HotAddMemory,
    HotAddVcpu,
    LiveMigrate,
    Plan,
    Rack,
    Region,
    ReplaceInstance,
    Retire,
    Snapshot,
    VmState,
)
from autoscaler.runtime.ports import ActionOutcome
from policies.schema import BusinessPolicy

Topology = tuple[tuple[Region, ...], tuple[Datacenter, ...], tuple[Rack, ...], tuple[Host, ...]]


def simulated_topology(cores_needed: float, memory_needed: float) -> Topology:
    """Two regions x two datacenters x two racks x two hosts, together with room to spare."""
    regions = (Region(name="r1"), Region(name="r2"))
    dcs = tuple(Datacenter(name=f"{r.name}-dc{i}", region=r.name) for r in regions for i in (1, 2))
    racks = tuple(Rack(name=f"{d.name}-k{i}", datacenter=d.name) for d in dcs for i in (1, 2))
    per_host_cores = max(4.0, math.ceil(cores_needed * 2 / 16))
    per_host_memory = max(4096, math.ceil(memory_needed * 2 / 16))
    hosts = tuple(
        Host(
            name=f"{k.name}-h{i}",
            rack=k.name,
            uri=f"qemu+tcp://{k.name}-h{i}/system",
            cpus=per_host_cores,
            memory_mib=per_host_memory,
        )
        for k in racks
        for i in (1, 2)
    )
    return regions, dcs, racks, hosts


def new_vm(name: str, host: str, policy: BusinessPolicy, *, ready: bool = True) -> VM:
    template = policy.template
    return VM(
        name=name,
        host=host,
        business=policy.business,
        state=VmState.RUNNING,
        vcpus=template.vcpus.now,
        max_vcpus=template.vcpus.max,
        memory_mib=template.memory_mib.now,
        max_memory_mib=template.memory_mib.max,
        nic_model=template.nic,
        cpu_quota=template.cpu_quota,
        cpu_utilisation=0.0,
        ready=ready,
    )


class SimulatedFleet:
    """Simulated VMs of the ``policies``' businesses on a ``topology``: the Cycle's
    ``SnapshotSource`` and ``Actuation``."""

    def __init__(self, policies: Mapping[str, BusinessPolicy], topology: Topology) -> None:
        self.policies = dict(policies)
        self.topology = topology
        self.vms: dict[str, VM] = {}
        self.executed: list[Plan] = []
        self._snapshot: Snapshot | None = None

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.topology[3]

    def seed(self, business: str, count: int) -> None:
        """``count`` ready VMs of ``business``, spread over the hosts."""
        policy = self.policies[business]
        for i in range(count):
            name = f"{business[:50]}-seed{i}"
            self.vms[name] = new_vm(name, self.hosts[i % len(self.hosts)].name, policy)

    def capacity_cores(self, business: str) -> float:
        return sum(vm.capacity_cores for vm in self.vms.values() if vm.business == business)

    def instances(self, business: str) -> int:
        return sum(1 for vm in self.vms.values() if vm.business == business)

    def observe(self, now: float, demand: Mapping[str, float]) -> Snapshot:
        """The snapshot at ``now``: each business's demand (busy cores) shared by its VMs in
        proportion to their capacity."""
        capacity = {b: self.capacity_cores(b) for b in self.policies}

        def share(vm: VM) -> float:
            cores = capacity.get(vm.business or "", 0.0)
            return demand.get(vm.business or "", 0.0) / cores if cores else 0.0

        vms = tuple(
            vm.model_copy(update={"cpu_utilisation": share(vm)}) for vm in self.vms.values()
        )
        regions, dcs, racks, hosts = self.topology
        self._snapshot = Snapshot(
            now=now,
            regions=regions,
            datacenters=dcs,
            racks=racks,
            hosts=hosts,
            vms=vms,
            businesses=tuple(p.to_business() for p in self.policies.values()),
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
        self.executed.append(plan)
        outcomes = []
        for action in plan.actions:
            done, why = self._apply(action)
            outcomes.append(
                ActionOutcome(
                    key=action.key,
                    kind=action.kind,
                    business=action.business,
                    result="done" if done else "skipped",
                    reason=action.reason if done else why,
                    duration_s=0.0,
                )
            )
        return outcomes

    def _apply(self, action: Action) -> tuple[bool, str]:
        if isinstance(action, CloneFromTemplate):
            policy = self.policies.get(action.business)
            if policy is None or action.vm in self.vms:
                return False, "no policy, or the name is taken"
            self.vms[action.vm] = new_vm(action.vm, action.host, policy)
            return True, ""
        vm = self.vms.get(action.vm)
        if vm is None:
            return False, "no such VM"
        if isinstance(action, Retire):
            del self.vms[vm.name]
        elif isinstance(action, ReplaceInstance):
            # The surge clone serves before the old one goes: within a cycle here.
            policy = self.policies.get(action.business)
            if policy is None or action.new_vm in self.vms:
                return False, "no policy, or the name is taken"
            self.vms[action.new_vm] = new_vm(action.new_vm, action.new_host, policy)
            del self.vms[vm.name]
        elif isinstance(action, HotAddVcpu):
            self.vms[vm.name] = vm.model_copy(update={"vcpus": action.vcpus})
        elif isinstance(action, HotAddMemory):
            self.vms[vm.name] = vm.model_copy(update={"memory_mib": action.memory_mib})
        elif isinstance(action, LiveMigrate):
            self.vms[vm.name] = vm.model_copy(update={"host": action.destination})
        return True, ""

    def reconcile(self) -> int:
        return 0  # every simulated action finishes within its cycle: nothing is left

    def unfinished(self) -> int:
        return 0

    def waiting(self) -> dict[str, str]:
        return {}  # simulated hosts always answer


class TraceHistory:
    """Demand traces (busy cores, UTC DatetimeIndex) shown only up to the simulated present;
    the SLI figures the cycle records are kept in memory."""

    def __init__(self, traces: Mapping[str, pd.Series]) -> None:
        self.traces = dict(traces)
        self._times = {
            b: np.asarray(pd.DatetimeIndex(s.index).asi8, dtype=np.int64) / 1e9
            for b, s in self.traces.items()
        }
        self.present = -math.inf
        self.recorded: dict[str, list[tuple[float, dict[str, float]]]] = {}

    def busy_cores(
        self, business: str, *, start: float | None = None, end: float | None = None
    ) -> pd.Series:
        trace = self.traces.get(business)
        if trace is None:
            return pd.Series(dtype="float64", index=pd.DatetimeIndex([], tz="UTC"))
        times = self._times[business]
        last = min(end if end is not None else math.inf, self.present)
        lo = int(np.searchsorted(times, start, side="left")) if start is not None else 0
        hi = int(np.searchsorted(times, last, side="right"))
        return trace.iloc[lo:hi]

    def record_business(self, business: str, when: float, **figures: float) -> None:
        self.recorded.setdefault(business, []).append((when, figures))


class MemoryPlans:
    """Recommend-mode plans kept in memory; approved ones are taken once."""

    def __init__(self) -> None:
        self.exported: dict[str, Plan] = {}
        self.taken: set[str] = set()

    def export(self, plan: Plan) -> str:
        self.exported[plan.id] = plan
        return f"memory:{plan.id}"

    def take_approved(self, approved: frozenset[str]) -> list[Plan]:
        plans = [self.exported[i] for i in sorted(approved) if i in self.exported]
        plans = [p for p in plans if p.id not in self.taken]
        self.taken.update(p.id for p in plans)
        return plans


class FixedControls:
    """The operator's controls, changed by whoever holds this object (tests, scenarios)."""

    def __init__(self, controls: Controls | None = None) -> None:
        self.controls = controls or Controls()

    def read(self) -> Controls:
        return self.controls
