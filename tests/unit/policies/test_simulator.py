from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoscaler.cli import simulate
from autoscaler.model import ConfigError
from autoscaler.simulation.simulator import (
    POLICIES,
    SimulationOptions,
    demand_in_cores,
    report,
    run_hpa,
    run_threshold,
    simulate_trace,
)
from policies.loader import load_policy
from policies.schema import Instances
from tests.unit.policies.builders import history, policy

DATA = Path(__file__).resolve().parents[3] / "data" / "nab"
BOUNDS = Instances(min=1, max=100)


def _slice(name: str, rows: int) -> pd.Series:
    frame = pd.read_csv(DATA / f"{name}.csv", nrows=rows)
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    return pd.Series(frame["value"].to_numpy(dtype=float), index=index)


def test_peak_instances_scales_the_peak_to_exactly_n_instances_at_saturation() -> None:
    cores = demand_in_cores(np.array([1.0, 5.0, 10.0]), 0.25, SimulationOptions(peak_instances=20))
    assert cores.max() == pytest.approx(20 * 0.25 * 0.9)


def test_scale_and_peak_instances_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        SimulationOptions(peak_instances=2, scale=3.0)


def test_hpa_limits_scale_up_to_double_or_four_per_decision() -> None:
    demand = np.array([0.15, 10.0, 10.0, 10.0])  # 60% on one instance, then far above
    run = run_hpa(demand, 300, 0.25, BOUNDS, start=1)
    counts = (run.capacity_cores / 0.25).astype(int)
    assert list(counts) == [1, 1, 5, 10]


def test_hpa_tolerates_ten_percent_around_its_target() -> None:
    demand = np.full(5, 10 * 0.25 * 0.65)  # 65% on 10 instances: within 10% of 60%
    counts = run_hpa(demand, 300, 0.25, BOUNDS, start=10).capacity_cores / 0.25
    assert set(counts.round().astype(int)) == {10}


def test_threshold_alarm_steps_one_instance_at_a_time() -> None:
    demand = np.full(6, 5.0)
    counts = run_threshold(demand, 300, 0.25, BOUNDS, start=2).capacity_cores / 0.25
    assert list(counts.round().astype(int)) == [2, 3, 4, 5, 6, 7]


def test_the_oracle_has_no_bad_interval_and_the_fewest_instance_hours() -> None:
    trace = _slice("rds_cpu_utilization_e47b3b", 400)
    result = simulate_trace("rds", trace, policy("web"), SimulationOptions(peak_instances=8))
    data = report([result], 0.9, 99.95)
    per = data["traces"]["rds"]
    assert per["oracle"]["bad_intervals"] == 0 and per["static"]["bad_intervals"] == 0
    hours = {p: per[p]["instance_hours"] for p in POLICIES}
    assert hours["oracle"] == min(hours.values())
    assert set(data["total"]) == set(POLICIES)
    assert set(per["controller"]) >= {
        "attainment",
        "bad_intervals",
        "error_budget_used",
        "instance_hours",
        "slack",
        "actions",
    }


def test_the_controller_follows_a_two_day_real_trace_through_decide() -> None:
    trace = _slice("ec2_cpu_utilization_53ea38", 2 * 288 + 60)
    bench_policy = load_policy(
        Path(__file__).resolve().parents[3] / "examples" / "businesses" / "web.yaml"
    )
    result = simulate_trace("ec2", trace, bench_policy, SimulationOptions(peak_instances=20))
    per = report([result], 0.9, 99.95)["traces"]["ec2"]
    assert per["controller"]["actions"] > 0
    assert per["controller"]["attainment"] >= 0.995


def test_the_simulate_cli_prints_the_json_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "load.csv"
    series = history(np.abs(np.sin(np.arange(120) / 10)) * 5 + 1)
    pd.DataFrame(
        {"when": series.index.strftime("%Y-%m-%d %H:%M:%S"), "cores": series.values}
    ).to_csv(csv, index=False)
    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers())
    policy_file = Path(__file__).resolve().parents[3] / "examples" / "businesses" / "web.yaml"
    args = parser.parse_args(
        [
            "simulate",
            "--trace",
            str(csv),
            "--policy",
            str(policy_file),
            "--time-col",
            "when",
            "--value-col",
            "cores",
            "--peak-instances",
            "6",
            "--coarse",
            "--json",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["traces"]["load"]) == set(POLICIES)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_the_timed_simulate_cli_prints_every_policy_and_the_best_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "load.csv"
    series = history(np.abs(np.sin(np.arange(60) / 10)) * 5 + 1)
    pd.DataFrame(
        {"timestamp": series.index.strftime("%Y-%m-%d %H:%M:%S"), "value": series.values}
    ).to_csv(csv, index=False)
    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers())
    policy_file = Path(__file__).resolve().parents[3] / "examples" / "businesses" / "web.yaml"
    args = parser.parse_args(
        [
            "simulate",
            "--trace",
            str(csv),
            "--policy",
            str(policy_file),
            "--peak-instances",
            "6",
            "--json",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert args.func(args) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert set(data["traces"]["load"]) == {"controller", "static", "hpa", "threshold", "oracle"}
    assert data["best_baseline"]["traces"]["load"]["policy"] in {"static", "hpa", "threshold"}
    assert "all traces" in captured.err  # the progress bar, on stderr
    assert (tmp_path / "p.png").stat().st_size > 0


def test_the_simulate_cli_refuses_taxi_passengers_read_as_busy_cores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "nyc_taxi.csv"
    csv.write_text("timestamp,value\n2014-07-01 00:00:00,39197\n2014-07-01 00:30:00,20000\n")
    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers())
    policy_file = Path(__file__).resolve().parents[3] / "examples" / "businesses" / "web.yaml"
    args = parser.parse_args(["simulate", "--trace", str(csv), "--policy", str(policy_file)])
    assert args.func(args) == 2
    assert "--peak-instances" in capsys.readouterr().err


def test_the_simulate_cli_names_a_missing_column(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("t,v\n2024-01-01 00:00:00,1\n")
    with pytest.raises(ConfigError, match="timestamp"):
        simulate.read_trace(csv, "timestamp", "value")
