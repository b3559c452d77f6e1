"""Each business's demand history in RADOS, so a new controller machine forecasts at once.

Where it sits: beside the shared state of ``state: {kind: rados}``. The leader copies the busy
cores it records (one value a minute, ``autoscaler.runtime.history``) into one object per
business, ``autoscaler.history.<business>`` (omap: the minute, zero-padded, to the value), and
trims what is older than the longest history a forecast reads. A machine that starts with less
history than the pool holds (a new one, or one that was down) copies the minutes it lacks into
its own history before its first refit, which happens at start, so its forecasts are warm
before it could ever lead. A standby records its own history as it collects, as before.

Why RADOS rather than Prometheus: the controller's other shared state is there already, with
its cephx user and failure handling; Prometheus' recording rules hold the SLI ratios, not the
per-minute demand the forecasters read, and its retention is the operators' to choose. The
writes are not fenced: a deposed leader's late copy of what it measured is still a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import rados

from autoscaler.runtime.history import BUSY_CORES, MINUTE_S, HistoryStore, SeriesKind
from autoscaler.runtime.rados_state import StoreUnavailable, scan_keys

OBJECT_PREFIX = "autoscaler.history."
MINUTE_DIGITS = 12


def _key(minute: int) -> str:
    return f"{minute:0{MINUTE_DIGITS}d}"


class SharedHistory:
    def __init__(self, ioctx: Any, keep_s: float) -> None:
        self.ioctx = ioctx
        self.keep_s = keep_s

    def publish(self, business: str, points: Iterable[tuple[float, float]], now: float) -> int:
        """Store ``(time, busy cores)`` points of ``business`` (one per minute), and forget what
        is older than ``keep_s`` before ``now``; returns how many were stored."""
        rows = [
            (_key(math.floor(t / MINUTE_S)), repr(float(v)).encode())
            for t, v in points
            if math.isfinite(v)
        ]
        oldest = _key(max(0, math.floor((now - self.keep_s) / MINUTE_S)))
        with rados.WriteOpCtx() as op:
            if rows:
                self.ioctx.set_omap(op, tuple(k for k, _ in rows), tuple(v for _, v in rows))
            self.ioctx.remove_omap_range2(op, _key(0), oldest)
            try:
                self.ioctx.operate_write_op(op, OBJECT_PREFIX + business)
            except rados.Error as exc:
                raise StoreUnavailable(
                    f"{OBJECT_PREFIX}{business}: write failed: {exc}", retry_after=5
                ) from exc
        return len(rows)

    def read(self, business: str, since: float) -> list[tuple[float, float]]:
        """The stored points of ``business`` from ``since`` on, oldest first."""
        after = _key(max(0, math.floor(since / MINUTE_S) - 1))
        rows = scan_keys(self.ioctx, OBJECT_PREFIX + business, "", start_after=after)
        return [(int(k) * MINUTE_S, float(v.decode())) for k, v in rows if v]


def warm_from_shared(
    history: HistoryStore, shared: SharedHistory, windows_s: Mapping[str, float], now: float
) -> dict[str, int]:
    """Copy into ``history`` the minutes of each business's window (``windows_s``: business ->
    seconds back from ``now``) that the pool holds and ``history`` lacks; how many per business.
    Minutes ``history`` has are kept as they are."""
    copied: dict[str, int] = {}
    for business, window_s in sorted(windows_s.items()):
        since = now - window_s
        have = {
            math.floor(t.timestamp() / MINUTE_S)
            for t in history.busy_cores(business, start=since).index
        }
        missing = [
            (t, v) for t, v in shared.read(business, since) if math.floor(t / MINUTE_S) not in have
        ]
        if missing:
            history.record(SeriesKind.BUSINESS, business, BUSY_CORES, missing)
        copied[business] = len(missing)
    return copied
