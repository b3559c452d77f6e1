"""Opening the SQLite files of the state folder (journal, history): private, write-ahead logged.

Where it sits: under ``autoscaler.runtime.journal`` and ``autoscaler.runtime.history``, which
open their files through it: the folder 0700 and the file 0600 (SQLite gives its ``-wal`` and
``-shm`` files the database file's mode), none of them a symlink (``private_files``); and WAL,
so two controllers started together on one state folder both get them open.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from autoscaler.runtime.private_files import (
    UnsafeStatePath,
    ensure_private_dir,
    ensure_private_file,
)


def connect_private(path: Path, **options: Any) -> sqlite3.Connection:
    """``sqlite3.connect(path, **options)`` on a private file of a private folder; a symlink
    at the file or at its ``-wal``/``-shm``/``-journal`` companions is refused."""
    ensure_private_dir(path.parent)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.is_symlink():
            raise UnsafeStatePath(f"{companion} is a symlink: refused")
    ensure_private_file(path)
    db: sqlite3.Connection = sqlite3.connect(str(path), **options)
    return db


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
