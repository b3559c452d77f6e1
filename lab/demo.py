"""``make demo``: the closed loop on the lab, in a few minutes.

Where it sits: outside the product, on top of it. It brings up the lab with all its parts,
preloads a day and a half of demand history per business (from real traces, compressed like the
load that follows), lets the lab load balancer replay those traces as real guest CPU load, and
runs the real controller (in-process, auto mode, short intervals) with a live view of the
businesses, the racks and every action with its reason. It opens with a load jump on the cache
business, which is at its maximum instance count: no clone can help, so the controller hot-adds
a vCPU to its VM (the reason printed, and the guest bringing the CPU online). Then the traces
play; then it injects a rack fault — the rack's
OVS bond member down, its Ceph OSDs stopped, its temperature ramping — and shows the controller
live-migrating every VM off that rack. It ends with a summary and takes the lab down.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import libvirt
import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from ruamel.yaml import YAML

from autoscaler.cli.fleet_view import print_fleet
from autoscaler.config import load_controller_config
from autoscaler.model import Health
from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.observability.http_server import parse_listen
from autoscaler.runtime import logs
from autoscaler.runtime.actuation import ExecutorActuation
from autoscaler.runtime.collection import CollectionStage, backup_catalogue, build_collectors
from autoscaler.runtime.controller import Controller
from autoscaler.runtime.discovery import discover
from autoscaler.runtime.figures import business_figures
from autoscaler.runtime.history import BUSY_CORES, SeriesKind
from lab import ceph, ovs, temperature
from lab import lab as lab_mod
from lab.layout import PORT_CONTROLLER_METRICS
from lab.loaddriver import TraceDemand
from lab.spec import LabSpec
from policies.loader import load_policy_dir
from policies.rack_health import score_racks

DATA = lab_mod.PROJECT_ROOT / "data" / "nab"
COMPRESSION = 120.0  # one wall second replays two trace minutes
TRACES = {  # business -> (trace, peak cores, where in the trace to start)
    "web": ("nyc_taxi.csv", 0.6, 5000),
    "api": ("ec2_cpu_utilization_5f5533.csv", 0.35, 1500),
    "cache": ("rds_cpu_utilization_cc0c53.csv", 0.2, 1000),
}
# The vertical phase: cache runs at its maximum instance count (one) and its load jumps to 160 %
# of that instance's 0.25 cores; one more vCPU (0.5 cores) carries it at 80 %.
AT_MAXIMUM = {"cache": 1}
JUMP = ("cache", 0.4)


def demo_policies(lab: lab_mod.Lab) -> Path:
    """The lab's policies in auto mode with demo-length windows."""
    yaml = YAML(typ="safe", pure=True)
    folder = Path(lab.state.root) / "demo-businesses"
    folder.mkdir(exist_ok=True)
    for source in sorted((Path(lab.state.root) / "businesses").glob("*.yaml")):
        policy = yaml.load(source.read_text())
        policy["mode"] = "auto"
        policy["instances"]["max"] = AT_MAXIMUM.get(policy["business"], 4)
        policy["instances"]["min"] = min(policy["instances"]["min"], policy["instances"]["max"])
        policy["scaling"].setdefault("vertical", {})["enabled"] = True
        policy["scaling"]["scale_down_stabilisation_s"] = 120
        policy["scaling"]["cooldowns"] = {"scale_up_s": 0, "scale_down_s": 20}
        policy["forecast"]["min_history_hours"] = 12
        with open(folder / source.name, "w") as out:
            yaml.dump(policy, out)
    return folder


def demo_controller_file(lab: lab_mod.Lab, policies: Path) -> Path:
    yaml = YAML(typ="safe", pure=True)
    config = yaml.load(lab.controller_file.read_text())
    config["policy_dir"] = str(policies)
    config["intervals"] = {"collect_s": 2, "decide_s": 4, "ledger_s": 4, "refit_s": 90}
    config["metrics"] = {"listen": f"127.0.0.1:{lab.layout.port(PORT_CONTROLLER_METRICS)}"}
    path = Path(lab.state.root) / "demo-controller.yaml"
    with open(path, "w") as out:
        yaml.dump(config, out)
    return path


