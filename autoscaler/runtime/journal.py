"""The action journal: SQLite in WAL mode, plus a stamp of each intent in the domain itself.

Where it sits: implements the ``Journal`` protocol the executor writes to (intent before the
first side effect, each step as it is reached, outcome after) and the reconciler reads on start
(``unfinished``). Each row is committed with ``synchronous=FULL`` before the call returns, so a
SIGKILL or a power cut right after a step never loses it. Optionally (``DomainStamper``) every
change is also stamped into the affected domain's libvirt ``<metadata>`` under ``JOURNAL_NS``
(plan id, action key, kind, phase, step), so the truth travels with the VM and a controller on
another machine can see what was in flight.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from actuators.connections import LibvirtPool
from actuators.domain_xml import JOURNAL_NS
from autoscaler.model import (
    Action,
    JournalEntry,
    Phase,
    TemporaryError,
    action_adapter,
    check_name,
)
from autoscaler.runtime.sqlite_wal import connect_private, use_wal

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "asj"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    phase TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_key ON entries (key, id);
CREATE INDEX IF NOT EXISTS entries_by_phase ON entries (phase);
"""

Stamper = Callable[[JournalEntry], None]
_SELECT = "SELECT key, plan_id, action, phase, step, detail, started_at, updated_at FROM entries"


