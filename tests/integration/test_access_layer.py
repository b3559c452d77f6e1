"""The access layer on the lab: HAProxy in front of web, driven by the controller's actuators.

A clone is registered in web's backend and takes requests only once HAProxy's health check
passes; a retire drains its server, waits for the requests in flight and only then stops the
VM: the traffic generator, which counts every request's outcome, sees no failure throughout.
The traffic goes only from the lab's access namespace to the lab's own HAProxy and guests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actuators.access_sync import Applied, apply_registrations
from actuators.base import Fleet
from autoscaler.config import load_controller_config
from autoscaler.model import CloneFromTemplate, Retire
from autoscaler.model.access import ServerHealth
from autoscaler.runtime.discovery import discover
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import build_fleet
from lab import access
from lab import lab as lab_mod
from lab.haproxy import HaproxyProcess
from lab.lab import Lab
from policies.access import registrations
from policies.loader import load_policy_dir
from tests.integration.access_helpers import serve_web, servers, sessions_served
from tests.integration.actuator_helpers import run_plan, where
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.integration.access_fixtures"]  # edge, web_back


@pytest.fixture(scope="module")
def config(lab: Lab, edge: HaproxyProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("access")
    return serve_web(lab, controller_file(lab, folder))


def fleet(config: Path) -> Fleet:
    loaded = load_controller_config(config)
    return build_fleet(loaded, load_policy_dir(loaded.policy_dir))


def sync(config: Path) -> list[Applied]:
    """One pass of the controller's access sync: registrations from a fresh view, applied."""
    loaded = load_controller_config(config)
    snapshot = discover(loaded, load_policy_dir(loaded.policy_dir), sample_interval_s=0.5)
    return apply_registrations(fleet(config), registrations(snapshot))


def test_a_clone_serves_only_after_its_health_check_and_a_retire_loses_no_request(
    lab: Lab, edge: HaproxyProcess, config: Path, tmp_path: Path
) -> None:
    first = wait_for(
        lambda: (sync(config), servers(edge))[1],
        lambda s: {"web-1", "web-2"} <= {n for n, v in s.items() if v.health is ServerHealth.UP},
        timeout=60,
        what="web-1 and web-2 registered and up in HAProxy",
    )
    assert all(v.address for v in first.values())
    generator = access.traffic(lab.layout, "web", rate=3, duration_s=45)
    try:
        domains = lab_mod.status(lab).domains
        host = min(domains, key=lambda h: len(domains[h]))
        journal = SqliteJournal(tmp_path / "journal.sqlite")
        clone = CloneFromTemplate(business="web", vm="web-lb1", host=host, reason="test")
        (result,) = run_plan(fleet(config), journal, [clone])
        assert result.status == "done", result.reason
        (applied,) = [a for a in sync(config) if a.change.server == "web-lb1"]
        assert applied.done, applied.detail
        # Until its check passes HAProxy sends it nothing; then it takes its share.
        seen_down = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = servers(edge).get("web-lb1")
            assert state is not None
            if state.health is ServerHealth.UP:
                break
            seen_down += 1
            assert sessions_served(edge, "web-lb1") == 0, "a request reached it before its check"
            time.sleep(0.1)
        assert seen_down > 0, "the new server was never seen down before its check passed"
        wait_for(
            lambda: sessions_served(edge, "web-lb1"),
            lambda n: n >= 5,
            timeout=30,
            what="web-lb1 serving requests",
        )
        retire = Retire(business="web", vm="web-lb1", host=host, reason="test")
        (result,) = run_plan(fleet(config), journal, [retire])
        assert result.status == "done", result.reason
        assert "web-lb1" not in servers(edge)
        assert where(lab, "web-lb1") == {}
    finally:
        summary = access.summary(generator, timeout_s=120)
    assert summary["sent"] > 100
    assert summary["failures"] == 0, f"requests failed: {summary}"
    served_by = {line.split()[0]: n for line, n in summary["answers"].items()}
    assert served_by.get("vm=web-lb1", 0) > 0, summary["answers"]
