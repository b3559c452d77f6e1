"""ControllerMemory: what the cycle remembers between runs, as one plain object.

Where it sits: owned by the ``Cycle`` (``autoscaler.runtime.cycle``), fed by the collect job
(rack temperatures) and by the cycle itself (outcomes of executed actions, SLA intervals,
refitted forecasters). ``decision_state`` turns it, with the demand history, into the
``DecisionState`` that ``policies.decide`` reads. No I/O: the live controller and the simulator
keep the same memory, so the hourly cap, the cooldowns and the refit schedule work the same in
both. ``to_record`` / ``from_record`` convert what must survive a restart (caps, cooldowns,
SLA ledgers) to and from the vocabulary's ``ControllerRecord``, which a ``MemoryStore`` keeps.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from autoscaler.model import (
    MEMORY_SCHEMA_VERSION,
    ControllerRecord,
    LedgerRecord,
    Scope,
    SignalName,
    Snapshot,
)
from autoscaler.runtime.ports import ActionOutcome
from policies.forecast import FittedForecaster
from policies.sla import SlaLedger
from policies.state import DecideSettings, DecisionState

SCALE_UP_KINDS = frozenset({"clone_from_template", "hot_add_vcpu", "hot_add_memory"})
KEEP_ACTION_TIMES = 500
KEEP_CLONE_TIMES = 20
KEEP_TEMPERATURES = 2000


@dataclass
class ControllerMemory:
    """Per-business memory of the controller (kept in a ``MemoryStore`` live, so a restart or
    a failover keeps the caps, cooldowns and ledgers; forecasters are refitted)."""

    ledgers: dict[str, SlaLedger] = field(default_factory=dict)
    budget_left: dict[str, float] = field(default_factory=dict)
    """Error budget left per business at the last SLA interval (reported as a metric)."""
    forecasters: dict[str, FittedForecaster] = field(default_factory=dict)
    last_scale_up: dict[str, float] = field(default_factory=dict)
    last_scale_down: dict[str, float] = field(default_factory=dict)
    recent_actions: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    clone_ready_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    temperatures: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    needed: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    """(time, capacity asked for) of recent decisions per business, for the scale-down
    stabilisation (not kept across restarts: the window after a start is the restart's own)."""
    last_ledger_at: float | None = None
    last_refit_at: float | None = None
    conservative_since: float | None = None
    """Set when the saved memory could not be read: every business's cooldowns count from
    then (no retire within its stabilisation window) instead of from never."""

    def refit_due(self, now: float, every_s: float) -> bool:
        return self.last_refit_at is None or now - self.last_refit_at >= every_s

    def ledger_due(self, now: float, every_s: float) -> bool:
        return self.last_ledger_at is None or now - self.last_ledger_at >= every_s

    def remember_temperatures(self, snapshot: Snapshot) -> None:
        for signal in snapshot.signals:
            if signal.scope is Scope.RACK and signal.name == SignalName.TEMPERATURE_CELSIUS:
                series = self.temperatures[signal.target]
                series.append((signal.observed_at, signal.value))
                del series[:-KEEP_TEMPERATURES]

    def remember_outcomes(self, outcomes: Iterable[ActionOutcome], now: float) -> None:
        """Stamp what was done: the hourly cap counts it, the cooldowns start from it."""
        for out in outcomes:
            if out.result != "done":
                continue
            self.recent_actions[out.business].append(now)
            del self.recent_actions[out.business][:-KEEP_ACTION_TIMES]
            if out.kind in SCALE_UP_KINDS:
                self.last_scale_up[out.business] = now
            if out.kind == "clone_from_template":
                self.clone_ready_s[out.business].append(out.duration_s)
                del self.clone_ready_s[out.business][:-KEEP_CLONE_TIMES]
            if out.kind == "retire":
                self.last_scale_down[out.business] = now

    def remember_needed(self, needed: Mapping[str, float], now: float, keep_s: float) -> None:
        """Keep what each decision asked for, for ``keep_s`` (the longest stabilisation)."""
        for business, cores in needed.items():
            kept = self.needed[business]
            kept.append((now, cores))
            while kept and kept[0][0] <= now - keep_s:
                kept.pop(0)

    def decision_state(
        self, demand: Mapping[str, pd.Series], settings: DecideSettings
    ) -> DecisionState:
        temps = {
            rack: pd.Series(
                [v for _, v in points],
                index=pd.to_datetime([t for t, _ in points], unit="s", utc=True),
                dtype="float64",
            )
            for rack, points in self.temperatures.items()
            if points
        }
        up, down = dict(self.last_scale_up), dict(self.last_scale_down)
        if self.conservative_since is not None:
            for business in demand:
                up.setdefault(business, self.conservative_since)
                down.setdefault(business, self.conservative_since)
        return DecisionState(
            demand=demand,
            last_scale_up=up,
            last_scale_down=down,
            recent_actions={b: tuple(t) for b, t in self.recent_actions.items()},
            forecasters=dict(self.forecasters),
            sla=dict(self.ledgers),
            temperatures=temps,
            clone_ready_s={b: float(np.median(v)) for b, v in self.clone_ready_s.items() if v},
            recent_needed={b: tuple(v) for b, v in self.needed.items() if v},
            settings=settings,
        )

    def to_record(self, now: float) -> ControllerRecord:
        """What must survive a restart, as the vocabulary's record."""
        return ControllerRecord(
            schema_version=MEMORY_SCHEMA_VERSION,
            saved_at=now,
            recent_actions={b: tuple(t) for b, t in self.recent_actions.items() if t},
            last_scale_up=dict(self.last_scale_up),
            last_scale_down=dict(self.last_scale_down),
            clone_ready_s={b: tuple(v) for b, v in self.clone_ready_s.items() if v},
            ledgers={
                b: LedgerRecord(
                    ends_s=tuple(float(x) for x in ledger.ends_s),
                    good=tuple(float(x) for x in ledger.good),
                    total=tuple(float(x) for x in ledger.total),
                )
                for b, ledger in self.ledgers.items()
            },
            budget_left=dict(self.budget_left),
            last_ledger_at=self.last_ledger_at,
        )

    def adopt(self, saved: ControllerMemory) -> None:
        """Take in what a store kept (on taking over): every action time of both, the later
        cooldowns, per business the saved ledger followed by this memory's intervals after
        it (a store older than a standby's own ledger loses nothing); forecasters,
        temperatures and the refit schedule stay this memory's own. Neither side can lift a
        cap."""
        for business, times in saved.recent_actions.items():
            # Several actions share one time (one plan): a multiset, each time as often as
            # the side that saw it most often.
            both = Counter(self.recent_actions[business]) | Counter(times)
            merged = sorted(both.elements())
            self.recent_actions[business] = merged[-KEEP_ACTION_TIMES:]
        for mine, theirs in (
            (self.last_scale_up, saved.last_scale_up),
            (self.last_scale_down, saved.last_scale_down),
        ):
            for business, when in theirs.items():
                mine[business] = max(when, mine.get(business, when))
        for business, seconds in saved.clone_ready_s.items():
            if not self.clone_ready_s[business]:
                self.clone_ready_s[business] = list(seconds)
        for business, ledger in saved.ledgers.items():
            self.ledgers[business] = _spliced(ledger, self.ledgers.get(business))
            if business in saved.budget_left:
                self.budget_left.setdefault(business, saved.budget_left[business])
        if saved.last_ledger_at is not None:
            self.last_ledger_at = max(saved.last_ledger_at, self.last_ledger_at or -np.inf)
        if saved.conservative_since is not None:
            self.conservative_since = saved.conservative_since

    @classmethod
    def from_record(cls, record: ControllerRecord) -> ControllerMemory:
        memory = cls(
            last_scale_up=dict(record.last_scale_up),
            last_scale_down=dict(record.last_scale_down),
            budget_left=dict(record.budget_left),
            last_ledger_at=record.last_ledger_at,
        )
        for business, times in record.recent_actions.items():
            memory.recent_actions[business] = list(times)[-KEEP_ACTION_TIMES:]
        for business, seconds in record.clone_ready_s.items():
            memory.clone_ready_s[business] = list(seconds)[-KEEP_CLONE_TIMES:]
        for business, ledger in record.ledgers.items():
            memory.ledgers[business] = SlaLedger(
                ends_s=_frozen(ledger.ends_s),
                good=_frozen(ledger.good),
                total=_frozen(ledger.total),
            )
        return memory


def _spliced(saved: SlaLedger, own: SlaLedger | None) -> SlaLedger:
    """The saved ledger, then the intervals of ``own`` that end after it."""
    if own is None or not len(own.ends_s):
        return saved
    last = float(saved.ends_s[-1]) if len(saved.ends_s) else -np.inf
    after = own.ends_s > last
    return SlaLedger(
        ends_s=_frozen(np.concatenate([saved.ends_s, own.ends_s[after]])),
        good=_frozen(np.concatenate([saved.good, own.good[after]])),
        total=_frozen(np.concatenate([saved.total, own.total[after]])),
    )


def _frozen(values: tuple[float, ...] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    array.setflags(write=False)
    return array
