"""The timed simulation: one trace through the controller and the baselines, on one time model.

Where it sits: behind ``autoscaler simulate`` (its default mode, ``--timed``) and
``python -m bench.policies``; pure (the CLI reads the CSVs). Each trace is one business's
demand, held as steps (``autoscaler.simulation.timeline``). The same demand goes through:

- ``controller``: the live loop's own ``Cycle`` every 10 s, on a fleet whose actions take time
  (``autoscaler.simulation.timed_controller``), starting at the policy's ``instances.min``;
- ``static``, ``hpa``, ``threshold`` and ``oracle``: the baselines of
  ``autoscaler.simulation.baselines``, acting by clones with the same clone latency, from the
  same start and with the same seeded phase;
- ``best_baseline``: per trace, the cheapest of static peak and the HPA and threshold-pair
  settings that held the objective on that trace, in hindsight.

The fleet is fixed in shape: hosts of 16 cores and 64 GiB, two per rack, two racks per
datacenter, two datacenters in each of two regions (more racks per datacenter only when a trace
needs them), so vertical growth needs room on a VM's host and clones room somewhere.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from autoscaler.model import Datacenter, Host, Rack, Region
from autoscaler.simulation.baselines import (
    BestBaseline,
    best_baseline,
    hpa,
    oracle,
    static_peak,
    threshold_pair,
)
from autoscaler.simulation.fleet import Topology
from autoscaler.simulation.timed_controller import TimedSettings, run_timed_controller
from autoscaler.simulation.timed_fleet import Latencies
from autoscaler.simulation.timeline import CapacityTimeline, StepDemand, TimedFigures, account
from policies.forecast.grid import natural_step_s
from policies.schema import BusinessPolicy, Instances

TIMED_POLICIES: tuple[str, ...] = ("controller", "static", "hpa", "threshold", "oracle")
HOST_CORES = 16
HOST_MEMORY_MIB = 64 * 1024
MAX_INSTANCES = 10_000
"""A trace that needs more instances than this at its peak was almost surely not scaled."""


@dataclass(frozen=True, slots=True)
class TimedOptions:
    saturation: float = 0.9
    peak_instances: int | None = None
    scale: float | None = None
    seed: int = 0
    latencies: Latencies = field(default_factory=Latencies)
    decide_s: float = 10.0
    refit_every_s: float = 86_400.0
    skip: bool = True

    def __post_init__(self) -> None:
        check_sizing(self.peak_instances, self.scale, self.saturation)


@dataclass(frozen=True)
class TimedTraceResult:
    name: str
    demand: StepDemand
    instance_cores: float
    timelines: Mapping[str, CapacityTimeline]
    figures: Mapping[str, TimedFigures]
    best: BestBaseline


def instance_cores(policy: BusinessPolicy) -> float:
    return policy.template.vcpus.now * (policy.template.cpu_quota or 1.0)


def peak_count(peak_cores: float, per_instance: float, saturation: float) -> int:
    return max(0, math.ceil(peak_cores / (per_instance * saturation) - 1e-9))


def refuse_oversized(name: str, peak_cores: float, per_instance: float, saturation: float) -> None:
    """ValueError when a trace's peak needs more than ``MAX_INSTANCES`` instances."""
    count = peak_count(peak_cores, per_instance, saturation)
    if count > MAX_INSTANCES:
        raise ValueError(
            f"{name}: its peak of {peak_cores:,.0f} would need {count:,} instances of"
            f" {per_instance:g} cores (more than {MAX_INSTANCES:,}); are its values busy"
            " cores? Give --peak-instances N to scale its peak to N instances, or --scale K"
        )


def fixed_topology(cores_needed: float) -> Topology:
    """Two regions x two datacenters x (two or more) racks x two 16-core hosts."""
    racks_per_dc = max(2, math.ceil(cores_needed / (2 * 4 * HOST_CORES)))
    regions = (Region(name="r1"), Region(name="r2"))
    dcs = tuple(Datacenter(name=f"{r.name}-dc{i}", region=r.name) for r in regions for i in (1, 2))
    racks = tuple(
        Rack(name=f"{d.name}-k{i}", datacenter=d.name)
        for d in dcs
        for i in range(1, racks_per_dc + 1)
    )
    hosts = tuple(
        Host(
            name=f"{k.name}-h{i}",
            rack=k.name,
            uri=f"qemu+tcp://{k.name}-h{i}/system",
            cpus=HOST_CORES,
            memory_mib=HOST_MEMORY_MIB,
        )
        for k in racks
        for i in (1, 2)
    )
    return regions, dcs, racks, hosts


def check_sizing(peak_instances: int | None, scale: float | None, saturation: float) -> None:
    """ValueError for options no simulation can use (both sizings, or a bad saturation)."""
    if peak_instances is not None and scale is not None:
        raise ValueError("give --scale or --peak-instances, not both")
    if not 0 < saturation <= 1:
        raise ValueError(f"saturation must be in (0, 1], got {saturation}")


