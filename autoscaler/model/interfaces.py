"""Interfaces of the journal and the leader lease.

Where it sits: the contract between the controller (which owns the implementations: SQLite
journal, file or RADOS lease) and the actuators (which receive them as objects). Actuators write
an intent before any side effect and an outcome after; the controller reconciles unfinished
intents on start. Only the holder of the lease acts, and every action carries the lease
generation it was decided under.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import Field

from autoscaler.model.actions import Action
from autoscaler.model.topology import Frozen


class Phase(StrEnum):
    """Where an action is in its life. Only INTENT and RUNNING are unfinished."""

    INTENT = "intent"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATED = "compensated"

    @property
    def finished(self) -> bool:
        return self not in (Phase.INTENT, Phase.RUNNING)


class JournalEntry(Frozen):
    key: str
    plan_id: str
    action: Action
    phase: Phase
    step: str = Field(default="", description="last step reached, e.g. 'overlay-created'")
    detail: str = ""
    started_at: float
    updated_at: float


@runtime_checkable
class Journal(Protocol):
    """Durable record of intents and outcomes (write-ahead: intent before side effect)."""

    def record_intent(self, plan_id: str, action: Action, now: float) -> JournalEntry: ...

    def record_step(self, key: str, step: str, now: float) -> None: ...

    def record_outcome(self, key: str, phase: Phase, now: float, detail: str = "") -> None: ...

    def get(self, key: str) -> JournalEntry | None: ...

    def unfinished(self) -> list[JournalEntry]: ...


class LeaseState(Frozen):
    holder: str = Field(min_length=1)
    generation: int = Field(ge=0)
    expires_at: float


@runtime_checkable
class Lease(Protocol):
    """One actor at a time. ``generation`` grows each time the lease changes hands and never
    goes back.

    ``held()`` and ``fence()`` do no I/O: the holder knows how long its lease is valid from its
    own monotonic clock, counted from the moment it *asked* for the lease or its renewal, so the
    store's expiry (counted from when it granted it, later) is always after it. A holder cut off
    from the store therefore stops before anyone else may take over, and clock skew between
    machines cannot make two leaders.
    """

    def try_acquire(self, now: float) -> LeaseState | None: ...

    def renew(self, now: float) -> LeaseState: ...

    def release(self) -> None: ...

    def current(self) -> LeaseState | None: ...

    def held(self) -> LeaseState | None:
        """Our lease, if this process holds it and its monotonic deadline has not passed."""
        ...

    def fence(self, generation: int | None, what: str) -> None:
        """Raise ``DeposedLeader`` unless we hold the lease at exactly ``generation`` now (the
        check before every side effect)."""
        ...
