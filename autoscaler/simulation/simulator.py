"""The coarse simulation (``autoscaler simulate --coarse``): one decision per trace step.

The timed simulation (``autoscaler.simulation.timed``) is the benchmark's primary mode; these
rules stay for comparison with earlier figures.

Where it sits: pure code behind ``autoscaler simulate`` and the benchmark; no I/O (the CLI
reads the CSVs). Each trace is one business's demand. The simulator steps at the trace's own
resolution; capacity decided at one step is ready at the next (a 5-minute step is far longer
than a clone, so this is conservative); an interval is good when its demand is within the ready
capacity at the saturation threshold. The same demand goes through:

- ``controller``: the live controller's ``Cycle`` on a simulated fleet (``decide()``, the SLA
  ledger, the hourly action cap and cooldowns, refits of the forecasters every
  ``refit_every_s``, a simulated day by default, from data up to that moment only);
- ``static``: enough instances for the trace's peak, always;
- ``hpa``: the Kubernetes HPA algorithm as published (60% target, 10% tolerance, 300 s
  scale-down stabilisation, scale-up at most max(4 pods, 100%) per minute);
- ``threshold``: an Aodh-style alarm pair (+1 above 80% for an interval, -1 below 30%, 300 s
  cooldown);
- ``oracle``: knows the next interval's demand (the bound no policy can beat).
All start the trace with the static count. Instance-hours count capacity in template-sized
instances, so a hot-added vCPU costs what it gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoscaler.simulation.runs import PolicyRun
from autoscaler.simulation.sim_controller import run_controller
from autoscaler.simulation.timed import (
    check_sizing,
    instance_cores,
    refuse_oversized,
    scaled_cores,
)
from policies.forecast.grid import natural_step_s
from policies.schema import BusinessPolicy, Instances

POLICIES: tuple[str, ...] = ("controller", "static", "hpa", "threshold", "oracle")


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    saturation: float = 0.9
    peak_instances: int | None = None
    scale: float | None = None
    refit_every_s: float = 86_400.0

    def __post_init__(self) -> None:
        check_sizing(self.peak_instances, self.scale, self.saturation)


@dataclass(frozen=True)
class TraceResult:
    name: str
    times_s: np.ndarray
    demand_cores: np.ndarray
    step_s: float
    instance_cores: float
    runs: dict[str, PolicyRun]


def demand_in_cores(
    values: np.ndarray, per_instance: float, options: SimulationOptions
) -> np.ndarray:
    """The trace as busy cores: ``--scale`` multiplies it; ``--peak-instances N`` makes its peak
    need exactly N instances at the saturation threshold."""
    return scaled_cores(
        values,
        per_instance,
        options.saturation,
        peak_instances=options.peak_instances,
        scale=options.scale,
    )


def _count_for(cores: float, per_instance: float, utilisation: float) -> int:
    return max(0, math.ceil(cores / (per_instance * utilisation) - 1e-9))


def run_static(demand: np.ndarray, per_instance: float, saturation: float, low: int) -> PolicyRun:
    count = max(low, _count_for(float(demand.max()), per_instance, saturation))
    return PolicyRun(np.full(len(demand), count * per_instance), actions=0)


def run_oracle(
    demand: np.ndarray, per_instance: float, saturation: float, low: int, start: int
) -> PolicyRun:
    counts = np.array([max(low, _count_for(d, per_instance, saturation)) for d in demand])
    counts[0] = start
    return PolicyRun(counts * per_instance, actions=int(np.abs(np.diff(counts)).sum()))


def run_hpa(
    demand: np.ndarray, step_s: float, per_instance: float, bounds: Instances, start: int
) -> PolicyRun:
    target, tolerance, window_s = 0.6, 0.1, 300.0
    counts = np.zeros(len(demand), dtype=int)
    counts[0] = current = start
    history: list[tuple[float, int]] = []
    for t in range(len(demand) - 1):
        now = t * step_s
        utilisation = demand[t] / (current * per_instance) if current else math.inf
        ratio = utilisation / target
        if current == 0:
            desired = _count_for(demand[t], per_instance, target)
        elif abs(ratio - 1.0) <= tolerance:
            desired = current
        else:
            desired = math.ceil(current * ratio - 1e-9)
        history = [(at, c) for at, c in history if at > now - window_s] + [(now, desired)]
        if desired < current:
            desired = min(current, max(c for _, c in history))
        desired = min(desired, current + max(4, current))
        current = min(bounds.max, max(bounds.min, desired))
        counts[t + 1] = current
    return PolicyRun(counts * per_instance, actions=int(np.abs(np.diff(counts)).sum()))


def run_threshold(
    demand: np.ndarray, step_s: float, per_instance: float, bounds: Instances, start: int
) -> PolicyRun:
    high, low, cooldown_s = 0.8, 0.3, 300.0
    counts = np.zeros(len(demand), dtype=int)
    counts[0] = current = start
    last_action = -math.inf
    for t in range(len(demand) - 1):
        now = t * step_s
        utilisation = demand[t] / (current * per_instance) if current else math.inf
        if now - last_action >= cooldown_s:
            if utilisation > high and current < bounds.max:
                current, last_action = current + 1, now
            elif utilisation < low and current > max(bounds.min, 1):
                current, last_action = current - 1, now
        counts[t + 1] = current
    return PolicyRun(counts * per_instance, actions=int(np.abs(np.diff(counts)).sum()))


def simulate_trace(
    name: str,
    trace: pd.Series,
    policy: BusinessPolicy,
    options: SimulationOptions,
    progress: Callable[[str], None] | None = None,
) -> TraceResult:
    """Every policy on one trace (values indexed by a UTC DatetimeIndex)."""
    per_instance = instance_cores(policy)
    demand = demand_in_cores(np.asarray(trace.to_numpy(), dtype=float), per_instance, options)
    refuse_oversized(name, float(demand.max()), per_instance, options.saturation)
    step_s = natural_step_s(trace)
    static_count = _count_for(float(demand.max()), per_instance, options.saturation)
    bounds = Instances(
        min=policy.instances.min,
        max=max(policy.instances.max, 3 * max(1, static_count)),
    )
    racks = 8  # ``simulated_topology``'s
    placement = policy.placement.model_copy(
        update={"max_per_rack": max(policy.placement.max_per_rack or 1, -(-bounds.max // racks))}
    )
    simulated = policy.model_copy(update={"instances": bounds, "placement": placement})
    start = max(bounds.min, static_count)
    index = pd.DatetimeIndex(trace.index)
    if index.tz is None:
        index = index.tz_localize("UTC")
    series = pd.Series(demand, index=index)
    runs = {
        "controller": run_controller(
            series,
            simulated,
            options.saturation,
            start,
            step_s,
            progress,
            refit_every_s=options.refit_every_s,
        ),
        "static": run_static(demand, per_instance, options.saturation, bounds.min),
        "hpa": run_hpa(demand, step_s, per_instance, bounds, start),
        "threshold": run_threshold(demand, step_s, per_instance, bounds, start),
        "oracle": run_oracle(demand, per_instance, options.saturation, bounds.min, start),
    }
    times = np.asarray(index.asi8, dtype=np.int64) / 1e9
    return TraceResult(name, times, demand, step_s, per_instance, runs)


def summarise(
    result: TraceResult, run: PolicyRun, saturation: float, objective: float
) -> dict[str, float | int]:
    good = result.demand_cores <= run.capacity_cores * saturation + 1e-9
    bad = int((~good).sum())
    intervals = len(good)
    allowed = (1 - objective / 100.0) * intervals
    capacity = run.capacity_cores
    return {
        "attainment": 1.0 - bad / intervals if intervals else 1.0,
        "bad_intervals": bad,
        "intervals": intervals,
        "error_budget_used": bad / allowed if allowed else 0.0,
        "instance_hours": float(capacity.sum() / result.instance_cores * result.step_s / 3600),
        "slack": float(
            np.clip(capacity - result.demand_cores, 0, None).sum() / max(capacity.sum(), 1e-12)
        ),
        "actions": run.actions,
    }


Metrics = dict[str, float | int]
SimulateReport = dict[str, dict[str, Metrics] | dict[str, dict[str, Metrics]]]


def report(results: list[TraceResult], saturation: float, objective: float) -> SimulateReport:
    """The simulate JSON: ``{"traces": {TRACE: {POLICY: {...}}}, "total": {POLICY: {...}}}``."""
    traces: dict[str, dict[str, dict[str, float | int]]] = {}
    for result in results:
        traces[result.name] = {
            p: summarise(result, result.runs[p], saturation, objective) for p in POLICIES
        }
    total: dict[str, dict[str, float | int]] = {}
    for p in POLICIES:
        rows = [traces[r.name][p] for r in results]
        intervals = sum(int(r["intervals"]) for r in rows)
        bad = sum(int(r["bad_intervals"]) for r in rows)
        capacity = sum(
            float(r.runs[p].capacity_cores.sum() * r.step_s / r.instance_cores) for r in results
        )
        unused = sum(
            float(
                np.clip(r.runs[p].capacity_cores - r.demand_cores, 0, None).sum()
                * r.step_s
                / r.instance_cores
            )
            for r in results
        )
        allowed = (1 - objective / 100.0) * intervals
        total[p] = {
            "attainment": 1.0 - bad / intervals if intervals else 1.0,
            "bad_intervals": bad,
            "intervals": intervals,
            "error_budget_used": bad / allowed if allowed else 0.0,
            "instance_hours": sum(float(r["instance_hours"]) for r in rows),
            "slack": unused / capacity if capacity else 0.0,
            "actions": sum(int(r["actions"]) for r in rows),
            "min_trace_attainment": min(float(r["attainment"]) for r in rows) if rows else 1.0,
        }
    return {"traces": traces, "total": total}


def instance_hours(results: list[TraceResult], policy: str) -> float:
    """Instance-hours of ``policy`` summed over ``results``."""
    return sum(
        float(r.runs[policy].capacity_cores.sum() / r.instance_cores * r.step_s / 3600)
        for r in results
    )
