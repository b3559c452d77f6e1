"""The file lease: one holder at a time, takeover after expiry, a deposed leader finds out."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.model import DeposedLeader, Lease
from autoscaler.runtime.lease import FileLease


def test_file_lease_is_a_lease(tmp_path: Path) -> None:
    assert isinstance(FileLease(tmp_path / "lease", "a", 10), Lease)


def test_only_one_holder_until_the_lease_expires(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "lease", "a", 10)
    b = FileLease(tmp_path / "lease", "b", 10)
    first = a.try_acquire(100.0)
    assert first is not None and first.generation == 1
    assert b.try_acquire(105.0) is None
    assert a.renew(108.0).expires_at == 118.0
    assert b.try_acquire(117.0) is None
    taken = b.try_acquire(118.5)
    assert taken is not None and taken.holder == "b" and taken.generation == 2


def test_a_deposed_leader_cannot_renew(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "lease", "a", 10)
    b = FileLease(tmp_path / "lease", "b", 10)
    assert a.try_acquire(0.0) is not None
    assert b.try_acquire(20.0) is not None  # a froze and its lease expired
    with pytest.raises(DeposedLeader, match="now b, generation 2"):
        a.renew(21.0)
    assert a.held(21.0) is None


def test_reacquiring_ones_own_live_lease_keeps_the_generation(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "lease", "a", 10)
    assert a.try_acquire(0.0) is not None
    again = a.try_acquire(5.0)
    assert again is not None and again.generation == 1


def test_release_lets_the_standby_take_over_at_once(tmp_path: Path) -> None:
    a = FileLease(tmp_path / "lease", "a", 10)
    b = FileLease(tmp_path / "lease", "b", 10)
    assert a.try_acquire(0.0) is not None
    a.release()
    taken = b.try_acquire(1.0)
    assert taken is not None and taken.generation == 2


def test_a_garbled_lease_file_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / "lease").write_text("{not json")
    a = FileLease(tmp_path / "lease", "a", 10)
    taken = a.try_acquire(0.0)
    assert taken is not None and taken.generation == 1