def scaled_cores(
    values: np.ndarray,
    per_instance: float,
    saturation: float,
    *,
    peak_instances: int | None,
    scale: float | None,
) -> np.ndarray:
    """A trace's values as busy cores: ``--scale`` multiplies them; ``--peak-instances N``
    makes the peak need exactly N instances at the saturation threshold."""
    clean = np.clip(np.nan_to_num(values.astype(float), nan=0.0), 0.0, None)
    if peak_instances is not None:
        peak = float(clean.max())
        factor = peak_instances * per_instance * saturation / peak if peak else 0.0
        return np.asarray(clean * factor, dtype=float)
    return np.asarray(clean * (scale if scale is not None else 1.0), dtype=float)


def step_demand(trace: pd.Series, per_instance: float, options: TimedOptions) -> StepDemand:
    """The trace as busy cores held as steps (``--scale`` or ``--peak-instances``)."""
    cores = scaled_cores(
        trace.to_numpy(dtype=float),
        per_instance,
        options.saturation,
        peak_instances=options.peak_instances,
        scale=options.scale,
    )
    index = pd.DatetimeIndex(trace.index)
    if index.tz is None:
        index = index.tz_localize("UTC")
    starts = np.asarray(index.asi8, dtype=np.int64) / 1e9
    return StepDemand(starts, np.asarray(cores, dtype=float), natural_step_s(trace))


def _phase(name: str, seed: int, decide_s: float) -> float:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return float(rng.uniform(0.0, decide_s))


def simulate_trace_timed(
    name: str,
    trace: pd.Series,
    policy: BusinessPolicy,
    options: TimedOptions,
    progress: Callable[[float], None] | None = None,
) -> TimedTraceResult:
    """Every policy on one trace (values on a UTC DatetimeIndex); ``progress`` gets the share
    of the controller's run done."""
    per_instance = instance_cores(policy)
    demand = step_demand(trace, per_instance, options)
    peak = float(demand.values.max())
    refuse_oversized(name, peak, per_instance, options.saturation)
    static = peak_count(peak, per_instance, options.saturation)
    bounds = Instances(min=policy.instances.min, max=max(policy.instances.max, 3 * max(1, static)))
    topology = fixed_topology(bounds.max * policy.template.vcpus.max * per_instance)
    racks = len(topology[2])
    placement = policy.placement.model_copy(
        update={"max_per_rack": max(policy.placement.max_per_rack or 1, -(-bounds.max // racks))}
    )
    simulated = policy.model_copy(update={"instances": bounds, "placement": placement})
    start = bounds.min
    phase = _phase(name, options.seed, options.decide_s)
    clone_s = options.latencies.clone_ready_s
    objective = policy.sla.objective
    settings = TimedSettings(
        decide_s=options.decide_s,
        refit_every_s=options.refit_every_s,
        phase_s=phase,
        latencies=options.latencies,
        skip=options.skip,
    )
    bounds_kw: dict[str, Any] = {
        "start_instances": start,
        "min_instances": bounds.min,
        "max_instances": bounds.max,
        "clone_ready_s": clone_s,
        "phase_s": phase,
    }
    timelines = {
        "controller": run_timed_controller(demand, simulated, topology, start, settings, progress),
        "static": static_peak(demand, per_instance, options.saturation, bounds.min),
        "hpa": hpa(demand, per_instance, **bounds_kw),
        "threshold": threshold_pair(demand, per_instance, **bounds_kw),
        "oracle": oracle(demand, per_instance, options.saturation, bounds.min, clone_s),
    }
    figures = {
        p: account(demand, timeline, options.saturation, per_instance)
        for p, timeline in timelines.items()
    }
    best = best_baseline(demand, per_instance, options.saturation, objective, **bounds_kw)
    return TimedTraceResult(name, demand, per_instance, timelines, figures, best)


Figures = dict[str, float | int]


def _total(rows: Sequence[TimedFigures]) -> Figures:
    seconds = sum(r.seconds for r in rows)
    bad = sum(r.bad_seconds for r in rows)
    paid = sum(r.instance_hours for r in rows)
    idle = sum(r.slack * r.instance_hours for r in rows)
    return {
        "attainment": 1.0 - bad / seconds if seconds else 1.0,
        "bad_seconds": bad,
        "seconds": seconds,
        "instance_hours": paid,
        "slack": idle / paid if paid else 0.0,
        "actions": sum(r.actions for r in rows),
        "min_trace_attainment": min((r.attainment for r in rows), default=1.0),
        "traces_at_objective": 0,
    }


def timed_report(results: Sequence[TimedTraceResult], objective_percent: float) -> dict[str, Any]:
    """``{"traces": {T: {P: {...}}}, "total": {P: {...}}, "best_baseline": {...}}``."""
    traces = {r.name: {p: r.figures[p].as_dict() for p in TIMED_POLICIES} for r in results}
    total: dict[str, Figures] = {}
    for p in TIMED_POLICIES:
        rows = [r.figures[p] for r in results]
        total[p] = _total(rows)
        total[p]["traces_at_objective"] = sum(
            1 for f in rows if f.attainment >= objective_percent / 100.0 - 1e-12
        )
    best = {
        r.name: {
            "policy": r.best.policy,
            "setting": r.best.setting,
            "attainment": r.best.figures.attainment,
            "instance_hours": r.best.figures.instance_hours,
        }
        for r in results
    }
    return {
        "traces": traces,
        "total": total,
        "best_baseline": {
            "traces": best,
            "instance_hours": sum(r.best.figures.instance_hours for r in results),
        },
    }