def preload_history(controller: Controller, now: float) -> None:
    """36 h of per-minute demand before ``now``, replaying each trace backwards from its start."""
    minutes = np.arange(-36 * 60, 0)
    for business, (trace, peak, start) in TRACES.items():
        demand = TraceDemand.from_csv(DATA / trace, peak, COMPRESSION, start)
        points = [(now + 60.0 * m, demand.at(60.0 * m)) for m in minutes]
        controller.history.record(SeriesKind.BUSINESS, business, BUSY_CORES, points)


def view(controller: Controller, events: list[str], phase: str, started: float) -> Group:
    snapshot = controller.snapshot
    table = Table(title=f"businesses — {phase} — t+{time.monotonic() - started:.0f}s")
    for col in ("business", "ready", "demand", "capacity", "budget left"):
        table.add_column(col, justify="right" if col != "business" else "left")
    racks = Table(title="racks")
    for col in ("rack", "health", "VMs", "why"):
        racks.add_column(col)
    if snapshot is not None:
        figures = business_figures(snapshot)
        for name, fig in sorted(figures.items()):
            budget = controller.metrics.registry.get_sample_value(
                "autoscaler_error_budget_remaining_ratio", {"business": name}
            )
            budget = 1.0 if budget is None else budget
            table.add_row(
                name,
                str(fig.ready),
                f"{fig.demand_cores:.2f}",
                f"{fig.capacity_cores:.2f}",
                f"{budget:.1%}",
            )
        temps = controller.decision_state(snapshot.now).temperatures
        for rack, health in sorted(score_racks(snapshot, temps, snapshot.now).items()):
            vms = sum(
                len(snapshot.vms_by_host.get(h.name, []))
                for h in snapshot.hosts_by_rack.get(rack, [])
            )
            colour = {Health.HEALTHY: "green", Health.DEGRADED: "yellow"}.get(health.health, "red")
            racks.add_row(
                rack,
                f"[{colour}]{health.health.value}[/{colour}]",
                str(vms),
                health.explanation[:70],
            )
    actions = Panel("\n".join(events[-10:]) or "(none yet)", title="actions and reasons")
    return Group(table, racks, actions)


def trace_demand() -> dict[str, dict[str, object]]:
    return {
        b: {"trace": str(DATA / t), "peak_cores": p, "compression": COMPRESSION, "start_index": s}
        for b, (t, p, s) in TRACES.items()
    }


def vcpus_of(controller: Controller, business: str) -> dict[str, int]:
    snapshot = controller.snapshot
    if snapshot is None:
        return {}
    return {v.name: v.vcpus for v in snapshot.vms_by_business.get(business, [])}


