"""The SQLite journal: write-ahead intents, steps and outcomes that survive a killed process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from autoscaler.model import CloneFromTemplate, LiveMigrate, Phase
from autoscaler.runtime.journal import SqliteJournal

ROOT = Path(__file__).resolve().parents[2]


def clone(vm: str = "web-3") -> CloneFromTemplate:
    return CloneFromTemplate(business="web", vm=vm, host="h1", reason="scale out")


def test_intent_step_and_outcome_are_read_back(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "j.sqlite") as journal:
        entry = journal.record_intent("plan-000000000001", clone(), 10.0)
        assert entry.phase is Phase.INTENT and entry.step == ""
        journal.record_step(entry.key, "overlay-created", 11.0)
        assert [e.key for e in journal.unfinished()] == [entry.key]
        journal.record_outcome(entry.key, Phase.DONE, 12.0, "ready")
        got = journal.get(entry.key)
        assert got is not None
        assert (got.phase, got.step, got.detail) == (Phase.DONE, "overlay-created", "ready")
        assert got.action == clone() and got.started_at == 10.0 and got.updated_at == 12.0
        assert journal.unfinished() == []


def test_the_file_is_in_wal_mode_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SqliteJournal(path) as journal:
        journal.record_intent("plan-000000000001", clone(), 1.0)
    mode = sqlite3.connect(str(path)).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with SqliteJournal(path) as journal:
        assert [e.action.vm for e in journal.unfinished()] == ["web-3"]


def test_a_key_run_again_later_is_a_new_row_and_the_newest_counts(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "j.sqlite") as journal:
        key = journal.record_intent("plan-000000000001", clone(), 1.0).key
        journal.record_outcome(key, Phase.DONE, 2.0)
        journal.record_intent("plan-000000000002", clone(), 3.0)
        newest = journal.get(key)
        assert newest is not None
        assert (newest.plan_id, newest.phase) == ("plan-000000000002", Phase.INTENT)
        assert [e.plan_id for e in journal.unfinished()] == ["plan-000000000002"]
        assert len(journal.history()) == 2
        assert journal.vms_seen() == {"web-3"}


def test_unfinished_lists_intent_and_running_only(tmp_path: Path) -> None:
    move = LiveMigrate(business="web", vm="web-1", source="h1", destination="h2", reason="r")
    with SqliteJournal(tmp_path / "j.sqlite") as journal:
        for action in (clone("web-3"), clone("web-4"), move):
            journal.record_intent("plan-000000000001", action, 1.0)
        journal.record_outcome(clone("web-3").key, Phase.RUNNING, 2.0)
        journal.record_outcome(clone("web-4").key, Phase.COMPENSATED, 2.0)
        assert {e.key for e in journal.unfinished()} == {clone("web-3").key, move.key}


def test_an_intent_written_just_before_a_sigkill_is_there_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from autoscaler.runtime.journal import SqliteJournal
        from autoscaler.model import CloneFromTemplate
        j = SqliteJournal(Path({str(path)!r}))
        a = CloneFromTemplate(business="web", vm="web-9", host="h1", reason="r")
        j.record_intent("plan-000000000001", a, 1.0)
        j.record_step(a.key, "defined", 2.0)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert proc.returncode == -9
    with SqliteJournal(path) as journal:
        (entry,) = journal.unfinished()
        assert (entry.action.vm, entry.step) == ("web-9", "defined")


def test_journals_opened_at_the_same_instant_on_a_new_file_both_open(tmp_path: Path) -> None:
    """Two controllers started together race to switch a new journal to WAL mode."""
    for attempt in range(20):
        path = tmp_path / f"j{attempt}.sqlite"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_one(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                SqliteJournal(path).close()
            except BaseException as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
