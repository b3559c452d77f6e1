"""Benchmark of the policy engine: ``python -m bench.policies --json``.

Where it sits: outside the flow; measures ``decide()`` on a synthetic fleet of 10,000 VMs,
1,000 hosts and 100 businesses, a forecast refit of 1,000 series, the simulator over the NAB
traces at ``--peak-instances 20``, and rack health on the NAB machine-temperature trace with
its labelled anomaly windows. Every random draw is seeded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from autoscaler.model import (
    VM,
    Controls,
    Datacenter,
    Host,
    Rack,
    Region,
    Scope,
    Signal,
    SignalName,
    Snapshot,
    Stale,
    VmState,
)
from autoscaler.simulation.simulator import (
    SimulationOptions,
    instance_hours,
    report,
    simulate_trace,
)
from autoscaler.simulation.timed import (
    TimedOptions,
    TimedTraceResult,
    simulate_trace_timed,
    timed_report,
)
from policies.decide import decide
from policies.forecast import ForecastSpec, refit
from policies.loader import load_policy
from policies.rack_health import RackHealthSettings, assess_temperature
from policies.schema import BusinessPolicy
from policies.sla import SlaLedger
from policies.state import DecisionState

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "nab"
POLICY = ROOT / "examples" / "businesses" / "web.yaml"
SIMULATED = (
    "ec2_cpu_utilization_",
    "elb_request_count_",
    "rds_cpu_utilization_",
    "cpu_utilization_asg_misconfiguration",
    "nyc_taxi",
)
STEP = pd.Timedelta(minutes=5)


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kib = 0
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "python": platform.python_version(),
    }


def read_trace(name: str) -> pd.Series:
    frame = pd.read_csv(DATA / f"{name}.csv")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    return pd.Series(frame["value"].to_numpy(dtype=float), index=index)


def synthetic_series(count: int, days: int, end: pd.Timestamp, seed: int) -> list[pd.Series]:
    """``count`` demand histories (5-minute, ``days`` long) cut from the NAB CPU traces,
    each rescaled and perturbed with seeded noise."""
    rng = np.random.default_rng(seed)
    sources = [read_trace(p.stem).to_numpy() for p in sorted(DATA.glob("*cpu_utilization*.csv"))]
    length = days * 288
    index = pd.date_range(end=end, periods=length, freq=STEP)
    out = []
    for i in range(count):
        source = sources[i % len(sources)]
        start = int(rng.integers(0, max(1, len(source) - length)))
        values = np.resize(source[start : start + length], length)
        values = values / max(values.max(), 1e-9) * rng.uniform(2, 20)
        values = np.clip(values * rng.normal(1.0, 0.03, length), 0, None)
        out.append(pd.Series(values, index=index))
    return out


def bench_refit(series: int = 1000) -> dict[str, Any]:
    end = pd.Timestamp("2024-03-01", tz="UTC")
    histories = {f"s{i}": s for i, s in enumerate(synthetic_series(series, 14, end, seed=1))}
    spec = ForecastSpec(("seasonal_naive", "ewma", "gbm"), 0.9995, 300.0, 86_400.0, 14 * 86_400.0)
    started = time.perf_counter()
    fitted = refit(histories, dict.fromkeys(histories, spec), end.timestamp())
    seconds = time.perf_counter() - started
    chosen: dict[str, int] = {}
    for f in fitted.values():
        chosen[f.name] = chosen.get(f.name, 0) + 1
    return {"series": series, "seconds": round(seconds, 2), "fitted": len(fitted), "chosen": chosen}


def synthetic_fleet(now: float) -> tuple[Snapshot, dict[str, BusinessPolicy], DecisionState]:
    """10,000 VMs on 1,000 hosts in 100 racks, 100 businesses; one failing rack, one stale."""
    rng = np.random.default_rng(7)
    base = load_policy(ROOT / "examples" / "businesses" / "web.yaml")
    regions = (Region(name="ra"), Region(name="rb"))
    dcs = tuple(Datacenter(name=f"{r.name}-d{i}", region=r.name) for r in regions for i in range(5))
    racks = tuple(Rack(name=f"{d.name}-k{i}", datacenter=d.name) for d in dcs for i in range(10))
    hosts = tuple(
        Host(
            name=f"{k.name}-h{i}",
            rack=k.name,
            uri=f"qemu+tcp://{k.name}-h{i}/system",
            cpus=32,
            memory_mib=262_144,
            reachable=not (k.name == racks[0].name and i < 6),
        )
        for k in racks
        for i in range(10)
    )
    policies: dict[str, BusinessPolicy] = {}
    businesses = []
    for b in range(100):
        name = f"biz{b:03d}"
        policy = base.model_copy(
            update={
                "business": name,
                "instances": base.instances.model_copy(update={"min": 20, "max": 200}),
                "placement": base.placement.model_copy(update={"max_per_rack": 10}),
                "maintenance": (),
            }
        )
        policies[name] = policy
        businesses.append(policy.to_business())
    end = pd.Timestamp(now, unit="s", tz="UTC")
    histories = synthetic_series(100, 14, end, seed=3)
    vms = []
    for i in range(10_000):
        business = f"biz{i % 100:03d}"
        host = hosts[(i * 7919) % len(hosts)]
        vms.append(
            VM(
                name=f"vm{i:05d}",
                host=host.name,
                business=business,
                state=VmState.RUNNING,
                vcpus=1,
                max_vcpus=4,
                memory_mib=256,
                max_memory_mib=1024,
                cpu_quota=0.25,
                cpu_utilisation=float(rng.uniform(0.2, 0.95)),
                ready=True,
                created_at=now - 86_400,
            )
        )
    temps = {}
    signals = []
    tindex = pd.date_range(end=end, periods=2016, freq=STEP)
    for k, rack in enumerate(racks):
        values = 70 + 3 * np.sin(np.arange(2016) / 288 * 2 * np.pi) + rng.normal(0, 0.5, 2016)
        if k == 1:
            values[-12:] += np.linspace(0, 25, 12)  # a rack heating up fast
        temps[rack.name] = pd.Series(values, index=tindex)
        signals.append(
            Signal(
                scope=Scope.RACK,
                target=rack.name,
                name=SignalName.TEMPERATURE_CELSIUS,
                value=float(values[-1]),
                observed_at=now,
            )
        )
    snapshot = Snapshot(
        now=now,
        regions=regions,
        datacenters=dcs,
        racks=racks,
        hosts=hosts,
        vms=tuple(vms),
        businesses=tuple(businesses),
        signals=tuple(signals),
        stale=(Stale(scope=Scope.RACK, target=racks[2].name, source="node", last_good=now - 600),),
    )
    demand = {}
    for b, history in enumerate(histories):
        name = f"biz{b:03d}"
        live = sum(v.busy_cores or 0 for v in snapshot.vms_by_business[name])
        demand[name] = history / max(float(history.iloc[-1]), 1e-9) * live
    specs = {
        n: ForecastSpec(("seasonal_naive", "ewma", "gbm"), 0.9995, 150.0, 86_400.0, 14 * 86_400.0)
        for n in demand
    }
    forecasters = refit(demand, specs, now)
    ledger = SlaLedger()
    for t in range(288):
        ledger = ledger.record(now - 86_400 + t * 300, 300.0 if t % 97 else 0.0, 300.0, 30 * 86_400)
    state = DecisionState(
        demand=demand,
        forecasters=forecasters,
        sla=dict.fromkeys(demand, ledger),
        temperatures=temps,
    )
    return snapshot, policies, state


def bench_decide(repeats: int = 15) -> dict[str, Any]:
    now = pd.Timestamp("2024-03-01T12:00:00", tz="UTC").timestamp()
    snapshot, policies, state = synthetic_fleet(now)
    timings = []
    plan = decide(snapshot, policies, Controls(), state, now).plan
    for _ in range(repeats):
        started = time.perf_counter()
        plan = decide(snapshot, policies, Controls(), state, now).plan
        timings.append(time.perf_counter() - started)
    kinds: dict[str, int] = {}
    for action in plan.actions:
        kinds[action.kind] = kinds.get(action.kind, 0) + 1
    return {
        "p50_s": round(float(np.percentile(timings, 50)), 4),
        "p95_s": round(float(np.percentile(timings, 95)), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "vms": len(snapshot.vms),
        "hosts": len(snapshot.hosts),
        "businesses": len(policies),
        "actions": kinds,
    }


def _timed_one(name: str) -> tuple[TimedTraceResult, float]:
    started = time.perf_counter()
    policy = load_policy(POLICY)
    # One core per worker process: the GBM's OpenMP regions would otherwise wait, at every
    # cycle's prediction, for a thread descheduled by the other worker (10x slower, measured).
    with threadpool_limits(limits=1, user_api="openmp"):
        result = simulate_trace_timed(
            name, read_trace(name), policy, TimedOptions(peak_instances=20)
        )
    return result, time.perf_counter() - started


def bench_simulate_timed(names: list[str], workers: int, progress: bool) -> dict[str, Any]:
    """The timed simulation of every trace (in ``workers`` processes), and its wall time."""
    started = time.perf_counter()
    results: list[TimedTraceResult] = []
    seconds: dict[str, float] = {}
    # Spawned, not forked: the parent's refit has started OpenMP threads (the GBM), and a
    # forked child that uses OpenMP again can hang on their locks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result, spent in pool.map(_timed_one, names):
            results.append(result)
            seconds[result.name] = round(spent, 1)
            if progress:
                print(f"timed {result.name} in {spent:.0f} s", file=sys.stderr)
    data = timed_report(results, load_policy(POLICY).sla.objective)
    total = data["total"]
    controller = total["controller"]["instance_hours"]
    return {
        **data,
        "ratios": {
            "controller_to_oracle": round(controller / total["oracle"]["instance_hours"], 4),
            "controller_to_best_baseline": round(
                controller / data["best_baseline"]["instance_hours"], 4
            ),
            "controller_to_static": round(controller / total["static"]["instance_hours"], 4),
        },
        "seconds": {
            "wall": round(time.perf_counter() - started, 1),
            "workers": workers,
            "per_trace": seconds,
        },
    }


def bench_simulate_coarse(names: list[str], progress: bool) -> dict[str, Any]:
    policy = load_policy(POLICY)
    results = []
    started = time.perf_counter()
    for name in names:
        results.append(
            simulate_trace(name, read_trace(name), policy, SimulationOptions(peak_instances=20))
        )
        if progress:
            print(f"coarse {name} done", file=sys.stderr)
    data = report(results, 0.9, policy.sla.objective)
    controller = instance_hours(results, "controller")
    return {
        **data,
        "ratios": {
            "controller_to_static": round(controller / instance_hours(results, "static"), 4),
            "controller_to_oracle": round(controller / instance_hours(results, "oracle"), 4),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def bench_simulate(progress: bool, workers: int) -> dict[str, Any]:
    names = sorted(p.stem for p in DATA.glob("*.csv") if p.stem.startswith(SIMULATED))
    return {
        "policy": str(POLICY.relative_to(ROOT)),
        "peak_instances": 20,
        "timed": bench_simulate_timed(names, workers, progress),
        "coarse": bench_simulate_coarse(names, progress),
    }


def bench_rack_health() -> dict[str, Any]:
    trace = read_trace("machine_temperature_system_failure")
    times = np.asarray(pd.DatetimeIndex(trace.index).asi8, dtype=np.int64) / 1e9
    values = trace.to_numpy()
    settings = RackHealthSettings()
    flagged = np.zeros(len(values), dtype=bool)
    for i in range(len(values)):
        flagged[i] = (
            assess_temperature(times[: i + 1], values[: i + 1], times[i], settings) is not None
        )
    labels = json.loads((DATA / "combined_windows.json").read_text())
    windows = labels["realKnownCause/machine_temperature_system_failure.csv"]
    inside = np.zeros(len(values), dtype=bool)
    report_windows = []
    step_h = float(np.median(np.diff(times))) / 3600
    for start, end in windows:
        a = pd.Timestamp(start, tz="UTC").timestamp()
        b = pd.Timestamp(end, tz="UTC").timestamp()
        mask = (times >= a) & (times <= b)
        inside |= mask
        hits = np.flatnonzero(mask & flagged)
        report_windows.append(
            {
                "start": start,
                "end": end,
                "flagged": bool(len(hits)),
                "hours_from_start": round(float((times[hits[0]] - a) / 3600), 2)
                if len(hits)
                else None,
                "share_of_window_flagged": round(float(flagged[mask].mean()), 3),
            }
        )
    return {
        "trace": "machine_temperature_system_failure",
        "windows": report_windows,
        "false_alarm_hours": round(float((flagged & ~inside).sum() * step_h), 2),
        "hours_outside_windows": round(float((~inside).sum() * step_h), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the JSON figures")
    parser.add_argument("--skip-simulate", action="store_true", help="(quick runs) no simulation")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for the timed traces"
    )
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"machine": machine()}
    out["decide"] = bench_decide()
    out["refit"] = bench_refit()
    out["simulate"] = (
        {} if args.skip_simulate else bench_simulate(progress=not args.json, workers=args.workers)
    )
    out["rack_health"] = bench_rack_health()
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
