"""The history store on a full disk: the write fails with the disk's own error, nothing is left
half-open, and it writes again once there is room.

SQLite's ``max_page_count`` makes the database full the way a full disk does (SQLITE_FULL),
without a file system to fill.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from autoscaler.runtime.history import HistoryStore


def test_a_full_database_fails_with_its_own_error_and_writes_again_once_there_is_room(
    tmp_path: Path,
) -> None:
    with HistoryStore(tmp_path / "history.sqlite") as store:
        store.record_business("web", 60.0, busy_cores=0.1)
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(2000):  # new series until a page must be added
                store.record_business(f"b{i}", 120.0, busy_cores=0.2, capacity_cores=0.5)
        assert not store._db.in_transaction
        store._db.execute(f"PRAGMA max_page_count = {pages * 100}")
        store.record_business("web", 180.0, busy_cores=0.3)
        assert store.busy_cores("web", start=0.0, end=240.0).tolist() == [0.1, 0.3]
