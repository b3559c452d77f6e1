"""The leader lease on Ceph: a RADOS exclusive lock on one object, with a generation.

Where it sits: the ``Lease`` used when the controller file configures Ceph, so controllers on
different machines elect one leader through the cluster they already trust. The lock is taken
with a duration and renewed (``LIBRADOS_LOCK_FLAG_RENEW``) by the controller's own lease job,
independent of long actions. The generation lives in the object's data and is bumped by each
new holder while it holds the lock, so only a holder ever writes it.

The OSD keeps the lock's expiry, so no two machines' clocks are compared. Pacific's Python
binding takes whole seconds and sets the expiry imprecisely (a 2 s lock expired after 3.5-6 s
in the recipes: later, never earlier), so the holder's own view is conservative: its monotonic
clock when it asked, plus the duration (``Holding``). A new generation is max(the object's,
the journal's highest) + 1.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import rados

from autoscaler.model import DeposedLeader, LeaseState, TemporaryError
from autoscaler.runtime.lease import Holding, no_floor

LOCK_NAME = "autoscaler-leader"
RENEW_FLAG = 1  # LIBRADOS_LOCK_FLAG_RENEW


class RadosLease:
    def __init__(
        self,
        ioctx: Any,
        holder: str,
        duration_s: float,
        obj: str = "autoscaler.lease",
        *,
        floor: Callable[[], int] = no_floor,
        on_acquire: Callable[[int], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_acquire(generation)`` runs once the lock is ours and its generation written,
        before the lease counts as held: the shared state's claim, so a deposed leader's
        writes are refused from then on (an error there means not leading this time)."""
        if duration_s < 1:
            # The binding takes whole seconds, and a duration of 0 is a lock that never expires.
            raise ValueError(f"a RADOS lease lasts at least 1 s, got {duration_s}")
        self.ioctx = ioctx
        self.holder = holder
        self.duration_s = duration_s
        self.obj = obj
        self.floor = floor
        self.on_acquire = on_acquire
        self._holding = Holding(monotonic)

    def _generation(self) -> int:
        try:
            data = self.ioctx.read(self.obj, 64, 0)
        except rados.ObjectNotFound:
            return 0
        except rados.Error as exc:
            raise TemporaryError(f"cannot read the lease object: {exc}", retry_after=2) from exc
        try:
            return int(data.decode().strip() or 0)
        except ValueError:
            return 0

    def _lock(self, flags: int) -> bool:
        try:
            self.ioctx.lock_exclusive(
                self.obj,
                LOCK_NAME,
                self.holder,
                desc="autoscaler leader",
                # Rounded down, so the OSD never holds the lock longer than we count on it.
                duration=max(1, math.floor(self.duration_s)),
                flags=flags,
            )
        except (rados.ObjectBusy, rados.ObjectExists):
            return False
        except rados.Error as exc:
            raise TemporaryError(f"cannot lock the lease object: {exc}", retry_after=2) from exc
        return True

    def try_acquire(self, now: float) -> LeaseState | None:
        if self._holding.state is not None:
            try:
                return self.renew(now)
            except DeposedLeader:
                return None
        asked_at = self._holding.monotonic()
        if not self._lock(0):
            return None
        generation = max(self._generation(), self.floor()) + 1
        try:
            self.ioctx.write_full(self.obj, str(generation).encode())
        except rados.Error as exc:
            raise TemporaryError(
                f"cannot write the lease generation: {exc}", retry_after=2
            ) from exc
        if self.on_acquire is not None:
            try:
                self.on_acquire(generation)
            except Exception:
                with contextlib.suppress(rados.Error):
                    self.ioctx.unlock(self.obj, LOCK_NAME, self.holder)
                raise
        state = LeaseState(
            holder=self.holder, generation=generation, expires_at=now + self.duration_s
        )
        return self._holding.granted(state, asked_at, math.floor(self.duration_s))

    def renew(self, now: float) -> LeaseState:
        mine = self._holding.state
        if mine is None:
            raise DeposedLeader(f"{self.holder} does not hold the lease")
        asked_at = self._holding.monotonic()
        if not self._lock(RENEW_FLAG) or self._generation() != mine.generation:
            self._holding.lost()
            raise DeposedLeader(f"{self.holder} lost the lease")
        state = mine.model_copy(update={"expires_at": now + self.duration_s})
        return self._holding.granted(state, asked_at, math.floor(self.duration_s))

    def release(self) -> None:
        if self._holding.state is None:
            return
        with contextlib.suppress(rados.Error):
            self.ioctx.unlock(self.obj, LOCK_NAME, self.holder)
        self._holding.lost()

    def current(self) -> LeaseState | None:
        """The generation on the cluster; the holder is known only when it is us (the Pacific
        binding cannot list lockers)."""
        generation = self._generation()
        if generation == 0:
            return None
        mine = self._holding.state
        if mine is not None and mine.generation == generation:
            return mine
        return LeaseState(holder="another controller", generation=generation, expires_at=0.0)

    def held(self) -> LeaseState | None:
        return self._holding.held()

    def last_generation(self) -> int | None:
        """The generation this process last held (kept after losing it: see ``Holding``)."""
        return self._holding.last_generation

    def fence(self, generation: int | None, what: str) -> None:
        self._holding.fence(generation, what)
