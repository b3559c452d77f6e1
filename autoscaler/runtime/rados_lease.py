"""The leader lease on Ceph: a RADOS exclusive lock on one object, with a generation.

Where it sits: the ``Lease`` used when the controller file configures Ceph, so controllers on
different machines elect one leader through the cluster they already trust. The lock is taken
with a duration and renewed (``LIBRADOS_LOCK_FLAG_RENEW``) by the controller's own lease job,
independent of long actions. The generation lives in the object's data and is bumped by each
new holder while it holds the lock, so only a holder ever writes it.

Pacific's Python binding sets the expiry imprecisely (a 2 s lock expired after 3.5-6 s in the
recipes), so ``expires_at`` here is our own conservative view: the moment we last renewed plus
the duration, and the duration should be generous compared with the renew interval.
"""

from __future__ import annotations

import contextlib
from typing import Any

import rados

from autoscaler.model import DeposedLeader, LeaseState, TemporaryError

LOCK_NAME = "autoscaler-leader"
RENEW_FLAG = 1  # LIBRADOS_LOCK_FLAG_RENEW


class RadosLease:
    def __init__(
        self, ioctx: Any, holder: str, duration_s: float, obj: str = "autoscaler.lease"
    ) -> None:
        self.ioctx = ioctx
        self.holder = holder
        self.duration_s = duration_s
        self.obj = obj
        self._held: LeaseState | None = None

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
                duration=int(self.duration_s),
                flags=flags,
            )
        except (rados.ObjectBusy, rados.ObjectExists):
            return False
        except rados.Error as exc:
            raise TemporaryError(f"cannot lock the lease object: {exc}", retry_after=2) from exc
        return True

    def try_acquire(self, now: float) -> LeaseState | None:
        if self._held is not None:
            try:
                return self.renew(now)
            except DeposedLeader:
                return None
        if not self._lock(0):
            return None
        generation = self._generation() + 1
        try:
            self.ioctx.write_full(self.obj, str(generation).encode())
        except rados.Error as exc:
            raise TemporaryError(
                f"cannot write the lease generation: {exc}", retry_after=2
            ) from exc
        self._held = LeaseState(
            holder=self.holder, generation=generation, expires_at=now + self.duration_s
        )
        return self._held

    def renew(self, now: float) -> LeaseState:
        if self._held is None:
            raise DeposedLeader(f"{self.holder} does not hold the lease")
        if not self._lock(RENEW_FLAG) or self._generation() != self._held.generation:
            self._held = None
            raise DeposedLeader(f"{self.holder} lost the lease")
        self._held = self._held.model_copy(update={"expires_at": now + self.duration_s})
        return self._held

    def release(self) -> None:
        if self._held is None:
            return
        with contextlib.suppress(rados.Error):
            self.ioctx.unlock(self.obj, LOCK_NAME, self.holder)
        self._held = None

    def current(self) -> LeaseState | None:
        """The generation on the cluster; the holder is known only when it is us (the Pacific
        binding cannot list lockers)."""
        generation = self._generation()
        if generation == 0:
            return None
        if self._held is not None and self._held.generation == generation:
            return self._held
        return LeaseState(holder="another controller", generation=generation, expires_at=0.0)

    def held(self, now: float) -> LeaseState | None:
        if self._held is not None and self._held.expires_at > now:
            return self._held
        return None
