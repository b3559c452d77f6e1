"""DPDK port rates and drops read through the telemetry v2 socket (AF_UNIX, SOCK_SEQPACKET).

Where it sits: a collector, first stage of the flow. Each ``collect`` connects to one DPDK
process's telemetry socket, asks ``/ethdev/list``, then ``/ethdev/stats,N`` and
``/ethdev/xstats,N`` per port, and turns counter deltas since the previous call into per-port
packet/byte rates and ``imissed``/``ierrors``/``rx_nombuf`` rates (plus the driver's own
error/drop xstats). The first call after a start or a restart (new pid, a counter going back)
gives counters but no rates: a rate is never invented as zero. Every reply is bounded and
checked; a malformed, truncated or hostile one is a ``MalformedReply``; a process that died or
does not answer within ``timeout_s`` makes the host stale.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from autoscaler.model import PermanentError, Sample, Scope, SignalName, TemporaryError
from autoscaler.model.names import check_name
from collectors.base import Collection, LastGood
from collectors.common import MalformedReply, all_stale, expect, member, scoped

MAX_REPLY_BYTES = 1 << 20
MAX_PORTS = 1024  # RTE_MAX_ETHPORTS
MAX_XSTATS = 4096
COUNTER_LIMIT = 1 << 64
STATS = ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")
RATE_NAMES = {
    "ipackets": "dpdk_rx_packets_rate",
    "opackets": "dpdk_tx_packets_rate",
    "ibytes": "dpdk_rx_bytes_rate",
    "obytes": "dpdk_tx_bytes_rate",
    "imissed": "dpdk_rx_missed_rate",
    "ierrors": SignalName.DPDK_RX_ERROR_RATE.value,
    "oerrors": "dpdk_tx_errors_rate",
    "rx_nombuf": "dpdk_rx_nombuf_rate",
}
_XSTAT_NAME = re.compile(r"\A[a-z0-9_]{1,64}\Z")
_DROP_XSTAT = re.compile(r"(errors|dropped|missed|discards|nombuf)\Z")


@dataclass(frozen=True)
class PortCounters:
    stats: dict[str, int]
    xstats: dict[str, int]


def _no_constants(token: str) -> float:
    raise MalformedReply(f"non-finite number {token!r} in reply")


def decode_reply(data: bytes, command: str) -> object:
    """The value of one telemetry reply ``{"<command>": value}``."""
    try:
        reply = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedReply(f"dpdk telemetry {command}: reply is not JSON ({exc})") from exc
    prefix = command.split(",", 1)[0]
    mapping = expect(reply, dict, f"dpdk telemetry {command}")
    if set(mapping) != {prefix}:
        keys = ", ".join(repr(str(k)[:40]) for k in list(mapping)[:3])
        raise MalformedReply(f"dpdk telemetry {command}: expected key {prefix!r}, got {keys}")
    return mapping[prefix]


def _counter(value: object, where: str) -> int:
    number = expect(value, int, where)
    if not 0 <= number < COUNTER_LIMIT:
        raise MalformedReply(f"{where}: counter {number} outside 0..2^64")
    return number


def parse_port_list(value: object) -> list[int]:
    ports = expect(value, list, "/ethdev/list")
    if len(ports) > MAX_PORTS:
        raise MalformedReply(f"/ethdev/list: {len(ports)} ports is more than {MAX_PORTS}")
    parsed = [_counter(p, "/ethdev/list entry") for p in ports]
    if any(p >= MAX_PORTS for p in parsed) or len(set(parsed)) != len(parsed):
        raise MalformedReply("/ethdev/list: port ids out of range or repeated")
    return sorted(parsed)


def parse_stats(value: object, port: int) -> dict[str, int]:
    where = f"/ethdev/stats,{port}"
    return {name: _counter(member(value, name, where), f"{where}.{name}") for name in STATS}


def parse_xstats(value: object, port: int) -> dict[str, int]:
    where = f"/ethdev/xstats,{port}"
    xstats = expect(value, dict, where)
    if len(xstats) > MAX_XSTATS:
        raise MalformedReply(f"{where}: {len(xstats)} entries is more than {MAX_XSTATS}")
    parsed: dict[str, int] = {}
    for name, count in xstats.items():
        if not _XSTAT_NAME.match(name):
            raise MalformedReply(f"{where}: bad xstat name {name[:40]!r}")
        parsed[name] = _counter(count, f"{where}.{name}")
    return parsed


class TelemetryConnection:
    """One connection to a DPDK telemetry v2 socket; every reply size- and time-bounded."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(path))
            hello = expect(self._receive("hello", MAX_REPLY_BYTES), dict, "telemetry hello")
        except OSError as exc:
            self.sock.close()
            raise TemporaryError(f"dpdk telemetry {path}: {exc}") from exc
        except MalformedReply:
            self.sock.close()
            raise
        self.pid = _counter(member(hello, "pid", "telemetry hello"), "telemetry hello.pid")
        limit = _counter(member(hello, "max_output_len", "hello"), "hello.max_output_len")
        self.max_reply = min(max(limit, 1024), MAX_REPLY_BYTES)

    def _receive(self, command: str, size: int) -> object:
        data, _, flags, _ = self.sock.recvmsg(size + 1)
        if not data:
            raise TemporaryError(f"dpdk telemetry {self.path}: closed while waiting for {command}")
        if flags & socket.MSG_TRUNC or len(data) > size:
            raise MalformedReply(f"dpdk telemetry {command}: reply longer than {size} bytes")
        if command == "hello":
            try:
                return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise MalformedReply(f"dpdk telemetry hello is not JSON ({exc})") from exc
        return decode_reply(data, command)

    def query(self, command: str) -> object:
        try:
            self.sock.send(command.encode())
            return self._receive(command, self.max_reply)
        except OSError as exc:
            raise TemporaryError(f"dpdk telemetry {self.path} {command}: {exc}") from exc

    def close(self) -> None:
        self.sock.close()