def run(
    root: Path,
    *,
    keep: bool = False,
    load_s: float = 150,
    fault_s: float = 150,
    vertical_s: float = 90,
    storage: Literal["local", "rbd"] = "local",
) -> int:
    console = Console()
    console.print(
        "[bold]bringing up the lab[/bold] (6 libvirt hosts, Prometheus, Ceph, DPDK, OVS;"
        f" VM disks {'on Ceph RBD' if storage == 'rbd' else 'as local qcow2 overlays'})"
    )
    lab = lab_mod.up(root, LabSpec(storage=storage))
    logs.setup("warning")
    # A job skipped while the previous run still acts is expected here; keep the view clean.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        config = load_controller_config(demo_controller_file(lab, demo_policies(lab)))
        console.print("[bold]the fleet, discovered through libvirt[/bold]")
        print_fleet(discover(config, load_policy_dir(config.policy_dir)), console)
        shutil.rmtree(config.state_dir, ignore_errors=True)
        metrics, health = ControllerMetrics(), HealthState(interval_s=config.intervals.decide_s)
        controller = Controller(
            config,
            holder="demo",
            metrics=metrics,
            health=health,
            collection=CollectionStage(build_collectors(config)),
            actuation=None,
        )
        controller.actuation = ExecutorActuation(
            config, controller.lease, lambda: controller.policies
        )
        controller.collection.add(backup_catalogue(config, lambda: controller.policies, None))
        events: list[str] = []
        # Every planned action with its reason, and every outcome (what the guest saw).
        controller.on_event = lambda text: events.append(f"{time.strftime('%H:%M:%S')} {text}")
        preload_history(controller, time.time())
        jumped, cores = JUMP
        lab_mod.set_demand(lab, {**trace_demand(), jumped: {"cores": cores}})
        server = MetricsServer(metrics, health, *parse_listen(config.metrics.listen))
        server.start()
        controller.start()
        controller.refit_job()
        prom = lab.parts.prometheus.url if lab.parts and lab.parts.prometheus else "-"
        console.print(
            f"controller running; metrics on http://{config.metrics.listen}/metrics,"
            f" Prometheus on {prom}"
        )
        started = time.monotonic()
        phase = f"{jumped} load jumps at its maximum instance count"
        with Live(
            view(controller, events, phase, started), console=console, refresh_per_second=1
        ) as live:
            before = sum(vcpus_of(controller, jumped).values()) or 1
            grown_at = None
            while time.monotonic() - started < vertical_s:
                time.sleep(1)
                live.update(view(controller, events, phase, started))
                if grown_at is None and sum(vcpus_of(controller, jumped).values()) > before:
                    grown_at = time.monotonic()
                if grown_at is not None and time.monotonic() - grown_at > 15:
                    break  # long enough to see its capacity carry the load
            lab_mod.set_demand(lab, trace_demand())
            started_traces = time.monotonic()
            while time.monotonic() - started_traces < load_s:
                time.sleep(1)
                live.update(view(controller, events, "traces replayed", started))
            rack, victims = inject_rack_fault(lab, controller)
            events.append(
                f"{time.strftime('%H:%M:%S')} FAULT on rack {rack}: bond member down,"
                f" {len(victims)} OSD(s) stopped, temperature ramping"
            )
            fault_at = time.monotonic()
            while time.monotonic() - fault_at < fault_s:
                time.sleep(1)
                live.update(view(controller, events, f"rack {rack} failing", started))
                if rack_empty(controller, rack) and time.monotonic() - fault_at > 20:
                    break
        controller.stop()
        server.stop()
        summary(console, controller, events, rack)
        vertical(console, controller, events, jumped)
        return 0
    finally:
        if not keep:
            lab_mod.down(root)


def inject_rack_fault(lab: lab_mod.Lab, controller: Controller) -> tuple[str, list[int]]:
    snapshot = controller.snapshot
    if snapshot is None or lab.parts is None:
        raise RuntimeError("the demo needs a snapshot and the lab's parts")
    counts = Counter(snapshot.host_by_name[v.host].rack for v in snapshot.vms)
    rack = counts.most_common(1)[0][0]
    for record in lab.state.hosts:
        if record.rack == rack and lab.parts.ovs is not None:
            ovs.set_member(lab.layout, lab.parts.ovs.bonds[record.name], 0, up=False)
    osds = list(lab.parts.ceph.osds_by_rack.get(rack, ())) if lab.parts.ceph else []
    for osd in osds:
        ceph.stop_osd(lab.layout, osd)
    temperature.ramp(lab.layout, rack, delta_c=25, over_s=30)
    return rack, osds


def rack_empty(controller: Controller, rack: str) -> bool:
    snapshot = controller.snapshot
    return snapshot is not None and not any(
        snapshot.host_by_name[v.host].rack == rack for v in snapshot.vms
    )


def summary(console: Console, controller: Controller, events: list[str], rack: str) -> None:
    table = Table(title="summary: actions by kind and result")
    table.add_column("kind")
    table.add_column("result")
    table.add_column("count", justify="right")
    for family in controller.metrics.registry.collect():
        if family.name != "autoscaler_actions":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                table.add_row(sample.labels["kind"], sample.labels["result"], f"{sample.value:.0f}")
    console.print(table)
    console.print(f"rack {rack} emptied: {rack_empty(controller, rack)}")


def vertical(console: Console, controller: Controller, events: list[str], business: str) -> None:
    """The vertical phase's hot-adds: each with its reason, and what the guest reported."""
    lines = [e for e in events if "hot_add_vcpu" in e or "hot_add_memory" in e]
    console.print(Panel("\n".join(lines) or "(no hot-add)", title="vertical scaling"))
    console.print(f"{business} vCPUs now: {vcpus_of(controller, business)}")
