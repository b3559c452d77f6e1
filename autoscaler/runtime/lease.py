"""The leader lease: one actor at a time.

Where it sits: the controller takes the lease before it acts and renews it from its own job,
independent of long actions; every action carries the lease generation it was decided under and
the executor refuses one whose generation is not the current one. ``FileLease`` keeps the
record (holder, generation, expiry) in a file of the state folder, changed only under an flock:
a leader that crashes or freezes stops renewing, its lease expires, and a standby takes over
with a new generation. A frozen leader that wakes up finds itself deposed on its next renew.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from autoscaler.model import DeposedLeader, LeaseState, TemporaryError

LOCK_WAIT_S = 2.0


class FileLease:
    """A time-bound lease recorded in ``path`` (the ``Lease`` protocol)."""

    def __init__(self, path: Path, holder: str, duration_s: float) -> None:
        if duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        self.path = path
        self.holder = holder
        self.duration_s = duration_s
        self._held: LeaseState | None = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise TemporaryError(f"cannot open the lease lock: {exc}", retry_after=2) from exc
        with lock:
            self._flock(lock)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _flock(lock: IO[str]) -> None:
        # Never wait without end: a holder frozen inside its few milliseconds under the lock
        # (SIGSTOP, a paused VM) would otherwise hang this job, and the standby with it.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TemporaryError(
                        f"the lease lock is held for more than {LOCK_WAIT_S:.0f} s "
                        "(its holder frozen?)",
                        retry_after=1,
                    ) from None
                time.sleep(0.02)

    def _read(self) -> LeaseState | None:
        try:
            return LeaseState.model_validate(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return None  # a torn or garbled record is treated as no lease: it is rewritten

    def _write(self, state: LeaseState) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as out:
                out.write(state.model_dump_json())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not crash the loop: we simply do not lead
            raise TemporaryError(f"cannot write the lease: {exc}", retry_after=5) from exc

    def try_acquire(self, now: float) -> LeaseState | None:
        with self._locked():
            current = self._read()
            if current is not None and current.holder != self.holder and current.expires_at > now:
                self._held = None
                return None
            if current is not None and current.holder == self.holder and current.expires_at > now:
                generation = current.generation
            else:
                generation = (current.generation if current is not None else 0) + 1
            state = LeaseState(
                holder=self.holder, generation=generation, expires_at=now + self.duration_s
            )
            self._write(state)
            self._held = state
            return state

    def renew(self, now: float) -> LeaseState:
        with self._locked():
            current = self._read()
            mine = self._held
            if (
                mine is None
                or current is None
                or current.holder != self.holder
                or (current.generation != mine.generation)
            ):
                self._held = None
                raise DeposedLeader(
                    f"{self.holder} no longer holds the lease"
                    + (
                        f" (now {current.holder}, generation {current.generation})"
                        if current
                        else ""
                    )
                )
            state = LeaseState(
                holder=self.holder, generation=mine.generation, expires_at=now + self.duration_s
            )
            self._write(state)
            self._held = state
            return state

    def release(self) -> None:
        with self._locked():
            current = self._read()
            if current is not None and current.holder == self.holder:
                self._write(current.model_copy(update={"expires_at": 0.0}))
            self._held = None

    def current(self) -> LeaseState | None:
        return self._read()

    def held(self, now: float) -> LeaseState | None:
        """Our lease if we still hold it at ``now`` (no file access)."""
        if self._held is not None and self._held.expires_at > now:
            return self._held
        return None
