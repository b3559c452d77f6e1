"""The Cycle's inputs and outputs, as small Protocols (and the outcome of one action).

Where it sits: between ``autoscaler.runtime.cycle`` and whatever fleet it runs on. The live
controller plugs in the collect job's latest snapshot, the executor with its journal, the plans
folder, the controls file and the SQLite history; the simulator (``autoscaler.simulation.fleet``)
plugs in a simulated fleet and in-memory stores. The clock is not a port: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd

from autoscaler.model import Controls, Plan, Snapshot


@dataclass(frozen=True)
class ActionOutcome:
    key: str
    kind: str
    business: str
    result: str  # done | failed | skipped
    reason: str
    duration_s: float


class SnapshotSource(Protocol):
    """The fleet as last observed."""

    def latest(self) -> Snapshot | None: ...

    def snapshot_since(self, since: float) -> Snapshot | None:
        """A snapshot taken at or after ``since`` (waiting a bounded time for one), or None."""
        ...


class Actuation(Protocol):
    """The executor with its journal: runs a Plan (one outcome per action), and settles what
    a previous leader left unfinished."""

    def execute(self, plan: Plan) -> Sequence[ActionOutcome]: ...

    def reconcile(self) -> int: ...

    def unfinished(self) -> int:
        """How many journal entries are unfinished (between cycles: waiting for a host)."""
        ...

    def waiting(self) -> dict[str, str]:
        """Host -> why reconciliation or a connection is waiting for it (for /healthz)."""
        ...


@runtime_checkable
class AccessSync(Actuation, Protocol):
    """An actuation that also keeps the access layer's backends in step with the fleet
    (``policies.access``): the live one; the simulator has no balancer."""

    def sync_access(self, snapshot: Snapshot) -> Sequence[AccessChange]:
        """Register ready instances and remove vanished ones; what was tried, one each."""
        ...


@dataclass(frozen=True)
class AccessChange:
    business: str
    change: str  # register | deregister
    done: bool
    detail: str


class PlanStore(Protocol):
    """Where recommend-mode plans go for approval, and where approved ones come back from."""

    def export(self, plan: Plan) -> str:
        """Keep ``plan`` for approval; returns where (a file, for the operator)."""
        ...

    def take_approved(self, approved: frozenset[str]) -> list[Plan]:
        """The exported plans among ``approved`` not run yet, each marked as taken."""
        ...


class ControlsReader(Protocol):
    def read(self) -> Controls: ...


class History(Protocol):
    """Per-business figures over time: the demand the forecasts read, the SLI written."""

    def busy_cores(
        self, business: str, *, start: float | None = None, end: float | None = None
    ) -> pd.Series: ...

    def record_business(self, business: str, when: float, **figures: float) -> None: ...
