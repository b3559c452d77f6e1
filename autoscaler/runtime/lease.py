"""The leader lease: one actor at a time, fenced by a generation that never goes back.

Where it sits: the controller (and ``autoscaler apply``) takes the lease before it acts and
renews it from its own job, independent of long actions; every action carries the lease
generation it was decided under, and the executor calls ``fence`` before every side effect:
only the current holder, at exactly that generation, inside its monotonic deadline, acts.

Two rules make the fence hold without trusting anyone's wall clock:

- **The holder's deadline** is its own monotonic clock at the moment it *asked* for the lease
  (or its renewal) plus the duration, less a margin for clock-rate drift. The store's expiry is
  counted from later, so a holder cut off from the store stops first.
- **A candidate waits on its own clock.** ``FileLease`` never compares the expiry written by
  another machine with its own wall clock: like client-go's leader election, a candidate takes
  over only once it has seen the same record, unchanged, for a whole duration on its own
  monotonic clock (or the holder released it). ``RadosLease`` leaves expiry to the OSD.

A new generation is max(the store's, ``floor()``) + 1, where ``floor`` is the highest
generation in the journal: a lost or garbled lease record cannot restart the count and let an
old plan pass the fence.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import Field

from autoscaler.model import DeposedLeader, Lease, LeaseState, TemporaryError
from autoscaler.model.topology import Frozen
from autoscaler.runtime.private_files import write_private_atomic

LOCK_WAIT_S = 2.0
# Monotonic clocks of two machines may run at slightly different rates (NTP slews at most
# 500 ppm); a holder gives its lease up this share earlier than the store would.
DRIFT = 0.02


def no_floor() -> int:
    return 0


@dataclass
class Holding:
    """What a holder knows about its own lease: the state and its monotonic deadline."""

    monotonic: Callable[[], float]
    state: LeaseState | None = None
    valid_until: float = 0.0
    last_generation: int | None = None
    """The generation this process last held, kept after the lease is lost: what a guarded
    write at the store carries, so the store (not this process) judges whether it is stale."""

    def granted(self, state: LeaseState, asked_at: float, duration_s: float) -> LeaseState:
        self.state = state
        self.last_generation = state.generation
        self.valid_until = asked_at + duration_s * (1 - DRIFT)
        return state

    def lost(self) -> None:
        self.state = None
        self.valid_until = 0.0

    def held(self) -> LeaseState | None:
        if self.state is not None and self.monotonic() < self.valid_until:
            return self.state
        return None

    def fence(self, generation: int | None, what: str) -> None:
        state = self.state
        if state is None:
            raise DeposedLeader(f"{what}: this process does not hold the lease; refusing to act")
        if self.monotonic() >= self.valid_until:
            raise DeposedLeader(
                f"{what}: the lease (generation {state.generation}) was not renewed in time;"
                " refusing to act until it is"
            )
        if generation is None:
            raise DeposedLeader(f"{what}: decided under no lease generation; refusing to act")
        if generation != state.generation:
            raise DeposedLeader(
                f"{what}: decided under lease generation {generation},"
                f" this process holds {state.generation}"
            )


class LeaseRecord(Frozen):
    holder: str = Field(min_length=1)
    generation: int = Field(ge=0)
    expires_at: float
    """Wall-clock time for people to read; no decision compares it with another clock."""
    duration_s: float = Field(gt=0)
    renewal: int = Field(default=0, ge=0)
    """Bumped by every renewal, so a candidate sees the record change while the holder lives."""
    released: bool = False


class FileLease:
    """A time-bound lease recorded in ``path`` (the ``Lease`` protocol)."""

    def __init__(
        self,
        path: Path,
        holder: str,
        duration_s: float,
        *,
        floor: Callable[[], int] = no_floor,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        self.path = path
        self.holder = holder
        self.duration_s = duration_s
        self.floor = floor
        self.monotonic = monotonic
        self._holding = Holding(monotonic)
        self._record: LeaseRecord | None = None
        # The other holder's record as this candidate last saw it, and when (monotonic).
        self._seen: tuple[str, float] | None = None

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

    def _read(self) -> tuple[str, LeaseRecord | None]:
        """The raw record and its parsed form; a torn or garbled record parses as None."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return "", None
        except OSError as exc:
            raise TemporaryError(f"cannot read the lease: {exc}", retry_after=2) from exc
        try:
            return raw, LeaseRecord.model_validate(json.loads(raw))
        except ValueError:
            return raw, None

    def _write(self, record: LeaseRecord) -> None:
        try:
            write_private_atomic(self.path, record.model_dump_json())
        except OSError as exc:  # a full disk (or a planted symlink): we simply do not lead
            raise TemporaryError(f"cannot write the lease: {exc}", retry_after=5) from exc
        self._record = record

    def _expired_for_me(self, raw: str, record: LeaseRecord | None) -> bool:
        """Whether a record that is not this process's live holding may be taken over: seen
        unchanged for a whole duration on this process's monotonic clock."""
        now = self.monotonic()
        if self._seen is None or self._seen[0] != raw:
            self._seen = (raw, now)
            return False
        duration = record.duration_s if record is not None else self.duration_s
        return now - self._seen[1] >= duration

    def try_acquire(self, now: float) -> LeaseState | None:
        asked_at = self.monotonic()
        ever_taken = self.path.with_suffix(".lock").exists()
        with self._locked():
            raw, record = self._read()
            # Ours, by this process: also after our deadline passed (a late renewal), the record
            # unchanged under the lock proves nobody took over meanwhile; keep the generation.
            mine = self._holding.state
            if (
                mine is not None
                and record is not None
                and record.holder == self.holder
                and record.generation == mine.generation
                and not record.released
            ):
                return self._grant(record, now, asked_at)
            never_taken = record is None and raw == "" and not ever_taken
            # Held by someone (another machine, or a frozen process under our own name), or
            # lost or garbled while its holder may still act: wait a whole duration.
            contested = not never_taken and (record is None or not record.released)
            if contested and not self._expired_for_me(raw, record):
                self._holding.lost()
                return None
            self._seen = None
            generation = max(record.generation if record else 0, self.floor()) + 1
            fresh = LeaseRecord(
                holder=self.holder,
                generation=generation,
                expires_at=now + self.duration_s,
                duration_s=self.duration_s,
            )
            return self._grant(fresh, now, asked_at, renewal=0)

    def _grant(
        self, record: LeaseRecord, now: float, asked_at: float, renewal: int | None = None
    ) -> LeaseState:
        updated = record.model_copy(
            update={
                "expires_at": now + self.duration_s,
                "duration_s": self.duration_s,
                "renewal": record.renewal + 1 if renewal is None else renewal,
                "released": False,
            }
        )
        self._write(updated)
        state = LeaseState(
            holder=self.holder, generation=updated.generation, expires_at=updated.expires_at
        )
        return self._holding.granted(state, asked_at, self.duration_s)

    def renew(self, now: float) -> LeaseState:
        asked_at = self.monotonic()
        with self._locked():
            _, record = self._read()
            mine = self._holding.state
            if (
                mine is None
                or record is None
                or record.holder != self.holder
                or record.generation != mine.generation
                or record.released
            ):
                self._holding.lost()
                raise DeposedLeader(
                    f"{self.holder} no longer holds the lease"
                    + (f" (now {record.holder}, generation {record.generation})" if record else "")
                )
            return self._grant(record, now, asked_at)

    def release(self) -> None:
        with self._locked():
            _, record = self._read()
            mine = self._holding.state
            if (
                record is not None
                and mine is not None
                and record.holder == self.holder
                and record.generation == mine.generation
            ):
                self._write(record.model_copy(update={"released": True, "expires_at": 0.0}))
            self._holding.lost()

    def current(self) -> LeaseState | None:
        _, record = self._read()
        if record is None or record.released:
            return None
        return LeaseState(
            holder=record.holder, generation=record.generation, expires_at=record.expires_at
        )

    def held(self) -> LeaseState | None:
        return self._holding.held()

    def fence(self, generation: int | None, what: str) -> None:
        self._holding.fence(generation, what)


class Renewing:
    """Keeps a lease taken for as long as a block runs (``autoscaler apply``, the benchmarks,
    the actuator tests): renews it from a thread every third of its duration and releases it at
    the end. A renewal that fails leaves the lease to run out, so the fence stops the block's
    next side effect: that is the point."""

    def __init__(self, lease: Lease, every_s: float) -> None:
        self.lease = lease
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewal", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.lease.renew(time.time())
            except (DeposedLeader, TemporaryError):
                return

    def __enter__(self) -> LeaseState:
        state = self.lease.held()
        if state is None:
            raise DeposedLeader("the lease must be taken before it is kept")
        self._thread.start()
        return state

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + LOCK_WAIT_S)
        self.lease.release()


def taken_file_lease(folder: Path, holder: str, duration_s: float = 15.0) -> FileLease:
    """A ``FileLease`` in ``folder`` taken at once (a folder of its own: nobody else holds it)."""
    lease = FileLease(folder / "lease", holder, duration_s)
    if lease.try_acquire(time.time()) is None:
        raise DeposedLeader(f"the lease in {folder} is held by someone else")
    return lease
