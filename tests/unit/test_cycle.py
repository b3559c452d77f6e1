"""The live controller's Cycle, run in-process on the simulated fleet.

The same ``Cycle`` class the controller schedules, on ``autoscaler.simulation.fleet`` (the
process boundary: simulated VMs, an in-memory history, plans and controls), with policies from
the small builders. No mock of our own classes: what is checked is what the cycle did to the
fleet, what it exported, and what it remembered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from autoscaler.model import BackupInstance, Controls, Plan, RbdStorage
from autoscaler.observability.exporter import ControllerMetrics
from autoscaler.runtime.cycle import Cycle, CycleResult, CycleSettings
from autoscaler.runtime.ports import ActionOutcome
from autoscaler.simulation.fleet import (
    FixedControls,
    MemoryPlans,
    SimulatedFleet,
    TraceHistory,
    simulated_topology,
)
from autoscaler.simulation.sim_controller import run_controller
from policies.schema import BusinessPolicy
from policies.state import DecideSettings
from tests.unit.policies.builders import NOW, history, policy

STEP_S = 60.0
PER_INSTANCE = 0.25  # cores: 1 vCPU at a 0.25 quota (the builders' template)


@dataclass
class Run:
    """A cycle on a simulated fleet of one business, stepped through a demand trace."""

    policy: BusinessPolicy
    trace: pd.Series
    instances: int
    controls: FixedControls = field(default_factory=FixedControls)
    plans: MemoryPlans = field(default_factory=MemoryPlans)
    results: list[CycleResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = self.policy.business
        self.fleet = SimulatedFleet({name: self.policy}, simulated_topology(64, 65_536))
        self.fleet.seed(name, self.instances)
        self.history = TraceHistory({name: self.trace})
        self.cycle = Cycle(
            snapshots=self.fleet,
            actuation=self.fleet,
            plans=self.plans,
            controls=self.controls,
            history=self.history,
            policies=lambda: {name: self.policy},
            settings=CycleSettings(
                decide=DecideSettings(control_interval_s=STEP_S, clone_ready_s=0.0),
                ledger_every_s=STEP_S,
                refit_every_s=86_400.0,
            ),
            metrics=ControllerMetrics(),
        )

    @property
    def times(self) -> np.ndarray:
        return np.asarray(pd.DatetimeIndex(self.trace.index).asi8, dtype=np.int64) / 1e9

    def step(self, steps: int | None = None) -> Run:
        """The next ``steps`` trace steps (all that are left when None), one cycle each."""
        done = len(self.results)
        end = len(self.trace) if steps is None else min(len(self.trace), done + steps)
        for t in range(done, end):
            now = float(self.times[t])
            self.history.present = now
            self.fleet.observe(now, {self.policy.business: float(self.trace.iloc[t])})
            self.results.append(self.cycle.run_once(now, generation=1))
        return self

    @property
    def count(self) -> int:
        return self.fleet.instances(self.policy.business)

    def done(self, kind: str | None = None) -> list[tuple[float, str]]:
        """(time, kind) of every action done, oldest first."""
        times = self.times
        return [
            (float(times[i]), out.kind)
            for i, result in enumerate(self.results)
            for out in result.outcomes
            if out.result == "done" and (kind is None or out.kind == kind)
        ]


def trace(values: Sequence[float] | np.ndarray, end: float = NOW) -> pd.Series:
    return history(np.asarray(values, dtype=float), step_s=STEP_S, end=end)


def web(**scaling: Any) -> BusinessPolicy:
    """web, horizontal only (vertical hot-adds would blur the counts), auto mode."""
    return policy(
        "web",
        mode="auto",
        instances={"min": 1, "max": 100},
        scaling={
            "target_utilisation": 0.6,
            "horizontal": {"max_step_up": 4},
            "vertical": {"enabled": False},
            **scaling,
        },
    )


def test_rising_demand_scales_out_with_clones_on_the_fleet() -> None:
    demand = np.concatenate([np.full(10, 0.2), np.linspace(0.2, 1.5, 20)])
    run = Run(web(), trace(demand), instances=2).step()
    assert run.done("clone_from_template")
    # 1.5 cores at the 60% target needs 10 instances of 0.25 cores.
    assert run.count >= 1.5 / (PER_INSTANCE * 0.6) - 1e-9
    assert run.cycle.memory.last_scale_up["web"] == run.done("clone_from_template")[-1][0]


def test_scale_in_waits_for_the_stabilisation_window() -> None:
    stabilisation_s = 600.0
    demand = np.concatenate([np.full(30, 1.2), np.full(40, 0.1)])
    run = Run(
        web(scale_down_stabilisation_s=stabilisation_s, cooldowns={"scale_down_s": 0}),
        trace(demand),
        instances=6,
    ).step(30)
    assert run.done("retire") == []
    dropped_at = float(run.times[30])
    run.step()
    retires = run.done("retire")
    assert retires, "no scale-in after the window"
    assert retires[0][0] >= dropped_at + stabilisation_s - STEP_S
    assert run.count < 8


def test_the_hourly_action_cap_holds_across_cycles() -> None:
    cap = 3
    demand = np.concatenate([np.full(5, 0.2), np.full(115, 2.0)])  # far beyond 2 instances
    run = Run(web(max_actions_per_hour=cap), trace(demand), instances=2).step()
    times = [t for t, _ in run.done()]
    assert times, "the cycle never acted"
    for t in times:
        assert sum(1 for u in times if t - 3600 < u <= t) <= cap
    # And the cap is what stopped it: the demand was never met within the first hour.
    first_hour = [t for t in times if t < run.times[0] + 3600]
    assert len(first_hour) == cap


def test_a_paused_business_is_decided_on_but_never_acted_for() -> None:
    demand = np.concatenate([np.full(5, 0.2), np.full(15, 2.0)])
    controls = FixedControls(Controls(paused=frozenset({"web"})))
    run = Run(web(), trace(demand), instances=2, controls=controls).step()
    assert run.done() == [] and run.fleet.executed == [] and run.plans.exported == {}
    assert run.count == 2
    last = run.cycle.last_decision
    assert last is not None and "paused by an operator" in last.reasons["web"]
    # Resumed: the next cycles act.
    controls.controls = Controls()
    run.trace = trace(np.concatenate([demand, np.full(5, 2.0)]), end=NOW + 5 * STEP_S)
    run.history = TraceHistory({"web": run.trace})
    run.cycle.history = run.history
    run.step()
    assert run.done("clone_from_template")


def test_a_maintenance_window_blocks_scale_in_and_migrations() -> None:
    window = {"days": ["wed"], "start": "10:00", "duration_minutes": 240}  # NOW is Wed 12:00
    demand = np.concatenate([np.full(30, 1.2), np.full(40, 0.1)])
    end = NOW + 60 * STEP_S  # the whole trace inside the window
    run = Run(
        web(scale_down_stabilisation_s=600.0, cooldowns={"scale_down_s": 0}).model_copy(
            update={"maintenance": policy("web", maintenance=[window]).maintenance}
        ),
        trace(demand, end=end),
        instances=8,
    ).step()
    assert not [k for _, k in run.done() if k in ("retire", "live_migrate")]
    assert run.count == 8
    last = run.cycle.last_decision
    assert last is not None and any("maintenance" in r for r in last.reasons["web"])


def test_recommend_mode_exports_the_plan_and_executes_nothing() -> None:
    demand = np.concatenate([np.full(5, 0.2), np.full(5, 2.0)])
    run = Run(web().model_copy(update={"mode": "recommend"}), trace(demand), instances=2).step()
    assert run.fleet.executed == [] and run.done() == []
    assert run.count == 2
    exported = [r.exported for r in run.results if r.exported is not None]
    assert exported and all(p.id in run.plans.exported for p in exported)
    assert all(a.lease_generation is None for p in exported for a in p.actions)
    # Approved, the exported plan runs once, under the lease generation.
    chosen = exported[-1]
    run.controls.controls = Controls(approved=frozenset({chosen.id}))
    result = run.cycle.run_once(float(run.times[-1]) + STEP_S, generation=7)
    assert result.executed is not None
    assert {a.key for a in result.executed.actions} >= {a.key for a in chosen.actions}
    assert all(a.lease_generation == 7 for a in result.executed.actions)
    again = run.cycle.run_once(float(run.times[-1]) + 2 * STEP_S, generation=7)
    assert again.executed is None or not (
        {a.key for a in again.executed.actions} & {a.key for a in chosen.actions}
    )


def test_the_executed_plan_is_the_one_its_actions_were_planned_in() -> None:
    demand = np.concatenate([np.full(5, 0.2), np.full(5, 2.0)])
    run = Run(web(), trace(demand), instances=2).step()
    acted = [r for r in run.results if r.executed is not None]
    assert acted
    for result in acted:
        assert result.decision is not None and result.executed is not None
        decided = {a.key for a in result.decision.plan.actions}
        assert {a.key for a in result.executed.actions} == decided
        assert result.executed in run.fleet.executed


def test_planned_events_name_the_plan_that_was_executed_or_exported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    demand = np.concatenate([np.full(3, 0.2), np.full(3, 2.0)])
    api = policy("api", mode="recommend", instances={"min": 1, "max": 100})
    run = Run(web(), trace(demand), instances=2)
    run.fleet.policies["api"] = api
    run.fleet.seed("api", 2)
    run.cycle.policies = lambda: {"web": run.policy, "api": api}
    run.history = TraceHistory({"web": run.trace, "api": run.trace})
    run.cycle.history = run.history
    with caplog.at_level(logging.INFO, logger="autoscaler.controller"):
        run.step()
    planned = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "planned"]
    executed = {p.id: p for p in run.fleet.executed}
    exported = run.plans.exported
    assert executed and exported
    for fields in planned:
        part = executed.get(fields["plan"]) or exported.get(fields["plan"])
        assert part is not None, fields
        assert fields["vm"] in {a.vm for a in part.actions}
        assert (fields["business"] == "web") == (fields["plan"] in executed)
    assert {f["plan"] for f in planned} == set(executed) | set(exported)


def _volatile(hours: float, step_s: float = 300.0) -> pd.Series:
    steps = int(hours * 3600 / step_s)
    rng = np.random.default_rng(7)
    values = np.where(np.arange(steps) % 4 < 2, 0.3, 2.5) + rng.uniform(0, 0.2, steps)
    return history(values, step_s=step_s, end=NOW)


def test_the_simulator_applies_max_actions_per_hour() -> None:
    hours = 6
    demand = history(np.linspace(0.2, 5.0, hours * 12), step_s=300.0, end=NOW)
    free = run_controller(demand, web(max_actions_per_hour=1000), 0.9, 2, 300.0)
    capped = run_controller(demand, web(max_actions_per_hour=2), 0.9, 2, 300.0)
    assert free.actions > 2 * hours
    # At most 2 in any hour: 2 per started hour of the trace.
    assert 0 < capped.actions <= 2 * hours
    assert capped.capacity_cores[-1] < free.capacity_cores[-1]


@pytest.mark.parametrize("every_s", [86_400.0, 3600.0])
def test_the_simulator_refits_every_refit_every_s(every_s: float) -> None:
    step_s, hours = 300.0, 12
    refits: list[str] = []
    fast = web().model_copy(
        update={"forecast": policy("web", forecast={"min_history_hours": 1}).forecast}
    )
    run_controller(
        _volatile(hours, step_s),
        fast,
        0.9,
        2,
        step_s,
        progress=refits.append,
        refit_every_s=every_s,
    )
    steps = [int(text.split("step ")[1].split("/")[0]) for text in refits]
    assert steps, "never refitted"
    if every_s >= hours * 3600:
        assert len(steps) == 1
    else:
        # After the first fit (enough history), one refit per interval, not per step.
        assert len(steps) >= 5
        assert set(np.diff(steps)) == {int(every_s / step_s)}


def test_the_cycle_after_acting_waits_for_a_view_taken_after_the_actions() -> None:
    """A view collected before the last plan ran still shows the VMs as they were: deciding on
    it would plan the same clone (or DIMM) again."""
    demand = np.concatenate([np.full(10, 0.2), np.full(5, 1.5)])
    run = Run(web(), trace(demand), instances=1).step(11)
    assert run.done("clone_from_template"), "the jump was acted on"
    acted_at = run.cycle.acted_at
    stale_view = run.fleet.latest()
    assert stale_view is not None and stale_view.now <= acted_at
    again = run.cycle.run_once(float(run.times[10]), generation=1)
    assert again.decision is None and again.executed is None
    run.step(1)  # the next collection: decided on again
    assert run.results[-1].decision is not None


class FailingBackups:
    """Hands on which every backup fails (a target that refuses): the Actuation protocol."""

    def execute(self, plan: Plan) -> list[ActionOutcome]:
        return [
            ActionOutcome(a.key, a.kind, a.business, "failed", "target refused", 1.0)
            for a in plan.actions
        ]

    def reconcile(self) -> int:
        return 0

    def unfinished(self) -> int:
        return 0

    def waiting(self) -> dict[str, str]:
        return {}


def _backed_up_web() -> BusinessPolicy:
    every_day = {"every": "1d", "keep": 7, "target": {"kind": "pool", "pool": "backups"}}
    return web().model_copy(update={"backup": policy("web", backup=every_day).backup})


def test_an_unlisted_backup_target_backs_nothing_up_and_its_failures_count_from_zero() -> None:
    run = Run(_backed_up_web(), trace(np.full(5, 0.2)), instances=2).step()
    # The simulated fleet lists no backup target: unknown, so no backup (never a storm).
    assert run.done("backup") == []
    text = generate_latest(run.cycle.metrics.registry).decode()
    assert 'autoscaler_backup_failures_total{business="web"} 0.0' in text


def test_a_failed_backup_counts_for_its_business_and_not_against_the_hourly_cap() -> None:
    run = Run(_backed_up_web(), trace(np.full(2, 0.2)), instances=2).step()
    host = run.fleet.latest().vms[0].host  # type: ignore[union-attr]
    backup = BackupInstance(
        business="web", vm="web-1", host=host, backup_id="b20240306t0300", reason="slot"
    )
    run.cycle.actuation = FailingBackups()
    before = len(run.cycle.memory.recent_actions["web"])
    run.cycle.execute(Plan.build([backup], NOW), NOW)
    text = generate_latest(run.cycle.metrics.registry).decode()
    assert 'autoscaler_backup_failures_total{business="web"} 1.0' in text
    assert 'autoscaler_actions_total{kind="backup",result="failed"} 1.0' in text
    assert len(run.cycle.memory.recent_actions["web"]) == before


def test_a_clone_refused_by_unknown_ceph_health_is_logged_once_and_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The simulated fleet has no Ceph: for a business on RBD its health is unknown.
    on_rbd = web().model_copy(
        update={
            "template": web().template.model_copy(
                update={
                    "image": "web",
                    "version": "v1",
                    "storage": RbdStorage(pool="images"),
                }
            )
        }
    )
    demand = np.concatenate([np.full(10, 0.2), np.linspace(0.2, 1.5, 20)])
    with caplog.at_level(logging.INFO):
        run = Run(on_rbd, trace(demand), instances=2).step()
    assert not run.done("clone_from_template")
    refused = [r for r in caplog.records if r.getMessage().startswith("clone refused by storage")]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    exported = generate_latest(run.cycle.metrics.registry).decode()
    assert 'autoscaler_clone_refused{business="web"} 1.0' in exported
