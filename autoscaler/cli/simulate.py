"""``autoscaler simulate``: replay demand traces through the controller and the baselines.

Where it sits: the CLI glue around ``autoscaler.simulation.timed`` (the default, ``--timed``)
and ``autoscaler.simulation.simulator`` (``--coarse``, the older rules: one decision per trace
step, capacity ready at the next); ``autoscaler.cli.main`` calls ``add_parser``. It reads the
CSV traces and the business policy file, runs the simulation with a progress bar on stderr (per
trace and overall, with the time left), prints a table (or the JSON report with ``--json``) and
optionally plots demand, each policy's capacity and the controller's bad seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from autoscaler.model import ConfigError, ConfigProblem
from autoscaler.simulation.simulator import (
    POLICIES,
    SimulationOptions,
    TraceResult,
    report,
    simulate_trace,
)
from autoscaler.simulation.timed import (
    TIMED_POLICIES,
    TimedOptions,
    TimedTraceResult,
    simulate_trace_timed,
    timed_report,
)
from autoscaler.simulation.timeline import CapacityTimeline
from policies.loader import load_policy


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to the CLI's subcommands (``subparsers`` from ``add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate", help="replay demand traces through decide() and the usual baselines"
    )
    p.add_argument("--trace", type=Path, action="append", required=True, help="CSV (repeatable)")
    p.add_argument("--policy", type=Path, required=True, help="business policy YAML file")
    p.add_argument("--time-col", default="timestamp", help="timestamp column (UTC)")
    p.add_argument("--value-col", default="value", help="demand column")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="multiply values by K to get busy cores")
    size.add_argument(
        "--peak-instances", type=int, help="scale each trace so its peak needs N instances"
    )
    p.add_argument("--saturation", type=float, default=0.9, help="utilisation of a good interval")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--timed",
        dest="coarse",
        action="store_false",
        help="the live loop every 10 s with action latencies (the default)",
    )
    mode.add_argument(
        "--coarse",
        dest="coarse",
        action="store_true",
        help="one decision per trace step, capacity ready at the next (the older rules)",
    )
    p.set_defaults(coarse=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the cycles' phase (timed)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--plot", type=Path, help="write a PNG of demand and capacities")
    p.set_defaults(func=run)
    return p


def read_trace(path: Path, time_col: str, value_col: str) -> pd.Series:
    """A CSV's values on a UTC DatetimeIndex; ConfigError naming the file if it is unusable."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=str(exc))]
        ) from exc
    missing = [c for c in (time_col, value_col) if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns))
        raise ConfigError(
            str(path),
            [
                ConfigProblem(line=1, field=c, message=f"no such column (found: {found})")
                for c in missing
            ],
        )
    try:
        index = pd.DatetimeIndex(pd.to_datetime(frame[time_col], utc=True))
        values = pd.to_numeric(frame[value_col], errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message=str(exc))]
        ) from exc
    if len(frame) < 2:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="-", message="fewer than 2 rows")]
        )
    series = pd.Series(values.to_numpy(), index=index).sort_index()
    return series[~series.index.duplicated(keep="last")]


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    traces = [(path.stem, read_trace(path, args.time_col, args.value_col)) for path in args.trace]
    try:
        if args.coarse:
            return _run_coarse(args, policy, traces)
        return _run_timed(args, policy, traces)
    except ValueError as exc:
        print(f"autoscaler simulate: {exc}", file=sys.stderr)
        return 2


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _run_timed(args: argparse.Namespace, policy: Any, traces: list[tuple[str, pd.Series]]) -> int:
    options = TimedOptions(
        saturation=args.saturation,
        peak_instances=args.peak_instances,
        scale=args.scale,
        seed=args.seed,
    )
    results: list[TimedTraceResult] = []
    weights = [float(len(t)) for _, t in traces]
    with _progress() as bar:
        overall = bar.add_task("all traces", total=sum(weights))
        for (name, trace), weight in zip(traces, weights, strict=True):
            task = bar.add_task(name[:40], total=1.0)
            done = bar.tasks[overall].completed

            def tell(share: float, task: Any = task, done: float = done, w: float = weight) -> None:
                bar.update(task, completed=share)
                bar.update(overall, completed=done + share * w)

            results.append(simulate_trace_timed(name, trace, policy, options, tell))
            bar.update(task, completed=1.0)
            bar.update(overall, completed=done + weight)
    data = timed_report(results, policy.sla.objective)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_timed_table(data))
    if args.plot is not None:
        plot_timed(results, args.plot)
    return 0


