"""A leader deposed in the middle of an action stops at its next step and leaves the action to
the new leader; /healthz never shows a leader whose lease ran out, and says what is wrong; a
lease lock held by a frozen process fails in time instead of hanging the standby.

The actuator is a test implementation of the Actuator protocol with two steps; the lease is
bumped to a newer generation from the step hook, as a standby taking over while this leader was
frozen would; the journal is the real SQLite one.
"""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actuators.base import ActionContext, Fleet
from actuators.executor import ActionResult, run_action
from autoscaler.model import BaseAction, HotAddVcpu, JournalEntry, LeaseState, TemporaryError
from autoscaler.observability.exporter import HealthState
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.lease import LOCK_WAIT_S, FileLease
from tests.unit.test_executor import FixedLease

FLEET = Fleet(hosts={"h1": "test:///h1"}, businesses={})


@dataclass
class TwoSteps:
    kind: str = "hot_add_vcpu"
    log: list[str] = field(default_factory=list)

    def already_done(self, action: BaseAction, ctx: ActionContext) -> bool:
        return False

    def precondition(self, action: BaseAction, ctx: ActionContext) -> None:
        return None

    def execute(self, action: BaseAction, ctx: ActionContext) -> None:
        self.log.append("started")
        ctx.step("one")
        self.log.append("after one")
        ctx.step("two")
        self.log.append("after two")

    def verify(self, action: BaseAction, ctx: ActionContext) -> str:
        return "verified"

    def compensate(self, action: BaseAction, ctx: ActionContext) -> str:
        self.log.append("compensated")
        return "undone"


class MovingLease(FixedLease):
    """The lease as the file says: another controller may take it over (a newer generation)."""

    def take_over(self) -> None:
        self.state = LeaseState(holder="b", generation=self.state.generation + 1, expires_at=1e12)
        self.holding.lost()  # our next renewal would have found it so


def run_deposed_at(
    tmp_path: Path, actuator: TwoSteps, taken_at: str
) -> tuple[ActionResult, JournalEntry | None]:
    """Run one action whose lease the standby takes over when step ``taken_at`` is reached
    (as if this leader was frozen right there); the result and the journal entry after."""
    lease = MovingLease(4)
    action = HotAddVcpu(business="web", vm="a", host="h1", vcpus=2, reason="r", lease_generation=4)

    def hook(_action: BaseAction, reached: str) -> None:
        if reached == taken_at:
            lease.take_over()

    with SqliteJournal(tmp_path / "journal.sqlite") as journal:
        result = run_action(
            "plan-1",
            action,
            FLEET,
            journal,
            lease=lease,
            registry={"hot_add_vcpu": actuator},
            on_step=hook,
        )
        return result, journal.get(action.key)


@pytest.mark.parametrize(
    ("taken_at", "done_before", "step"),
    [("intent", [], "intent"), ("one", ["started", "after one"], "one")],
)
def test_a_leader_deposed_mid_action_stops_at_its_next_step_and_undoes_nothing(
    tmp_path: Path, taken_at: str, done_before: list[str], step: str
) -> None:
    actuator = TwoSteps()
    result, entry = run_deposed_at(tmp_path, actuator, taken_at)
    assert result.status == "failed" and "DeposedLeader" in result.reason
    assert "left to the new leader" in result.reason
    assert actuator.log == done_before  # nothing after the takeover, and no compensation
    # The entry stays as the takeover found it: the new leader's reconciliation settles it.
    assert entry is not None and not entry.phase.finished and entry.step == step


def test_a_leader_whose_lease_ran_out_answers_as_a_standby() -> None:
    health = HealthState(interval_s=3.0, role="leader", last_success=100.0, started=90.0)
    health.lease_expires_at = 105.0
    assert health.check(101.0)[1]["role"] == "leader"
    ok, info = health.check(106.0)
    assert ok is True and info["role"] == "standby"


def test_a_reported_problem_makes_healthz_fail_also_on_a_standby() -> None:
    health = HealthState(interval_s=3.0, role="standby", started=90.0)
    assert health.check(200.0)[0] is True
    health.problem = "lease: cannot write the lease: [Errno 28] No space left on device"
    ok, info = health.check(200.0)
    assert ok is False and "No space left" in str(info["problem"])
    health.problem = None
    assert health.check(200.0)[0] is True


def test_a_lease_lock_held_by_a_frozen_process_fails_in_time_instead_of_hanging(
    tmp_path: Path,
) -> None:
    clock = [0.0]
    lease = FileLease(tmp_path / "lease", "standby", 6.0, monotonic=lambda: clock[0])
    with open(tmp_path / "lease.lock", "a") as frozen:  # the frozen leader's hold on the lock
        fcntl.flock(frozen, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="lease lock is held"):
            lease.try_acquire(1000.0)
        assert time.monotonic() - started < LOCK_WAIT_S + 1
    # Let go, with no record: the frozen holder may still act, so it is taken after one whole
    # duration on the standby's own clock.
    assert lease.try_acquire(1000.0) is None
    clock[0] = 6.0
    assert lease.try_acquire(1006.0) is not None


@dataclass
class FailsAfterOne(TwoSteps):
    """Its libvirt call fails once this leader wakes up (the new leader changed the domain)."""

    def execute(self, action: BaseAction, ctx: ActionContext) -> None:
        ctx.step("one")
        raise RuntimeError("domain already exists")


def test_a_deposed_leader_whose_call_then_fails_does_not_undo_it(tmp_path: Path) -> None:
    actuator = FailsAfterOne()
    result, entry = run_deposed_at(tmp_path, actuator, "one")
    assert result.status == "failed" and "not compensated, left to the new leader" in result.reason
    assert "compensated" not in actuator.log
    assert entry is not None and not entry.phase.finished


def test_a_leader_acting_past_three_intervals_stays_healthy_until_the_action_bound() -> None:
    health = HealthState(interval_s=3.0, role="leader", last_success=100.0, started=90.0)
    assert health.check(120.0)[0] is False  # no cycle for 20 s and nothing running: stuck
    health.busy_since, health.busy_limit_s = 105.0, 360.0
    ok, info = health.check(120.0)
    assert ok is True and info["acting_for_s"] == 15.0
    assert health.check(466.0)[0] is False  # past the executor's own bound: stuck after all
    health.busy_since = None
    assert health.check(120.0)[0] is False
