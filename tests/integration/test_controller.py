"""The controller on the real lab: it scales a business out and in, one of two controllers acts,
and a standby takes over a killed leader and reconciles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from ruamel.yaml import YAML

from actuators.guest_agent import SerialAgent
from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS, PORT_CONTROLLER_METRICS_2
from policies.loader import load_policy_dir
from tests.integration.lab_fixtures import wait_for

pytestmark = pytest.mark.lab
FIRST_VMS = {"web-1", "web-2", "api-1", "api-2", "cache-1"}
LEASE_S = 6.0
SATURATING_CORES = 0.5
"""web's two first VMs (2 x 0.25 cores) at their limit: the controller cannot tell how much
more they would serve, so it wants at least twice that (``policies.assess``)."""
DECIDE_S = 3.0
RESULTS = Path(__file__).resolve().parents[2] / "build" / "test-results"


def controller_file(
    lab: Lab, folder: Path, *, sla_objective: float | None = None, max_instances: int = 4
) -> Path:
    """The lab's controller file with a web-only policy folder and short intervals
    (``sla_objective``: web's, when a test needs a budget a few bad seconds do not spend)."""
    yaml = YAML(typ="safe", pure=True)
    web = yaml.load((Path(lab.state.root) / "businesses" / "web.yaml").read_text())
    web["mode"] = "auto"
    web["instances"] = {"min": 2, "max": max_instances}
    if sla_objective is not None:
        web["sla"]["objective"] = sla_objective
    web["scaling"].update(
        {
            # the history keeps minutes: a shorter window sees no observed peak
            "scale_down_stabilisation_s": 120,
            "cooldowns": {"scale_up_s": 0, "scale_down_s": 10},
            "vertical": {"enabled": False},
        }
    )
    policies = folder / "businesses"
    policies.mkdir(parents=True, exist_ok=True)
    with open(policies / "web.yaml", "w") as out:
        yaml.dump(web, out)
    config = yaml.load(lab.controller_file.read_text())
    config.update(
        {
            "policy_dir": str(policies),
            "state_dir": str(folder / "state"),
            "intervals": {"collect_s": 2, "decide_s": DECIDE_S, "ledger_s": 4, "refit_s": 600},
            "lease": {"kind": "file", "duration_s": LEASE_S},
        }
    )
    path = folder / "controller.yaml"
    with open(path, "w") as out:
        yaml.dump(config, out)
    return path


def tune_web(folder: Path, **scaling: object) -> None:
    """Change the web policy the controller file of ``folder`` points at (``scaling`` keys)."""
    path = folder / "businesses" / "web.yaml"
    yaml = YAML(typ="safe", pure=True)
    web = yaml.load(path.read_text())
    web["scaling"].update(scaling)
    with open(path, "w") as out:
        yaml.dump(web, out)


def with_fault_hooks(config: Path) -> Path:
    """``config`` with ``testing.fault_hooks`` on: AUTOSCALER_CRASH_AT / _FREEZE_AT work."""
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load(config.read_text())
    doc["testing"] = {"fault_hooks": True}
    with open(config, "w") as out:
        yaml.dump(doc, out)
    return config


def start(config: Path, port: int, holder: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoscaler.cli",
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--holder",
            holder,
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def healthz(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return dict(json.loads(reply.read()))
    except OSError:
        return {}


def done_actions(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("autoscaler_actions_total{") and 'result="done"' in line
    )


def web_vms(lab: Lab) -> set[str]:
    return {d for ds in lab_mod.status(lab).domains.values() for d in ds if d.startswith("web-")}


def silent_guests(lab: Lab, timeout_s: float = 20.0) -> dict[str, str]:
    """Running lab VMs whose guest does not answer on its agent channel (VM -> host)."""
    silent = {}
    for record_ in lab.state.hosts:
        conn = lab.connect(record_.name)
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
                with SerialAgent(conn, dom) as agent:
                    if agent.wait_for(lambda _v: True, timeout_s) is None:
                        silent[dom.name()] = record_.name
        finally:
            conn.close()
    return silent


def guest_after_migration(lab: Lab, vm: str, log: Path, accounted: set[str]) -> str:
    """Whether ``vm``'s guest answers after a migration, for the test's record.

    On this machine's TCG (QEMU 7.2) a long or interrupted live migration sometimes leaves the
    guest's kernel hung (seen on about one in three migrations under the full suite's load;
    never on KVM hosts, where dirty tracking is the kernel's). That is the emulator's fault, not
    the controller's, but the controller must notice: then its log must say so. Either way the
    test says what happened instead of "nothing lost".
    """
    silent = silent_guests(lab)
    if vm not in silent:
        return (
            f"nothing: {vm} on exactly one host and its guest answers, no orphaned overlay or"
            " definition"
        )
    text = log.read_text()
    assert (
        "the guest does not answer" in text
    ), f"{vm}'s guest hung after the migration and the controller did not report it"
    accounted.add(vm)
    return (
        f"no VM or disk: {vm} on exactly one host, no orphaned overlay or definition; but its"
        " guest hung after the migration (a QEMU 7.2 TCG fault of this lab, reported by the"
        " controller: 'the guest does not answer'); the lab replaced it"
    )


@pytest.fixture
def restore_lab(lab: Lab) -> Iterator[set[str]]:
    """Leave the shared lab as the session made it: the five first VMs, nothing else.

    A guest that stopped answering (a VM lost in all but name) fails the test that left it,
    unless that test checked and recorded it itself (by adding it to the set this fixture
    yields), and is replaced so that the tests after it start from a working lab.
    """
    silent_accounted: set[str] = set()
    yield silent_accounted
    lab_mod.set_demand(lab, {})
    for host, domains in lab_mod.status(lab).domains.items():
        for vm in set(domains) - FIRST_VMS:
            lab_mod.remove_vm(lab, vm, host)
    silent = silent_guests(lab)
    for vm, host in silent.items():
        lab_mod.remove_vm(lab, vm, host)
    policies = load_policy_dir(Path(lab.state.root) / "businesses")
    domains = lab_mod.status(lab).domains
    running = {vm for ds in domains.values() for vm in ds}
    for vm in sorted(FIRST_VMS - running):  # a scale-in may have retired an original VM
        host = min(domains, key=lambda h: len(domains[h]))
        lab_mod.start_vm(lab, policies[vm.rsplit("-", 1)[0]], vm, host)
        domains[host] = [*domains[host], vm]
    unexplained = {vm: host for vm, host in silent.items() if vm not in silent_accounted}
    assert not unexplained, f"guests no longer answering (replaced): {unexplained}"


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120)


@pytest.mark.timeout(900)
def test_controller_scales_out_under_load_and_back_in_and_stops_cleanly(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    # A 90 % objective: the seconds web is saturated before its clones are ready do not make
    # its budget burn, so scale-in waits only for the stabilisation window.
    config = controller_file(lab, tmp_path, sla_objective=90.0)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    # web at its limit: it must scale out. Set before the controller starts, so its short
    # history does not begin with a jump from idle.
    lab_mod.set_demand(lab, {"web": {"cores": SATURATING_CORES}})
    time.sleep(5)
    process = start(config, port, "solo", log)
    try:
        wait_for(
            lambda: healthz(port),
            lambda h: h.get("role") == "leader",
            timeout=30,
            what="the controller leading",
        )
        grown = wait_for(
            lambda: web_vms(lab), lambda vms: len(vms) >= 3, timeout=150, what="web scaled out"
        )
        assert grown > {"web-1", "web-2"}
        lab_mod.set_demand(lab, {"web": {"cores": 0.05}})
        wait_for(
            lambda: web_vms(lab),
            lambda vms: vms == {"web-1", "web-2"} or (len(vms) == 2),
            # A clone's first readings can spike above saturation: one bad SLI interval, and
            # no scale-in while the 5-minute window burns (then 120 s of stabilisation).
            timeout=600,
            what="web scaled back in to its minimum",
        )
        assert healthz(port)["healthy"] is True
    finally:
        code = stop(process)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert '"event": "controller stopped"' in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    kinds = {e["kind"] for e in events if e.get("event") == "action" and e["result"] == "done"}
    assert {"clone_from_template", "retire"} <= kinds
    assert all(e["reason"] for e in events if e.get("event") == "planned")


def test_two_controllers_one_acts_and_the_standby_takes_over_a_killed_leader(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    # Room for the new leader to act on more load after the first one scaled out (at its
    # limit, web wants twice what it serves: the first leader may take it to 5).
    config = controller_file(lab, tmp_path, max_instances=6)
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    lab_mod.set_demand(lab, {"web": {"cores": SATURATING_CORES}})
    time.sleep(5)
    procs = {
        name: start(config, port, name, tmp_path / f"{name}.log") for name, port in ports.items()
    }
    try:
        roles = wait_for(
            lambda: {n: healthz(p).get("role") for n, p in ports.items()},
            lambda r: sorted(str(v) for v in r.values()) == ["leader", "standby"],
            timeout=30,
            what="one leader and one standby",
        )
        leader = next(n for n, r in roles.items() if r == "leader")
        standby = next(n for n in ports if n != leader)
        standby_health = healthz(ports[standby])
        assert standby_health["healthy"] is True and standby_health["role"] == "standby"

        wait_for(
            lambda: done_actions(ports[leader]),
            lambda n: n >= 1,
            timeout=150,
            what="the leader acting",
        )
        assert done_actions(ports[standby]) == 0  # only the leader acts

        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(
            lambda: healthz(ports[standby]).get("role"),
            lambda r: r == "leader",
            timeout=2 * LEASE_S + DECIDE_S + 10,
            what="the standby taking over",
        )
        takeover_s = time.monotonic() - killed_at
        assert takeover_s <= 2 * LEASE_S + DECIDE_S
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "controller-takeover.json").write_text(
            json.dumps(
                {"lease_s": LEASE_S, "decide_s": DECIDE_S, "takeover_s": round(takeover_s, 2)}
            )
        )
        text = (tmp_path / f"{standby}.log").read_text()
        assert '"event": "reconciled the journal"' in text.split('"became leader"', 1)[1]
        # More load: the new leader must act.
        lab_mod.set_demand(lab, {"web": {"cores": 3 * SATURATING_CORES}})
        wait_for(
            lambda: done_actions(ports[standby]),
            lambda n: n >= 1,
            timeout=360,
            what="the new leader acting",
        )
    finally:
        for process in procs.values():
            if process.poll() is None:
                stop(process)
    os.environ.pop("AUTOSCALER_CRASH_AT", None)
