"""The Collector protocol and what one collection returns.

Where it sits: the contract between the controller runtime (which calls every collector each
cycle, in parallel, each under its own deadline) and ``collectors/`` (one module per source). A
collector is built with its handle (libvirt connection factory, rados cluster, socket path,
Prometheus client) and has one method. What it could not read it reports as ``Stale`` scopes
with the time of the last good sample; it never reports a missing value as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from autoscaler.model.signals import Sample, Scope, Stale


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
