"""Benchmark of the lab components and the non-libvirt collectors on this machine.

Where it sits: beside the controller, not in the flow. ``python -m bench.lab_collectors --json``
starts Prometheus (with the rack temperature feed), Ceph, dpdk-testpmd and OVS in lab slot 7
under a temporary folder, times each start, calls each collector repeatedly (p50/p95 of one
``collect``), samples the CPU the capped busy-pollers use, and stops everything. Figures go to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_api_client import PrometheusConnect

from autoscaler.model import Collection
from collectors.ceph import CephCollector, connect
from collectors.dpdk import DpdkTelemetryCollector
from collectors.links import LinksCollector
from collectors.node import NodeCollector
from collectors.ovs_bond import OvsBondCollector
from lab import ceph, dpdk, ovs, prometheus, temperature
from lab.layout import PORT_NODE_EXPORTER, LabLayout

RACKS = ("r1", "r2")
HOSTS = ("h0", "h1")


def _timed(start: Callable[[], object]) -> float:
    began = time.perf_counter()
    start()
    return round(time.perf_counter() - began, 2)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pid: int, seconds: float) -> float:
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return round((_cpu_seconds(pid) - before) / seconds, 3)


def _latency(collect: Callable[[float], Collection], calls: int) -> dict[str, float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        collect(time.time())
        times.append(time.perf_counter() - began)
        time.sleep(0.05)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 2),
        "n": calls,
    }


def run(root: Path, calls: int) -> dict[str, object]:
    layout = LabLayout(slot=7, root=root)
    starts: dict[str, float] = {}
    try:
        starts["prometheus_stack_s"] = _timed(lambda: prometheus.start(layout))
        starts["temperature_feed_s"] = _timed(lambda: temperature.start(layout, RACKS))
        starts["ceph_4_osds_health_ok_s"] = _timed(lambda: ceph.start(layout, RACKS))
        starts["testpmd_s"] = _timed(lambda: dpdk.start(layout))
        starts["ovs_2_bonds_with_traffic_s"] = _timed(lambda: ovs.start(layout, HOSTS))
        cluster = ceph.start(layout, RACKS)
        testpmd = dpdk.start(layout)
        lab = ovs.start(layout, HOSTS)
        exporter = f"127.0.0.1:{layout.port(PORT_NODE_EXPORTER)}"
        stack = prometheus.start(layout)
        handle = connect(cluster.conffile, cluster.keyring)
        collectors: dict[str, Callable[[float], Collection]] = {
            "node": NodeCollector(
                PrometheusConnect(stack.url), dict.fromkeys(HOSTS, exporter), RACKS
            ).collect,
            "ceph": CephCollector(handle).collect,
            "dpdk": DpdkTelemetryCollector("h0", testpmd.telemetry_socket).collect,
            "ovs_bond": OvsBondCollector(
                lab.vswitchd_control, {h: b.bond for h, b in lab.bonds.items()}
            ).collect,
            "links": LinksCollector(
                "h0", [*lab.bonds["h0"].members, lab.bonds["h0"].bridge], netns=lab.netns
            ).collect,
        }
        latency = {name: _latency(collect, calls) for name, collect in collectors.items()}
        handle.shutdown()
        cpu = {
            "testpmd_cores": _cpu_share(testpmd.pid, 5.0),
            "ovs_vswitchd_cores": _cpu_share(lab.pids["ovs-vswitchd"], 5.0),
        }
    finally:
        for component in (ovs, dpdk, ceph, temperature, prometheus):
            component.stop(layout)
    return {"starts": starts, "collect_latency": latency, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), args.calls)
    print(json.dumps(result, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
