"""Faults on a host while the controller runs in ``auto`` mode: its link cut.

Where it sits: the reliability suite on the real lab (issue 7). A real ``autoscaler run``
process (the web-only policy and short intervals of ``test_controller``) drives the session lab;
the host running ``web-1`` is cut off (``net.set_uplink``; a hung libvirtd, SIGSTOP for three
minutes, is ``test_faults_hung_libvirtd``). The controller must keep running (``/healthz``
healthy), mark the host stale (``autoscaler_collector_stale``), take no retire or migration
while it cannot see it, see it again once the fault clears, and leave every VM existing
exactly once.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from actuators.volumes import list_overlays
from lab import lab as lab_mod
from lab import net
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from tests.integration.lab_fixtures import events, wait_for
from tests.integration.test_controller import (
    DECIDE_S,
    controller_file,
    healthz,
    restore_lab,
    start,
    stop,
)
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]  # the fixture, imported to be used by name
DISRUPTIVE = ("retire", "live_migrate")
EXAMPLE_IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"
TEMPLATES = {p.name for p in EXAMPLE_IMAGES.iterdir()}


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def stale_sources(port: int, host: str) -> set[str]:
    """Sources marking ``host`` stale right now (``autoscaler_collector_stale`` = 1)."""
    found = set()
    for line in metrics(port).splitlines():
        if not line.startswith("autoscaler_collector_stale{") or not line.endswith(" 1.0"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("scope") == "host" and labels.get("target") == host:
            found.add(labels.get("source", ""))
    return found


def disruptive_between(log: Path, start: float, end: float) -> list[dict[str, object]]:
    """Retires and migrations the controller planned or ran between ``start`` and ``end``."""
    return [
        e
        for e in events(log)
        if e.get("event") in ("planned", "action")
        and e.get("kind") in DISRUPTIVE
        and start <= float(str(e.get("at", 0))) <= end
    ]


def placements(lab: Lab) -> dict[str, list[str]]:
    """VM -> the hosts it is defined on (active or not)."""
    seen: dict[str, list[str]] = {}
    for record_ in lab.state.hosts:
        conn = lab.connect(record_.name)
        try:
            for dom in conn.listAllDomains(0):
                seen.setdefault(dom.name(), []).append(record_.name)
        finally:
            conn.close()
    return seen


def orphans(lab: Lab) -> dict[str, tuple[list[str], list[str]]]:
    """Per host: (overlays without a domain, our domains without an overlay)."""
    out = {}
    for record_ in lab.state.hosts:
        conn = lab.connect(record_.name)
        try:
            overlays = set(list_overlays(conn, TEMPLATES))
            domains = {d.name() for d in conn.listAllDomains(0)}
        finally:
            conn.close()
        if overlays ^ domains:
            out[record_.name] = (sorted(overlays - domains), sorted(domains - overlays))
    return out


def nothing_disrupted(
    lab: Lab, log: Path, start: float, end: float, before: dict[str, list[str]]
) -> None:
    """No retire or migration between ``start`` and ``end``; every VM of ``before`` still
    there, each on exactly one host."""
    acted = disruptive_between(log, start, end)
    assert acted == [], f"retire or migration decided on stale data: {acted}"
    after = placements(lab)
    assert all(len(where) == 1 for where in after.values()), after
    assert set(before) <= set(after)


def libvirtd_pid(lab: Lab, host: str) -> int:
    return int((Path(lab.state.host(host).base) / "run" / "libvirtd.pid").read_text().strip())


def _faults(lab: Lab, host: str) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    index = lab.state.host(host).index
    return {
        "link-cut": (
            lambda: net.set_uplink(lab.layout, index, up=False),
            lambda: net.set_uplink(lab.layout, index, up=True),
        ),
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["link-cut"])
def test_a_host_cut_off_is_stale_never_acted_on_and_recovered(
    lab: Lab, tmp_path: Path, restore_lab: None, fault: str
) -> None:
    """The host running web-1 cut off (its uplink down) under a controller in auto mode.

    Expect: healthy throughout, the host stale, no retire or migration while stale, recovered.
    """
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    host = next(h for h, doms in lab_mod.status(lab).domains.items() if "web-1" in doms)
    inject, clear = _faults(lab, host)[fault]
    before = placements(lab)
    process = start(config, port, f"faults-{fault}", log)
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="leading"
        )
        wait_for(
            lambda: stale_sources(port, host),
            lambda s: "libvirt:" + host not in s and metrics(port) != "",
            timeout=30,
            what=f"{host} seen fresh before the fault",
        )
        injected_at = time.time()
        inject()
        try:
            seen = wait_for(
                lambda: stale_sources(port, host),
                lambda s: f"libvirt:{host}" in s,
                timeout=40,
                what=f"{host} marked stale",
            )
            stale_after = time.time() - injected_at
            time.sleep(4 * DECIDE_S)  # several decide cycles on stale data
            during = healthz(port)
            assert during.get("healthy") is True, during
            assert process.poll() is None
        finally:
            clear()
        cleared_at = time.time()
        wait_for(
            lambda: stale_sources(port, host),
            lambda s: f"libvirt:{host}" not in s,
            timeout=60,
            what=f"{host} fresh again after the fault",
        )
        recovered_after = time.time() - cleared_at
        assert healthz(port).get("healthy") is True
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    acted = disruptive_between(log, injected_at, cleared_at + 2 * DECIDE_S)
    assert acted == [], f"retire or migration decided on stale data: {acted}"
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)  # nothing the lab had was lost
    record(
        "fault",
        f"host {fault.replace('-', ' ')}",
        injected="uplink of the host running web-1 set down"
        if fault == "link-cut"
        else "SIGSTOP of the libvirtd of the host running web-1",
        behaviour=f"healthy throughout; {host} stale after {stale_after:.1f} s "
        f"(sources {sorted(seen)}); no retire or migration; fresh {recovered_after:.1f} s "
        "after the fault cleared",
        lost="nothing: every VM on exactly one host, all the lab's VMs still there",
        stale_after_s=round(stale_after, 1),
        recovered_after_s=round(recovered_after, 1),
    )