class DpdkTelemetryCollector:
    """Port rates of one DPDK process (testpmd, OVS-DPDK) serving ``host``."""

    name = "dpdk"
    scope = Scope.HOST

    def __init__(self, host: str, socket_path: Path, *, timeout_s: float = 2.0) -> None:
        self.target = check_name(host, what="host")
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.last_good = LastGood()
        self._previous: tuple[int, float, dict[int, PortCounters]] | None = None

    def read(self) -> tuple[int, dict[int, PortCounters]]:
        """(telemetry pid, counters per port), within ``timeout_s`` in all."""
        deadline = time.monotonic() + self.timeout_s
        connection = TelemetryConnection(self.socket_path, self.timeout_s)
        try:
            ports: dict[int, PortCounters] = {}
            for port in parse_port_list(connection.query("/ethdev/list")):
                stats = parse_stats(connection.query(f"/ethdev/stats,{port}"), port)
                xstats = parse_xstats(connection.query(f"/ethdev/xstats,{port}"), port)
                ports[port] = PortCounters(stats, xstats)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TemporaryError(f"dpdk telemetry: over {self.timeout_s:g} s")
                connection.sock.settimeout(remaining)
            return connection.pid, ports
        finally:
            connection.close()

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        try:
            pid, ports = self.read()
        except (TemporaryError, PermanentError) as exc:
            return all_stale(
                self.name,
                [(self.scope, self.target)],
                self.last_good,
                str(exc),
                time.monotonic() - started,
            )
        samples = self._samples(pid, ports, now)
        self._previous = (pid, now, ports)
        self.last_good.ok(self.scope, self.target, now)
        return Collection(
            source=self.name, samples=tuple(samples), duration_s=time.monotonic() - started
        )

    def _samples(self, pid: int, ports: dict[int, PortCounters], now: float) -> list[Sample]:
        host = self.target
        samples = [scoped("dpdk_ports", len(ports), now, Scope.HOST, host)]
        before = self._previous
        drop_total: float | None = 0.0
        error_total: float | None = 0.0
        for port, counters in ports.items():
            label = str(port)
            samples += [
                scoped(f"dpdk_{name}_total", value, now, Scope.HOST, host, port=label)
                for name, value in counters.stats.items()
            ]
            old = None if before is None or before[0] != pid else before[2].get(port)
            elapsed = 0.0 if before is None else now - before[1]
            rates = _rates(old.stats, counters.stats, elapsed) if old is not None else None
            if old is None or rates is None:
                drop_total = error_total = None
                continue
            samples += [
                scoped(RATE_NAMES[name], rate, now, Scope.HOST, host, port=label)
                for name, rate in rates.items()
            ]
            drops = rates["imissed"] + rates["rx_nombuf"]
            samples.append(
                scoped(SignalName.DPDK_RX_DROP_RATE, drops, now, Scope.HOST, host, port=label)
            )
            if drop_total is not None and error_total is not None:
                drop_total += drops
                error_total += rates["ierrors"]
            samples += self._xstat_rates(old.xstats, counters.xstats, elapsed, now, label)
        if drop_total is not None and error_total is not None and ports:
            samples.append(scoped(SignalName.DPDK_RX_DROP_RATE, drop_total, now, Scope.HOST, host))
            samples.append(
                scoped(SignalName.DPDK_RX_ERROR_RATE, error_total, now, Scope.HOST, host)
            )
        return samples

    def _xstat_rates(
        self, old: dict[str, int], new: dict[str, int], elapsed: float, now: float, port: str
    ) -> list[Sample]:
        drops = {k: v for k, v in new.items() if _DROP_XSTAT.search(k) and k in old}
        rates = _rates({k: old[k] for k in drops}, drops, elapsed) or {}
        return [
            scoped("dpdk_xstat_rate", rate, now, Scope.HOST, self.target, port=port, xstat=name)
            for name, rate in sorted(rates.items())
        ]


def _rates(old: dict[str, int], new: dict[str, int], elapsed: float) -> dict[str, float] | None:
    """Per-second deltas, or None if no time passed or a counter went back (a reset)."""
    if elapsed <= 0 or any(new[k] < old.get(k, 0) for k in new):
        return None
    return {k: (new[k] - old[k]) / elapsed for k in new if k in old}
