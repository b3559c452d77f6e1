"""The controller's shared state in RADOS: one fenced object, written only by the leader.

Where it sits: under ``state: {kind: rados}`` of the controller file, next to the RADOS lease
(``autoscaler.runtime.rados_lease``). ``FencedObject`` is the one place that writes the
leader's state to the cluster; the journal (``autoscaler.runtime.rados_journal``) and the
memory record keep their keys in it, so a controller on another machine reads what the last
leader did.

**Fencing at the store.** The object's omap holds ``fence``: the lease generation of the
leader that claimed it last, zero-padded to a fixed width. A new leader claims the object as
soon as it holds the lease (``claim``), before it reconciles or acts: a compare-and-set of
``fence`` from the value it read (lower than its generation) to its generation. Every later
write is one atomic write op that first checks (``omap_cmp``, equal) that ``fence`` is still the
writer's generation, then sets its keys. From the claim on, a deposed leader's write is refused
by the OSD (``ECANCELED``), whatever its own clock or memory says, and raises ``StoreFenced``.

**A write that timed out** may or may not have been applied: it is settled by reading the keys
back, never assumed either way.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import rados

from autoscaler.model import ConfigError, ConfigProblem, DeposedLeader, TemporaryError

STATE_OBJECT = "autoscaler.state"
FENCE_KEY = "fence"
SCHEMA_KEY = "schema_version"
STATE_SCHEMA_VERSION = 1
"""The newest layout of the state objects this code reads and writes."""
CLAIM_ATTEMPTS = 10
GENERATION_DIGITS = 20
LIST_PAGE = 1000


class StoreFenced(DeposedLeader):
    """The cluster refused a write: a newer leader has claimed the state."""


class StoreUnavailable(TemporaryError):
    """The cluster did not take or answer a read or write in time (OSDs down, no monitor)."""


def padded(generation: int) -> bytes:
    """A generation as bytes that sort as the number (the OSD compares omap values as bytes)."""
    if generation < 0 or generation >= 10**GENERATION_DIGITS:
        raise ValueError(f"a lease generation must fit {GENERATION_DIGITS} digits: {generation}")
    return f"{generation:0{GENERATION_DIGITS}d}".encode()


class FencedObject:
    """One RADOS object whose omap only the current leader writes."""

    def __init__(
        self,
        ioctx: Any,
        writer: Callable[[], int | None],
        obj: str = STATE_OBJECT,
    ) -> None:
        """``writer`` gives the generation this process last held the lease at (None: it never
        did, and every write is refused before it is sent)."""
        self.ioctx = ioctx
        self.writer = writer
        self.obj = obj

    # -- writes ---------------------------------------------------------------------------
    def claim(self, generation: int) -> None:
        """Raise the fence to ``generation`` (the new leader's first write), refusing a state
        laid out by a newer controller (``ConfigError`` on ``schema_version``) and a fence
        already at or above it (``StoreFenced``)."""
        self._ensure_exists()
        for _ in range(CLAIM_ATTEMPTS):
            stored = self.read([SCHEMA_KEY, FENCE_KEY])
            _check_schema(self.obj, stored.get(SCHEMA_KEY))
            fence = stored.get(FENCE_KEY, padded(0))
            if _number(fence) >= generation:
                raise StoreFenced(
                    f"{self.obj}: generation {_number(fence)} has claimed it already; a claim"
                    f" under {generation} is refused"
                )
            try:
                self._operate(
                    {SCHEMA_KEY: str(STATE_SCHEMA_VERSION).encode()}, (), generation, fence
                )
                return
            except StoreFenced:
                continue  # another claim came between the read and the write: read again
        raise StoreUnavailable(f"{self.obj}: the fence kept changing while claiming it")

    def write(self, values: Mapping[str, bytes], remove: Iterable[str] = ()) -> None:
        """Set ``values`` and remove ``remove`` in one write, if the fence is still this
        process's generation (no newer leader claimed the object); ``StoreFenced`` otherwise."""
        generation = self.writer()
        if generation is None:
            raise StoreFenced(f"{self.obj}: this process never held the lease; refusing to write")
        self._operate(values, tuple(remove), generation, padded(generation))

    def _operate(
        self,
        values: Mapping[str, bytes],
        remove: tuple[str, ...],
        generation: int,
        expected_fence: bytes,
    ) -> None:
        """One atomic write op: the fence must equal ``expected_fence`` (the OSD compares; the
        Pacific binding offers EQ, LT and GT only, and EQ says exactly what is meant), then the
        fence becomes ``generation`` and ``values`` are set, ``remove`` removed."""
        mine = padded(generation)
        keys = (FENCE_KEY, *values)
        data = (mine, *values.values())
        with rados.WriteOpCtx() as op:
            op.omap_cmp(FENCE_KEY, expected_fence.decode(), rados.LIBRADOS_CMPXATTR_OP_EQ)
            self.ioctx.set_omap(op, keys, data)
            if remove:
                self.ioctx.remove_omap_keys(op, remove)
            try:
                self.ioctx.operate_write_op(op, self.obj)
            except rados.TimedOut as exc:
                self._settle_timed_out(values, remove, mine, exc)
            except rados.Error as exc:
                if errno_of(exc) == errno.ECANCELED:
                    fence = self.fence()
                    raise StoreFenced(
                        f"{self.obj}: written under lease generation {generation}, but"
                        f" generation {fence} has claimed it; the cluster refused the write"
                    ) from exc
                raise StoreUnavailable(f"{self.obj}: write failed: {exc}", retry_after=2) from exc

    def _settle_timed_out(
        self,
        values: Mapping[str, bytes],
        remove: tuple[str, ...],
        mine: bytes,
        cause: Exception,
    ) -> None:
        """Read back what a timed-out write would have left: applied, or raise."""
        try:
            now = self.read([FENCE_KEY, *values, *remove])
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{self.obj}: a write timed out and cannot be read back: {exc}", retry_after=2
            ) from cause
        applied = (
            now.get(FENCE_KEY) == mine
            and all(now.get(k) == v for k, v in values.items())
            and not any(k in now for k in remove)
        )
        if not applied:
            raise StoreUnavailable(
                f"{self.obj}: a write timed out and was not applied (read back)", retry_after=2
            ) from cause

    def _ensure_exists(self) -> None:
        """Create the object with fence 0 unless it exists (an exclusive create)."""
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            self.ioctx.set_omap(op, (FENCE_KEY,), (padded(0),))
            try:
                self.ioctx.operate_write_op(op, self.obj)
            except rados.ObjectExists:
                return
            except rados.Error as exc:
                if errno_of(exc) == errno.EEXIST:
                    return
                raise StoreUnavailable(f"{self.obj}: cannot create: {exc}", retry_after=2) from exc

    # -- reads ----------------------------------------------------------------------------
    def read(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of ``keys`` that exist (an empty dict when the object does not)."""
        return read_keys(self.ioctx, self.obj, keys)

    def scan(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """Keys beginning with ``prefix`` after ``start_after``, in key order."""
        return scan_keys(self.ioctx, self.obj, prefix, start_after, limit)

    def fence(self) -> int:
        """The generation that last claimed or wrote the object (0: none yet)."""
        return max(0, _number(self.read([FENCE_KEY]).get(FENCE_KEY, b"0")))


def read_keys(ioctx: Any, obj: str, keys: Iterable[str]) -> dict[str, bytes]:
    """The omap values of ``keys`` of ``obj`` that exist (empty when the object does not)."""
    wanted = tuple(keys)
    if not wanted:
        return {}
    try:
        with rados.ReadOpCtx() as op:
            it, _ = ioctx.get_omap_vals_by_keys(op, wanted)
            ioctx.operate_read_op(op, obj)
            return {k: bytes(v or b"") for k, v in it}
    except rados.ObjectNotFound:
        return {}
    except rados.Error as exc:
        raise StoreUnavailable(f"{obj}: read failed: {exc}", retry_after=2) from exc


def scan_keys(
    ioctx: Any, obj: str, prefix: str, start_after: str = "", limit: int | None = None
) -> list[tuple[str, bytes]]:
    """The omap keys of ``obj`` beginning with ``prefix`` after ``start_after``, in key order
    (at most ``limit``), read a page at a time."""
    out: list[tuple[str, bytes]] = []
    after = start_after
    while limit is None or len(out) < limit:
        page = LIST_PAGE if limit is None else min(LIST_PAGE, limit - len(out))
        try:
            with rados.ReadOpCtx() as op:
                it, _ = ioctx.get_omap_vals(op, after, prefix, page)
                ioctx.operate_read_op(op, obj)
                got = [(k, bytes(v or b"")) for k, v in it]
        except rados.ObjectNotFound:
            return out
        except rados.Error as exc:
            raise StoreUnavailable(f"{obj}: read failed: {exc}", retry_after=2) from exc
        out += got
        if len(got) < page:
            break
        after = got[-1][0]
    return out


def errno_of(exc: Exception) -> int | None:
    """The (positive) errno a rados error carries, if any."""
    code = getattr(exc, "errno", None)
    return abs(code) if isinstance(code, int) else None


def _number(value: bytes) -> int:
    try:
        return int(value.decode())
    except ValueError:
        return -1


def _check_schema(obj: str, stored: bytes | None) -> None:
    """``ConfigError`` when the state was laid out by a newer controller."""
    version = _number(stored) if stored is not None else 0
    if version > STATE_SCHEMA_VERSION:
        raise ConfigError(
            f"rados object {obj}",
            [
                ConfigProblem(
                    line=None,
                    field="schema_version",
                    message=f"{version} is newer than this controller reads"
                    f" ({STATE_SCHEMA_VERSION}): the shared state was written by a newer"
                    " controller; run that one",
                )
            ],
        )
