"""Talking to a guest: readiness and what the guest itself sees (online CPUs, MemTotal).

Where it sits: actuators verify their work through it (a clone is done when the guest reports
ready; a hot-add is seen when the guest's own CPU count or MemTotal changes). Readiness is
pluggable (``ReadinessProbe``): a small serial agent on a virtio-serial channel (the lab's guest
runs one), or the QEMU guest agent on guests that run qemu-ga. Everything goes
through libvirt streams, so it works over a remote ``qemu+tcp`` or ``qemu+tls`` URI.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import libvirt

from actuators.domain_xml import AGENT_CHANNEL
from actuators.libvirt_events import ensure_event_loop
from autoscaler.model import TemporaryError

_STATE_RE = re.compile(r"STATE ((?:[a-z_]+=\S*\s*)+)")


@dataclass(frozen=True)
class GuestView:
    """One STATE report of the serial agent.

    The disk fields come from guests that mount their disk (an older guest sends none: the
    defaults say "no disk"): the disk's device name, whether it is mounted, the first 16 hex
    digits of the checksum of the business content found on it, the MiB of data the guest
    wrote there on request, and how many boots the disk has recorded. ``address`` is the
    IPv4 address the guest got on its network (None: no network, or no address yet).
    ``config`` is the template version its config drive says (the drive's VERSION file; "":
    no drive, or an older guest).
    """

    seq: int
    ready: bool
    vm: str
    business: str
    online_cpus: int
    mem_kib: int
    duty: int
    received_at: float
    disk: str = ""
    mounted: bool = False
    content: str = ""
    data_mib: int = 0
    boots: int = 0
    address: str | None = None
    config: str = ""

    @classmethod
    def parse(cls, line: str, received_at: float) -> GuestView | None:
        match = _STATE_RE.search(line)
        if not match:
            return None
        fields = dict(part.split("=", 1) for part in match.group(1).split())
        try:
            return cls(
                seq=int(fields.get("seq", "0")),
                ready=fields.get("ready") == "1",
                vm=fields.get("vm", ""),
                business=fields.get("business", ""),
                online_cpus=int(fields.get("ncpus", "0") or 0),
                mem_kib=int(fields.get("mem_kib", "0") or 0),
                duty=int(fields.get("duty", "0") or 0),
                received_at=received_at,
                disk=_present(fields.get("disk", "")),
                mounted=fields.get("mounted") == "1",
                content=_present(fields.get("content", "")),
                data_mib=int(fields.get("data_mib", "0") or 0),
                boots=int(fields.get("boots", "0") or 0),
                address=_address(fields.get("addr", "")),
                config=_present(fields.get("config", "")),
            )
        except ValueError:
            return None


def _present(value: str) -> str:
    """The guest says ``none`` for a field it has no value for."""
    return "" if value == "none" else value


def _address(value: str) -> str | None:
    """An address the guest reported; ValueError (the line is refused) if it is not one."""
    value = _present(value)
    return str(ipaddress.ip_address(value)) if value else None


class GuestChannel:
    """A non-blocking stream on one named virtio-serial channel of a domain."""

    def __init__(self, conn: libvirt.virConnect, domain: libvirt.virDomain, name: str) -> None:
        ensure_event_loop()
        self._stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        domain.openChannel(name, self._stream, libvirt.VIR_DOMAIN_CHANNEL_FORCE)
        self._buffer = b""
        self._closed = False

    def send_line(self, text: str) -> None:
        data = (text + "\n").encode()
        while data:
            sent = self._stream.send(data)
            if sent == -2:
                time.sleep(0.005)
                continue
            data = data[sent:]

    def read_lines(self) -> list[str]:
        """Whatever complete lines have arrived (never blocks)."""
        while True:
            try:
                chunk = self._stream.recv(65536)
            except libvirt.libvirtError as exc:
                raise TemporaryError(f"guest channel failed: {exc}", retry_after=1) from exc
            if chunk in (-2, b""):
                break
            self._buffer += chunk
            if len(self._buffer) > 1 << 20:  # a guest that floods us is cut off, not buffered
                raise TemporaryError("guest channel flooded", retry_after=5)
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()


class SerialAgent:
    """The serial agent's channel (``org.kvm-autoscaler.agent``): ask for and wait on what the guest
    sees. The guest answers ``ping`` with one line ``STATE seq=N ready=0|1 vm=... business=...
    ncpus=N mem_kib=N ...`` and sends one on every change of its own."""

    def __init__(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> None:
        self._channel = GuestChannel(conn, domain, AGENT_CHANNEL)
        self.latest: GuestView | None = None

    def _drain(self) -> None:
        now = time.monotonic()
        for line in self._channel.read_lines():
            view = GuestView.parse(line, now)
            if view is not None and (self.latest is None or view.seq >= self.latest.seq):
                self.latest = view

    def wait_for(
        self, predicate: Callable[[GuestView], bool], timeout_s: float, poll_s: float = 0.005
    ) -> GuestView | None:
        """The first report satisfying ``predicate`` within ``timeout_s``; pings the guest."""
        deadline = time.monotonic() + timeout_s
        next_ping = 0.0
        while True:
            now = time.monotonic()
            if now >= next_ping:
                self._channel.send_line("ping")
                next_ping = now + 1.0
            self._drain()
            if self.latest is not None and predicate(self.latest):
                return self.latest
            if now >= deadline:
                return None
            time.sleep(poll_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SerialAgent:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class ReadinessProbe(Protocol):
    """Answers "is this guest ready to serve?", and at which address; how depends on what the
    guest runs."""

    name: str

    def wait_ready(
        self, conn: libvirt.virConnect, domain: libvirt.virDomain, timeout_s: float
    ) -> bool: ...

    def address(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> str | None:
        """The address a ready guest reports on its network; None if it reports none."""
        ...


class SerialAgentReadiness:
    name = "serial-agent"

    def wait_ready(
        self, conn: libvirt.virConnect, domain: libvirt.virDomain, timeout_s: float
    ) -> bool:
        with SerialAgent(conn, domain) as agent:
            return agent.wait_for(lambda v: v.ready, timeout_s) is not None

    def address(
        self, conn: libvirt.virConnect, domain: libvirt.virDomain, timeout_s: float = 5.0
    ) -> str | None:
        """From a ready guest's STATE line (one ping: it answers within milliseconds)."""
        with SerialAgent(conn, domain) as agent:
            view = agent.wait_for(lambda v: v.ready, timeout_s)
        return view.address if view is not None else None