def _run_coarse(args: argparse.Namespace, policy: Any, traces: list[tuple[str, pd.Series]]) -> int:
    options = SimulationOptions(
        saturation=args.saturation, peak_instances=args.peak_instances, scale=args.scale
    )
    results: list[TraceResult] = []
    with _progress() as bar:
        overall = bar.add_task("all traces", total=len(traces))
        for name, trace in traces:
            results.append(simulate_trace(name, trace, policy, options))
            bar.advance(overall)
    data = report(results, options.saturation, policy.sla.objective)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_table(data))
    if args.plot is not None:
        plot(results, args.plot)
    return 0


def render_timed_table(data: dict[str, Any]) -> str:
    table = Table(title="timed simulation")
    for column in ("trace", "policy", "attainment", "bad s", "instance-h", "slack"):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    rows = [*((name, per) for name, per in data["traces"].items()), ("TOTAL", data["total"])]
    for name, per in rows:
        for policy in TIMED_POLICIES:
            m = per[policy]
            table.add_row(
                name[:40],
                policy,
                f"{m['attainment']:.4%}",
                f"{m['bad_seconds']:.0f}",
                f"{m['instance_hours']:.1f}",
                f"{m['slack']:.1%}",
            )
    best = data["best_baseline"]
    for name, row in best["traces"].items():
        table.add_row(
            name[:40],
            f"best: {row['policy']} {row['setting']:g}",
            f"{row['attainment']:.4%}",
            "",
            f"{row['instance_hours']:.1f}",
            "",
        )
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def plot_timed(results: list[TimedTraceResult], out: Path) -> None:
    """Demand, each policy's ready capacity (in instances) and the controller's bad seconds,
    one panel per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3.2 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        demand = result.demand
        per = result.instance_cores
        when = pd.to_datetime(demand.starts_s, unit="s", utc=True)
        ax.step(when, demand.values / per, where="post", color="black", lw=0.8, label="demand")
        for policy in TIMED_POLICIES:
            timeline: CapacityTimeline = result.timelines[policy]
            ax.step(
                pd.to_datetime(timeline.times_s, unit="s", utc=True),
                timeline.ready_cores / per,
                where="post",
                lw=0.7,
                label=policy,
            )
        bad = _bad_starts(result)
        if len(bad):
            ax.plot(
                pd.to_datetime(bad, unit="s", utc=True),
                np.zeros(len(bad)),
                "|",
                color="red",
                ms=12,
                label="controller bad",
            )
        ax.set_title(result.name)
        ax.set_ylabel("instances")
    axes[0, 0].legend(loc="upper right", ncol=7, fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _bad_starts(result: TimedTraceResult) -> np.ndarray:
    """Times at which the controller's ready capacity fell short of demand (for the plot)."""
    timeline = result.timelines["controller"]
    edges = np.union1d(result.demand.starts_s, timeline.times_s)
    ready, _ = timeline.at(edges)
    short = result.demand.at(edges) > ready * 0.9 + 1e-9
    return np.asarray(edges[short], dtype=float)


def render_table(data: dict[str, Any]) -> str:
    lines = [f"{'trace':40} {'policy':10} {'attain':>9} {'bad':>5} {'inst-h':>10} {'slack':>6}"]
    rows = [*((name, per) for name, per in data["traces"].items()), ("TOTAL", data["total"])]
    for name, per in rows:
        for policy in POLICIES:
            m = per[policy]
            lines.append(
                f"{name[:40]:40} {policy:10} {m['attainment']:9.4%} {m['bad_intervals']:5d}"
                f" {m['instance_hours']:10.1f} {m['slack']:6.1%}"
            )
    return "\n".join(lines)


def plot(results: list[TraceResult], out: Path) -> None:
    """Demand and each policy's capacity (in instances) over time, one panel per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        when = pd.to_datetime(result.times_s, unit="s", utc=True)
        ax.plot(
            when, result.demand_cores / result.instance_cores, color="black", lw=0.8, label="demand"
        )
        for policy in POLICIES:
            ax.step(
                when,
                result.runs[policy].capacity_cores / result.instance_cores,
                where="post",
                lw=0.7,
                label=policy,
            )
        ax.set_title(result.name)
        ax.set_ylabel("instances")
    axes[0, 0].legend(loc="upper right", ncol=6, fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
