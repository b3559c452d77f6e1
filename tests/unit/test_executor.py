"""The executor's scheduling, caps, retries, deadlines, lease check and journalling.

The actuators here are test implementations of the Actuator protocol (the executor's plug-in
point) that sleep and fail on cue instead of calling libvirt; the journal is the real SQLite one.
The same executor runs the real actuators in tests/integration/test_actuators_*.py.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actuators.base import ActionContext, Actuator, Fleet
from actuators.executor import (
    PENDING_STEP,
    ActionResult,
    ExecutorLimits,
    default_registry,
    execute_plan,
    run_action,
)
from autoscaler.model import (
    ACTION_KINDS,
    Action,
    BaseAction,
    HotAddVcpu,
    LeaseState,
    LiveMigrate,
    Phase,
    Plan,
    PreconditionFailed,
    Retire,
    TemporaryError,
)
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.lease import Holding

FLEET = Fleet(hosts={f"h{i}": f"test:///h{i}" for i in range(1, 7)}, businesses={})


@dataclass
class Scripted:
    """A test actuator: each call of execute sleeps ``seconds``; ``failures[key]`` temporary
    errors come first; keys in ``refuse`` fail their precondition."""

    kind: str
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    log: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def already_done(self, action: BaseAction, ctx: ActionContext) -> bool:
        return action.key in self.done

    def precondition(self, action: BaseAction, ctx: ActionContext) -> None:
        if action.key in self.refuse:
            raise PreconditionFailed(f"{action.key} refused")

    def execute(self, action: BaseAction, ctx: ActionContext) -> None:
        with self.lock:
            self.log.append(("start", action.key, time.monotonic()))
        ctx.step("working")
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            ctx.check_deadline("while working")
            time.sleep(0.01)
        with self.lock:
            self.log.append(("end", action.key, time.monotonic()))
            if self.failures.get(action.key, 0) > 0:
                self.failures[action.key] -= 1
                raise TemporaryError("not yet", retry_after=0.01)
            self.done.add(action.key)

    def verify(self, action: BaseAction, ctx: ActionContext) -> str:
        return f"{action.key} verified"

    def compensate(self, action: BaseAction, ctx: ActionContext) -> str:
        return f"{action.key} undone"


def execute(p: Plan, *args: Any, **kwargs: Any) -> list[ActionResult]:
    """``execute_plan`` as the holder of lease generation 1 unless a test gives its own."""
    kwargs.setdefault("lease", FixedLease(1))
    return execute_plan(p, *args, **kwargs)


def run_one(*args: Any, **kwargs: Any) -> ActionResult:
    kwargs.setdefault("lease", FixedLease(1))
    return run_action(*args, **kwargs)


def registry(*actuators: Scripted) -> dict[str, Actuator[Any]]:
    return {a.kind: a for a in actuators}


def migrate(vm: str, source: str, destination: str = "h6") -> LiveMigrate:
    return LiveMigrate(business="web", vm=vm, source=source, destination=destination, reason="r")


def vcpu(vm: str, n: int = 2, generation: int | None = 1) -> HotAddVcpu:
    return HotAddVcpu(
        business="web", vm=vm, host="h1", vcpus=n, reason="r", lease_generation=generation
    )


def plan(*actions: Action) -> Plan:
    """A plan decided under lease generation 1 (actions with a generation of their own keep it)."""
    stamped = [
        a if a.lease_generation is not None else a.model_copy(update={"lease_generation": 1})
        for a in actions
    ]
    return Plan.build(stamped, created_at=1.0)


def max_overlap(log: list[tuple[str, str, float]], keys: set[str]) -> int:
    level = peak = 0
    for event, key, _ in sorted(log, key=lambda e: (e[2], e[0] == "start")):
        if key in keys:
            level += 1 if event == "start" else -1
            peak = max(peak, level)
    return peak


@pytest.fixture
def journal(tmp_path: Path) -> SqliteJournal:
    return SqliteJournal(tmp_path / "journal.sqlite")


def test_at_most_two_outgoing_migrations_per_host(journal: SqliteJournal) -> None:
    moves = Scripted("live_migrate", seconds=0.15)
    p = plan(*(migrate(f"vm-{i}", "h1") for i in range(5)), migrate("other", "h2"))
    results = execute(p, FLEET, journal, registry=registry(moves))
    assert [r.status for r in results] == ["done"] * 6
    from_h1 = {a.key for a in p.actions if isinstance(a, LiveMigrate) and a.source == "h1"}
    assert max_overlap(moves.log, from_h1) == 2
    assert max_overlap(moves.log, {a.key for a in p.actions}) == 3  # h2's runs alongside


def test_the_global_migration_cap_holds_across_hosts(journal: SqliteJournal) -> None:
    moves = Scripted("live_migrate", seconds=0.15)
    p = plan(*(migrate(f"vm-{i}", f"h{i % 5 + 1}") for i in range(6)))
    limits = ExecutorLimits(max_migrations=3)
    execute(p, FLEET, journal, registry=registry(moves), limits=limits)
    assert max_overlap(moves.log, {a.key for a in p.actions}) == 3


def test_actions_on_one_vm_run_in_plan_order_others_alongside(journal: SqliteJournal) -> None:
    adds = Scripted("hot_add_vcpu", seconds=0.1)
    p = plan(vcpu("a", 2), vcpu("a", 3), vcpu("b", 2))
    execute(p, FLEET, journal, registry=registry(adds))
    starts = {key: t for event, key, t in adds.log if event == "start"}
    ends = {key: t for event, key, t in adds.log if event == "end"}
    first, second, other = (a.key for a in p.actions)
    assert starts[second] >= ends[first]
    assert starts[other] < ends[first]


def test_a_temporary_error_is_retried_with_backoff_until_done(journal: SqliteJournal) -> None:
    action = vcpu("a")
    adds = Scripted("hot_add_vcpu", failures={action.key: 2})
    (result,) = execute(plan(action), FLEET, journal, registry=registry(adds))
    assert (result.status, result.attempts) == ("done", 3)
    entry = journal.get(action.key)
    assert entry is not None and entry.phase is Phase.DONE and entry.step == "working"


def test_retries_stop_and_the_failure_is_compensated(journal: SqliteJournal) -> None:
    first, later = vcpu("a", 2), vcpu("a", 3)
    adds = Scripted("hot_add_vcpu", failures={first.key: 10})
    limits = ExecutorLimits(retries=2, backoff_initial_s=0.01)
    results = execute(plan(first, later), FLEET, journal, registry=registry(adds), limits=limits)
    assert results[0].status == "failed" and results[0].attempts == 3
    assert "not yet" in results[0].reason and "compensated" in results[0].reason
    assert results[1].status == "skipped" and first.key in results[1].reason
    entry = journal.get(first.key)
    assert entry is not None and entry.phase is Phase.COMPENSATED
    assert journal.get(later.key) is None  # never started: nothing journalled


@dataclass
class HostGone(Scripted):
    """Fails for good, and its host cannot be reached to undo anything."""

    def compensate(self, action: BaseAction, ctx: ActionContext) -> str:
        raise TemporaryError(f"the host of {action.vm} unreachable", retry_after=5)


def test_a_compensation_that_cannot_reach_its_host_leaves_the_entry_unfinished(
    journal: SqliteJournal,
) -> None:
    action = vcpu("a")
    adds = HostGone("hot_add_vcpu", failures={action.key: 10})
    limits = ExecutorLimits(retries=0, backoff_initial_s=0.01)
    (result,) = execute(plan(action), FLEET, journal, registry=registry(adds), limits=limits)
    assert result.status == "failed" and "compensation pending" in result.reason
    entry = journal.get(action.key)
    assert entry is not None and entry.phase is Phase.RUNNING
    assert entry.step == PENDING_STEP
    assert [e.key for e in journal.unfinished()] == [action.key]  # the reconciler's to settle


def test_a_failed_precondition_changes_nothing_and_is_not_retried(journal: SqliteJournal) -> None:
    action = vcpu("a")
    adds = Scripted("hot_add_vcpu", refuse={action.key})
    (result,) = execute(plan(action), FLEET, journal, registry=registry(adds))
    assert (result.status, result.attempts) == ("failed", 1)
    assert "PreconditionFailed" in result.reason and adds.log == []
    assert journal.get(action.key) is None


def test_an_action_that_is_already_done_is_a_no_op(journal: SqliteJournal) -> None:
    action = vcpu("a")
    adds = Scripted("hot_add_vcpu", done={action.key})
    (result,) = execute(plan(action), FLEET, journal, registry=registry(adds))
    assert result.status == "done" and result.reason.startswith("already done")
    assert adds.log == []


def test_an_action_past_its_deadline_fails_as_timed_out(journal: SqliteJournal) -> None:
    adds = Scripted("hot_add_vcpu", seconds=5.0)
    limits = ExecutorLimits(action_timeout_s=0.3, retries=5)
    started = time.monotonic()
    (result,) = execute(plan(vcpu("a")), FLEET, journal, registry=registry(adds), limits=limits)
    assert time.monotonic() - started < 2.0
    assert result.status == "failed" and "timed out" in result.reason


class FixedLease:
    """A lease this process holds at a given generation (implements the Lease protocol, with
    the real ``Holding`` that the file and RADOS leases fence with)."""

    def __init__(self, generation: int) -> None:
        self.state = LeaseState(holder="us", generation=generation, expires_at=1e12)
        self.holding = Holding(time.monotonic)
        self.holding.granted(self.state, time.monotonic(), 1e9)

    def held(self) -> LeaseState | None:
        return self.holding.held()

    def fence(self, generation: int | None, what: str) -> None:
        self.holding.fence(generation, what)

    def try_acquire(self, now: float) -> LeaseState | None:
        return None

    def renew(self, now: float) -> LeaseState:
        return self.state

    def release(self) -> None:
        return None

    def current(self) -> LeaseState | None:
        return self.state


def test_an_action_from_an_older_lease_generation_is_refused(journal: SqliteJournal) -> None:
    old, current = vcpu("a", generation=3), vcpu("b", generation=4)
    adds = Scripted("hot_add_vcpu")
    results = execute(
        plan(old, current), FLEET, journal, lease=FixedLease(4), registry=registry(adds)
    )
    assert results[0].status == "failed" and "DeposedLeader" in results[0].reason
    assert results[1].status == "done"
    assert [key for event, key, _ in adds.log if event == "start"] == [current.key]


def test_scale_in_waits_for_the_earlier_actions_of_its_business(journal: SqliteJournal) -> None:
    adds = Scripted("hot_add_vcpu", seconds=0.1)
    retires = Scripted("retire")
    retire = Retire(business="web", vm="z", host="h2", reason="r")
    execute(plan(vcpu("a"), retire), FLEET, journal, registry=registry(adds, retires))
    assert retires.log[0][2] >= adds.log[-1][2]


def test_an_unknown_kind_fails_before_anything_runs(journal: SqliteJournal) -> None:
    adds = Scripted("hot_add_vcpu")
    with pytest.raises(KeyError, match="no actuator for action kind 'retire'"):
        execute(
            plan(vcpu("a"), Retire(business="web", vm="z", host="h2", reason="r")),
            FLEET,
            journal,
            registry=registry(adds),
        )
    assert adds.log == []


def test_every_action_kind_has_an_actuator() -> None:
    assert set(default_registry()) == set(ACTION_KINDS)


def test_every_step_reaches_the_journal_before_the_hook(journal: SqliteJournal) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    action = vcpu("a")

    def hook(act: BaseAction, step: str) -> None:
        entry = journal.get(act.key)
        assert entry is not None and entry.step == step
        seen[act.key].append(step)

    run_one(
        "plan-000000000001",
        action,
        FLEET,
        journal,
        registry=registry(Scripted("hot_add_vcpu")),
        on_step=hook,
    )
    assert seen[action.key] == ["intent", "working"]
