"""The controller's persisted memory: the record and the small store interface it is kept in.

Where it sits: the vocabulary between the runtime's ``ControllerMemory`` (which turns itself
into a ``ControllerRecord`` after executed actions and after each SLA interval, and back at
start) and the stores that keep it: one JSON file in the state folder today
(``autoscaler.runtime.memory_file``), an object in RADOS for several controllers later. What is
kept is what a restart or a failover must not reset: the times of recent actions (the hourly
cap), the cooldowns, the clone-to-ready times and the SLA ledgers. Forecasters are refitted and
temperatures collected again, so they are not kept.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import ConfigDict, Field, model_validator

from autoscaler.model.errors import PermanentError
from autoscaler.model.names import Name
from autoscaler.model.topology import Frozen

MEMORY_SCHEMA_VERSION = 1
"""The newest record layout this code reads and writes; a newer record is refused."""


class UnreadableRecord(PermanentError):
    """The saved memory exists but cannot be read (garbled, truncated, not ours). The store
    keeps the bytes aside (``kept_at``); the controller starts conservatively."""

    def __init__(self, message: str, kept_at: str | None = None) -> None:
        super().__init__(message)
        self.kept_at = kept_at


class LedgerRecord(Frozen):
    """One business's SLA ledger: intervals ending at ``ends_s`` with good and total seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    ends_s: tuple[float, ...] = ()
    good: tuple[float, ...] = ()
    total: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _aligned(self) -> LedgerRecord:
        if not len(self.ends_s) == len(self.good) == len(self.total):
            raise ValueError("ends_s, good and total must have the same length")
        return self


class ControllerRecord(Frozen):
    """What the controller remembers across a restart or a failover. Every time and amount
    is finite: a NaN cooldown would compare as long past and lift it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: int = Field(ge=1, le=MEMORY_SCHEMA_VERSION)
    saved_at: float
    recent_actions: dict[Name, tuple[float, ...]] = {}
    last_scale_up: dict[Name, float] = {}
    last_scale_down: dict[Name, float] = {}
    clone_ready_s: dict[Name, tuple[float, ...]] = {}
    ledgers: dict[Name, LedgerRecord] = {}
    budget_left: dict[Name, float] = {}
    last_ledger_at: float | None = None


@runtime_checkable
class MemoryStore(Protocol):
    """Where the record lives. ``load`` returns None when nothing was saved yet, raises
    ``UnreadableRecord`` for a record it cannot read, and ``ConfigError`` (field
    ``schema_version``) for one written by a newer controller; ``save`` replaces the record
    atomically (a reader sees the old one or the new one, never a mix)."""

    def load(self) -> ControllerRecord | None: ...

    def save(self, record: ControllerRecord) -> None: ...
