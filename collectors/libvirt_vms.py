"""VMs and hosts through libvirt: one collector per host.

Where it sits: the first stage of the flow, called every collection cycle for every host in
parallel (each call under its own deadline, so a hung host costs one timeout). One
``getAllDomainStats`` per host gives every domain's state, CPU time, vCPUs, balloon, network and
block counters; deltas against the previous cycle give utilisation and rates, so the first cycle
reports sizes but no utilisation (absent, never zero). Memory in use is what the guest reports
through its virtio balloon's statistics (the same call's ``balloon.*`` fields: total ``available``
less ``usable``, or less ``unused`` on older guests), and only while those statistics are fresh;
QEMU's RSS is exported too but says nothing about the guest (it only grows). Our ``<as:vm>`` domain
metadata says which business a domain belongs to. Host samples: reachability, call latency, cores
and memory. A host that cannot be read is reported stale with the time of its last good sample.
"""

from __future__ import annotations

import ipaddress
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import libvirt

from autoscaler.model import (
    Collection,
    FleetKeys,
    OwnershipStamp,
    PermanentError,
    Sample,
    Scope,
    TemporaryError,
    check_name,
)
from autoscaler.model.bounded import BoundedCaller
from collectors.base import LastGood
from collectors.common import finite_or_none

METADATA_NS = "https://kvm-autoscaler.dev/ns/vm/1"

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

STATS_FLAGS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


# Balloon statistics older than this are stale: the guest's driver reports every few seconds
# (``stats period`` in the domain XML, 5 s by default), so this allows several missed reports.
# ``last-update`` is stamped by QEMU on the host: hosts and controllers keep NTP time (as live
# migration and Ceph require anyway).
MEMORY_STATS_MAX_AGE_S = 30.0


def guest_memory_used_kib(stats: dict[str, float | int | str]) -> float | None:
    """Memory the guest uses (KiB): its total less what it could still use, None without
    balloon statistics. ``usable`` (the kernel's MemAvailable) counts reclaimable cache as
    free; ``unused`` (MemFree, older guests) does not."""
    total = finite_or_none(stats.get("balloon.available"))
    free = finite_or_none(stats.get("balloon.usable"))
    if free is None:
        free = finite_or_none(stats.get("balloon.unused"))
    if total is None or free is None or total <= 0:
        return None
    return max(0.0, total - free)


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """What one domain looked like in one stats call (plain data: recordable, replayable)."""

    name: str
    stats: dict[str, float | int | str]
    metadata: str | None


@dataclass(frozen=True, slots=True)
class _Counters:
    at: float
    cpu_ns: float
    vcpu_ns: float
    net_rx: float
    net_tx: float
    disk_rd: float
    disk_wr: float


