"""``make demo``: the closed loop on the lab, in a few minutes.

Where it sits: outside the product, on top of it. It brings up the lab with all its parts,
preloads a day and a half of demand history per business (from real traces, compressed like the
load that follows), lets the lab load balancer replay those traces as real guest CPU load, and
runs the real controller (in-process, auto mode, short intervals) with a live view of the
businesses, the racks and every action with its reason. It opens with a load jump on the cache
business, which is at its maximum instance count: no clone can help, so the controller hot-adds
a vCPU to its VM (the reason printed, and the guest bringing the CPU online). Then web is rolled
out from v1 to v2 (as ``autoscaler rollout web --to v2`` does: the controls say so, the
controller replaces one instance at a time, each new one serving before the old one is drained).
Then web's load steps up beyond what its instances carry: the controller clones, and HAProxy
sends the clones requests once their health check passes. Then the traces play; last, it injects
a rack fault — the rack's OVS bond member down, its Ceph OSDs stopped, its temperature ramping —
and shows the controller live-migrating every VM off that rack. Throughout, web sits behind the
lab's HAProxy and the lab's traffic generator sends it requests: the view shows their rate,
failures and p95 latency. It ends with a summary and takes the lab down.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import libvirt
import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from ruamel.yaml import YAML

from actuators.haproxy import HaproxyRuntime
from autoscaler.cli.fleet_view import print_fleet
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import AutoscalerError, Controls, Health
from autoscaler.model.access import LoadBalancerUnavailable, ServerHealth
from autoscaler.model.controls import Rollout
from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.observability.http_server import parse_listen
from autoscaler.runtime import logs
from autoscaler.runtime.actuation import ExecutorActuation
from autoscaler.runtime.collection import (
    CollectionStage,
    access_collector,
    backup_catalogue,
    build_collectors,
)
from autoscaler.runtime.controller import Controller
from autoscaler.runtime.controls import ControlFile
from autoscaler.runtime.discovery import discover
from autoscaler.runtime.figures import business_figures
from autoscaler.runtime.history import BUSY_CORES, SeriesKind
from lab import access, ceph, ovs, rbd, temperature
from lab import lab as lab_mod
from lab.layout import PORT_CONTROLLER_METRICS
from lab.loaddriver import TraceDemand
from lab.spec import LabSpec
from lab.traffic import MAX_DURATION_S
from policies.loader import load_policy_dir
from policies.rack_health import score_racks
from policies.rollout import out_of_date, target_version

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
# The scale-out phase: web's load steps up to 140 % of its two instances (2 x 0.25 cores), more
# than vCPUs within their quota carry: the controller clones, and HAProxy takes the clones in
# once their health check passes, under the traffic the view shows.
STEP = ("web", 0.7)
# The rollout phase: web's first VMs run v1 (its lab policy names it), the demo rolls it to v2.
ROLLOUT = ("web", "v1", "v2")
# Light traffic through HAProxy to web all along: a few requests a second, well within what its
# guests answer, so a failure means a request lost (a scale-in, a migration, a rollout step).
TRAFFIC_RATE = 2.0


def versioned_policy(root: Path) -> None:
    """Before ``lab up``: the lab's copy of web's policy names ``template.version`` v1 (the lab
    keeps a copy it finds), so its first VMs record v1 and a rollout has a version to leave."""
    business, first, _ = ROLLOUT
    folder = root.resolve() / "businesses"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{business}.yaml"
    if not target.exists():
        shutil.copyfile(lab_mod.EXAMPLES / "businesses" / f"{business}.yaml", target)
    yaml = YAML()  # round trip: the copy keeps its comments and quotes ("02:00")
    yaml.preserve_quotes = True
    doc = yaml.load(target.read_text())
    if doc["template"].get("version") is None:
        doc["template"]["version"] = first
        with open(target, "w") as out:
            yaml.dump(doc, out)


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
        # Vertical scaling where no clone can help (at the maximum instance count); the others
        # scale out, so the load step on web shows clones.
        policy["scaling"].setdefault("vertical", {})["enabled"] = policy["business"] in AT_MAXIMUM
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


class TrafficView:
    """What the traffic generator reports in its status file (rewritten every second): its
    counts so far, and the rate of requests answered over the last few seconds."""

    def __init__(self, status: Path) -> None:
        self.status = status
        self.counts: dict[str, Any] = {}
        self.rate = 0.0
        self._last: tuple[float, int] | None = None

    def read(self) -> dict[str, Any]:
        try:
            counts: dict[str, Any] = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return self.counts  # not written yet, or caught mid-write: the last one stands
        elapsed, completed = float(counts.get("elapsed_s", 0.0)), int(counts.get("completed", 0))
        if self._last is None:
            self._last = (elapsed, completed)
        elif elapsed - self._last[0] >= 3:
            self.rate = (completed - self._last[1]) / (elapsed - self._last[0])
            self._last = (elapsed, completed)
        self.counts = counts
        return counts

    def line(self) -> str:
        counts = self.read()
        if not counts:
            return "web traffic through HAProxy: (starting)"
        failures = int(counts.get("failures", 0))
        p95 = (counts.get("latency_ms") or {}).get("p95")
        colour = "red" if failures else "green"
        return (
            f"web traffic through HAProxy: {self.rate:.1f} req/s, {counts.get('sent', 0)} sent,"
            f" [{colour}]{failures} failed[/{colour}],"
            f" p95 {'-' if p95 is None else f'{p95:.0f} ms'} (so far)"
        )


def view(
    controller: Controller,
    events: list[str],
    phase: str,
    started: float,
    traffic: TrafficView | None = None,
) -> Group:
    snapshot = controller.snapshot
    table = Table(title=f"businesses — {phase} — t+{time.monotonic() - started:.0f}s")
    for col in ("business", "ready", "versions", "demand", "capacity", "budget left"):
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
            versions = Counter(  # running ones: a retired VM shuts off before it is gone
                v.version or "-"
                for v in snapshot.vms_by_business.get(name, [])
                if v.state.value == "running"
            )
            table.add_row(
                name,
                str(fig.ready),
                " ".join(f"{v}:{n}" for v, n in sorted(versions.items())),
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
    if traffic is None:
        return Group(table, racks, actions)
    return Group(table, racks, traffic.line(), actions)


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
    scale_s: float = 150,
    rollout_s: float = 300,
    storage: Literal["local", "rbd"] = "local",
) -> int:
    console = Console()
    console.print(
        "[bold]bringing up the lab[/bold] (6 libvirt hosts, Prometheus, Ceph, DPDK, OVS,"
        " HAProxy in front of web;"
        f" VM disks {'on Ceph RBD' if storage == 'rbd' else 'as local qcow2 overlays'})"
    )
    versioned_policy(root)
    lab = lab_mod.up(root, LabSpec(storage=storage, access=(ROLLOUT[0],)))
    logs.setup("warning")
    # A job skipped while the previous run still acts is expected here; keep the view clean.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    generator: subprocess.Popen[str] | None = None
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
        if config.balancers:
            # HAProxy's view of web's backend, as the runner wires it: without it the access
            # layer is never read, nothing is registered and retires and rollouts are held.
            controller.collection.add(access_collector(config, lambda: controller.policies))
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
        status = Path(lab.state.root) / "demo-traffic.json"
        status.unlink(missing_ok=True)
        generator = start_traffic(
            lab, status, vertical_s + scale_s + load_s + fault_s + rollout_s + 60
        )
        traffic = TrafficView(status)
        if generator is None:
            console.print("[red]no web server came up in HAProxy: the demo runs without traffic")
        started = time.monotonic()
        phase = f"{jumped} load jumps at its maximum instance count"
        with Live(
            view(controller, events, phase, started, traffic), console=console, refresh_per_second=1
        ) as live:
            before = sum(vcpus_of(controller, jumped).values()) or 1
            grown_at = None
            while time.monotonic() - started < vertical_s:
                time.sleep(1)
                live.update(view(controller, events, phase, started, traffic))
                if grown_at is None and sum(vcpus_of(controller, jumped).values()) > before:
                    grown_at = time.monotonic()
                if grown_at is not None and time.monotonic() - grown_at > 15:
                    break  # long enough to see its capacity carry the load
            # web rolled out to a new version, one instance at a time. Before the load step:
            # a rollout never runs while its business's error budget burns fast (the page
            # gate), and the step, more than web's instances carry, makes it burn.
            events.append(f"{time.strftime('%H:%M:%S')} {start_rollout(lab, config, storage)}")
            rollout_at, (business, _, to) = time.monotonic(), ROLLOUT
            while time.monotonic() - rollout_at < rollout_s:
                time.sleep(1)
                at, total, old = rollout_progress(controller)
                phase = f"rollout {business} -> {to}: {at}/{total} at {to}, {old} to replace"
                live.update(view(controller, events, phase, started, traffic))
                if total and old == 0 and at == total:
                    break
            stepped, step_cores = STEP
            lab_mod.set_demand(lab, {**trace_demand(), stepped: {"cores": step_cores}})
            phase = f"{stepped} load steps up to {step_cores} cores"
            first = len(vcpus_of(controller, stepped))
            step_at, served_at = time.monotonic(), None
            while time.monotonic() - step_at < scale_s:
                time.sleep(1)
                live.update(view(controller, events, phase, started, traffic))
                grown = len(vcpus_of(controller, stepped)) > first
                if served_at is None and grown and serving_in_haproxy(lab, stepped) > first:
                    served_at = time.monotonic()
                if served_at is not None and time.monotonic() - served_at > 15:
                    break  # long enough to see the clones take their share of the requests
            lab_mod.set_demand(lab, trace_demand())
            started_traces = time.monotonic()
            while time.monotonic() - started_traces < load_s:
                time.sleep(1)
                live.update(view(controller, events, "traces replayed", started, traffic))
            rack, victims = inject_rack_fault(lab, controller)
            events.append(
                f"{time.strftime('%H:%M:%S')} FAULT on rack {rack}: bond member down,"
                f" {len(victims)} OSD(s) stopped, temperature ramping"
            )
            fault_at = time.monotonic()
            while time.monotonic() - fault_at < fault_s:
                time.sleep(1)
                live.update(view(controller, events, f"rack {rack} failing", started, traffic))
                if rack_empty(controller, rack) and time.monotonic() - fault_at > 20:
                    break
        controller.stop()
        server.stop()
        summary(console, controller, events, rack)
        vertical(console, controller, events, jumped)
        rolled_out(console, controller, events, traffic)
        scaled_out(console, events, STEP[0])
        return 0
    finally:
        if generator is not None and generator.poll() is None:
            generator.terminate()
            generator.wait(timeout=30)
        if not keep:
            lab_mod.down(root)


def serving_in_haproxy(lab: lab_mod.Lab, business: str) -> int:
    """How many of the business's servers HAProxy has up (0 if it does not answer)."""
    edge = HaproxyRuntime(access.BALANCER, access.socket_path(lab.layout))
    try:
        return sum(1 for s in edge.servers(business) if s.health is ServerHealth.UP)
    except (LoadBalancerUnavailable, AutoscalerError):
        return 0


