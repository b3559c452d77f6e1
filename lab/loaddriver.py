"""The lab's load balancer: replays each business's demand over its ready instances.

Where it sits: outside the controller, in place of the seed cloud's access-layer load balancer.
Each tick it reads the demand file (business -> constant cores or a trace replayed with time
compression), lists the business's running instances through libvirt (those marked draining
get nothing; a paused one, such as a VM arriving by migration, is not touched), and splits the
demand over the instances that passed the health check (the guest acknowledged its last duty)
in proportion to their capacity, so every ready instance runs at the same utilisation. Demand
above capacity is capped: that is what an SLA breach looks like here. A business's entry may also
name memory to hold in given instances (``"hold_mib": {"web-1": 110}``): the guest keeps that
much in use, as an application's working set would; and data to write to their disks
(``"fill_mib": {"web-1": 64}``; 0 deletes it), as an application's own data would. It
writes what it did to a status file so tests and the demo can see the split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import libvirt
import pandas as pd

from actuators.domain_xml import METADATA_NS, parse_vm_metadata
from actuators.libvirt_events import ensure_event_loop
from lab.loadchannel import LoadChannel
from lab.state import LabState

CLOSE_DELAY_S = 10.0
# A duty is sent when it changes, and again this often as the health check (the guest answers
# each with an ACK). Not every tick: a guest kept chatting through a long live migration
# was left hung in a kernel spinlock on TCG (QEMU 7.2) about one migration in two.
RESEND_S = 5.0


@dataclass(frozen=True)
class Instance:
    vm: str
    host: str
    capacity_cores: float
    draining: bool


def split_demand(demand_cores: float, ready: list[Instance]) -> dict[str, int]:
    """Duty (0-100) per ready instance: equal utilisation, proportional to capacity."""
    serving = [i for i in ready if not i.draining]
    capacity = sum(i.capacity_cores for i in serving)
    if not serving or capacity <= 0:
        return {}
    utilisation = min(1.0, max(0.0, demand_cores / capacity))
    duty = round(utilisation * 100)
    return {i.vm: duty for i in serving}


@dataclass(frozen=True)
class TraceDemand:
    """A real trace (timestamp,value CSV) scaled to ``peak_cores``, time-compressed."""

    values: tuple[float, ...]
    step_s: float
    peak_cores: float
    compression: float
    start_index: int = 0

    @classmethod
    def from_csv(
        cls, path: Path, peak_cores: float, compression: float, start_index: int = 0
    ) -> TraceDemand:
        frame = pd.read_csv(path)
        times = pd.to_datetime(frame.iloc[:, 0])
        step = float((times.iloc[1] - times.iloc[0]).total_seconds())
        values = tuple(float(v) for v in frame.iloc[:, 1])
        return cls(values, step, peak_cores, compression, start_index)

    def at(self, elapsed_s: float) -> float:
        position = self.start_index + elapsed_s * self.compression / self.step_s
        i = int(math.floor(position)) % len(self.values)
        j = (i + 1) % len(self.values)
        frac = position - math.floor(position)
        value = self.values[i] * (1 - frac) + self.values[j] * frac
        peak = max(self.values)
        return 0.0 if peak <= 0 else value / peak * self.peak_cores


def read_demand_file(path: Path, elapsed_s: float, base: Path) -> dict[str, float]:
    """``{"web": {"cores": 0.3}, "api": {"trace": "data/nab/x.csv", "peak_cores": 0.6,
    "compression": 60}}`` -> cores per business now."""
    try:
        spec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    out: dict[str, float] = {}
    for business, entry in spec.items():
        if "cores" in entry:
            out[business] = float(entry["cores"])
        elif "trace" in entry:
            trace = Path(entry["trace"])
            trace = trace if trace.is_absolute() else base / trace
            demand = TraceDemand.from_csv(
                trace,
                float(entry["peak_cores"]),
                float(entry.get("compression", 60)),
                int(entry.get("start_index", 0)),
            )
            out[business] = demand.at(elapsed_s)
    return out


def read_holds(path: Path, key: str = "hold_mib") -> dict[str, int]:
    """``{"web": {"cores": 0.1, "hold_mib": {"web-1": 110}}}`` -> MiB to hold per instance
    (``key="fill_mib"``: MiB to write to each instance's disk)."""
    try:
        spec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    out: dict[str, int] = {}
    for entry in spec.values():
        holds = entry.get(key, {}) if isinstance(entry, dict) else {}
        for vm, mib in holds.items() if isinstance(holds, dict) else ():
            out[str(vm)] = max(0, int(mib))
    return out


@dataclass
class LoadDriver:
    """Holds one load channel per instance and applies the split every tick."""

    state: LabState
    demand_file: Path
    status_file: Path
    base: Path
    started: float = field(default_factory=time.monotonic)
    _conns: dict[str, libvirt.virConnect] = field(default_factory=dict)
    _channels: dict[str, LoadChannel] = field(default_factory=dict)
    _healthy: set[str] = field(default_factory=set)
    _closing: list[tuple[float, LoadChannel]] = field(default_factory=list)
    _sent: dict[str, tuple[int, float]] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)
    _filled: dict[str, int] = field(default_factory=dict)

    def _let_go(self, key: str) -> None:
        """Forget a channel whose domain went away, closing its stream only later: libvirt
        9.0's daemon deadlocks (stream lock against character-device lock) when a stream is
        finished while the same domain is being destroyed, and then hangs for good."""
        self._closing.append((time.monotonic() + CLOSE_DELAY_S, self._channels.pop(key)))
        self._healthy.discard(key)
        self._sent.pop(key, None)
        self._held.pop(key, None)
        self._filled.pop(key, None)

    def _close_due(self) -> None:
        now = time.monotonic()
        due = [channel for at, channel in self._closing if at <= now]
        self._closing = [(at, channel) for at, channel in self._closing if at > now]
        for channel in due:
            channel.close()

    def _conn(self, host: str) -> libvirt.virConnect | None:
        conn = self._conns.get(host)
        if conn is not None and conn.isAlive():
            return conn
        try:
            conn = libvirt.open(self.state.host(host).uri)
        except libvirt.libvirtError:
            self._conns.pop(host, None)
            return None
        self._conns[host] = conn
        return conn

    def instances(self) -> dict[str, list[Instance]]:
        found: dict[str, list[Instance]] = {}
        for record in self.state.hosts:
            conn = self._conn(record.name)
            if conn is None:
                continue
            try:
                # Running only: a paused domain (one arriving by migration) gets no load.
                domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
            except libvirt.libvirtError:
                continue
            for dom in domains:
                try:
                    meta = parse_vm_metadata(
                        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
                    )
                    vcpus = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except (libvirt.libvirtError, ValueError):
                    continue
                if meta is None:
                    continue
                found.setdefault(meta.business, []).append(
                    Instance(
                        vm=dom.name(),
                        host=record.name,
                        capacity_cores=vcpus * (meta.cpu_quota or 1.0),
                        draining=meta.draining,
                    )
                )
        return found

    def _channel(self, inst: Instance) -> LoadChannel | None:
        key = f"{inst.host}/{inst.vm}"
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        conn = self._conn(inst.host)
        if conn is None:
            return None
        try:
            channel = LoadChannel(conn, conn.lookupByName(inst.vm))
        except libvirt.libvirtError:
            return None
        self._channels[key] = channel
        return channel

    def tick(self) -> dict[str, object]:
        elapsed = time.monotonic() - self.started
        demand = read_demand_file(self.demand_file, elapsed, self.base)
        holds = read_holds(self.demand_file)
        fills = read_holds(self.demand_file, "fill_mib")
        instances = self.instances()
        live_keys = {f"{i.host}/{i.vm}" for insts in instances.values() for i in insts}
        self._close_due()
        for key in list(self._channels):
            if key not in live_keys:  # gone, paused or migrated away: drop the stale stream
                self._let_go(key)
        status: dict[str, object] = {"elapsed_s": round(elapsed, 1), "businesses": {}}
        for business, insts in sorted(instances.items()):
            ready = [i for i in insts if f"{i.host}/{i.vm}" in self._healthy]
            duties = split_demand(demand.get(business, 0.0), ready)
            for inst in insts:
                key = f"{inst.host}/{inst.vm}"
                channel = self._channel(inst)
                if channel is None:
                    continue
                try:
                    if channel.acknowledged() is not None:
                        self._healthy.add(key)
                    duty = duties.get(inst.vm, 0)
                    last = self._sent.get(key)
                    if last is None or last[0] != duty or time.monotonic() - last[1] >= RESEND_S:
                        channel.set_duty(duty)
                        self._sent[key] = (duty, time.monotonic())
                    # A hold is sent when it changes only (a guest that never held gets none).
                    hold = holds.get(inst.vm, 0)
                    if hold != self._held.get(key, 0):
                        channel.hold(hold)
                        self._held[key] = hold
                    # A fill only where the entry names one (dropping it deletes nothing: the
                    # data is the guest's), once per channel (the guest keeps a fill of that
                    # size as it is, so one resent after a reboot rewrites nothing).
                    fill = fills.get(inst.vm)
                    if fill is not None and fill != self._filled.get(key):
                        channel.fill(fill)
                        self._filled[key] = fill
                except (libvirt.libvirtError, OSError, Exception):
                    self._let_go(key)
            status["businesses"][business] = {  # type: ignore[index]
                "demand_cores": round(demand.get(business, 0.0), 4),
                "ready": sorted(i.vm for i in ready),
                "draining": sorted(i.vm for i in insts if i.draining),
                "duty": duties,
                "held_mib": {
                    i.vm: held
                    for i in insts
                    if (ch := self._channels.get(f"{i.host}/{i.vm}")) is not None
                    and (held := ch.held_mib) is not None
                },
                "filled_mib": {
                    i.vm: filled
                    for i in insts
                    if (ch := self._channels.get(f"{i.host}/{i.vm}")) is not None
                    and (filled := ch.filled_mib) is not None
                },
            }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1, sort_keys=True))
        os.replace(tmp, self.status_file)
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the lab's load balancer")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    state = LabState.load(root / "lab-state.json")
    if state is None:
        raise SystemExit(f"no lab at {root}")
    ensure_event_loop()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    driver = LoadDriver(
        state=state,
        demand_file=root / "demand.json",
        status_file=root / "loaddriver-status.json",
        base=Path(__file__).resolve().parents[1],
    )
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        started = time.monotonic()
        driver.tick()
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
