"""Benchmark of the actuators on a lab of their own: ``python -m bench.actuators --json``.

Where it sits: beside the tests, measuring what the issue's targets name, end to end through
the executor and journal (each figure is an action's own duration: precondition, execute and
verification inside the guest): vCPU and memory hot-add until the guest sees them, clone until
the guest reports ready, live migration (wall time and the downtime QEMU reports on the
destination), disk snapshot, and a rack evacuation of four VMs under the per-host cap; then
the same guests on local overlays and on Ceph RBD side by side (``storage``: clone, migration
after the guest wrote 64 MiB, backups and restore on RBD); and, with HAProxy in front of web
(``access``), a clone's registration until it serves, a retire's drain and one rollout step
under light traffic, counting every failed request. It brings up its own lab in a temporary
folder and always takes it down; ``--only access`` measures the access layer alone.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actuators.access_sync import apply_registrations
from actuators.backup import pool_backups, restore_image
from actuators.base import Fleet
from actuators.executor import ActionResult, ExecutorLimits, execute_plan
from actuators.haproxy import HaproxyRuntime
from actuators.libvirt_events import ensure_event_loop
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import (
    Action,
    BackupInstance,
    CloneFromTemplate,
    HotAddMemory,
    HotAddVcpu,
    Journal,
    Lease,
    LiveMigrate,
    MergeSnapshot,
    Plan,
    ReplaceInstance,
    Retire,
    SnapshotDisk,
)
from autoscaler.model.access import ServerHealth
from autoscaler.runtime.discovery import discover
from autoscaler.runtime.lease import Renewing, taken_file_lease
from autoscaler.runtime.wiring import build_fleet, open_journal, quiet_libvirt
from lab import access
from lab import lab as lab_mod
from lab.ceph import BACKUPS_POOL, IMAGES_POOL
from lab.lab import Lab
from lab.rbd import fleet_on_rbd
from lab.spec import LabSpec
from policies.access import registrations
from policies.loader import load_policy_dir

VMS = ("bench-1", "bench-2", "bench-3", "bench-4")
STORAGE_FIGURES = (
    "clone_to_guest_ready",
    "migration_total",
    "migration_downtime",
    "backup_full",
    "backup_incremental",
    "restore",
)
WHY = {"business": "web", "reason": "benchmark"}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def summary(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    if not ordered:
        return {"p50_s": float("nan"), "p95_s": float("nan"), "n": 0}
    p95_index = min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))
    return {
        "p50_s": round(statistics.median(ordered), 4),
        "p95_s": round(ordered[p95_index], 4),
        "n": len(ordered),
    }


class Bench:
    def __init__(
        self, fleet: Fleet, journal: Journal, limits: ExecutorLimits, lease: Lease
    ) -> None:
        self.fleet = fleet
        self.journal = journal
        self.limits = limits
        self.lease = lease
        self.samples: dict[str, list[float]] = {}

    def run(self, *actions: Action) -> list[ActionResult]:
        held = self.lease.held()
        if held is None:
            raise RuntimeError("the benchmark's lease ran out")
        plan = Plan.build(list(actions), created_at=time.time()).under(held.generation)
        results = execute_plan(plan, self.fleet, self.journal, lease=self.lease, limits=self.limits)
        failed = [r for r in results if r.status != "done"]
        if failed:
            raise RuntimeError(f"benchmark action failed: {failed[0].key}: {failed[0].reason}")
        return results

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def timed(self, name: str, *actions: Action) -> list[ActionResult]:
        results = self.run(*actions)
        for r in results:
            self.add(name, r.duration_s)
        return results

    def migrate_all(self, moves: list[LiveMigrate]) -> float:
        started = time.monotonic()
        for r in self.run(*moves):
            self.add("migration_total", r.figures["migration_total_s"])
            if "migration_downtime_s" in r.figures:
                self.add("migration_downtime", r.figures["migration_downtime_s"])
        return time.monotonic() - started


def evacuation(source: str, targets: list[str], vms: tuple[str, ...]) -> list[LiveMigrate]:
    return [
        LiveMigrate(vm=vm, source=source, destination=targets[i % len(targets)], **WHY)
        for i, vm in enumerate(vms)
    ]


def measure(bench: Bench, hosts: list[str]) -> None:
    a, b, c, d, e, f = hosts[:6]
    for vm in VMS:  # one at a time: the clone figure is one clone's own latency
        bench.timed("clone_to_guest_ready", CloneFromTemplate(vm=vm, host=a, **WHY))
    for n in (2, 3, 4):
        for vm in VMS:
            bench.timed("vcpu_hotadd_to_guest", HotAddVcpu(vm=vm, host=a, vcpus=n, **WHY))
    for mib in (384, 512):
        for vm in VMS:
            bench.timed(
                "memory_hotadd_to_guest", HotAddMemory(vm=vm, host=a, memory_mib=mib, **WHY)
            )
    for round_ in (1, 2):
        for vm in VMS:
            tag = f"bench-{round_}"
            (snap,) = bench.run(SnapshotDisk(vm=vm, host=a, tag=tag, **WHY))
            bench.add("snapshot", snap.figures["snapshot_s"])
            bench.run(MergeSnapshot(vm=vm, host=a, tag=tag, **WHY))
    # Rack evacuation: the four VMs leave host a (its rack) for two hosts of other racks,
    # at most two outgoing migrations at a time (the cap). Then gathered on d and evacuated
    # again, for a second figure.
    bench.add("rack_evacuation_4vms", bench.migrate_all(evacuation(a, [b, c], VMS)))
    bench.migrate_all(evacuation(b, [d], VMS[0::2]) + evacuation(c, [d], VMS[1::2]))
    bench.add("rack_evacuation_4vms", bench.migrate_all(evacuation(d, [e, f], VMS)))
    # Scale back in down to the business minimum (2): the other two go with the lab.
    bench.run(*(Retire(vm=vm, host=[e, f][i % 2], **WHY) for i, vm in enumerate(VMS[:2])))


STORAGE_VMS = {"local": ("stor-local-1", "stor-local-2"), "rbd": ("stor-rbd-1", "stor-rbd-2")}
FILL_MIB = 64
BACKUP_POOL_TARGET: dict[str, str | int | float | bool] = {
    "target_kind": "pool",
    "target": BACKUPS_POOL,
    "keep": 2,
}


def measure_storage(lab: Lab, benches: dict[str, Bench], hosts: list[str]) -> None:
    """The same guests on local overlays and on RBD, in the same lab: clone until the guest
    is ready; live migration of a guest that has written 64 MiB to its disk (a block migration
    copies them, a migration on RBD does not); on RBD, a full and an incremental backup into
    the backups pool and a restore as a new VM (image written, then cloned until ready)."""
    a, b = hosts[0], hosts[1]
    for storage, bench in benches.items():
        for vm in STORAGE_VMS[storage]:
            bench.timed(f"{storage}:clone_to_guest_ready", CloneFromTemplate(vm=vm, host=a, **WHY))
            lab_mod.fill_disk(lab, "web", a, vm, FILL_MIB)
        for source, destination in ((a, b), (b, a)):
            for vm in STORAGE_VMS[storage]:
                move = LiveMigrate(vm=vm, source=source, destination=destination, **WHY)
                (result,) = bench.run(move)
                bench.add(f"{storage}:migration_total", result.figures["migration_total_s"])
                if "migration_downtime_s" in result.figures:
                    bench.add(
                        f"{storage}:migration_downtime", result.figures["migration_downtime_s"]
                    )
    bench = benches["rbd"]
    store = bench.fleet.rbd_store()
    for vm in STORAGE_VMS["rbd"]:
        for backup_id, more in (("b20261201t0300", 0), ("b20261201t0400", 16)):
            if more:
                lab_mod.fill_disk(lab, "web", a, vm, FILL_MIB + more)
            action = BackupInstance(
                vm=vm, host=a, backup_id=backup_id, facts=BACKUP_POOL_TARGET, **WHY
            )
            (result,) = bench.run(action)
            kind = "incremental" if result.figures["backup_incremental"] else "full"
            bench.add(f"rbd:backup_{kind}", result.duration_s)
        started = time.monotonic()
        (found,) = [
            x
            for x in pool_backups(store, BACKUPS_POOL, "web")
            if x.vm == vm and x.backup_id == "b20261201t0400"
        ]
        restored, created = f"{vm}-r", f"{time.time():.3f}"
        keys = bench.fleet.keys
        if keys is None:
            raise RuntimeError("the lab's fleet has no key")
        restore_image(
            store,
            found,
            "pool",
            IMAGES_POOL,
            restored,
            created,
            keys.stamp(restored, "web", created),
        )
        bench.run(CloneFromTemplate(vm=restored, host=b, **WHY))
        bench.add("rbd:restore", time.monotonic() - started)


ACCESS_FIGURES = (
    "lb_register",
    "lb_register_sync",
    "lb_register_up",
    "drain_to_retire",
    "drain",
    "rollout_per_instance",
    "rollout_serve",
)
ACCESS_RUNS = 3
ACCESS_RATE = 2.0  # requests/s: light traffic, well within what 0.25-core guests answer
ACCESS_TRAFFIC_S = 300.0  # the generator's own bound; it is stopped once the runs are done
POLL_S = 0.1


def served_by(edge: HaproxyRuntime, server: str) -> int:
    """How many sessions HAProxy has ever sent ``server`` in web (``stot`` of ``show stat``)."""
    rows = csv.DictReader(io.StringIO(edge.command("show stat").lstrip("# ")))
    return next(
        (int(r["stot"] or 0) for r in rows if r["pxname"] == "web" and r["svname"] == server), 0
    )


def serving_now(edge: HaproxyRuntime, server: str) -> bool:
    return served_by(edge, server) > 0


def up_now(edge: HaproxyRuntime, server: str) -> bool:
    return server in up_in(edge)


def up_in(edge: HaproxyRuntime) -> set[str]:
    return {s.name for s in edge.servers("web") if s.health is ServerHealth.UP}


def sync(config: ControllerConfig, fleet: Fleet) -> None:
    """One pass of the controller's access sync: registrations from a fresh view, applied."""
    snapshot = discover(config, load_policy_dir(config.policy_dir), sample_interval_s=0.5)
    for applied in apply_registrations(fleet, registrations(snapshot)):
        if not applied.done:
            raise RuntimeError(f"registration failed: {applied.detail}")


