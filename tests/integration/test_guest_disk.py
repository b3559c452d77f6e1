"""The lab's guests use their disks: each mounts its template (an ext4 filesystem with its
business's content), reports the content's checksum, writes what it is asked to, and finds its
data and boot records again after a hard power-off and a new boot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actuators.guest_agent import GuestView, SerialAgent
from actuators.volumes import POOL_NAME, overlay_name
from lab import lab as lab_mod
from lab.images import expected_content_checksum
from lab.lab import Lab
from policies.loader import load_policy_dir
from tests.integration.actuator_helpers import empty_host, remove_everywhere

pytestmark = pytest.mark.lab

VM = "tdisk-1"


def view_of(
    lab: Lab, host: str, vm: str, accept: Callable[[GuestView], bool], timeout_s: float
) -> GuestView:
    conn = lab.connect(host)
    try:
        with SerialAgent(conn, conn.lookupByName(vm)) as agent:
            view = agent.wait_for(accept, timeout_s)
            assert view is not None, f"{vm}: no such report within {timeout_s} s: {agent.latest}"
            return view
    finally:
        conn.close()


def test_the_lab_guests_mount_their_template_and_report_its_content(lab: Lab) -> None:
    for host, domains in lab_mod.status(lab).domains.items():
        for vm in (d for d in domains if d in {"web-1", "api-1"}):
            view = view_of(lab, host, vm, lambda v: v.ready, 10)
            assert (view.disk, view.mounted) == ("vda", True), view
            assert view.content == expected_content_checksum(view.business), view
            assert view.boots >= 1


def test_a_guest_keeps_what_it_wrote_across_a_power_off(lab: Lab) -> None:
    host = empty_host(lab)
    policy = load_policy_dir(lab_mod.EXAMPLES / "businesses")["web"]
    demand_file = Path(lab.state.root) / "demand.json"
    before = json.loads(demand_file.read_text())
    try:
        lab_mod.start_vm(lab, policy, VM, host)
        first = view_of(lab, host, VM, lambda v: v.ready, 10)
        assert (first.mounted, first.boots, first.data_mib) == (True, 1, 0), first
        assert first.content == expected_content_checksum("web")

        # The lab's load driver holds the load port: the fill goes through its demand file.
        demand = json.loads(json.dumps(before))
        demand["web"] = {**demand.get("web", {}), "fill_mib": {VM: 64}}
        lab_mod.set_demand(lab, demand)
        started = time.monotonic()
        filled = view_of(lab, host, VM, lambda v: v.data_mib == 64, 180)
        took = time.monotonic() - started
        assert filled.content == first.content and filled.boots == 1
        lab_mod.set_demand(lab, before)  # nothing more to write: the reboot must find it
        conn = lab.connect(host)
        try:
            pool = conn.storagePoolLookupByName(POOL_NAME)
            pool.refresh(0)
            allocated = pool.storageVolLookupByName(overlay_name(VM)).info()[2]
            assert allocated >= 64 << 20, allocated  # random data: on the disk, not sparse

            dom = conn.lookupByName(VM)
            dom.destroy()  # a hard power-off: what the guest synced is all it keeps
            dom.create()
        finally:
            conn.close()
        again = view_of(lab, host, VM, lambda v: v.ready, 120)
        assert (again.mounted, again.boots, again.data_mib) == (True, 2, 64), again
        assert again.content == first.content
        print(f"fill 64 MiB: {took:.1f} s")
    finally:
        lab_mod.set_demand(lab, before)
        remove_everywhere(lab, VM)
