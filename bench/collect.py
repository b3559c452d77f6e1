"""``python -m bench.collect --json``: one collection cycle over a 10,000-VM fleet.

50 libvirt connections to libvirt's own test driver hold 10,000 domains in all; every cycle
collects them in parallel through the real ``LibvirtHostCollector`` (getAllDomainStats and the
metadata of every domain). The test driver's stats hold only the state, so the cycle also pushes
10,000 full stats records, captured once from real lab VMs (``--record``) and replayed under
new names, through the same parser, and stores the per-VM figures in the real history store.
Prints ``{"machine", "metrics": {"collect_cycle": {p50_s, p95_s, n}}, "peak_rss_mib", "vms",
"connections"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from autoscaler.model import Collector
from autoscaler.runtime.collection import CollectionStage
from autoscaler.runtime.history import HistoryStore, SeriesKind
from collectors.libvirt_vms import (
    DomainRecord,
    DomainStatsParser,
    LibvirtHostCollector,
    read_domain_records,
)

RECORDED = Path(__file__).with_name("data") / "domain-stats.json"
CONNECTIONS = 50
VMS = 10_000


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "libvirt": libvirt.getVersion(),
    }


def node_xml(path: Path, host: int, per_host: int) -> None:
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, text in (
        ("mhz", "2000"),
        ("model", "x86_64"),
        ("active", "64"),
        ("nodes", "1"),
        ("sockets", "2"),
        ("cores", "16"),
        ("threads", "2"),
    ):
        ET.SubElement(cpu, tag).text = text
    ET.SubElement(node, "memory").text = str(512 * 2**20)
    for i in range(per_host):
        dom = ET.SubElement(node, "domain", type="test")
        ET.SubElement(dom, "name").text = f"vm-{host}-{i}"
        ET.SubElement(dom, "memory").text = "262144"
        ET.SubElement(dom, "vcpu").text = "2"
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type").text = "hvm"
    path.write_text(ET.tostring(node, encoding="unicode"))


def replayed(records: list[DomainRecord], n: int, tick: int) -> list[DomainRecord]:
    """``n`` records cycled from the recorded ones, with CPU time moving on each tick."""
    out = []
    for i in range(n):
        base = records[i % len(records)]
        stats = dict(base.stats)
        stats["cpu.time"] = float(stats.get("cpu.time", 0)) + tick * 1e9 * (1 + i % 7) / 10
        out.append(DomainRecord(name=f"rec-{i}", stats=stats, metadata=base.metadata))
    return out


def opener(uri: str) -> Callable[[], libvirt.virConnect]:
    return lambda: libvirt.open(uri)


def record(config: Path) -> None:
    """Capture one stats record of every VM of a running lab into ``bench/data``."""
    from autoscaler.config import load_controller_config

    cfg = load_controller_config(config)
    records = []
    for *_, host in cfg.inventory.hosts():
        conn = libvirt.open(host.uri)
        try:
            records += read_domain_records(conn)
        finally:
            conn.close()
    RECORDED.parent.mkdir(parents=True, exist_ok=True)
    RECORDED.write_text(
        json.dumps(
            [
                r.__dict__
                if hasattr(r, "__dict__")
                else {"name": r.name, "stats": r.stats, "metadata": r.metadata}
                for r in records
            ],
            indent=1,
            sort_keys=True,
        )
    )
    print(f"recorded {len(records)} domains into {RECORDED}")


def run(cycles: int) -> dict[str, object]:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    raw = json.loads(RECORDED.read_text())
    records = [DomainRecord(name=r["name"], stats=r["stats"], metadata=r["metadata"]) for r in raw]
    per_host = VMS // CONNECTIONS
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        collectors: list[Collector] = []
        for h in range(CONNECTIONS):
            path = folder / f"node-{h}.xml"
            node_xml(path, h, per_host)
            collectors.append(LibvirtHostCollector(f"h{h}", opener(f"test://{path}")))
        stage = CollectionStage(collectors, deadline_s=30)
        parser = DomainStatsParser()
        durations = []
        with HistoryStore(folder / "history.sqlite") as history:
            for tick in range(cycles + 1):
                started = time.perf_counter()
                now = time.time()
                collections = stage.run(now)
                samples = [s for c in collections for s in c.samples]
                samples += parser.parse("replay", replayed(records, VMS, tick), now)
                figures: dict[str, dict[str, float]] = {}
                for s in samples:
                    vm = s.label("vm")
                    if vm and s.metric in ("vm_cpu_utilisation", "vm_cpu_busy_cores", "vm_vcpus"):
                        figures.setdefault(vm, {})[s.metric] = s.value
                history.record_many(SeriesKind.VM, now, figures)
                if tick:  # the first cycle opens 50 connections: measured apart
                    durations.append(time.perf_counter() - started)
        stage.close()
    durations.sort()
    return {
        "machine": machine(),
        "metrics": {
            "collect_cycle": {
                "p50_s": round(statistics.median(durations), 4),
                "p95_s": round(durations[min(len(durations) - 1, int(0.95 * len(durations)))], 4),
                "n": len(durations),
            }
        },
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "vms": VMS,
        "connections": CONNECTIONS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument(
        "--record",
        type=Path,
        metavar="CONTROLLER_FILE",
        help="capture stats records from a running lab instead",
    )
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return 0
    result = run(args.cycles)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
