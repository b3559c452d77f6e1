"""One libvirt connection per host, reused across actuator phases, actions and cycles.

Where it sits: under ``Fleet.connection`` and the journal's domain stamper. Opening a
``qemu+tls`` connection costs a TLS handshake and an authentication; a controller that acts on
many hosts every few seconds should not pay it per phase. A connection is health-checked before
each reuse (``isAlive``, which asks no RPC of the host), and one that saw an error is dropped
from the pool and closed once the last thread using it is done (libvirt connections are shared
by threads; closing one under another thread's call would break that call).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libvirt


@dataclass
class _Entry:
    conn: libvirt.virConnect
    users: int = 0
    broken: bool = False


class LibvirtPool:
    """Connections by URI; ``connection(uri)`` lends one for the length of a ``with`` block."""

    def __init__(self, connect: Callable[[str], libvirt.virConnect] = libvirt.open) -> None:
        self._connect = connect
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        # One opener per URI at a time: a host that hangs at connect holds only its own callers.
        self._opening: dict[str, threading.Lock] = {}
        self._closed = False

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
        """Lend a live connection (``.conn``); give it back with ``release``."""
        with self._lock:
            if self._closed:
                raise libvirt.libvirtError("the connection pool is closed")
            entry = self._usable(uri)
            if entry is not None:
                entry.users += 1
                return entry
            opening = self._opening.setdefault(uri, threading.Lock())
        with opening:
            with self._lock:  # another thread may have opened it meanwhile
                entry = self._usable(uri)
                if entry is not None:
                    entry.users += 1
                    return entry
            conn = self._connect(uri)
            with self._lock:
                entry = _Entry(conn, users=1)
                self._entries[uri] = entry
                return entry

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


def _close(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
