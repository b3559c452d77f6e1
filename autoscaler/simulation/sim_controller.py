"""The controller inside the simulator: the real ``Cycle`` on a simulated fleet.

Where it sits: used by ``autoscaler.simulation.simulator`` for the ``controller`` policy. It
runs the very ``Cycle`` the live controller runs (``autoscaler.runtime.cycle``), on the
simulated fleet of ``autoscaler.simulation.fleet``: at every trace step the fleet shows the
step's demand shared by the business's VMs, and the cycle records the SLA interval, refits the
forecasters when ``refit_every_s`` has passed (from the data seen so far), decides, executes
on the fleet and remembers the outcomes, so the hourly action cap and the cooldowns hold as
they do live. A clone is ready at the next step, a retire frees its capacity at once, a
hot-add grows its VM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from autoscaler.observability.exporter import ControllerMetrics
from autoscaler.runtime.cycle import Cycle, CycleSettings
from autoscaler.runtime.ports import Actuation, History, SnapshotSource
from autoscaler.simulation.fleet import (
    FixedControls,
    MemoryPlans,
    SimulatedFleet,
    TraceHistory,
    simulated_topology,
)
from autoscaler.simulation.runs import PolicyRun
from policies.schema import BusinessPolicy, Mode
from policies.state import DecideSettings

REFIT_EVERY_S = 86_400.0
SIMULATED_GENERATION = 1
"""The lease generation the simulated controller acts under (it always leads)."""


def simulated_cycle(
    snapshots: SnapshotSource,
    actuation: Actuation,
    history: History,
    policy: BusinessPolicy,
    *,
    interval_s: float,
    clone_ready_s: float,
    refit_every_s: float,
) -> Cycle:
    """The live loop's ``Cycle`` for one business on a simulated fleet: no plan store, fixed
    controls, a ledger interval per decision."""
    business = policy.business
    return Cycle(
        snapshots=snapshots,
        actuation=actuation,
        plans=MemoryPlans(),
        controls=FixedControls(),
        history=history,
        policies=lambda: {business: policy},
        settings=CycleSettings(
            decide=DecideSettings(control_interval_s=interval_s, clone_ready_s=clone_ready_s),
            ledger_every_s=interval_s,
            refit_every_s=refit_every_s,
        ),
        metrics=ControllerMetrics(),
        # A line per planned action would drown a long trace: warnings only, on a logger of
        # this run's own (not registered, so no global logging setting changes).
        log=logging.Logger("autoscaler.simulation", logging.WARNING),
    )


def run_controller(
    demand: pd.Series,
    policy: BusinessPolicy,
    saturation: float,
    start: int,
    step_s: float,
    progress: Callable[[str], None] | None = None,
    *,
    refit_every_s: float = REFIT_EVERY_S,
) -> PolicyRun:
    del saturation  # the SLI's own saturation is the policy's; the report applies its own
    business = policy.business
    # The simulator measures the policy as it would act: in auto mode.
    policy = policy.model_copy(update={"mode": Mode.AUTO})
    template = policy.template
    values = demand.to_numpy()
    times = np.asarray(pd.DatetimeIndex(demand.index).asi8, dtype=np.int64) / 1e9
    fleet = SimulatedFleet(
        {business: policy},
        simulated_topology(
            policy.instances.max * template.vcpus.max * (template.cpu_quota or 1.0),
            policy.instances.max * template.memory_mib.max,
        ),
    )
    fleet.seed(business, start)
    history = TraceHistory({business: demand})
    cycle = simulated_cycle(
        fleet,
        fleet,
        history,
        policy,
        interval_s=step_s,
        clone_ready_s=0.0,
        refit_every_s=refit_every_s,
    )
    capacity = np.zeros(len(values))
    actions = 0
    for t in range(len(values)):
        now = float(times[t])
        capacity[t] = fleet.capacity_cores(business)
        if t == len(values) - 1:
            break
        history.present = now
        fleet.observe(now, {business: float(values[t])})
        refits = cycle.memory.last_refit_at
        result = cycle.run_once(now, generation=SIMULATED_GENERATION)
        actions += sum(1 for out in result.outcomes if out.result == "done")
        if progress is not None and cycle.memory.last_refit_at != refits:
            progress(f"{business}: refit at step {t}/{len(values)}")
    return PolicyRun(capacity, actions)