class QemuGuestAgentReadiness:
    """Ready when the QEMU guest agent answers ``guest-ping`` (guests that run qemu-ga)."""

    name = "qemu-guest-agent"

    def wait_ready(
        self, conn: libvirt.virConnect, domain: libvirt.virDomain, timeout_s: float
    ) -> bool:
        import libvirt_qemu  # part of libvirt-python

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reply = libvirt_qemu.qemuAgentCommand(domain, '{"execute":"guest-ping"}', 2, 0)
                if "return" in json.loads(reply):
                    return True
            except libvirt.libvirtError:
                pass
            time.sleep(0.2)
        return False

    def address(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> str | None:
        """The first non-loopback IPv4 address qemu-ga lists (``guest-network-get-interfaces``
        through libvirt), None if the agent lists none or does not answer."""
        try:
            interfaces = domain.interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0
            )
        except libvirt.libvirtError:
            return None
        for name, interface in sorted((interfaces or {}).items()):
            for entry in interface.get("addrs") or []:
                if entry.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    continue
                try:
                    address = ipaddress.ip_address(entry.get("addr", ""))
                except ValueError:
                    continue
                if name != "lo" and not address.is_loopback:
                    return str(address)
        return None


READINESS_PROBES: dict[str, Callable[[], ReadinessProbe]] = {
    "serial-agent": SerialAgentReadiness,
    "qemu-guest-agent": QemuGuestAgentReadiness,
}


def readiness_probe(name: str) -> ReadinessProbe:
    try:
        return READINESS_PROBES[name]()
    except KeyError:
        known = ", ".join(sorted(READINESS_PROBES))
        raise ValueError(f"unknown readiness probe {name!r}; known: {known}") from None
