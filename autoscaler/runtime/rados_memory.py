"""The controller's memory in RADOS: the ``MemoryStore`` on the leader's fenced object.

Where it sits: the memory store of ``state: {kind: rados}``, in place of ``MemoryFile``. The
record (action times for the hourly cap, cooldowns, clone-to-ready times, SLA ledgers) is one
key of ``autoscaler.state``, written by the leader under the fence
(``autoscaler.runtime.rados_state``), so the next leader, on any machine, starts from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from pydantic import ValidationError

from autoscaler.model import AutoscalerError, ControllerRecord, UnreadableRecord
from autoscaler.runtime.memory_file import parse_record
from autoscaler.runtime.rados_state import FencedObject

MEMORY_KEY = "memory"


class RadosMemory:
    def __init__(self, store: FencedObject, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def save(self, record: ControllerRecord) -> None:
        self.store.write({MEMORY_KEY: record.model_dump_json().encode()})

    def load(self) -> ControllerRecord | None:
        raw = self.store.read([MEMORY_KEY]).get(MEMORY_KEY)
        if raw is None:
            return None
        where = f"rados object {self.store.obj}, key {MEMORY_KEY}"
        try:
            return parse_record(raw, where)
        except (ValueError, ValidationError) as exc:
            why = str(exc).splitlines()[0][:200]
            raise UnreadableRecord(
                f"{where}: not a memory record: {why}", self._set_aside(raw)
            ) from exc

    def _set_aside(self, raw: bytes) -> str | None:
        """Keep the unreadable bytes under a key of their own (only a leader may write)."""
        aside = f"{MEMORY_KEY}.unreadable-{int(self.clock())}"
        with contextlib.suppress(AutoscalerError):
            self.store.write({aside: raw}, remove=[MEMORY_KEY])
            return f"rados object {self.store.obj}, key {aside}"
        return None
