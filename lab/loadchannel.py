"""The lab guest's load channel: the lab load balancer sets each guest's CPU duty through it.

Where it sits: used by the lab's load driver only (the product never sets a guest's load). The
channel is one more virtio-serial port every lab guest gets (``guest_channels`` in the lab's
controller file, so the controller's clones have it too); the guest's init answers each
``duty N`` with ``ACK vm=... duty=N``, each ``hold N`` (keep N MiB of its memory in use)
with ``HELD vm=... mib=N``, and each ``fill N`` (write N MiB of random data to its disk, synced)
with ``FILLED vm=... mib=N``. ``fill_disk`` is the one-shot form of ``fill`` for a test or a
benchmark that talks to one guest itself.
"""

from __future__ import annotations

import re
import time

import libvirt

from actuators.guest_agent import GuestChannel

LOAD_CHANNEL = "org.lab.load"


class LoadChannel:
    """The lab guest's load channel: set the guest's CPU duty (0-100 % of each vCPU)."""

    def __init__(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> None:
        self._channel = GuestChannel(conn, domain, LOAD_CHANNEL)
        self.held_mib: int | None = None
        """What the guest last said it holds (None: no ``hold`` answered yet)."""
        self.filled_mib: int | None = None
        """What the guest last said its fill file holds (None: no ``fill`` answered yet)."""

    def set_duty(self, duty: int) -> None:
        self._channel.send_line(f"duty {max(0, min(100, int(duty)))}")

    def hold(self, mib: int) -> None:
        """Make the guest keep ``mib`` MiB in use (bounded by the guest); 0 frees it."""
        self._channel.send_line(f"hold {max(0, min(9999, int(mib)))}")

    def fill(self, mib: int) -> None:
        """Make the guest write ``mib`` MiB of random data to its disk (replacing an earlier
        fill; bounded by the guest: at most 512 MiB and its free space); 0 removes it."""
        self._channel.send_line(f"fill {max(0, min(9999, int(mib)))}")

    def acknowledged(self) -> int | None:
        """The last duty the guest acknowledged since the previous call, if any."""
        last = None
        for line in self._channel.read_lines():
            match = re.search(r"ACK vm=\S* duty=(\d+)", line)
            if match:
                last = int(match.group(1))
            held = re.search(r"HELD vm=\S* mib=(\d+)", line)
            if held:
                self.held_mib = int(held.group(1))
            filled = re.search(r"FILLED vm=\S* mib=(\d+)", line)
            if filled:
                self.filled_mib = int(filled.group(1))
        return last

    def close(self) -> None:
        self._channel.close()


def fill_disk(
    conn: libvirt.virConnect, domain: libvirt.virDomain, mib: int, timeout_s: float = 120.0
) -> int:
    """Have the guest write ``mib`` MiB to its disk and wait until it says so; returns the MiB
    it wrote (less than asked when its filesystem is short of room). A port allows one reader:
    this takes it over from the lab's load driver, which then takes it back on its next tick;
    with the load driver running, prefer the demand file's ``"fill_mib": {"web-1": 64}``.
    Raises ``TimeoutError`` when no ``FILLED`` comes in time (random data is slow under TCG:
    allow about a second per 8 MiB)."""
    channel = LoadChannel(conn, domain)
    try:
        channel.fill(mib)
        deadline = time.monotonic() + timeout_s
        while channel.filled_mib is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{domain.name()}: no FILLED within {timeout_s:.0f} s")
            channel.acknowledged()
            time.sleep(0.05)
        return channel.filled_mib
    finally:
        channel.close()
