"""Benchmark of the actuators on a lab of their own: ``python -m bench.actuators --json``.

Where it sits: beside the tests, measuring what the issue's targets name, end to end through
the executor and journal (each figure is an action's own duration: precondition, execute and
verification inside the guest): vCPU and memory hot-add until the guest sees them, clone until
the guest reports ready, live migration (wall time and the downtime QEMU reports on the
destination), disk snapshot, and a rack evacuation of four VMs under the per-host cap; then
the same guests on local overlays and on Ceph RBD side by side (``storage``: clone, migration
after the guest wrote 64 MiB, backups and restore on RBD). It brings up its own lab in a
temporary folder and always takes it down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actuators.backup import pool_backups, restore_image
from actuators.base import Fleet
from actuators.executor import ActionResult, ExecutorLimits, execute_plan
from actuators.libvirt_events import ensure_event_loop
from autoscaler.config import load_controller_config
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
    Retire,
    SnapshotDisk,
)
from autoscaler.runtime.lease import Renewing, taken_file_lease
from autoscaler.runtime.wiring import build_fleet, open_journal, quiet_libvirt
from lab import lab as lab_mod
from lab.ceph import BACKUPS_POOL, IMAGES_POOL
from lab.lab import Lab
from lab.rbd import fleet_on_rbd
from lab.spec import LabSpec
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
    args = parser.parse_args(argv)
    ensure_event_loop()
    quiet_libvirt()
    with tempfile.TemporaryDirectory(prefix="bench-actuators-", dir="/tmp") as tmp:
        root = args.root or Path(tmp) / "lab"
        with stdout_to_stderr():
            try:
                lab = lab_mod.up(root, LabSpec(), start_vms=False)
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
                    measure(bench, hosts)
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
            name: summary(bench.samples.get(name, []))
            for name in (
                "vcpu_hotadd_to_guest",
                "memory_hotadd_to_guest",
                "clone_to_guest_ready",
                "migration_total",
                "migration_downtime",
                "snapshot",
                "rack_evacuation_4vms",
            )
        },
    }
    storage: dict[str, dict[str, dict[str, float | int]]] = {
        kind: {
            name: summary(bench.samples[f"{kind}:{name}"])
            for name in STORAGE_FIGURES
            if f"{kind}:{name}" in bench.samples
        }
        for kind in ("rbd", "local")
    }
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