def start_traffic(
    lab: lab_mod.Lab, status: Path, duration_s: float
) -> subprocess.Popen[str] | None:
    """The traffic generator against web's frontend, once HAProxy has a web server up (the
    controller registers the first ones in its first cycles); None if none comes up."""
    business = ROLLOUT[0]
    deadline = time.monotonic() + 120
    while serving_in_haproxy(lab, business) == 0:
        if time.monotonic() > deadline:
            return None
        time.sleep(1)
    bounded = min(duration_s, MAX_DURATION_S)  # the generator's own cap
    return access.traffic(
        lab.layout, business, rate=TRAFFIC_RATE, duration_s=bounded, status_file=status
    )


def start_rollout(lab: lab_mod.Lab, config: ControllerConfig, storage: str) -> str:
    """``autoscaler rollout web --to v2``: the rollout written into the controls (the state
    folder's, which the controller reads each decision); on RBD the version's snapshot is
    made first (clones of v2 clone ``images/web@v2``). What it did, in words."""
    business, _, to = ROLLOUT
    if storage == "rbd":
        rbd.push_version(lab_mod.lab_rbd(lab), business, to)
    policy = load_policy_dir(config.policy_dir)[business]

    def edit(controls: Controls) -> Controls:
        rollouts = dict(controls.rollouts)
        rollouts[business] = Rollout(to=to, previous=target_version(policy, controls))
        return controls.model_copy(update={"rollouts": rollouts})

    controls = ControlFile(config.state_dir).update(edit)
    rollout = controls.rollouts[business]
    return (
        f"ROLLOUT {business} {rollout.previous} -> {rollout.to}"
        f" (autoscaler rollout {business} --to {to})"
    )