def _metadata_attrs(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        return dict(ET.fromstring(text).attrib)  # noqa: S314 - libvirt's copy of our own element
    except ET.ParseError:
        return {}


def _positive(text: str | None) -> float | None:
    number = finite_or_none(text)
    return number if number is not None and number > 0 else None


def _sum(stats: dict[str, float | int | str], prefix: str, suffix: str) -> float:
    count = int(stats.get(f"{prefix}.count", 0) or 0)
    return float(sum(float(stats.get(f"{prefix}.{i}.{suffix}", 0) or 0) for i in range(count)))


class DomainStatsParser:
    """Turns domain records into samples, keeping the previous counters for deltas."""

    def __init__(
        self, memory_max_age_s: float = MEMORY_STATS_MAX_AGE_S, keys: FleetKeys | None = None
    ) -> None:
        self._keys = keys
        self._previous: dict[tuple[str, str], _Counters] = {}
        self._memory_max_age_s = memory_max_age_s
        # Per domain: its memory size and when this parser first saw it at that size.
        self._sizes: dict[tuple[str, str], tuple[float, float]] = {}

    def parse(self, host: str, records: Iterable[DomainRecord], now: float) -> list[Sample]:
        out: list[Sample] = []
        seen: set[tuple[str, str]] = set()
        for rec in records:
            key = (host, rec.name)
            seen.add(key)
            out.extend(self._domain(host, rec, now, key))
        for key in [k for k in self._previous if k[0] == host and k not in seen]:
            del self._previous[key]
        for key in [k for k in self._sizes if k[0] == host and k not in seen]:
            del self._sizes[key]
        return out

    def _resized_at(self, key: tuple[str, str], size_kib: float | None, now: float) -> float:
        """When the domain's memory size last changed, as this parser saw it (-inf: unknown,
        at first sight)."""
        if size_kib is None:
            return -math.inf
        previous = self._sizes.get(key)
        if previous is None:
            at = -math.inf
        elif previous[0] != size_kib:
            at = now
        else:
            at = previous[1]
        self._sizes[key] = (size_kib, at)
        return at

    def _owned(self, name: str, meta: dict[str, str]) -> bool:
        """Whether the domain carries a valid ownership stamp (``autoscaler.model.ownership``)."""
        if self._keys is None or not meta.get("owner-mac"):
            return False
        stamp = OwnershipStamp(key_id=meta.get("owner-key", ""), mac=meta["owner-mac"])
        return self._keys.verify(name, meta.get("business", ""), meta.get("created", ""), stamp)

    def _domain(
        self, host: str, rec: DomainRecord, now: float, key: tuple[str, str]
    ) -> list[Sample]:
        s = rec.stats
        meta = _metadata_attrs(rec.metadata)
        labels = (("host", host), ("vm", rec.name))
        state = _STATES.get(int(s.get("state.state", -1)), "unknown")
        info_labels = (
            *labels,
            ("business", meta.get("business", "")),
            ("state", state),
            ("nic", meta.get("nic", "virtio")),
            ("owned", "1" if self._owned(rec.name, meta) else "0"),
            # The address the guest reported when it became ready (metadata migrates with the
            # domain, so it is the same after a live migration); "" when none or not an address.
            ("address", _address(meta.get("address"))),
            # The template version it was cloned from ("" when unknown or not a safe name).
            ("version", _safe_name(meta.get("version"))),
        )
        samples = [Sample("vm_info", 1.0, now, info_labels)]

        def add(metric: str, value: float | None) -> None:
            if value is not None:
                samples.append(Sample(metric, float(value), now, labels))

        vcpus = int(s.get("vcpu.current", 0) or 0) or None
        add("vm_vcpus", vcpus)
        add("vm_max_vcpus", int(s.get("vcpu.maximum", 0) or 0) or None)
        balloon_kib = s.get("balloon.current")
        add("vm_memory_mib", float(balloon_kib) / 1024 if balloon_kib is not None else None)
        # Metadata is text anyone with libvirt access can edit: a value that is not a finite
        # number (or not a positive one where it must be) is absent, never an exception.
        add("vm_template_max_memory_mib", _positive(meta.get("max-memory-mib")))
        add("vm_template_max_vcpus", _positive(meta.get("max-vcpus")))
        rss = s.get("balloon.rss")
        add("vm_rss_mib", float(rss) / 1024 if rss is not None else None)
        used_kib = guest_memory_used_kib(s)
        updated = finite_or_none(s.get("balloon.last-update"))
        resized_at = self._resized_at(key, finite_or_none(balloon_kib), now)
        if used_kib is not None and updated is not None and updated > 0:
            age = max(0.0, now - updated)
            add("vm_memory_stats_age_seconds", age)  # kept, so a stale figure is visible
            # Statistics from before the VM's last resize (a DIMM just added) describe the
            # smaller guest: deciding on them would add a second DIMM for the same use.
            if age <= self._memory_max_age_s and updated > resized_at:
                add("vm_memory_used_mib", used_kib / 1024)
                add("vm_memory_guest_total_mib", float(s["balloon.available"]) / 1024)
        quota = _positive(meta.get("cpu-quota"))
        add("vm_cpu_quota", quota)
        add("vm_draining", 1.0 if meta.get("draining") == "1" else 0.0)
        ready_at = finite_or_none(meta.get("ready"))
        add("vm_ready_timestamp", ready_at)
        add("vm_created_timestamp", finite_or_none(meta.get("created")))

        if state != "running" or "cpu.time" not in s:
            self._previous.pop(key, None)
            return samples
        counters = _Counters(
            at=now,
            cpu_ns=float(s["cpu.time"]),
            vcpu_ns=float(
                sum(
                    float(s.get(f"vcpu.{i}.time", 0) or 0)
                    for i in range(int(s.get("vcpu.maximum", 0) or 0))
                )
            ),
            net_rx=_sum(s, "net", "rx.bytes"),
            net_tx=_sum(s, "net", "tx.bytes"),
            disk_rd=_sum(s, "block", "rd.bytes"),
            disk_wr=_sum(s, "block", "wr.bytes"),
        )
        before = self._previous.get(key)
        self._previous[key] = counters
        if before is None or counters.at <= before.at or counters.cpu_ns < before.cpu_ns:
            return samples  # first sight, or the domain restarted: no rate yet
        if ready_at is not None and ready_at > before.at:
            # The interval holds the end of the guest's boot (run under a raised CPU cap):
            # that CPU is not the business's load, yet it reads as a spike of it (enough to
            # scale out again). No rate until a whole interval after readiness.
            return samples
        boost_from = finite_or_none(meta.get("boost-from"))
        boost_until = finite_or_none(meta.get("boost-until"))
        if (
            boost_from is not None
            and boost_until is not None
            and before.at < boost_until
            and counters.at > boost_from
        ):
            # Likewise the online boost of a vCPU hot-add (actuators.hotadd): read as load, its
            # CPU would hot-add again.
            return samples
        wall = counters.at - before.at
        busy_cores = (counters.cpu_ns - before.cpu_ns) / 1e9 / wall
        add("vm_cpu_busy_cores", busy_cores)
        if vcpus and counters.vcpu_ns >= before.vcpu_ns:
            # Utilisation against what the VM may use: its vCPU threads against vCPUs x quota
            # (the quota applies to vCPU threads; QEMU's own threads are in busy_cores only).
            capacity = vcpus * (quota if quota is not None else 1.0)
            vcpu_cores = (counters.vcpu_ns - before.vcpu_ns) / 1e9 / wall
            add("vm_cpu_utilisation", vcpu_cores / capacity)
        add("vm_net_rx_bytes_per_second", max(0.0, (counters.net_rx - before.net_rx) / wall))
        add("vm_net_tx_bytes_per_second", max(0.0, (counters.net_tx - before.net_tx) / wall))
        add("vm_disk_read_bytes_per_second", max(0.0, (counters.disk_rd - before.disk_rd) / wall))
        add("vm_disk_write_bytes_per_second", max(0.0, (counters.disk_wr - before.disk_wr) / wall))
        return samples


def read_domain_records(conn: libvirt.virConnect) -> list[DomainRecord]:
    records = []
    for dom, stats in conn.getAllDomainStats(STATS_FLAGS, 0):
        try:
            meta: str | None = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError:
            meta = None
        records.append(DomainRecord(name=dom.name(), stats=dict(stats), metadata=meta))
    return records


class LibvirtHostCollector:
    """One libvirt host. ``connect`` opens the host's connection (the handle's factory)."""

    scope = Scope.HOST

    def __init__(
        self,
        host: str,
        connect: Callable[[], libvirt.virConnect],
        *,
        timeout_s: float = 5.0,
        parser: DomainStatsParser | None = None,
    ) -> None:
        self.name = f"libvirt:{host}"
        self.target = host
        self._connect = connect
        self._timeout_s = timeout_s
        self._conn: libvirt.virConnect | None = None
        self._parser = parser or DomainStatsParser()
        self._last_good = LastGood()
        # One call in flight at a time: a hung libvirtd holds one thread and one socket.
        self._calls: BoundedCaller[tuple[list[DomainRecord], list[float], float]] = BoundedCaller(
            f"libvirt on {host}"
        )

    def _connection(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self._conn = None
        try:
            self._conn = self._connect()
        except libvirt.libvirtError as exc:
            raise TemporaryError(f"cannot connect to {self.target}: {exc}", retry_after=5) from exc
        return self._conn

    def _read(self) -> tuple[list[DomainRecord], list[float], float]:
        conn = self._connection()
        started = time.monotonic()
        try:
            node = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
            free = conn.getFreeMemory()
            records = read_domain_records(conn)
        except libvirt.libvirtError as exc:
            self._conn = None
            raise TemporaryError(f"libvirt call to {self.target} failed: {exc}") from exc
        return records, [float(node[2]), float(node[1]), free / 1048576], time.monotonic() - started

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        labels = (("host", self.target),)
        try:
            records, node, latency = self._calls.call(self._read, self._timeout_s)
        except (TemporaryError, PermanentError) as exc:
            stale = self._last_good.stale(Scope.HOST, self.target, self.name, str(exc))
            return Collection(
                source=self.name,
                samples=(Sample("libvirt_host_up", 0.0, now, labels),),
                stale=(stale,),
                duration_s=time.monotonic() - started,
                errors=(str(exc),),
            )
        self._last_good.ok(Scope.HOST, self.target, now)
        samples = [
            Sample("libvirt_host_up", 1.0, now, labels),
            Sample("libvirt_call_seconds", latency, now, labels),
            Sample("libvirt_host_cpus", node[0], now, labels),
            Sample("libvirt_host_memory_mib", node[1], now, labels),
            Sample("libvirt_host_free_memory_mib", node[2], now, labels),
            *self._parser.parse(self.target, records, now),
        ]
        return Collection(
            source=self.name, samples=tuple(samples), duration_s=time.monotonic() - started
        )


def _safe_name(text: str | None) -> str:
    """A name from metadata anyone with libvirt access can edit: "" unless it is a safe one."""
    try:
        return check_name(text) if text else ""
    except ValueError:
        return ""


def _address(text: str | None) -> str:
    """An IP address from metadata anyone with libvirt access can edit: "" unless it is one."""
    try:
        return str(ipaddress.ip_address(text)) if text else ""
    except ValueError:
        return ""
