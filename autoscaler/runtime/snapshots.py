"""The latest Snapshot, published by the collect job and read by the cycle.

Where it sits: the live ``SnapshotSource`` of the Cycle (``autoscaler.runtime.ports``). The
collect job runs on its own schedule and publishes each snapshot here; the cycle asks for one
taken after a moment (after settling the journal), waiting a bounded time for it.
"""

from __future__ import annotations

import threading

from autoscaler.model import Snapshot


class LatestSnapshot:
    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._snapshot: Snapshot | None = None
        self._new = threading.Condition()

    def publish(self, snapshot: Snapshot) -> None:
        with self._new:
            self._snapshot = snapshot
            self._new.notify_all()

    def latest(self) -> Snapshot | None:
        return self._snapshot

    def snapshot_since(self, since: float) -> Snapshot | None:
        """The latest snapshot if it was taken at or after ``since``, waiting up to ``wait_s``
        for one; None if none came."""
        with self._new:
            self._new.wait_for(
                lambda: self._snapshot is not None and self._snapshot.now >= since,
                timeout=self.wait_s,
            )
            snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.now >= since else None
