"""``autoscaler simulate``: replay demand traces through ``decide()`` and the baselines.

Where it sits: the CLI glue around ``autoscaler.simulation.simulator`` (``autoscaler.cli.main``
calls ``add_parser``). It reads the CSV traces and the business policy file, runs the
simulation, prints a table (or the JSON of the issue with ``--json``) and optionally plots
demand and each policy's capacity over time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from autoscaler.model import ConfigError, ConfigProblem
from autoscaler.simulation.simulator import (
    POLICIES,
    SimulationOptions,
    TraceResult,
    report,
    simulate_trace,
)
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
    try:
        options = SimulationOptions(
            saturation=args.saturation, peak_instances=args.peak_instances, scale=args.scale
        )
    except ValueError as exc:
        print(f"autoscaler simulate: {exc}", file=sys.stderr)
        return 2
    results: list[TraceResult] = []
    for path in args.trace:
        trace = read_trace(path, args.time_col, args.value_col)
        results.append(simulate_trace(path.stem, trace, policy, options))
    data = report(results, options.saturation, policy.sla.objective)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_table(data))
    if args.plot is not None:
        plot(results, args.plot)
    return 0


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
