"""Small helpers every collector shares: scoped samples, deadlines and whole-source failures.

Where it sits: inside ``collectors/`` next to the protocol in ``base``. A Sample that maps onto
a policy signal carries the labels ``scope`` and ``target`` (e.g. ``scope=rack, target=r2``) so
the snapshot builder turns it into a ``Signal`` without knowing the collector; other labels
(``osd``, ``port``, ``window``) say which part of the scope it is about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

from autoscaler.model import Collection, PermanentError, Sample, Scope, Stale
from collectors.base import LastGood

T = TypeVar("T")


def scoped(
    metric: str, value: float, timestamp: float, scope: Scope, target: str, **labels: str
) -> Sample:
    """A sample about ``target`` (a host, rack, cluster, business) with extra labels."""
    pairs = [("scope", scope.value), ("target", target), *sorted(labels.items())]
    return Sample(metric=str(metric), value=value, timestamp=timestamp, labels=tuple(pairs))


def finite_or_none(value: object) -> float | None:
    """``value`` as a finite float, or None if it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def all_stale(
    source: str,
    scopes: Iterable[tuple[Scope, str]],
    last_good: LastGood,
    reason: str,
    started: float,
) -> Collection:
    """A collection in which every scope the collector covers is stale for ``reason``.

    ``started`` is the ``time.monotonic()`` at which the collection began.
    """
    duration_s = time.monotonic() - started
    stale = [last_good.stale(scope, target, source, reason) for scope, target in scopes]
    return Collection(source=source, stale=tuple(stale), duration_s=duration_s, errors=(reason,))


def single_scope_result(
    source: str,
    scope: Scope,
    target: str,
    last_good: LastGood,
    now: float,
    started: float,
    samples: Sequence[Sample],
    problem: str | None,
) -> Collection:
    """The collection of a collector covering one scope: what it read, plus that scope stale
    for ``problem`` if part of it could not be read (else the scope is marked good at ``now``).
    """
    stale: tuple[Stale, ...] = ()
    if problem:
        stale = (last_good.stale(scope, target, source, problem),)
    else:
        last_good.ok(scope, target, now)
    return Collection(
        source=source,
        samples=tuple(samples),
        stale=stale,
        duration_s=time.monotonic() - started,
    )


class MalformedReply(PermanentError):
    """A source answered something that is not what its protocol promises (or is hostile)."""


def expect(value: object, kind: type[T], where: str) -> T:
    """``value`` if it is a ``kind`` (bool is never an int here), else ``MalformedReply``."""
    if isinstance(value, bool) and kind is not bool:
        raise MalformedReply(f"{where}: expected {kind.__name__}, got bool")
    if not isinstance(value, kind):
        raise MalformedReply(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def expect_number(value: object, where: str) -> float:
    """A finite JSON number (int or float, not bool, not NaN/Inf), else ``MalformedReply``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReply(f"{where}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedReply(f"{where}: {value!r} is not finite")
    return number


def member(obj: object, key: str, where: str) -> object:
    """``obj[key]`` of a JSON object, else ``MalformedReply`` naming what is missing."""
    mapping = expect(obj, dict, where)
    if key not in mapping:
        raise MalformedReply(f"{where}: no {key!r}")
    return mapping[key]


class CounterRates:
    """Per-second rates of monotonic counters between two readings of the same source.

    ``epoch`` names one life of the source (a pid, an ifindex): a new epoch, a first reading, no
    elapsed time or a counter going back (a reset) give no rate at all, never zero or negative.
    """

    def __init__(self) -> None:
        self._previous: dict[Hashable, tuple[Hashable, float, dict[str, int]]] = {}

    def update(
        self, key: Hashable, epoch: Hashable, now: float, counters: Mapping[str, int]
    ) -> dict[str, float] | None:
        before = self._previous.get(key)
        self._previous[key] = (epoch, now, dict(counters))
        if before is None or before[0] != epoch:
            return None
        _, then, old = before
        elapsed = now - then
        if elapsed <= 0 or any(counters[k] < old[k] for k in counters if k in old):
            return None
        return {k: (counters[k] - old[k]) / elapsed for k in counters if k in old}
