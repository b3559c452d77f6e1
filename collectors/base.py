"""What every collector shares: last-good bookkeeping, and the guard that keeps the loop going.

Where it sits: the first stage of the flow. The ``Collector`` protocol and its ``Collection``
live in the vocabulary (``autoscaler.model.collection``). The controller calls every collector
each cycle (in parallel, each with its own timeout) and feeds the Samples to the history store
and the snapshot builder. A collector may raise ``TemporaryError`` or ``PermanentError`` for a
whole-source failure: ``guarded`` turns that into a stale entry for the collector's own scope so
the loop goes on.
"""

from __future__ import annotations

from autoscaler.model import AutoscalerError, Collection, Collector, Scope, Stale


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
