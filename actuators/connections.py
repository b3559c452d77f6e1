"""One libvirt connection per host, reused across actuator phases, actions and cycles.

Where it sits: under ``Fleet.connection`` and the journal's domain stamper. Opening a
``qemu+tls`` connection costs a TLS handshake and an authentication; a controller that acts on
many hosts every few seconds should not pay it per phase. A connection is health-checked before
each reuse (``isAlive``, which asks no RPC of the host), and one that saw an error is dropped
from the pool and closed once the last thread using it is done (libvirt connections are shared
by threads; closing one under another thread's call would break that call).

Bounded when a host hangs: a connection is opened within ``connect_timeout_s`` (libvirt has no
connect timeout of its own: a SIGSTOPped libvirtd accepts the TCP connection and never answers
the handshake), one open per URI at a time (an open still stuck makes the next caller fail at
once instead of adding a thread and a socket), behind a per-URI breaker with backoff. Every
connection gets libvirt keepalives (``open_connection``), so a call on a connection whose peer
stopped answering fails after ``KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1)`` seconds instead of
holding its thread forever.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import libvirt

from actuators.libvirt_events import ensure_event_loop
from autoscaler.model.bounded import BoundedCallers, Breaker

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
CONNECT_TIMEOUT_S = 10.0


def open_connection(uri: str) -> libvirt.virConnect:
    """``libvirt.open(uri)`` with keepalives on (libvirt's event loop runs them); a driver
    without keepalives (``test:///``, a local socket) is used as it is."""
    ensure_event_loop()
    conn = libvirt.open(uri)
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


@dataclass
class _Entry:
    conn: libvirt.virConnect
    users: int = 0
    broken: bool = False


class LibvirtPool:
    """Connections by URI; ``connection(uri)`` lends one for the length of a ``with`` block."""

    def __init__(
        self,
        connect: Callable[[str], libvirt.virConnect] = open_connection,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        breaker: Callable[[], Breaker] = Breaker,
    ) -> None:
        self._connect = connect
        self.connect_timeout_s = connect_timeout_s
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        # One opener per URI at a time, within a deadline: a host that hangs at connect holds
        # one thread and one socket, and its callers fail at once while it does.
        self._openers = BoundedCallers(breaker)
        self._closed = False

    def unreachable(self) -> dict[str, str]:
        """URI -> why no connection would be opened to it now (an open stuck, its breaker
        open); a URI with a live connection in the pool is not listed."""
        refusals = self._openers.refusals()
        with self._lock:
            live = set(self._entries)
        return {uri: why for uri, why in refusals.items() if uri not in live}

    @contextlib.contextmanager
    def connection(self, uri: str) -> Iterator[libvirt.virConnect]:
        """A live connection to ``uri``; libvirt's error if the host cannot be reached. Any
        exception out of the block retires the connection (the next caller opens a new one)."""
        entry = self.acquire(uri)
        try:
            yield entry.conn
        except BaseException:
            self.release(uri, entry, broken=True)
            raise
        self.release(uri, entry, broken=False)

    def acquire(self, uri: str) -> _Entry:
        """Lend a live connection (``.conn``); give it back with ``release``. libvirt's error
        if the host refuses; ``TemporaryError`` if it does not answer within the connect
        timeout, is still answering an earlier open, or its breaker is open."""
        with self._lock:
            if self._closed:
                raise libvirt.libvirtError("the connection pool is closed")
            entry = self._usable(uri)
            if entry is not None:
                entry.users += 1
                return entry
        self._openers(uri, f"connect to {_label(uri)}").call(
            lambda: self._open(uri), self.connect_timeout_s
        )
        with self._lock:  # opened now (or by another thread meanwhile)
            entry = self._usable(uri)
            if entry is None:
                raise libvirt.libvirtError(f"the connection to {uri} closed at once")
            entry.users += 1
            return entry

    def _open(self, uri: str) -> None:
        """Open ``uri`` into the pool (an open that answers after its deadline still lands
        there, for the next caller)."""
        with self._lock:
            if self._usable(uri) is not None:
                return
        conn = self._connect(uri)
        with self._lock:
            if self._closed:
                _close(conn)
                return
            self._entries[uri] = _Entry(conn)

    def _usable(self, uri: str) -> _Entry | None:
        entry = self._entries.get(uri)
        if entry is None:
            return None
        alive = False
        if not entry.broken:
            try:
                alive = entry.conn.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
        if alive:
            return entry
        self._retire(uri, entry)
        return None

    def release(self, uri: str, entry: _Entry, *, broken: bool) -> None:
        with self._lock:
            entry.users -= 1
            if broken:
                self._retire(uri, entry)
            elif entry.broken and entry.users == 0:
                _close(entry.conn)

    def _retire(self, uri: str, entry: _Entry) -> None:
        """Out of the pool at once; closed now if unused, else by its last user."""
        entry.broken = True
        if self._entries.get(uri) is entry:
            del self._entries[uri]
        if entry.users == 0:
            _close(entry.conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for uri, entry in list(self._entries.items()):
                self._retire(uri, entry)


def _label(uri: str) -> str:
    """``uri`` without user, path or query (a ``pkipath``, a password): safe in errors."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _close(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
