"""libvirt's event loop, needed for non-blocking streams (guest channels) and domain events.

Where it sits: called once by any process that talks to guests over channels (the actuators'
readiness probe, the lab load driver) before it opens its libvirt connections. libvirt's
event-loop implementation is process-wide by its own design; this only makes starting it
idempotent and keeps it on one daemon thread.
"""

from __future__ import annotations

import threading

import libvirt

_lock = threading.Lock()
_started = threading.Event()


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread."""
    with _lock:
        if _started.is_set():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _started.set()
