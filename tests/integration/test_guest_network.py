"""The lab's guests are on one network: clones on different hosts get addresses from the lab's
DHCP server, serve HTTP (the work CGI) to the access namespace, and keep their address (in the
guest and in the domain's metadata) across a live migration.

Every request goes from the lab's access namespace to the lab's own guests only (bounded
timeouts), never to any other address.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import pytest

from actuators.base import Fleet, vm_metadata
from autoscaler.model import CloneFromTemplate, LiveMigrate, NetworkSpec
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import open_journal
from lab import lab as lab_mod
from lab.lab import Lab
from lab.net import IP
from policies.loader import load_policy_dir
from tests.integration.actuator_helpers import fleet_of, remove_everywhere, run_plan, where
from tests.integration.test_guest_disk import view_of

pytestmark = pytest.mark.lab

VMS = ("tnet-1", "tnet-2")
WHY = {"business": "web", "reason": "guest network test"}

# Run in the access namespace: one bounded GET, the body on stdout.
FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=5) as r:\n"
    "    print(r.status, r.read().decode().strip())\n"
)


@dataclass
class Clones:
    fleet: Fleet
    journal: SqliteJournal
    hosts: dict[str, str]
    """vm -> host it was cloned on."""
    clone_seconds: dict[str, float]


def least_busy_hosts(lab: Lab, count: int, avoid: Collection[str] = ()) -> list[str]:
    domains = lab_mod.status(lab).domains
    ranked = sorted((len(d), h) for h, d in domains.items() if h not in avoid)
    return [h for _, h in ranked[:count]]


@pytest.fixture(scope="module")
def clones(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clones]:
    fleet = fleet_of(lab)
    journal = open_journal(tmp_path_factory.mktemp("state"), fleet)
    hosts = dict(zip(VMS, least_busy_hosts(lab, 2), strict=True))
    took: dict[str, float] = {}
    try:
        for vm, host in hosts.items():
            started = time.monotonic()
            results = run_plan(fleet, journal, [CloneFromTemplate(vm=vm, host=host, **WHY)])
            took[vm] = time.monotonic() - started
            assert [r.status for r in results] == ["done"], results
        yield Clones(fleet, journal, hosts, took)
    finally:
        for vm in VMS:
            remove_everywhere(lab, vm)
        journal.close()


def recorded_address(lab: Lab, host: str, vm: str) -> str | None:
    conn = lab.connect(host)
    try:
        meta = vm_metadata(conn.lookupByName(vm))
        return meta.address if meta is not None else None
    finally:
        conn.close()


def fetch_from_access(lab: Lab, url: str) -> str:
    """GET ``url`` from inside the lab's access namespace (bounded: 5 s, 15 s in all)."""
    done = subprocess.run(
        [IP, "netns", "exec", lab.layout.access_netns, sys.executable, "-c", FETCH, url],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 0, f"GET {url} failed: {done.stderr.strip()[-400:]}"
    return done.stdout.strip()


def test_clones_on_different_hosts_get_addresses_in_the_guest_subnet(
    lab: Lab, clones: Clones
) -> None:
    addresses = {}
    for vm, host in clones.hosts.items():
        view = view_of(lab, host, vm, lambda v: v.ready, 10)
        assert view.address is not None, f"{vm} reported no address: {view}"
        assert ipaddress.ip_address(view.address) in lab.layout.guest_subnet
        # The clone actuator recorded what the guest reported when it marked it ready.
        assert recorded_address(lab, host, vm) == view.address
        addresses[vm] = view.address
    assert len(set(addresses.values())) == len(VMS), addresses
    assert len(set(clones.hosts.values())) == len(VMS)  # really on two hosts
    print(f"clone to ready with an address: {clones.clone_seconds}")


def test_each_guest_serves_its_health_file_and_the_work_cgi(lab: Lab, clones: Clones) -> None:
    for vm, host in clones.hosts.items():
        address = recorded_address(lab, host, vm)
        assert fetch_from_access(lab, f"http://{address}/health") == "200 ok"
        started = time.monotonic()
        body = fetch_from_access(lab, f"http://{address}/cgi-bin/work")
        print(f"{vm}: work request (with the fetcher's start) {time.monotonic() - started:.3f} s")
        assert body.startswith(f"200 vm={vm} work="), body


def test_a_live_migrated_guest_keeps_its_address_and_still_serves(lab: Lab, clones: Clones) -> None:
    vm = VMS[0]
    source = clones.hosts[vm]
    before = recorded_address(lab, source, vm)
    destination = least_busy_hosts(lab, 1, avoid=set(clones.hosts.values()))[0]
    (result,) = run_plan(
        clones.fleet,
        clones.journal,
        [LiveMigrate(vm=vm, source=source, destination=destination, **WHY)],
    )
    assert result.status == "done", result
    assert where(lab, vm) == {destination: "running"}
    clones.hosts[vm] = destination
    # The metadata came along, and the guest still holds the same lease on the same segment.
    assert recorded_address(lab, destination, vm) == before
    view = view_of(lab, destination, vm, lambda v: v.ready, 10)
    assert view.address == before, view
    body = fetch_from_access(lab, f"http://{before}/cgi-bin/work")
    assert body.startswith(f"200 vm={vm} work="), body


def test_a_guest_no_dhcp_server_answers_is_still_ready_within_seconds(lab: Lab) -> None:
    """Its bridge reaches no DHCP server: the guest gives up asking after ~3 s (udhcpc goes on
    asking in the background), says ready and reports no address."""
    vm, bridge = "tnet-alone", "gbr-alone"
    host = least_busy_hosts(lab, 1)[0]
    ns = lab.state.host(host).netns
    policy = load_policy_dir(lab_mod.EXAMPLES / "businesses")["web"]
    template = policy.template.model_copy(update={"network": NetworkSpec(bridge=bridge)})
    alone = policy.model_copy(update={"template": template})
    subprocess.run([IP, "-n", ns, "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run([IP, "-n", ns, "link", "set", bridge, "up"], check=True)
        started = time.monotonic()
        lab_mod.start_vm(lab, alone, vm, host)
        took = time.monotonic() - started
        view = view_of(lab, host, vm, lambda v: v.ready, 10)
        assert view.address is None and recorded_address(lab, host, vm) is None, view
        net_line = next(
            line
            for line in lab.serial_log(host, vm).read_text().splitlines()
            if line.startswith("NET eth0")
        )
        fields = dict(part.split("=", 1) for part in net_line.split()[2:])
        asked = float(fields["uptime"]) - float(fields["from"])
        print(f"no DHCP answer: asked for {asked:.2f} s (guest time), ready after {took:.1f} s")
        assert fields["addr"] == "none" and asked < 5.0, net_line
    finally:
        lab_mod.remove_vm(lab, vm, host)
        subprocess.run([IP, "-n", ns, "link", "del", bridge], check=False)
