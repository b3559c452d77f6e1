"""A rollout of web across three instances under traffic, with the controller SIGKILLed in the
middle of a replacement (the reliability suite).

The controller replaces one instance at a time (surge a clone of the new version, wait until
HAProxy's health check passes, drain and retire an old one); killed after the second surge
clone became ready, it is started again: the journal finishes that replacement and the rollout
goes on to the end. ``--undo`` then takes the fleet back by the same path. The traffic
generator, which counts every request's outcome, must see no failure throughout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from autoscaler.config import load_controller_config
from autoscaler.runtime.discovery import discover
from lab import access
from lab import lab as lab_mod
from lab.haproxy import HaproxyProcess
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from policies.loader import load_policy, load_policy_dir
from tests.integration.access_helpers import serve_web, up_servers
from tests.integration.lab_fixtures import events, wait_for
from tests.integration.test_controller import controller_file, start, stop, with_fault_hooks
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin", "tests.integration.access_fixtures"]
CRASH_AT = "replace:clone:ready@2"


def versions(config: Path) -> dict[str, str | None]:
    """web's running instances and the template version each was cloned from."""
    loaded = load_controller_config(config)
    snapshot = discover(loaded, load_policy_dir(loaded.policy_dir), sample_interval_s=0.2)
    return {v.name: v.version for v in snapshot.vms if v.business == "web"}


def rollout(config: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "rollout", "web", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def at_version(config: Path, version: str, count: int = 3) -> dict[str, str | None]:
    return wait_for(
        lambda: versions(config),
        lambda v: len(v) == count and set(v.values()) == {version},
        timeout=420,
        what=f"every web instance at {version}",
    )


@pytest.mark.timeout(1500)
def test_a_rollout_killed_midway_resumes_and_finishes_then_undoes_with_no_failed_request(
    lab: Lab, edge: HaproxyProcess, tmp_path: Path, web_back: None
) -> None:
    """The controller SIGKILLed in the middle of a rollout's replacement, under traffic."""
    # A 90 % objective: the seconds a replacement leaves web's capacity SLI short do not make
    # its budget burn fast, which would hold the rollout (the page gate: tests/unit).
    config = serve_web(lab, controller_file(lab, tmp_path, sla_objective=90.0, max_instances=5))
    with_fault_hooks(config)
    yaml = YAML(typ="safe", pure=True)
    web_file = tmp_path / "businesses" / "web.yaml"
    web = yaml.load(web_file.read_text())
    web["template"]["version"] = "v1"
    web["instances"] = {"min": 3, "max": 5}
    with open(web_file, "w") as out:
        yaml.dump(web, out)
    v1 = load_policy(web_file)
    # Three instances at v1: the lab's two first ones (made from the v1 template) and a third.
    domains = lab_mod.status(lab).domains
    lab_mod.start_vm(lab, v1, "web-3", min(domains, key=lambda h: len(domains[h])))
    assert versions(config) == {"web-1": "v1", "web-2": "v1", "web-3": "v1"}
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    os.environ["AUTOSCALER_CRASH_AT"] = CRASH_AT
    try:
        first = start(config, port, "first", first_log)
    finally:
        del os.environ["AUTOSCALER_CRASH_AT"]
    second = generator = None
    try:
        wait_for(
            lambda: up_servers(edge),
            lambda up: {"web-1", "web-2", "web-3"} <= up,
            timeout=90,
            what="web's three instances registered and up",
        )
        status = tmp_path / "traffic.json"
        generator = access.traffic(lab.layout, "web", rate=2, duration_s=840, status_file=status)
        rollout(config, "--to", "v2")
        assert first.wait(timeout=400) == -9, "the controller was not killed mid-rollout"
        midway = versions(config)
        assert sorted(midway.values(), key=str).count("v2") >= 2, midway
        second = start(config, port, "second", second_log)
        done = at_version(config, "v2")
        assert up_servers(edge) >= set(done)
        rollout(config, "--undo")
        back = at_version(config, "v1")
        assert up_servers(edge) >= set(back)
    finally:
        for process in (first, second):
            if process is not None:
                stop(process)
        if generator is not None:
            generator.terminate()  # it stops cleanly and still prints what it counted
    assert generator is not None
    summary = access.summary(generator, timeout_s=60)
    assert summary["sent"] > 100
    assert summary["failures"] == 0, f"requests failed: {summary}"
    # What the instances served came from their config drive: v1's page, then v2's, then v1's.
    served = {line.split("version=")[-1] for line in summary["answers"] if "version=" in line}
    assert served == {"v1", "v2"}, summary["answers"]
    reconciled = [e for e in events(second_log) if e.get("event") == "reconciled"]
    assert any(e.get("key", "").startswith("replace/") for e in reconciled), reconciled
    replaced = [
        e
        for log in (first_log, second_log)
        for e in events(log)
        if e.get("event") == "action" and e.get("kind") == "replace"
    ]
    assert replaced and all(e["result"] == "done" for e in replaced)
    record(
        "fault",
        "the controller killed in the middle of a rollout",
        injected=f"AUTOSCALER_CRASH_AT={CRASH_AT}: during `autoscaler rollout web --to v2` the"
        " controller killed itself right after the second surge clone became ready, before it"
        " was registered in HAProxy and before the old instance was drained",
        behaviour="restarted, the controller's reconciliation finished that replacement (the"
        " clone registered and healthy, then the old instance drained and retired) and the"
        f" rollout went on to the end ({len(done)} instances at v2); `--undo` took them back"
        " to v1 the same way",
        lost=f"nothing: {summary['sent']} requests sent through HAProxy meanwhile, none failed;"
        " three instances at the end, no orphaned VM or disk",
    )
