"""The controller inside the simulator: a simulated fleet driven by the real ``decide()``.

Where it sits: used by ``autoscaler.simulation.simulator`` for the ``controller`` policy. At
every step it builds the Snapshot the collectors would (the business's VMs sharing the demand
evenly, as the access-layer load balancer does), the DecisionState the controller loop would
(demand history up to now, SLA ledger, last scale times, forecasters refitted once a simulated day
from the data seen so far), calls ``decide()`` and applies the Plan to the fleet: a clone is ready
at the next step, a retire frees its capacity at once, a hot-add grows its VM.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from autoscaler.model import (
    VM,
    CloneFromTemplate,
    Controls,
    Datacenter,
    Host,
    HotAddMemory,
    HotAddVcpu,
    Rack,
    Region,
    Retire,
    Snapshot,
    VmState,
)
from autoscaler.simulation.runs import PolicyRun
from policies.decide import decide
from policies.forecast import FittedForecaster, ForecastSpec, refit, spec_quantile
from policies.schema import BusinessPolicy
from policies.sla import SlaLedger, capacity_interval
from policies.state import DecideSettings, DecisionState

REFIT_EVERY_S = 86_400.0


def simulated_topology(
    cores_needed: float, memory_needed: float
) -> tuple[tuple[Region, ...], tuple[Datacenter, ...], tuple[Rack, ...], tuple[Host, ...]]:
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


def run_controller(
    demand: pd.Series,
    policy: BusinessPolicy,
    saturation: float,
    start: int,
    step_s: float,
    progress: Callable[[str], None] | None = None,
) -> PolicyRun:
    business = policy.business
    template = policy.template
    per_instance = template.vcpus.now * (template.cpu_quota or 1.0)
    values = demand.to_numpy()
    times = np.asarray(pd.DatetimeIndex(demand.index).asi8, dtype=np.int64) / 1e9
    regions, dcs, racks, hosts = simulated_topology(
        policy.instances.max * template.vcpus.max * (template.cpu_quota or 1.0),
        policy.instances.max * template.memory_mib.max,
    )
    fleet: dict[str, VM] = {}
    for i in range(start):
        name = f"{business[:50]}-seed{i}"
        fleet[name] = _new_vm(name, hosts[i % len(hosts)].name, policy, ready=True)
    settings = DecideSettings(control_interval_s=step_s, clone_ready_s=0.0)
    spec = ForecastSpec(
        models=tuple(m.value for m in policy.forecast.models),
        quantile=spec_quantile(policy.forecast.quantile, policy.sla.objective),
        horizon_s=step_s,
        min_history_s=policy.forecast.min_history_hours * 3600,
        history_s=policy.forecast.history_days * 86_400.0,
    )
    keep_s = max(policy.sla.window_days * 86_400.0, 3 * 86_400.0)
    ledger = SlaLedger()
    forecasters: dict[str, FittedForecaster] = {}
    last_up = last_down = -math.inf
    last_refit = -math.inf
    capacity = np.zeros(len(values))
    actions = 0
    for t in range(len(values)):
        now = float(times[t])
        ready = [vm for vm in fleet.values()]
        cores = sum(vm.capacity_cores for vm in ready)
        capacity[t] = cores
        good, total = capacity_interval(
            demand_cores=float(values[t]),
            ready_capacity_cores=cores,
            ready_instances=len(ready),
            min_instances=policy.instances.min,
            saturation=saturation,
            duration_s=step_s,
        )
        ledger = ledger.record(now, good, total, keep_s)
        if t == len(values) - 1:
            break
        history = demand.iloc[: t + 1]
        if now - last_refit >= REFIT_EVERY_S:
            fitted = refit({business: history}, {business: spec}, now)
            if fitted:
                forecasters = fitted
                last_refit = now
            if progress is not None:
                progress(f"{business}: refit at step {t}/{len(values)}")
        share = float(values[t]) / cores if cores else 0.0
        vms = tuple(vm.model_copy(update={"cpu_utilisation": share}) for vm in fleet.values())
        snapshot = Snapshot(
            now=now,
            regions=regions,
            datacenters=dcs,
            racks=racks,
            hosts=hosts,
            vms=vms,
            businesses=(policy.to_business(),),
        )
        state = DecisionState(
            demand={business: history},
            last_scale_up={business: last_up},
            last_scale_down={business: last_down},
            forecasters=forecasters,
            sla={business: ledger},
            settings=settings,
        )
        plan = decide(snapshot, {business: policy}, Controls(), state, now).plan
        actions += len(plan.actions)
        for action in plan.actions:
            if isinstance(action, CloneFromTemplate):
                fleet[action.vm] = _new_vm(action.vm, action.host, policy, ready=True)
                last_up = now
            elif isinstance(action, Retire):
                fleet.pop(action.vm, None)
                last_down = now
            elif isinstance(action, HotAddVcpu):
                fleet[action.vm] = fleet[action.vm].model_copy(update={"vcpus": action.vcpus})
                last_up = now
            elif isinstance(action, HotAddMemory):
                fleet[action.vm] = fleet[action.vm].model_copy(
                    update={"memory_mib": action.memory_mib}
                )
    del per_instance
    return PolicyRun(capacity, actions)


def _new_vm(name: str, host: str, policy: BusinessPolicy, *, ready: bool) -> VM:
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