class SqliteJournal:
    """One row per execution of an action (a key may run again later: the newest row counts)."""

    def __init__(self, path: Path, stamper: Stamper | None = None) -> None:
        self.path = path
        self._stamper = stamper
        self._lock = threading.Lock()
        self._db = connect_private(path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA busy_timeout=5000")
        use_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- the Journal protocol ---------------------------------------------------------------

    def record_intent(self, plan_id: str, action: Action, now: float) -> JournalEntry:
        body = action_adapter.dump_json(action).decode()
        with self._lock:
            self._db.execute(
                "INSERT INTO entries (key, plan_id, kind, action, phase, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (action.key, plan_id, action.kind, body, Phase.INTENT.value, now, now),
            )
        entry = self._require(action.key)
        self._stamp(entry)
        return entry

    def record_step(self, key: str, step: str, now: float) -> None:
        self._update(key, "step = ?, updated_at = ?", (step, now))

    def record_outcome(self, key: str, phase: Phase, now: float, detail: str = "") -> None:
        self._update(key, "phase = ?, detail = ?, updated_at = ?", (phase.value, detail, now))

    def get(self, key: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(
                _SELECT + " WHERE key = ? ORDER BY id DESC LIMIT 1", (key,)
            ).fetchone()
        return _entry(row) if row else None

    def unfinished(self) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(
                _SELECT + " e WHERE phase IN (?, ?) AND id ="  # noqa: S608 - constant text
                " (SELECT MAX(id) FROM entries WHERE key = e.key) ORDER BY id",
                (Phase.INTENT.value, Phase.RUNNING.value),
            ).fetchall()
        return [_entry(r) for r in rows]

    # ---- beyond the protocol ----------------------------------------------------------------

    def history(self, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` rows, newest first (for reports)."""
        with self._lock:
            rows = self._db.execute(_SELECT + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_entry(r) for r in rows]

    def vms_seen(self) -> set[str]:
        """Every VM an action of this journal ever touched (the reconciler's scope)."""
        with self._lock:
            rows = self._db.execute("SELECT action FROM entries").fetchall()
        return {action_adapter.validate_json(r[0]).vm for r in rows}

    def _require(self, key: str) -> JournalEntry:
        entry = self.get(key)
        if entry is None:
            raise KeyError(f"no journal entry for {key!r}")
        return entry

    def _update(self, key: str, assignments: str, values: tuple[object, ...]) -> None:
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE entries SET {assignments} WHERE id ="  # noqa: S608 - fixed column lists
                " (SELECT MAX(id) FROM entries WHERE key = ?)",
                (*values, key),
            )
        if cursor.rowcount != 1:
            raise KeyError(f"no journal entry for {key!r}")
        self._stamp(self._require(key))

    def _stamp(self, entry: JournalEntry) -> None:
        stamp_quietly(self._stamper, entry)


def stamp_quietly(stamper: Stamper | None, entry: JournalEntry) -> None:
    """Stamp ``entry`` into its domain if there is a stamper; a failure is logged, not raised:
    the stamp is a copy, the journal is the record."""
    if stamper is None:
        return
    try:
        stamper(entry)
    except Exception as exc:
        log.warning("journal stamp of %s failed: %s", entry.key, exc)


def _entry(row: tuple[str, str, str, str, str, str, float, float]) -> JournalEntry:
    key, plan_id, action, phase, step, detail, started_at, updated_at = row
    return JournalEntry(
        key=key,
        plan_id=plan_id,
        action=action_adapter.validate_json(action),
        phase=Phase(phase),
        step=step,
        detail=detail,
        started_at=started_at,
        updated_at=updated_at,
    )


def journal_floor(path: Path) -> int:
    """``max_generation`` of the journal at ``path`` (0 when there is none yet), read on its
    own connection: the lease asks it before the actuators' journal is open."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT MAX(CAST(json_extract(action, '$.lease_generation') AS INTEGER))"
                " FROM entries"
            ).fetchone()
    except sqlite3.Error as exc:
        # Without the floor a lost lease record could restart the count: do not lead.
        raise TemporaryError(f"cannot read the journal's highest generation: {exc}") from exc
    return int(row[0]) if row and row[0] is not None else 0


class DomainStamper:
    """Writes ``<asj:action plan= key= kind= phase= step= at=/>`` into the action's domain on
    each of its hosts where the domain exists (live and persistent)."""

    def __init__(self, hosts: dict[str, str], pool: LibvirtPool) -> None:
        self._hosts = hosts
        self._pool = pool  # the actuators' own connections: no second set per host

    def __call__(self, entry: JournalEntry) -> None:
        el = ET.Element("action")
        el.set("plan", entry.plan_id)
        el.set("key", entry.key)
        el.set("kind", entry.action.kind)
        el.set("phase", entry.phase.value)
        el.set("step", entry.step)
        el.set("at", f"{entry.updated_at:.3f}")
        xml = ET.tostring(el, encoding="unicode")
        for host in entry.action.hosts:
            uri = self._hosts[check_name(host, what="host name")]
            try:
                with self._pool.connection(uri) as conn:
                    self._stamp(conn, entry.action.vm, xml)
            except (libvirt.libvirtError, TemporaryError):
                continue  # the host does not answer: the SQLite row holds the step

    @staticmethod
    def _stamp(conn: libvirt.virConnect, vm: str, xml: str) -> None:
        try:
            dom = conn.lookupByName(vm)
        except libvirt.libvirtError:
            return  # not (or no longer) on this host
        # A metadata change waits (up to 30 s) for a running job to end: skip a domain in a
        # job (a migration's source, or its incoming copy, whose job libvirt will not even
        # describe); the SQLite row already holds the step.
        try:
            busy = dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        except libvirt.libvirtError:
            busy = True
        if busy:
            return
        flags = [libvirt.VIR_DOMAIN_AFFECT_CONFIG] if dom.isPersistent() else []
        if dom.isActive():
            flags.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        for flag in flags:
            with contextlib.suppress(libvirt.libvirtError):
                dom.setMetadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, JOURNAL_PREFIX, JOURNAL_NS, flag
                )

    def close(self) -> None:
        """Nothing of its own to close: the pool belongs to whoever built it."""


def read_stamp(domain: libvirt.virDomain) -> dict[str, str] | None:
    """The journal stamp a domain carries, or None."""
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, JOURNAL_NS, 0)
    except libvirt.libvirtError:
        return None
    return dict(ET.fromstring(text).attrib)  # noqa: S314 - libvirt's copy of our own element
