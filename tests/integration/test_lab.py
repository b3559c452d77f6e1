"""The lab on real libvirtd and QEMU: hosts answer, VMs run, load reaches the guests."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from autoscaler.cli.main import main
from autoscaler.config import load_controller_config
from autoscaler.model import Scope, Snapshot, VmState
from autoscaler.runtime.discovery import discover
from collectors.libvirt_vms import LibvirtHostCollector
from lab import lab as lab_mod
from lab import net
from lab.lab import Lab
from policies.loader import load_policy_dir
from tests.integration.lab_fixtures import wait_for

pytestmark = pytest.mark.lab


def snapshot_of(lab: Lab) -> Snapshot:
    config = load_controller_config(lab.controller_file)
    return discover(config, load_policy_dir(config.policy_dir))


def test_every_host_answers_over_qemu_tcp_through_the_bridge(lab: Lab) -> None:
    status = lab_mod.status(lab)
    assert len(status.hosts) == 6
    assert all(status.hosts.values()), status.hosts
    for record in lab.state.hosts:
        assert record.uri.startswith("qemu+tcp://10.")
        conn = libvirt.open(record.uri)
        try:
            assert conn.getHostname() == record.name  # each host is its own UTS namespace
        finally:
            conn.close()


def test_the_example_vms_run_ready_on_distinct_hosts(lab: Lab) -> None:
    snapshot = snapshot_of(lab)
    vms = {v.name: v for v in snapshot.vms}
    assert set(vms) == {"web-1", "web-2", "api-1", "api-2", "cache-1"}
    for vm in vms.values():
        assert vm.state is VmState.RUNNING
        assert vm.ready, vm
        assert vm.business == vm.name.rsplit("-", 1)[0]
        assert vm.cpu_quota == 0.25
    assert len({v.host for v in vms.values()}) == 5
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_lab_up_again_changes_nothing(lab: Lab) -> None:
    again = lab_mod.up(Path(lab.state.root), lab_mod.LabSpec())
    assert again.state.slot == lab.state.slot
    status = lab_mod.status(again)
    assert sum(len(d) for d in status.domains.values()) == 5


def utilisation(lab: Lab, host: str, vm: str, seconds: float) -> float:
    collector = LibvirtHostCollector(host, lambda: libvirt.open(lab.state.host(host).uri))
    collector.collect(time.time())
    time.sleep(seconds)
    collection = collector.collect(time.time())
    values = [
        s.value
        for s in collection.samples
        if s.metric == "vm_cpu_utilisation" and s.label("vm") == vm
    ]
    assert values, f"no utilisation for {vm}"
    return values[0]


def host_of(lab: Lab, vm: str) -> str:
    for host, domains in lab_mod.status(lab).domains.items():
        if vm in domains:
            return host
    raise AssertionError(f"{vm} runs nowhere")


def duty_of(lab: Lab, business: str) -> dict[str, int]:
    status = lab_mod.load_status(lab)
    duty: dict[str, int] = status.get("businesses", {}).get(business, {}).get("duty", {})
    return duty


def test_a_guests_duty_shows_up_in_libvirt_cpu_time(lab: Lab) -> None:
    host = host_of(lab, "cache-1")
    lab_mod.set_demand(lab, {"cache": {"cores": 0.15}})  # 60 % of 1 vCPU x 0.25 core
    wait_for(
        lambda: duty_of(lab, "cache"),
        lambda d: d == {"cache-1": 60},
        timeout=20,
        what="duty 60 for cache-1",
    )
    time.sleep(2)
    busy = utilisation(lab, host, "cache-1", 8)
    lab_mod.set_demand(lab, {"cache": {"cores": 0.0}})
    wait_for(
        lambda: duty_of(lab, "cache"),
        lambda d: d == {"cache-1": 0},
        timeout=20,
        what="duty 0 for cache-1",
    )
    time.sleep(2)
    idle = utilisation(lab, host, "cache-1", 8)
    # The agent's own idle work is a few points of a 0.25-core quota; the duty is the difference.
    # CFS throttles in 100 ms periods: a 600 ms burn window can straddle one more period than it
    # covers and earn one more 25 ms slice, so the reading may be up to 0.1 above the duty.
    assert idle < 0.15
    assert 0.52 <= busy - idle <= 0.72


def test_the_load_driver_split_follows_the_instances(lab: Lab) -> None:
    lab_mod.set_demand(lab, {"web": {"cores": 0.15}})
    wait_for(
        lambda: duty_of(lab, "web"),
        lambda d: d == {"web-1": 30, "web-2": 30},
        timeout=20,
        what="web split over two instances",
    )
    policy = load_policy_dir(Path(load_controller_config(lab.controller_file).policy_dir))["web"]
    empty_host = next(h for h, d in lab_mod.status(lab).domains.items() if not d)
    lab_mod.start_vm(lab, policy, "web-3", empty_host)
    try:
        wait_for(
            lambda: duty_of(lab, "web"),
            lambda d: d == {"web-1": 20, "web-2": 20, "web-3": 20},
            timeout=30,
            what="web split over three instances",
        )
    finally:
        lab_mod.remove_vm(lab, "web-3", empty_host)
    wait_for(
        lambda: duty_of(lab, "web"),
        lambda d: d == {"web-1": 30, "web-2": 30},
        timeout=20,
        what="web split back over two instances",
    )
    lab_mod.set_demand(lab, {})


def test_fleet_command_prints_the_fleet_by_region_datacenter_rack_host(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "--config", str(lab.controller_file)]) == 0
    out = capsys.readouterr().out
    for word in (
        "region north",
        "datacenter n1",
        "rack n1-r1",
        "host n1-r1-h1",
        "web-1",
        "business=web",
        "running",
        "load",
    ):
        assert word in out


def test_a_host_whose_link_is_cut_is_stale_not_zero_and_comes_back(lab: Lab) -> None:
    record = lab.state.hosts[-1]
    collector = LibvirtHostCollector(record.name, lambda: libvirt.open(record.uri), timeout_s=2.0)
    assert not collector.collect(time.time()).stale
    net.set_uplink(lab.layout, record.index, up=False)
    try:
        started = time.monotonic()
        cut = collector.collect(time.time())
        assert time.monotonic() - started < 4.0  # one timeout, not a hang
        assert [s.target for s in cut.stale] == [record.name]
        assert cut.stale[0].scope is Scope.HOST and cut.stale[0].last_good is not None
        assert not [s for s in cut.samples if s.metric.startswith("vm_")]
        assert [s.value for s in cut.samples if s.metric == "libvirt_host_up"] == [0.0]
    finally:
        net.set_uplink(lab.layout, record.index, up=True)
    back = wait_for(
        lambda: collector.collect(time.time()),
        lambda c: not c.stale,
        timeout=30,
        what="host readable again",
    )
    assert [s.value for s in back.samples if s.metric == "libvirt_host_up"] == [1.0]
