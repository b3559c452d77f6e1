"""Ceph health, OSDs by CRUSH rack, latencies and pool usage, read through python-rados.

Where it sits: a collector, first stage of the flow. Five ``mon_command`` calls (status, health
detail, df, osd perf, osd tree) are parsed into a ``CephReading`` and turned into Samples: the
cluster's health and checks, each OSD's up/in state and latencies under the CRUSH rack it lives
in, per-rack ``ceph_osds_up``/``ceph_osds_total`` (so "rack r2 lost 2 of 2 OSDs" is a fact),
the PGs not serving I/O (``ceph_pgs_inactive``) and each pool's usage under the pool's own scope
(``ceph_pool_percent_used`` is a ratio 0-1, as ``ceph df``'s JSON gives it). The rados handle is
built by the caller (``connect``); a mon that does not answer in ``timeout_s`` makes the
cluster and every rack and pool seen before stale.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import rados

from autoscaler.model import Collection, PermanentError, Sample, Scope, SignalName, TemporaryError
from autoscaler.model.bounded import BoundedCaller
from collectors.base import LastGood
from collectors.common import (
    MalformedReply,
    all_stale,
    expect,
    expect_number,
    member,
    scoped,
)

HEALTH_LEVELS = {"HEALTH_OK": 0.0, "HEALTH_WARN": 1.0, "HEALTH_ERR": 2.0}
MAX_TREE_NODES = 100_000
COMMANDS = {
    "status": {"prefix": "status", "format": "json"},
    "health": {"prefix": "health", "detail": "detail", "format": "json"},
    "df": {"prefix": "df", "format": "json"},
    "osd perf": {"prefix": "osd perf", "format": "json"},
    "osd tree": {"prefix": "osd tree", "format": "json"},
}


@dataclass(frozen=True)
class HealthCheck:
    name: str
    severity: str
    count: float
    message: str


@dataclass(frozen=True)
class OsdState:
    osd: int
    name: str
    rack: str | None
    up: bool
    in_cluster: bool
    commit_latency_ms: float | None = None
    apply_latency_ms: float | None = None


@dataclass(frozen=True)
class PoolUsage:
    name: str
    stored_bytes: float
    objects: float
    percent_used: float
    """A ratio 0-1 (Ceph's JSON name): used / (used + max_avail)."""
    max_avail_bytes: float


@dataclass(frozen=True)
class CephReading:
    health: str
    checks: tuple[HealthCheck, ...]
    osds: tuple[OsdState, ...]
    pools: tuple[PoolUsage, ...]
    total_bytes: float
    used_bytes: float
    pgs_total: float
    pgs_active_clean: float
    pgs_active: float = 0.0
    """PGs serving I/O (``serves_io``); the rest are inactive and block the I/O to them."""

    @property
    def pgs_inactive(self) -> float:
        return max(0.0, self.pgs_total - self.pgs_active)

    @property
    def racks(self) -> dict[str, list[OsdState]]:
        out: dict[str, list[OsdState]] = {}
        for osd in self.osds:
            if osd.rack is not None:
                out.setdefault(osd.rack, []).append(osd)
        return out


# --- parsers: decoded JSON in, typed values out, MalformedReply on anything unexpected -------


def parse_health(reply: object) -> tuple[str, tuple[HealthCheck, ...]]:
    status = expect(member(reply, "status", "health"), str, "health.status")
    if status not in HEALTH_LEVELS:
        raise MalformedReply(f"health.status: unknown value {status[:40]!r}")
    checks = expect(member(reply, "checks", "health"), dict, "health.checks")
    parsed = []
    for name, check in checks.items():
        where = f"health.checks.{str(name)[:40]}"
        summary = member(check, "summary", where)
        count = expect(summary, dict, f"{where}.summary").get("count", 1)
        parsed.append(
            HealthCheck(
                name=expect(name, str, where),
                severity=expect(member(check, "severity", where), str, f"{where}.severity"),
                count=expect_number(count, f"{where}.summary.count"),
                message=expect(member(summary, "message", where), str, f"{where}.message"),
            )
        )
    return status, tuple(sorted(parsed, key=lambda c: c.name))


def parse_osd_tree(reply: object) -> dict[int, OsdState]:
    """Each OSD with its up/in state and the CRUSH ``rack`` bucket above it (if any)."""
    nodes = expect(member(reply, "nodes", "osd tree"), list, "osd tree.nodes")
    if len(nodes) > MAX_TREE_NODES:
        raise MalformedReply(f"osd tree: {len(nodes)} nodes is more than {MAX_TREE_NODES}")
    by_id: dict[int, dict[str, Any]] = {}
    for node in nodes:
        node_id = int(expect_number(member(node, "id", "osd tree node"), "osd tree node.id"))
        by_id[node_id] = expect(node, dict, "osd tree node")
    rack_of: dict[int, str] = {}
    for node in by_id.values():
        if node.get("type") != "rack":
            continue
        rack = expect(node.get("name"), str, "osd tree rack.name")
        pending = list(expect(node.get("children", []), list, f"osd tree rack {rack}.children"))
        seen: set[int] = set()
        while pending:  # walk down to the OSDs; a cycle or an unknown id is skipped, not followed
            child = pending.pop()
            if not isinstance(child, int) or isinstance(child, bool) or child in seen:
                continue
            seen.add(child)
            if child >= 0:
                rack_of[child] = rack
            elif child in by_id:
                pending += expect(by_id[child].get("children", []), list, "osd tree children")
    osds: dict[int, OsdState] = {}
    for node_id, node in by_id.items():
        if node.get("type") != "osd":
            continue
        where = f"osd tree osd {node_id}"
        status = expect(member(node, "status", where), str, f"{where}.status")
        if status not in ("up", "down"):
            raise MalformedReply(f"{where}.status: unknown value {status[:20]!r}")
        reweight = expect_number(member(node, "reweight", where), f"{where}.reweight")
        osds[node_id] = OsdState(
            osd=node_id,
            name=expect(member(node, "name", where), str, f"{where}.name"),
            rack=rack_of.get(node_id),
            up=status == "up",
            in_cluster=reweight > 0,
        )
    return osds


def parse_osd_perf(reply: object) -> dict[int, tuple[float, float]]:
    """OSD id -> (commit latency ms, apply latency ms)."""
    stats = member(reply, "osdstats", "osd perf")
    infos = expect(member(stats, "osd_perf_infos", "osd perf"), list, "osd perf.osd_perf_infos")
    latencies: dict[int, tuple[float, float]] = {}
    for info in infos:
        osd = int(expect_number(member(info, "id", "osd perf info"), "osd perf info.id"))
        perf = member(info, "perf_stats", f"osd perf {osd}")
        commit = expect_number(member(perf, "commit_latency_ms", f"osd perf {osd}"), "commit")
        apply = expect_number(member(perf, "apply_latency_ms", f"osd perf {osd}"), "apply")
        if commit < 0 or apply < 0:
            raise MalformedReply(f"osd perf {osd}: negative latency")
        latencies[osd] = (commit, apply)
    return latencies


def parse_df(reply: object) -> tuple[float, float, tuple[PoolUsage, ...]]:
    """(total bytes, used bytes, pools)."""
    stats = member(reply, "stats", "df")
    total = expect_number(member(stats, "total_bytes", "df.stats"), "df.stats.total_bytes")
    used = expect_number(member(stats, "total_used_raw_bytes", "df.stats"), "df.stats.used")
    pools = []
    for pool in expect(member(reply, "pools", "df"), list, "df.pools"):
        name = expect(member(pool, "name", "df pool"), str, "df pool.name")
        figures = member(pool, "stats", f"df pool {name[:40]}")
        where = f"df pool {name[:40]}"
        pools.append(
            PoolUsage(
                name=name,
                stored_bytes=expect_number(member(figures, "stored", where), f"{where}.stored"),
                objects=expect_number(member(figures, "objects", where), f"{where}.objects"),
                percent_used=expect_number(member(figures, "percent_used", where), where),
                max_avail_bytes=expect_number(member(figures, "max_avail", where), where),
            )
        )
    return total, used, tuple(pools)


def serves_io(state_name: str) -> bool:
    """Whether PGs in ``state_name`` (e.g. ``active+undersized+degraded``) serve I/O: the state
    has the ``active`` component and not ``stale`` (the mon has not heard from the primary, so
    the state shown is old), as Ceph's own PG_AVAILABILITY check counts. Components are
    compared whole: ``activating`` is not ``active``."""
    parts = state_name.split("+")
    return "active" in parts and "stale" not in parts


def parse_pg_counts(reply: object) -> tuple[float, float, float]:
    """(PGs in all, PGs active+clean, PGs serving I/O) from ``status``."""
    pgmap = member(reply, "pgmap", "status")
    total = expect_number(member(pgmap, "num_pgs", "status.pgmap"), "status.pgmap.num_pgs")
    clean = active = 0.0
    states = expect(member(pgmap, "pgs_by_state", "status.pgmap"), list, "status.pgs_by_state")
    for state in states:
        name = expect(member(state, "state_name", "status.pgs_by_state"), str, "pg state_name")
        count = expect_number(member(state, "count", "status.pgs_by_state"), "pg count")
        if name == "active+clean":
            clean += count
        if serves_io(name):
            active += count
    return total, clean, active


def parse_reading(replies: dict[str, object]) -> CephReading:
    health, checks = parse_health(replies["health"])
    osds = parse_osd_tree(replies["osd tree"])
    latencies = parse_osd_perf(replies["osd perf"])
    total, used, pools = parse_df(replies["df"])
    pgs_total, pgs_clean, pgs_active = parse_pg_counts(replies["status"])
    with_latency = tuple(
        replace(o, commit_latency_ms=latencies[o.osd][0], apply_latency_ms=latencies[o.osd][1])
        if o.up and o.osd in latencies
        else o
        for o in sorted(osds.values(), key=lambda o: o.osd)
    )
    return CephReading(
        health, checks, with_latency, pools, total, used, pgs_total, pgs_clean, pgs_active
    )


# --- the collector ----------------------------------------------------------------------


def connect(
    conffile: Path, keyring: Path | None, *, timeout_s: float = 5.0, name: str = "client.admin"
) -> Any:
    """A connected rados handle whose mon and OSD operations time out after ``timeout_s``
    (``keyring`` None: the one ``conffile`` names). The controller builds one per process and
    shares it between this collector and the RADOS lease."""
    seconds = str(max(1, round(timeout_s)))
    conf = {
        "rados_mon_op_timeout": seconds,
        "rados_osd_op_timeout": seconds,
        "client_mount_timeout": seconds,
    }
    if keyring is not None:
        conf["keyring"] = str(keyring)
    cluster = rados.Rados(conffile=str(conffile), name=name, conf=conf)
    try:
        cluster.connect(timeout=max(1, round(timeout_s)))
    except rados.Error as exc:
        cluster.shutdown()
        raise TemporaryError(f"ceph: cannot connect with {conffile}: {exc}") from exc
    return cluster


class CephCollector:
    """One Ceph cluster through a connected rados handle (see ``connect``)."""

    name = "ceph"
    scope = Scope.CLUSTER

    def __init__(self, cluster: Any, *, target: str = "ceph", timeout_s: float = 5.0) -> None:
        self.cluster = cluster
        self.target = target
        self.timeout_s = timeout_s
        self._calls: BoundedCaller[Any] = BoundedCaller(f"ceph {target}")
        self.last_good = LastGood()
        self._racks_seen: tuple[str, ...] = ()
        self._pools_seen: tuple[str, ...] = ()

    def _mon_command(self, command: dict[str, str]) -> object:
        try:
            ret, out, err = self.cluster.mon_command(
                json.dumps(command), b"", timeout=max(1, round(self.timeout_s))
            )
        except rados.Error as exc:
            raise TemporaryError(f"ceph {command['prefix']}: {exc}") from exc
        if ret != 0:
            raise TemporaryError(f"ceph {command['prefix']}: error {ret} {err[:200]}")
        try:
            return json.loads(out)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedReply(f"ceph {command['prefix']}: reply is not JSON: {exc}") from exc

    def _read(self) -> CephReading:
        return parse_reading({key: self._mon_command(cmd) for key, cmd in COMMANDS.items()})

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        try:
            reading = self._calls.call(self._read, self.timeout_s)
        except (TemporaryError, PermanentError) as exc:
            scopes = [
                (self.scope, self.target),
                *((Scope.RACK, r) for r in self._racks_seen),
                *((Scope.POOL, p) for p in self._pools_seen),
            ]
            return all_stale(self.name, scopes, self.last_good, str(exc), started)
        self._racks_seen = tuple(sorted(reading.racks))
        self._pools_seen = tuple(sorted({p.name for p in reading.pools}))
        self.last_good.ok(self.scope, self.target, now)
        for rack in self._racks_seen:
            self.last_good.ok(Scope.RACK, rack, now)
        for pool in self._pools_seen:
            self.last_good.ok(Scope.POOL, pool, now)
        return Collection(
            source=self.name,
            samples=tuple(self._samples(reading, now)),
            duration_s=time.monotonic() - started,
        )

    def _samples(self, reading: CephReading, now: float) -> list[Sample]:
        cluster, target = Scope.CLUSTER, self.target
        samples = [
            scoped("ceph_health_status", HEALTH_LEVELS[reading.health], now, cluster, target),
            scoped(SignalName.CEPH_OSDS_UP, sum(o.up for o in reading.osds), now, cluster, target),
            scoped(SignalName.CEPH_OSDS_TOTAL, len(reading.osds), now, cluster, target),
            scoped("ceph_osds_in", sum(o.in_cluster for o in reading.osds), now, cluster, target),
            scoped("ceph_pgs_total", reading.pgs_total, now, cluster, target),
            scoped("ceph_pgs_active_clean", reading.pgs_active_clean, now, cluster, target),
            scoped(SignalName.CEPH_PGS_INACTIVE, reading.pgs_inactive, now, cluster, target),
            scoped("ceph_cluster_total_bytes", reading.total_bytes, now, cluster, target),
            scoped("ceph_cluster_used_bytes", reading.used_bytes, now, cluster, target),
        ]
        samples += [
            scoped(
                "ceph_health_check",
                c.count,
                now,
                cluster,
                target,
                check=c.name,
                severity=c.severity,
            )
            for c in reading.checks
        ]
        # Each pool is a scope of its own (target: its name), so its figures become Signals
        # and a clone into it can be refused while it is near full.
        for pool in reading.pools:
            for metric, value in (
                ("ceph_pool_stored_bytes", pool.stored_bytes),
                ("ceph_pool_objects", pool.objects),
                (SignalName.CEPH_POOL_PERCENT_USED, pool.percent_used),
                ("ceph_pool_max_avail_bytes", pool.max_avail_bytes),
            ):
                samples.append(scoped(metric, value, now, Scope.POOL, pool.name))
        for rack, osds in sorted(reading.racks.items()):
            samples.append(
                scoped(SignalName.CEPH_OSDS_UP, sum(o.up for o in osds), now, Scope.RACK, rack)
            )
            samples.append(scoped(SignalName.CEPH_OSDS_TOTAL, len(osds), now, Scope.RACK, rack))
        for osd in reading.osds:
            scope, where = (Scope.RACK, osd.rack) if osd.rack else (cluster, target)
            figures = {"ceph_osd_up": float(osd.up), "ceph_osd_in": float(osd.in_cluster)}
            if osd.commit_latency_ms is not None and osd.apply_latency_ms is not None:
                figures["ceph_osd_commit_latency_ms"] = osd.commit_latency_ms
                figures["ceph_osd_apply_latency_ms"] = osd.apply_latency_ms
            samples += [scoped(m, v, now, scope, where, osd=osd.name) for m, v in figures.items()]
        return samples
