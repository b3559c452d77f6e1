"""The file lease: one holder at a time, takeover only after a whole duration seen on the
candidate's own clock, generations that never go back, and a holder that fences itself.

Each lease here has its own fake monotonic clock (the machines' clocks are independent); the
wall-clock ``now`` given to the calls is only written for people to read, and the tests give
the two processes wildly different wall clocks to show that no decision depends on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.model import DeposedLeader, Lease
from autoscaler.runtime.lease import DRIFT, FileLease
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
RELIABILITY_SUITE = "safety"


class Clock:
    def __init__(self, at: float = 0.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def lease(
    tmp_path: Path, holder: str, clock: Clock, duration: float = 10.0, floor: int = 0
) -> FileLease:
    return FileLease(tmp_path / "lease", holder, duration, monotonic=clock, floor=lambda: floor)


def test_file_lease_is_a_lease(tmp_path: Path) -> None:
    assert isinstance(FileLease(tmp_path / "lease", "a", 10), Lease)


def test_only_one_holder_until_the_record_stops_changing_for_a_whole_duration(
    tmp_path: Path,
) -> None:
    ca, cb = Clock(), Clock(500.0)
    a, b = lease(tmp_path, "a", ca), lease(tmp_path, "b", cb)
    first = a.try_acquire(100.0)
    assert first is not None and first.generation == 1
    assert b.try_acquire(9e9) is None  # b's wall clock is far ahead: it does not matter
    ca.at, cb.at = 8.0, 508.0
    a.renew(108.0)  # the record changes: b starts counting again
    cb.at = 509.0
    assert b.try_acquire(9e9) is None
    cb.at = 518.9
    assert b.try_acquire(9e9) is None
    cb.at = 519.0  # a has not renewed for a whole duration, as b saw it
    taken = b.try_acquire(-5.0)
    assert taken is not None and taken.generation == 2


def test_a_holder_fences_itself_before_anyone_may_take_over(tmp_path: Path) -> None:
    """A leader cut off from its lease store stops before its lease expires."""
    ca = Clock()
    a = lease(tmp_path, "a", ca)
    state = a.try_acquire(0.0)
    assert state is not None
    a.fence(state.generation, "act")
    (tmp_path / "lease.lock").unlink()
    (tmp_path / "lease.lock").mkdir()  # the store cannot be reached any more
    ca.at = 10 * (1 - DRIFT) - 0.01
    a.fence(state.generation, "act")  # still inside its own deadline
    ca.at = 10 * (1 - DRIFT)
    with pytest.raises(DeposedLeader, match="not renewed in time"):
        a.fence(state.generation, "act")
    assert a.held() is None
    record(
        "safety",
        "leader cut off from its lease store",
        injected="the lease store made unreachable right after a 10 s lease was taken",
        behaviour=f"stopped acting at {10 * (1 - DRIFT):.1f} s on its own monotonic clock, before"
        " a standby may take over (10 s of an unchanged record on the standby's clock)",
        lost="nothing",
    )


def test_the_fence_refuses_any_other_generation_higher_or_lower(tmp_path: Path) -> None:
    a = lease(tmp_path, "a", Clock())
    state = a.try_acquire(0.0)
    assert state is not None
    for other in (state.generation - 1, state.generation + 1, None):
        with pytest.raises(DeposedLeader):
            a.fence(other, "act")


def test_a_deposed_leader_cannot_renew(tmp_path: Path) -> None:
    ca, cb = Clock(), Clock()
    a, b = lease(tmp_path, "a", ca), lease(tmp_path, "b", cb)
    assert a.try_acquire(0.0) is not None
    assert b.try_acquire(0.0) is None
    cb.at = 10.0  # a froze: its record has not changed for a whole duration
    assert b.try_acquire(0.0) is not None
    with pytest.raises(DeposedLeader):
        a.renew(21.0)
    assert a.held() is None


def test_reacquiring_ones_own_live_lease_keeps_the_generation(tmp_path: Path) -> None:
    ca = Clock()
    a = lease(tmp_path, "a", ca)
    assert a.try_acquire(0.0) is not None
    ca.at = 5.0
    again = a.try_acquire(5.0)
    assert again is not None and again.generation == 1


def test_release_lets_the_standby_take_over_at_once(tmp_path: Path) -> None:
    a, b = lease(tmp_path, "a", Clock()), lease(tmp_path, "b", Clock())
    assert a.try_acquire(0.0) is not None
    a.release()
    taken = b.try_acquire(1.0)
    assert taken is not None and taken.generation == 2


def test_a_garbled_or_lost_lease_record_neither_resets_the_generation_nor_is_taken_at_once(
    tmp_path: Path,
) -> None:
    ca, cb = Clock(), Clock()
    a = lease(tmp_path, "a", ca)
    assert a.try_acquire(0.0) is not None
    (tmp_path / "lease").write_text("{not json")
    # The journal holds actions of generation 7 (an earlier lease file was lost too).
    b = lease(tmp_path, "b", cb, floor=7)
    assert b.try_acquire(0.0) is None  # a may still be acting: wait a whole duration
    cb.at = 10.0
    taken = b.try_acquire(0.0)
    assert taken is not None and taken.generation == 8
    (tmp_path / "lease").unlink()
    c = lease(tmp_path, "c", Clock(), floor=8)
    assert c.try_acquire(0.0) is None  # lost, not new: the lock file says it was taken before
    record(
        "safety",
        "lease record garbled, then lost",
        injected="the lease record garbled, then deleted, while the journal holds generation 7",
        behaviour="the next holder waited a whole lease duration and took generation 8"
        " (max of the record's and the journal's, plus one), never 1",
        lost="nothing",
    )


def test_a_restart_under_the_same_holder_name_waits_like_anyone(tmp_path: Path) -> None:
    """A frozen process and its restarted twin must not both lead."""
    a = lease(tmp_path, "host:1", Clock())
    assert a.try_acquire(0.0) is not None
    twin_clock = Clock()
    twin = lease(tmp_path, "host:1", twin_clock)
    assert twin.try_acquire(0.0) is None
    twin_clock.at = 10.0
    taken = twin.try_acquire(0.0)
    assert taken is not None and taken.generation == 2


def test_a_rados_lease_shorter_than_a_second_is_refused_instead_of_never_expiring() -> None:
    from autoscaler.runtime.rados_lease import RadosLease

    with pytest.raises(ValueError, match="at least 1 s"):
        RadosLease(ioctx=None, holder="a", duration_s=0.5)


def test_reconciliation_without_the_lease_touches_nothing(tmp_path: Path) -> None:
    from actuators.base import Fleet
    from actuators.reconcile import reconcile
    from autoscaler.runtime.journal import SqliteJournal

    standby = lease(tmp_path, "standby", Clock())  # never took the lease
    fleet = Fleet(hosts={"h1": "test:///default"}, businesses={})
    with SqliteJournal(tmp_path / "journal.sqlite") as journal, pytest.raises(DeposedLeader):
        reconcile(fleet, journal, lease=standby, vms=["web-1"])


def test_a_late_renewal_keeps_the_lease_when_nobody_took_it_over(tmp_path: Path) -> None:
    ca = Clock()
    a = lease(tmp_path, "a", ca)
    first = a.try_acquire(0.0)
    assert first is not None
    ca.at = 12.0  # the renewal job ran late: past a's own deadline
    assert a.held() is None
    again = a.try_acquire(12.0)  # the record is still a's, unchanged: nobody took over
    assert again is not None and again.generation == first.generation
    a.fence(first.generation, "act")
