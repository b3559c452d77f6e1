"""Ceph faults while the controller runs in ``auto`` mode: an OSD, a rack's OSDs, the monitor.

Where it sits: the reliability suite on the real lab (issue 7), beside ``test_faults_sources``.
The lab's Ceph cluster has two memstore OSDs in each lab rack (CRUSH rack = lab rack). An OSD
or a whole rack's OSDs stopped is *fresh* data that says the rack's storage is failing: the
controller must keep seeing Ceph (nothing stale), flag the rack, and may move VMs off it, each
exactly once. The monitor stopped is *missing* data: Ceph's scopes go stale and nothing is
retired or migrated on them until the monitor answers again.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from lab import ceph
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file, healthz, restore_lab, start, stop
from tests.integration.test_faults_hosts import (
    disruptive_between,
    events,
    metrics,
    orphans,
    placements,
)
from tests.integration.test_faults_sources import stale_from
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]


def rack_states(port: int) -> dict[str, str]:
    """Rack -> its health state as the controller exports it right now."""
    states = {}
    for line in metrics(port).splitlines():
        if line.startswith("autoscaler_rack_state{") and line.endswith(" 1.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            states[labels["rack"]] = labels["state"]
    return states


def cluster(lab: Lab) -> ceph.CephCluster:
    assert lab.parts is not None and lab.parts.ceph is not None, "the lab runs without Ceph"
    return lab.parts.ceph


def rack_of(lab: Lab, host: str) -> str:
    return lab.state.host(host).rack


def hosts_of(lab: Lab, vm: str) -> list[str]:
    return placements(lab).get(vm, [])


def wait_off_rack(lab: Lab, vm: str, rack: str) -> None:
    """Wait until ``vm`` is defined on exactly one host, outside ``rack``."""
    wait_for(
        lambda: hosts_of(lab, vm),
        lambda hs: len(hs) == 1 and rack_of(lab, hs[0]) != rack,
        timeout=240,
        what=f"{vm} off {rack}, on one host",
    )


def restart_osds(lab: Lab, osds: tuple[int, ...], port: int, rack: str) -> float:
    """Start ``osds`` again; return how long until the controller saw the rack healthy."""
    started_at = time.time()
    for osd in osds:
        ceph.start_osd(lab.layout, osd)
    wait_for(
        lambda: rack_states(port).get(rack),
        lambda s: s == "healthy",
        timeout=90,
        what=f"{rack} healthy again",
    )
    return time.time() - started_at


@pytest.mark.timeout(420)
@pytest.mark.parametrize("fault", ["osd-stopped", "rack-osds-stopped"])
def test_osds_stopped_are_fresh_data_the_rack_is_flagged_and_vms_leave_it_once(
    lab: Lab, tmp_path: Path, restore_lab: None, fault: str
) -> None:
    """One OSD of a rack without web VMs, or both OSDs of web-1's rack, stopped under a
    controller in auto mode.

    Expect: Ceph never stale, the rack flagged; web VMs on that rack (if any) live-migrated off
    it, each exactly once; no retire; the rack healthy again once the OSDs are back.
    """
    the_cluster = cluster(lab)
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    before = placements(lab)
    web_racks = {rack_of(lab, h) for vm, hs in before.items() if vm.startswith("web-") for h in hs}
    if fault == "osd-stopped":
        rack = next(r for r in sorted(the_cluster.osds_by_rack) if r not in web_racks)
        stopped: tuple[int, ...] = the_cluster.osds_by_rack[rack][:1]
    else:
        rack = rack_of(lab, hosts_of(lab, "web-1")[0])
        stopped = the_cluster.osds_by_rack[rack]
    on_rack = sorted(
        vm for vm, hs in before.items() if vm.startswith("web-") and rack_of(lab, hs[0]) == rack
    )
    process = start(config, port, f"faults-{fault}", log)
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="leading"
        )
        wait_for(
            lambda: rack_states(port).get(rack),
            lambda s: s == "healthy",
            timeout=60,
            what=f"{rack} healthy before the fault",
        )
        injected_at = time.time()
        for osd in stopped:
            ceph.stop_osd(lab.layout, osd)
        try:
            state = wait_for(
                lambda: rack_states(port).get(rack),
                lambda s: s in ("degraded", "failing"),
                timeout=60,
                what=f"{rack} flagged",
            )
            flagged_after = time.time() - injected_at
            assert stale_from(port, "ceph") == set(), "OSDs down are news, not missing data"
            for vm in on_rack:  # an evacuation of a failing rack is a legitimate migration
                wait_for(
                    lambda vm=vm: hosts_of(lab, vm),  # type: ignore[misc]
                    lambda hs: len(hs) == 1 and rack_of(lab, hs[0]) != rack,
                    timeout=180,
                    what=f"{vm} moved off {rack}",
                )
            evacuated_after = time.time() - injected_at
            assert healthz(port).get("healthy") is True
            assert stale_from(port, "ceph") == set()
            assert process.poll() is None
        finally:
            recovered_after = restart_osds(lab, stopped, port, rack)
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    acted = [
        e
        for e in events(log)
        if e.get("event") == "action" and float(str(e.get("at", 0))) >= injected_at
    ]
    migrations = [e for e in acted if e.get("kind") == "live_migrate"]
    assert all(e.get("kind") not in ("retire",) for e in acted), acted
    assert {
        str(e.get("key", "")).split("/")[1] for e in migrations if e.get("result") == "done"
    } >= set(on_rack), migrations
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    assert orphans(lab) == {}
    moved = {vm: after[vm][0] for vm in on_rack}
    record(
        "fault",
        "a Ceph OSD stopped" if fault == "osd-stopped" else "a rack's Ceph OSDs stopped",
        injected=f"osd.{stopped[0]} of rack {rack} (no web VM there) stopped"
        if fault == "osd-stopped"
        else f"both OSDs of rack {rack} (web-1's) stopped: "
        + ", ".join(f"osd.{o}" for o in stopped),
        behaviour=f"Ceph never stale; {rack} {state} after {flagged_after:.1f} s"
        + (
            f"; {', '.join(f'{vm} live-migrated to {h}' for vm, h in moved.items())} "
            f"{evacuated_after:.1f} s after the fault (fresh data: a legitimate evacuation)"
            if moved
            else "; no VM of the controller's businesses there, so no action"
        )
        + f"; {rack} healthy {recovered_after:.1f} s after the OSDs restarted",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        flagged_after_s=round(flagged_after, 1),
    )


@pytest.mark.timeout(300)
def test_the_monitor_stopped_makes_ceph_stale_nothing_is_moved_and_it_recovers(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """The Ceph monitor stopped (SIGTERM) under a controller in auto mode.

    Expect: healthy throughout, the cluster and every rack's Ceph data stale, no retire or
    migration while stale, fresh again once the monitor is back.
    """
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    before = placements(lab)
    process = start(config, port, "faults-mon", log)
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="leading"
        )
        wait_for(
            lambda: (stale_from(port, "ceph"), metrics(port)),
            lambda sm: not sm[0] and "autoscaler_rack_state{" in sm[1],
            timeout=60,
            what="Ceph fresh before the fault",
        )
        injected_at = time.time()
        ceph.stop_mon(lab.layout)
        try:
            seen = wait_for(
                lambda: stale_from(port, "ceph"),
                lambda s: "cluster:ceph" in s,
                timeout=60,
                what="Ceph marked stale",
            )
            stale_after = time.time() - injected_at
            time.sleep(8)  # several decide cycles without Ceph
            assert healthz(port).get("healthy") is True
            assert process.poll() is None
        finally:
            ceph.start_mon(lab.layout)
        cleared_at = time.time()
        wait_for(
            lambda: stale_from(port, "ceph"), lambda s: not s, timeout=90, what="Ceph fresh again"
        )
        recovered_after = time.time() - cleared_at
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    acted = disruptive_between(log, injected_at, cleared_at)
    assert acted == [], f"retire or migration while Ceph was stale: {acted}"
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    racks = sorted(t for t in seen if t.startswith("rack:"))
    record(
        "fault",
        "the Ceph monitor stopped",
        injected="ceph-mon SIGTERMed (the OSDs keep running)",
        behaviour=f"healthy throughout; cluster:ceph and {len(racks)} racks stale after "
        f"{stale_after:.1f} s; no retire or migration; fresh {recovered_after:.1f} s after "
        "the monitor restarted",
        lost="nothing: every VM on exactly one host, all the lab's VMs still there",
        stale_after_s=round(stale_after, 1),
        recovered_after_s=round(recovered_after, 1),
    )
