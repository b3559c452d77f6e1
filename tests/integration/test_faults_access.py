"""Faults of the access layer under a controller in auto mode (the reliability suite).

HAProxy stopped: the controller's view of the balancer is stale, so it retires nothing (a
retire must drain first) and says why; when HAProxy is back, with empty backends (its runtime
state is not persistent), the controller registers every serving instance again from
libvirt's view, and only then retires the surplus, draining it first.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from lab import access
from lab import lab as lab_mod
from lab.haproxy import HaproxyProcess
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from policies.loader import load_policy_dir
from tests.integration.access_helpers import serve_web, servers, up_servers, web_vms
from tests.integration.lab_fixtures import events, wait_for
from tests.integration.test_controller import controller_file, start, stop, tune_web
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin", "tests.integration.access_fixtures"]
STABILISATION_S = 60
STALE_FOR_S = 90.0
"""Longer than web's scale-down stabilisation (``STABILISATION_S``) and cooldown with margin:
without the stale balancer the surplus instance would have been retired within it."""


def access_stale(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('autoscaler_access_stale{balancer="edge",business="web"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(900)
def test_haproxy_stopped_makes_the_access_layer_stale_nothing_is_retired_and_it_recovers(
    lab: Lab, edge: HaproxyProcess, tmp_path: Path, web_back: None
) -> None:
    """HAProxy stopped under a controller in auto mode while web has a surplus instance."""
    config = serve_web(lab, controller_file(lab, tmp_path))  # web: at least 2 instances
    tune_web(tmp_path, scale_down_stabilisation_s=STABILISATION_S)
    policy = load_policy_dir(Path(lab.state.root) / "businesses")["web"]
    domains = lab_mod.status(lab).domains
    lab_mod.start_vm(lab, policy, "web-3", min(domains, key=lambda h: len(domains[h])))
    assert web_vms(lab) == {"web-1", "web-2", "web-3"}
    access.stop(lab.layout)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    process = start(config, port, "solo", log)
    try:
        wait_for(lambda: access_stale(port), lambda v: v == 1.0, timeout=60, what="web stale")
        started = time.monotonic()
        while time.monotonic() - started < STALE_FOR_S:
            assert web_vms(lab) == {"web-1", "web-2", "web-3"}, "retired on a stale balancer"
            time.sleep(5)
        back = access.start(lab.layout, ["web"])
        assert servers(back) == {}, "a restarted HAProxy keeps no dynamic server"
        wait_for(lambda: access_stale(port), lambda v: v == 0.0, timeout=60, what="web fresh")
        left = wait_for(
            lambda: web_vms(lab), lambda v: len(v) == 2, timeout=120, what="the surplus retired"
        )
        serving = wait_for(
            lambda: up_servers(back), lambda up: up == left, timeout=60, what="the rest serving"
        )
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    seen = events(log)
    stale_at = next(e["ts"] for e in seen if e.get("event") == "access layer stale")
    fresh_at = next(e["ts"] for e in seen if e.get("event") == "access layer answers again")
    retired = [e for e in seen if e.get("event") == "action" and e.get("kind") == "retire"]
    assert retired and all(e["result"] == "done" for e in retired)
    assert all(e["ts"] > fresh_at for e in retired), "a retire while the balancer was stale"
    record(
        "fault",
        "the load balancer stopped",
        injected=f"HAProxy (web's access layer) stopped for {STALE_FOR_S:.0f} s under a"
        " controller in auto mode, web idle with one instance above its minimum",
        behaviour=f"the access layer was marked stale for {fresh_at - stale_at:.0f} s (logged,"
        " and shown as autoscaler_access_stale) and nothing was retired meanwhile; HAProxy came"
        " back with empty backends, the controller registered the serving instances again"
        f" from libvirt's view ({', '.join(sorted(serving))} up) and then retired the surplus,"
        " draining it first",
        lost="nothing: no VM retired without a drain, every remaining instance serving",
    )
