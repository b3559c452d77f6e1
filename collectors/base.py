"""The collector protocol: built with its handle, one method returning Samples for ``now``.

Where it sits: the first stage of the flow. The controller calls every collector each cycle
(in parallel, each with its own timeout) and feeds the Samples to the history store and the
snapshot builder. A collector reports what it could not read as ``Stale`` scopes with the time
of the last good sample; it never reports a missing value as zero. A collector may raise
``TemporaryError`` or ``PermanentError`` for a whole-source failure: ``guarded`` turns that into
a stale entry for the collector's own scope so the loop goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from autoscaler.model import AutoscalerError, Sample, Scope, Stale


@dataclass(frozen=True, slots=True)
class Collection:
    """What one collector saw at one time."""

    source: str
    samples: tuple[Sample, ...] = ()
    stale: tuple[Stale, ...] = ()
    duration_s: float = 0.0
    errors: tuple[str, ...] = field(default=())


@runtime_checkable
class Collector(Protocol):
    """One source. ``name`` is stable (it labels metrics and stale entries)."""

    name: str
    scope: Scope
    target: str

    def collect(self, now: float) -> Collection: ...


class LastGood:
    """Remembers when each scope of a collector last gave a good sample."""

    def __init__(self) -> None:
        self._times: dict[tuple[Scope, str], float] = {}

    def ok(self, scope: Scope, target: str, now: float) -> None:
        self._times[(scope, target)] = now

    def stale(self, scope: Scope, target: str, source: str, reason: str) -> Stale:
        return Stale(
            scope=scope,
            target=target,
            source=source,
            last_good=self._times.get((scope, target)),
            reason=reason,
        )


def guarded(collector: Collector, now: float, last_good: LastGood) -> Collection:
    """Run ``collector``; a whole-source failure becomes a stale entry, never an exception."""
    try:
        result = collector.collect(now)
    except AutoscalerError as exc:
        stale = last_good.stale(collector.scope, collector.target, collector.name, str(exc))
        return Collection(source=collector.name, stale=(stale,), errors=(str(exc),))
    except Exception as exc:  # a collector's bug on odd input: its scope is stale, the loop goes on
        reason = f"{type(exc).__name__}: {exc}"[:300]
        stale = last_good.stale(collector.scope, collector.target, collector.name, reason)
        return Collection(source=collector.name, stale=(stale,), errors=(reason,))
    if not any(s.scope == collector.scope and s.target == collector.target for s in result.stale):
        last_good.ok(collector.scope, collector.target, now)
    return result
