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

from autoscaler.model import Collection, PermanentError, Sample, Scope, SignalName, TemporaryError
from autoscaler.model.names import check_name
from collectors.base import LastGood
from collectors.common import CounterRates, MalformedReply, all_stale, expect, member, scoped

MAX_REPLY_BYTES = 1 << 20
MAX_PORTS = 1024  # RTE_MAX_ETHPORTS
MAX_XSTATS = 4096
COUNTER_LIMIT = 1 << 64
STATS = ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")
RATE_NAMES = {  # per-port rates (label ``port``); host-wide sums carry the plain names
    "ipackets": "dpdk_port_rx_packets_rate",
    "opackets": "dpdk_port_tx_packets_rate",
    "ibytes": "dpdk_port_rx_bytes_rate",
    "obytes": "dpdk_port_tx_bytes_rate",
    "imissed": "dpdk_port_rx_missed_rate",
    "ierrors": "dpdk_port_rx_errors_rate",
    "oerrors": "dpdk_port_tx_errors_rate",
    "rx_nombuf": "dpdk_port_rx_nombuf_rate",
}
HOST_SUMS = {  # counter (or "drops" = imissed + rx_nombuf) -> host-wide rate, summed over ports
    "ipackets": "dpdk_rx_packets_rate",
    "opackets": "dpdk_tx_packets_rate",
    "drops": SignalName.DPDK_RX_DROP_RATE.value,
    "ierrors": SignalName.DPDK_RX_ERROR_RATE.value,
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
        self._rates = CounterRates()

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
                self.name, [(self.scope, self.target)], self.last_good, str(exc), started
            )
        samples = self._samples(pid, ports, now)
        self.last_good.ok(self.scope, self.target, now)
        return Collection(
            source=self.name, samples=tuple(samples), duration_s=time.monotonic() - started
        )

    def _samples(self, pid: int, ports: dict[int, PortCounters], now: float) -> list[Sample]:
        """Per-port figures (label ``port``) and, when every port has rates, host-wide sums."""
        host = self.target
        samples = [scoped("dpdk_ports", len(ports), now, Scope.HOST, host)]
        sums: dict[str, float] | None = dict.fromkeys(HOST_SUMS.values(), 0.0)
        for port, counters in ports.items():
            label = str(port)
            samples += [
                scoped(f"dpdk_port_{name}_total", value, now, Scope.HOST, host, port=label)
                for name, value in counters.stats.items()
            ]
            rates = self._rates.update(("stats", port), pid, now, counters.stats)
            drops = {k: v for k, v in counters.xstats.items() if _DROP_XSTAT.search(k)}
            xstat_rates = self._rates.update(("xstats", port), pid, now, drops) or {}
            if rates is None:
                sums = None
                continue
            rates["drops"] = rates["imissed"] + rates["rx_nombuf"]
            samples += [
                scoped(RATE_NAMES[name], rate, now, Scope.HOST, host, port=label)
                for name, rate in rates.items()
                if name in RATE_NAMES
            ]
            samples.append(
                scoped("dpdk_port_rx_drop_rate", rates["drops"], now, Scope.HOST, host, port=label)
            )
            samples += [
                scoped("dpdk_port_xstat_rate", rate, now, Scope.HOST, host, port=label, xstat=name)
                for name, rate in sorted(xstat_rates.items())
            ]
            if sums is not None:
                for counter, metric in HOST_SUMS.items():
                    sums[metric] += rates[counter]
        if sums is not None and ports:
            samples += [scoped(m, v, now, Scope.HOST, host) for m, v in sums.items()]
        return samples
