"""The access layer on the lab: HAProxy in front of web, driven by the controller's actuators.

A clone is registered in web's backend and takes requests only once HAProxy's health check
passes; a retire drains its server, waits for the requests in flight and only then stops the
VM: the traffic generator, which counts every request's outcome, sees no failure throughout.
The traffic goes only from the lab's access namespace to the lab's own HAProxy and guests.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
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
from lab.layout import PORT_CONTROLLER_METRICS
from policies.access import registrations
from policies.loader import load_policy_dir
from tests.integration.access_helpers import (
    FIRST_WEB,
    serve_web,
    servers,
    sessions_served,
    up_servers,
    web_vms,
)
from tests.integration.actuator_helpers import run_plan, where
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file, start, stop

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
    generator = access.traffic(lab.layout, "web", rate=5, duration_s=60)
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
        generator.terminate()  # it stops cleanly and still prints what it counted
        summary = access.summary(generator, timeout_s=60)
    assert summary["sent"] > 50
    assert summary["failures"] == 0, f"requests failed: {summary}"
    served_by = {line.split()[0]: n for line, n in summary["answers"].items()}
    assert served_by.get("vm=web-lb1", 0) > 0, summary["answers"]


def bad_sli_events(port: int) -> float:
    """web's SLI events the controller counted bad (total less good) so far; -1 if unread."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    figures: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("autoscaler_sli_events_total", "autoscaler_sli_good_events_total"):
            if line.startswith(f'{name}{{business="web"}}'):
                figures[name] = float(line.rsplit(" ", 1)[1])
    if len(figures) < 2:
        return -1.0
    return figures["autoscaler_sli_events_total"] - figures["autoscaler_sli_good_events_total"]


def failures_now(status: Path) -> int:
    try:
        return int(json.loads(status.read_text())["failures"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.timeout(900)
def test_a_load_step_burns_the_request_sli_the_controller_scales_out_and_it_recovers(
    lab: Lab, edge: HaproxyProcess, tmp_path: Path, web_back: None
) -> None:
    config = serve_web(lab, controller_file(lab, tmp_path, max_instances=5), request_sli=True)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    base = access.traffic(lab.layout, "web", rate=1, duration_s=420)
    step: subprocess.Popen[str] | None = None
    process = start(config, port, "solo", log)
    try:
        wait_for(
            lambda: up_servers(edge),
            lambda up: up >= FIRST_WEB,
            timeout=60,
            what="the controller registering web-1 and web-2, up in HAProxy",
        )
        wait_for(lambda: bad_sli_events(port), lambda n: n >= 0, timeout=60, what="web's SLI read")
        # The step: more requests than two guests at a quarter of a core answer in time.
        status = tmp_path / "step.json"
        step = access.traffic(lab.layout, "web", rate=9, duration_s=300, status_file=status)
        wait_for(
            lambda: bad_sli_events(port),
            lambda n: n > 0,
            timeout=120,
            what="the request SLI burning (bad intervals counted by the controller)",
        )
        grown = wait_for(
            lambda: (web_vms(lab), up_servers(edge)),
            lambda v: len(v[0]) >= 3 and len(v[1]) >= 3,
            timeout=240,
            what="web scaled out, its clones serving in HAProxy",
        )
        assert grown[0] > FIRST_WEB
        # Recovered: no request fails for 20 s on end (about 200 requests) once the clones serve.
        deadline = time.monotonic() + 240
        quiet_since, last = time.monotonic(), failures_now(status)
        while time.monotonic() - quiet_since < 20:
            assert time.monotonic() < deadline, "requests still failing 4 min after scale-out"
            time.sleep(2)
            now = failures_now(status)
            if now != last:
                quiet_since, last = time.monotonic(), now
    finally:
        code = stop(process)
        for generator in (step, base):
            if generator is not None and generator.poll() is None:
                generator.terminate()
                generator.wait(timeout=30)
    assert code == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert '"event": "access register"' in text
