"""The lab guest's load channel: the lab load balancer sets each guest's CPU duty through it.

Where it sits: used by the lab's load driver only (the product never sets a guest's load). The
channel is one more virtio-serial port every lab guest gets (``guest_channels`` in the lab's
controller file, so the controller's clones have it too); the guest's init answers each
``duty N`` with ``ACK vm=... duty=N``, and each ``hold N`` (keep N MiB of its memory in use)
with ``HELD vm=... mib=N``.
"""

from __future__ import annotations

import re

import libvirt

from actuators.guest_agent import GuestChannel

LOAD_CHANNEL = "org.lab.load"


class LoadChannel:
    """The lab guest's load channel: set the guest's CPU duty (0-100 % of each vCPU)."""

    def __init__(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> None:
        self._channel = GuestChannel(conn, domain, LOAD_CHANNEL)
        self.held_mib: int | None = None
        """What the guest last said it holds (None: no ``hold`` answered yet)."""

    def set_duty(self, duty: int) -> None:
        self._channel.send_line(f"duty {max(0, min(100, int(duty)))}")

    def hold(self, mib: int) -> None:
        """Make the guest keep ``mib`` MiB in use (bounded by the guest); 0 frees it."""
        self._channel.send_line(f"hold {max(0, min(9999, int(mib)))}")

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
        return last

    def close(self) -> None:
        self._channel.close()
