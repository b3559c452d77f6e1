"""The action journal in RADOS: the ``Journal`` protocol on the leader's fenced object.

Where it sits: the journal of ``state: {kind: rados}``, in place of ``SqliteJournal``; the
executor writes to it and a new leader's reconciler reads it, on whichever machine. Every
write goes through ``FencedObject``, so a deposed leader's intent or step is refused by the
cluster before its side effect (``StoreFenced``).

Keys (in the object's omap, all values JSON):

- ``j/<seq>``: one execution of an action (``seq`` zero-padded, so key order is write order);
- ``k/<action key>``: the ``seq`` of its newest execution (a key may run again later);
- ``open/<seq>``: present while that execution is unfinished (intent or running), so
  ``unfinished`` reads only those;
- ``jseq``: the last ``seq`` used.

Each change of an entry writes its row and its indexes in one atomic op. Like the SQLite
journal, it can stamp each change into the domain (``DomainStamper``).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from autoscaler.model import Action, JournalEntry, Phase, action_adapter
from autoscaler.runtime.journal import Stamper, stamp_quietly
from autoscaler.runtime.rados_state import FencedObject

SEQ_KEY = "jseq"
SEQ_DIGITS = 20


def _seq(n: int) -> str:
    return f"{n:0{SEQ_DIGITS}d}"


class RadosJournal:
    """The journal on a ``FencedObject`` (the ``Journal`` protocol, and what reports read)."""

    def __init__(self, store: FencedObject, stamper: Stamper | None = None) -> None:
        self.store = store
        self._stamper = stamper
        self._lock = threading.Lock()

    def close(self) -> None:
        """The cluster handle belongs to whoever opened it."""

    def __enter__(self) -> RadosJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- the Journal protocol ---------------------------------------------------------------

    def record_intent(self, plan_id: str, action: Action, now: float) -> JournalEntry:
        entry = JournalEntry(
            key=action.key,
            plan_id=plan_id,
            action=action,
            phase=Phase.INTENT,
            started_at=now,
            updated_at=now,
        )
        self._append(entry)
        self._stamp(entry)
        return entry

    def import_entry(self, entry: JournalEntry) -> None:
        """Append ``entry`` as it is (``autoscaler state migrate``: oldest first)."""
        self._append(entry)

    def _append(self, entry: JournalEntry) -> None:
        """A new row for ``entry``, its key's index, and the open mark while unfinished."""
        with self._lock:
            seq = _seq(self.size() + 1)
            values = {
                f"j/{seq}": _dump(entry),
                f"k/{entry.key}": seq.encode(),
                SEQ_KEY: seq.encode(),
            }
            if not entry.phase.finished:
                values[f"open/{seq}"] = b""
            self.store.write(values)

    def size(self) -> int:
        """How many entries the journal holds."""
        return int(self.store.read([SEQ_KEY]).get(SEQ_KEY, b"0").decode())

    def record_step(self, key: str, step: str, now: float) -> None:
        self._update(key, {"step": step, "updated_at": now})

    def record_outcome(self, key: str, phase: Phase, now: float, detail: str = "") -> None:
        self._update(key, {"phase": phase, "detail": detail, "updated_at": now})

    def get(self, key: str) -> JournalEntry | None:
        found = self._newest(key)
        return found[1] if found else None

    def unfinished(self) -> list[JournalEntry]:
        seqs = [k.removeprefix("open/") for k, _ in self.store.scan("open/")]
        rows = self.store.read(f"j/{s}" for s in seqs)
        return [_load(rows[f"j/{s}"]) for s in seqs if f"j/{s}" in rows]

    # ---- beyond the protocol ----------------------------------------------------------------

    def history(self, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` entries, newest first (for reports)."""
        first = max(0, self.size() - limit)
        rows = self.store.scan("j/", start_after=f"j/{_seq(first)}", limit=limit)
        return [_load(v) for _, v in reversed(rows)]

    def vms_seen(self) -> set[str]:
        """Every VM an action of this journal ever touched (the reconciler's scope)."""
        return {_load(v).action.vm for _, v in self.store.scan("j/")}

    def max_generation(self) -> int:
        """The highest lease generation any journalled action carried (0: none)."""
        return max(
            (_load(v).action.lease_generation or 0 for _, v in self.store.scan("j/")), default=0
        )

    def _newest(self, key: str) -> tuple[str, JournalEntry] | None:
        seq = self.store.read([f"k/{key}"]).get(f"k/{key}")
        if seq is None:
            return None
        row = self.store.read([f"j/{seq.decode()}"]).get(f"j/{seq.decode()}")
        return (seq.decode(), _load(row)) if row is not None else None

    def _update(self, key: str, changes: dict[str, Any]) -> None:
        with self._lock:
            found = self._newest(key)
            if found is None:
                raise KeyError(f"no journal entry for {key!r}")
            seq, entry = found
            entry = entry.model_copy(update=changes)
            remove = [f"open/{seq}"] if entry.phase.finished else []
            self.store.write({f"j/{seq}": _dump(entry)}, remove=remove)
        self._stamp(entry)

    def _stamp(self, entry: JournalEntry) -> None:
        stamp_quietly(self._stamper, entry)


def _dump(entry: JournalEntry) -> bytes:
    body = entry.model_dump(mode="json", exclude={"action"})
    body["action"] = json.loads(action_adapter.dump_json(entry.action))
    return json.dumps(body, sort_keys=True).encode()


def _load(data: bytes) -> JournalEntry:
    body = json.loads(data)
    body["action"] = action_adapter.validate_python(body["action"])
    return JournalEntry.model_validate(body)
