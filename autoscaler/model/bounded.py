"""Bounded calls to one host: at most one call in flight, a deadline, a breaker with backoff.

Where it sits: in the vocabulary, because the eyes (``collectors``: each libvirt, Ceph, node
collector's read) and the hands (``actuators.connections``: opening a libvirt connection) both
call hosts that may hang, and neither may import the other. A hung libvirtd never answers: a
call to it neither returns nor raises, so a breaker that counts failures when calls end (as
pybreaker does) would never open. Here the call runs on a worker thread the caller waits for up
to its deadline; while that worker has not returned, the host is *busy* and is not called again
(the caller gets a ``TemporaryError`` at once, and its scope goes stale). So a hung host costs
one thread and one socket, whatever the number of cycles. Failures and deadlines open the
breaker for a backoff that doubles (up to a cap) while the host keeps failing; one trial call is
let through when it ends, and one success closes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from autoscaler.model.errors import TemporaryError

T = TypeVar("T")


class HostBusy(TemporaryError):
    """The host's previous call has not returned yet, or its breaker is open: not called."""


@dataclass
class Breaker:
    """Consecutive failures open it for ``base_s * 2**(opens-1)`` seconds (at most ``max_s``)."""

    threshold: int = 2
    base_s: float = 2.0
    max_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opens: int = 0
    open_until: float = 0.0

    def refusal(self) -> str | None:
        """Why a call may not be made now (the breaker is open), else None."""
        left = self.open_until - self.clock()
        if left > 0:
            return f"circuit open after {self.failures} failure(s), next try in {left:.0f} s"
        return None

    def backoff_s(self) -> float:
        return float(min(self.max_s, self.base_s * 2.0 ** max(0, self.opens - 1)))

    def success(self) -> None:
        self.failures = 0
        self.opens = 0
        self.open_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opens += 1
            self.open_until = self.clock() + self.backoff_s()


class BoundedCaller(Generic[T]):
    """Calls to one host (``what`` names it in errors), one at a time, each within a deadline."""

    def __init__(self, what: str, breaker: Breaker | None = None) -> None:
        self.what = what
        self.breaker = breaker if breaker is not None else Breaker()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._since = 0.0

    def busy_for(self) -> float | None:
        """Seconds the previous call has been running without returning, else None."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return time.monotonic() - self._since
            return None

    def refusal(self) -> str | None:
        """Why a call would not be made now (its previous call stuck, its breaker open)."""
        with self._lock:
            return self._refusal()

    def _refusal(self) -> str | None:
        if self._worker is not None and self._worker.is_alive():
            stuck = time.monotonic() - self._since
            return f"{self.what}: previous call still running after {stuck:.0f} s; not called again"
        refusal = self.breaker.refusal()
        return f"{self.what}: {refusal}" if refusal is not None else None

    def call(self, work: Callable[[], T], timeout_s: float) -> T:
        """``work()``'s answer; ``HostBusy`` without calling if the host's last call is still
        running or its breaker is open; ``TemporaryError`` if no answer within ``timeout_s``.

        Any exception of ``work`` counts as a failure of the host. A call that answers after
        its deadline still tells the breaker how it ended (a host back after a hang is called
        again at once, not after the backoff)."""
        box: dict[str, object] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:
                box["error"] = exc
            with self._lock:
                if "error" in box:
                    self.breaker.failure()
                else:
                    self.breaker.success()
            done.set()

        with self._lock:
            refusal = self._refusal()
            if refusal is not None:
                # No retry hint: waiting within one action does not help; the caller's next
                # cycle asks again (and is refused at once while this holds).
                raise HostBusy(refusal, retry_after=0)
            worker = threading.Thread(target=run, name=f"call-{self.what}", daemon=True)
            self._worker = worker
            self._since = time.monotonic()
            worker.start()
        if not done.wait(timeout_s):
            with self._lock:
                self.breaker.failure()
            raise TemporaryError(
                f"{self.what}: no answer within {timeout_s:g} s", retry_after=timeout_s
            )
        error = box.get("error")
        if isinstance(error, BaseException):
            raise error
        return box["value"]  # type: ignore[return-value]


class BoundedCallers:
    """One ``BoundedCaller`` per key (a host, a URI), made on first use; thread-safe."""

    def __init__(self, breaker: Callable[[], Breaker] = Breaker) -> None:
        self._make_breaker = breaker
        self._callers: dict[str, BoundedCaller[object]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, what: str | None = None) -> BoundedCaller[object]:
        """The caller of ``key``; ``what`` names it in errors (default: the key itself)."""
        with self._lock:
            caller = self._callers.get(key)
            if caller is None:
                caller = BoundedCaller(what or key, self._make_breaker())
                self._callers[key] = caller
            return caller

    def refusals(self) -> dict[str, str]:
        """Key -> why it would not be called now, for every key that would not."""
        with self._lock:
            callers = dict(self._callers)
        out = {}
        for key, caller in callers.items():
            refusal = caller.refusal()
            if refusal is not None:
                out[key] = refusal
        return out
