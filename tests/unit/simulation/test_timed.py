"""The timed simulation: the fleet's latencies, what it shows the controller, skipping cycles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoscaler.model import CloneFromTemplate, HotAddVcpu, Plan, Retire
from autoscaler.simulation.timed import (
    MAX_INSTANCES,
    TimedOptions,
    fixed_topology,
    simulate_trace_timed,
    timed_report,
)
from autoscaler.simulation.timed_controller import TimedSettings, run_timed_controller
from autoscaler.simulation.timed_fleet import Latencies, ObservedHistory, TimedFleet
from autoscaler.simulation.timeline import StepDemand, account
from policies.loader import load_policy
from policies.schema import Instances

ROOT = Path(__file__).resolve().parents[3]
WEB = load_policy(ROOT / "examples" / "businesses" / "web.yaml")


def _fleet(values: list[float], start: int = 2) -> TimedFleet:
    demand = StepDemand(np.arange(len(values)) * 300.0, np.asarray(values, dtype=float), 300.0)
    return TimedFleet(
        WEB,
        fixed_topology(10.0),
        demand,
        ObservedHistory(WEB.business, demand),
        Latencies(),
        start,
    )


def _plan(*actions: CloneFromTemplate | HotAddVcpu | Retire) -> Plan:
    return Plan.build(list(actions), 0.0, 0.0)


def test_a_clone_is_paid_from_its_definition_and_carries_load_a_minute_later() -> None:
    fleet = _fleet([1.0] * 4)
    fleet.observe(10.0)
    host = fleet.topology[3][0].name
    fleet.execute(_plan(CloneFromTemplate(business="web", vm="web-new", host=host, reason="t")))
    fleet.observe(60.0)
    assert not fleet.vms["web-new"].ready
    fleet.observe(80.0)
    assert fleet.vms["web-new"].ready
    timeline = fleet.timeline.build()
    ready, defined = timeline.at(np.array([5.0, 30.0, 69.9, 70.0]))
    assert list(defined) == [0.5, 0.75, 0.75, 0.75]
    assert list(ready) == [0.5, 0.5, 0.5, 0.75]


def test_a_vcpu_hot_add_gives_its_cores_three_seconds_later_and_a_retire_at_once() -> None:
    fleet = _fleet([0.4] * 4)
    fleet.observe(10.0)
    vm = sorted(fleet.vms)[0]
    host = fleet.vms[vm].host
    fleet.execute(_plan(HotAddVcpu(business="web", vm=vm, host=host, vcpus=3, reason="t")))
    fleet.observe(20.0)
    assert fleet.vms[vm].vcpus == 3
    fleet.execute(_plan(Retire(business="web", vm=vm, host=host, reason="t")))
    ready, defined = fleet.timeline.build().at(np.array([12.9, 13.0, 20.0]))
    assert list(ready) == [0.5, 1.0, 0.25]
    assert list(defined) == [1.0, 1.0, 0.25]


def test_the_controller_sees_utilisation_capped_at_capacity_and_averaged_over_a_collection() -> (
    None
):
    fleet = _fleet([0.25, 2.0, 2.0])  # 2 VMs of 0.25 cores: 50 %, then far beyond capacity
    snapshot = fleet.observe(200.0)
    assert {vm.cpu_utilisation for vm in snapshot.vms} == {0.5}
    snapshot = fleet.observe(302.0)  # 3 s of the previous step, 2 s of the new one
    assert [vm.cpu_utilisation for vm in snapshot.vms] == pytest.approx([0.7, 0.7])
    snapshot = fleet.observe(400.0)
    assert {vm.cpu_utilisation for vm in snapshot.vms} == {1.0}
    assert fleet.history.busy_cores("web").iloc[-1] == pytest.approx(0.5)


def _short_trace() -> StepDemand:
    rng = np.random.default_rng(7)
    steps = 160  # 13 h 20 min
    noise = rng.normal(0, 0.08, steps)
    values = np.clip(0.6 + 0.3 * np.sin(np.arange(steps) / 20) + noise, 0, None)
    values[100:104] *= 3.0  # a burst the forecast cannot see coming
    return StepDemand(1_709_251_200.0 + np.arange(steps) * 300.0, values, 300.0)


def test_skipping_cycles_in_which_nothing_changed_gives_the_result_of_running_every_one() -> None:
    demand = _short_trace()
    policy = WEB.model_copy(update={"instances": Instances(min=2, max=40)})
    topology = fixed_topology(40.0)
    runs = {
        skip: run_timed_controller(
            demand,
            policy,
            topology,
            2,
            TimedSettings(phase_s=4.2, refit_every_s=6 * 3600, skip=skip),
        )
        for skip in (True, False)
    }
    skipped, every = (account(demand, runs[s], 0.9, 0.25) for s in (True, False))
    assert skipped.actions > 10  # the trace made it act
    assert skipped == every
    np.testing.assert_array_equal(runs[True].times_s, runs[False].times_s)
    np.testing.assert_array_equal(runs[True].ready_cores, runs[False].ready_cores)


def test_a_short_trace_runs_every_policy_and_reports_the_benchmark_shape() -> None:
    demand = _short_trace()
    trace = pd.Series(demand.values, index=pd.to_datetime(demand.starts_s, unit="s", utc=True))
    result = simulate_trace_timed("short", trace, WEB, TimedOptions(peak_instances=10))
    data = timed_report([result], 99.95)
    for policy in ("controller", "static", "hpa", "threshold", "oracle"):
        figures = data["traces"]["short"][policy]
        assert {"attainment", "bad_seconds", "instance_hours", "slack"} <= set(figures)
        assert 0.0 <= figures["attainment"] <= 1.0
    assert data["total"]["oracle"]["bad_seconds"] == 0.0
    oracle = data["total"]["oracle"]["instance_hours"]
    assert all(data["total"][p]["instance_hours"] >= oracle - 1e-9 for p in ("static", "hpa"))
    best = data["best_baseline"]["traces"]["short"]
    assert best["policy"] in {"static", "hpa", "threshold"}
    assert data["best_baseline"]["instance_hours"] <= data["total"]["static"]["instance_hours"]


def test_a_trace_that_would_need_more_than_ten_thousand_instances_is_refused() -> None:
    index = pd.date_range("2024-01-01", periods=10, freq="30min", tz="UTC")
    taxis = pd.Series(np.full(10, 39_197.0), index=index)
    with pytest.raises(ValueError, match=r"--peak-instances.*--scale|--scale.*--peak-instances"):
        simulate_trace_timed("nyc_taxi", taxis, WEB, TimedOptions())
    assert MAX_INSTANCES == 10_000
