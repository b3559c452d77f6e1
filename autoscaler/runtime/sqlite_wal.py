"""Write-ahead logging for the SQLite files of the state folder (journal, history).

Where it sits: under ``autoscaler.runtime.journal`` and ``autoscaler.runtime.history``, which
open their files through it, so two controllers started together on one state folder both get
them open.
"""

from __future__ import annotations

import sqlite3
import time


def use_wal(db: sqlite3.Connection, patience_s: float = 10.0) -> None:
    """Switch to write-ahead logging. Two controllers starting at the same instant on one
    state folder race for it, and SQLite answers "locked" at once, without waiting on its busy
    timeout, while the other holds the lock: wait it out (WAL then persists in the file)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