def rollout_progress(controller: Controller) -> tuple[int, int, int]:
    """(web instances at the target and ready, running in all, out of date), from the
    controller's last view of the fleet (as ``autoscaler rollout --status`` counts them)."""
    business, _, to = ROLLOUT
    snapshot = controller.snapshot
    if snapshot is None:
        return 0, 0, 0
    vms = [v for v in snapshot.vms if v.business == business and v.state.value == "running"]
    at = sum(1 for v in vms if v.version == to and v.ready)
    return at, len(vms), sum(1 for v in vms if out_of_date(v, to))


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


def scaled_out(console: Console, events: list[str], business: str) -> None:
    """The scale-out phase's clones of ``business``, each with its reason and outcome."""
    lines = [e for e in events if "clone_from_template" in e and f"{business}-" in e]
    console.print(Panel("\n".join(lines[-8:]) or "(no clone)", title=f"{business} scale-out"))


def rolled_out(
    console: Console, controller: Controller, events: list[str], traffic: TrafficView
) -> None:
    """The rollout's steps (each a replacement: surge, serving, drain, retire), where web's
    instances ended, and what the traffic through HAProxy saw over the whole demo."""
    business, _, to = ROLLOUT
    lines = [e for e in events if "ROLLOUT" in e or "replace" in e]
    console.print(Panel("\n".join(lines[-12:]) or "(no replacement)", title="rollout"))
    at, total, old = rollout_progress(controller)
    console.print(f"{business}: {at} of {total} instances at {to}, {old} still to replace")
    console.print(traffic.line())