def until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``check()`` until true; the seconds it took (RuntimeError past ``timeout_s``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def measure_access(
    lab: Lab, bench: Bench, config: ControllerConfig, hosts: list[str], status: Path
) -> dict[str, Any]:
    """HAProxy in front of web (the lab's ``edge``), light traffic through it all along:
    ``lb_register``, from a clone's CloneFromTemplate done to the first request HAProxy sent
    it (one access-sync pass, HAProxy's health check, its turn in the round robin); a Retire
    of that serving clone (``drain_to_retire``, its ``drain`` part); one ReplaceInstance of a
    first instance (``rollout_per_instance``, its ``rollout_serve`` part: registered until
    healthy). The traffic's counts are returned: every failed request is one lost."""
    edge = HaproxyRuntime(access.BALANCER, access.socket_path(lab.layout))
    base = [CloneFromTemplate(vm=f"acc-base-{i}", host=hosts[i], **WHY) for i in (0, 1)]
    bench.run(*base)  # web's minimum (two): what a retire must leave serving
    serving = {a.vm: a.host for a in base}
    sync(config, bench.fleet)
    until("the first instances up in HAProxy", lambda: set(serving) <= up_in(edge), 90)
    generator = access.traffic(
        lab.layout, "web", rate=ACCESS_RATE, duration_s=ACCESS_TRAFFIC_S, status_file=status
    )
    try:
        for run in range(1, ACCESS_RUNS + 1):
            vm, host = f"acc-{run}", hosts[2 + run % 2]
            bench.run(CloneFromTemplate(vm=vm, host=host, **WHY))
            ready = time.monotonic()
            sync(config, bench.fleet)
            # Its parts: the access sync's pass (a fresh view of the fleet, then the add),
            # HAProxy's health check passing, then the server's turn in the round robin.
            bench.add("lb_register_sync", time.monotonic() - ready)
            until(f"{vm} up", functools.partial(up_now, edge, vm), 60)
            bench.add("lb_register_up", time.monotonic() - ready)
            until(f"{vm} serving", functools.partial(serving_now, edge, vm), 60)
            bench.add("lb_register", time.monotonic() - ready)
            (retired,) = bench.run(Retire(vm=vm, host=host, **WHY))
            bench.add("drain_to_retire", retired.duration_s)
            bench.add("drain", retired.figures["drain_s"])
            old = min(serving)  # the oldest first, as a rollout goes
            new_vm, new_host = f"acc-r{run}", hosts[4 + run % 2]
            replace = ReplaceInstance(
                vm=old, host=serving[old], new_vm=new_vm, new_host=new_host, **WHY
            )
            (replaced,) = bench.run(replace)
            bench.add("rollout_per_instance", replaced.duration_s)
            if "serve_s" in replaced.figures:
                bench.add("rollout_serve", replaced.figures["serve_s"])
            del serving[old]
            serving[new_vm] = new_host
        time.sleep(2 * POLL_S + 1.0)  # the requests in flight end; the status is rewritten
        counts: dict[str, Any] = json.loads(status.read_text())
    finally:
        if generator.poll() is None:
            generator.terminate()
        generator.wait(timeout=30)
    return {
        k: counts.get(k)
        for k in ("sent", "ok", "failures", "http_error", "timeout", "connection_error")
    } | {
        "rate_per_s": ACCESS_RATE,
        "latency_ms": counts.get("latency_ms"),
        "errors": counts.get("errors"),
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON alone: the lab's scripts print progress at the fd level."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--root", type=Path, help="lab folder (default: a temporary one)")
    parser.add_argument(
        "--only", choices=["access"], help="measure only these figures (access: HAProxy's)"
    )
    args = parser.parse_args(argv)
    ensure_event_loop()
    quiet_libvirt()
    traffic: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-actuators-", dir="/tmp") as tmp:
        root = args.root or Path(tmp) / "lab"
        with stdout_to_stderr():
            try:
                # web behind the lab's HAProxy: its policy gets an access section, the
                # controller file the balancer (the other figures never register a server).
                lab = lab_mod.up(root, LabSpec(access=("web",)), start_vms=False)
                config = load_controller_config(lab.controller_file)
                fleet = build_fleet(config, load_policy_dir(config.policy_dir))
                limits = ExecutorLimits(max_migrations_per_host=2, max_migrations=4)
                lease = taken_file_lease(Path(tmp) / "state", "bench")
                with (
                    Renewing(lease, every_s=5),
                    open_journal(Path(tmp) / "state", fleet) as journal,
                ):
                    bench = Bench(fleet, journal, limits, lease)
                    hosts = [h.name for h in lab.state.hosts]
                    if args.only != "access":
                        measure(bench, hosts)
                    traffic = measure_access(lab, bench, config, hosts, Path(tmp) / "traffic.json")
                    if args.only is None:
                        on_rbd = Bench(fleet_on_rbd(fleet, "web"), journal, limits, lease)
                        on_rbd.samples = bench.samples
                        measure_storage(lab, {"local": bench, "rbd": on_rbd}, hosts[2:])
                domain_type = config.domain_type
            finally:
                lab_mod.down(root)
    report: dict[str, Any] = {
        "machine": machine(),
        "domain_type": domain_type,
        "metrics": {
            name: summary(bench.samples[name])
            for name in (
                "vcpu_hotadd_to_guest",
                "memory_hotadd_to_guest",
                "clone_to_guest_ready",
                "migration_total",
                "migration_downtime",
                "snapshot",
                "rack_evacuation_4vms",
            )
            if name in bench.samples
        },
    }
    report["access"] = {
        **{name: summary(bench.samples.get(name, [])) for name in ACCESS_FIGURES},
        "traffic": traffic,
        "failed_requests": traffic.get("failures"),
    }
    storage: dict[str, dict[str, dict[str, float | int]]] = {
        kind: {
            name: summary(bench.samples[f"{kind}:{name}"])
            for name in STORAGE_FIGURES
            if f"{kind}:{name}" in bench.samples
        }
        for kind in ("rbd", "local")
    }
    if args.only is None:
        report["storage"] = storage
    rbd, local = storage["rbd"], storage["local"]
    if "migration_total" in rbd and "migration_total" in local:
        report["rbd_migration_speedup_p50"] = round(
            float(local["migration_total"]["p50_s"]) / float(rbd["migration_total"]["p50_s"]), 2
        )
    for name, values in sorted(bench.samples.items()):  # the raw figures, for the curious
        print(f"{name}: {[round(v, 3) for v in values]}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
