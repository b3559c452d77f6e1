"""The actuators on the real lab: clone, hot-add, snapshot, migrate, retire, with the guest's
own view as the proof (online CPUs, MemTotal, readiness through its agent channel)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import libvirt
import pytest

from actuators.base import Fleet, vm_attribute
from actuators.domain_xml import build_domain_xml
from actuators.executor import ExecutorLimits, default_registry
from actuators.guest_agent import SerialAgent
from actuators.migrate import MigrateActuator
from autoscaler.model import (
    CloneFromTemplate,
    HotAddMemory,
    HotAddVcpu,
    LiveMigrate,
    Phase,
    Retire,
    SnapshotDisk,
)
from autoscaler.runtime.journal import SqliteJournal, read_stamp
from autoscaler.runtime.wiring import open_journal
from lab import lab as lab_mod
from lab.images import expected_content_checksum
from lab.lab import Lab
from policies.loader import load_policy_dir
from tests.integration.actuator_helpers import (
    domain_xml,
    empty_host,
    fleet_of,
    host_in_other_datacenter,
    remove_everywhere,
    run_plan,
    where,
)

pytestmark = pytest.mark.lab

VM = "tact-life"
WHY = {"business": "web", "reason": "actuator test"}


@dataclass
class Clone:
    fleet: Fleet
    journal: SqliteJournal
    host: str
    clone_seconds: float


@pytest.fixture(scope="module")
def clone(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    fleet = fleet_of(lab)
    journal = open_journal(tmp_path_factory.mktemp("state"), fleet)  # stamps the domains too
    host = empty_host(lab)
    started = time.monotonic()
    results = run_plan(fleet, journal, [CloneFromTemplate(vm=VM, host=host, **WHY)])
    took = time.monotonic() - started
    try:
        assert [r.status for r in results] == ["done"], results
        yield Clone(fleet, journal, host, took)
    finally:
        remove_everywhere(lab, VM)
        journal.close()


def guest(lab: Lab, host: str) -> tuple[libvirt.virConnect, libvirt.virDomain]:
    conn = lab.connect(host)
    return conn, conn.lookupByName(VM)


def test_a_clone_boots_reports_ready_and_runs_under_its_quota(lab: Lab, clone: Clone) -> None:
    conn, dom = guest(lab, clone.host)
    try:
        with SerialAgent(conn, dom) as agent:
            view = agent.wait_for(lambda v: v.ready, 10)
        assert view is not None and (view.vm, view.business) == (VM, "web")
        assert view.mounted and view.content == expected_content_checksum("web")  # its template
        assert vm_attribute(dom, "ready") is not None and vm_attribute(dom, "business") == "web"
        xml = domain_xml(dom)
        assert xml.findtext("./cputune/quota") == "25000"  # the boot boost ended
        assert xml.find("./devices/interface/mac") is not None
        stamp = read_stamp(dom)
        assert stamp is not None
        assert (stamp["key"], stamp["phase"]) == (f"clone_from_template/{VM}", "done")
    finally:
        conn.close()
    assert where(lab, VM) == {clone.host: "running"}
    entry = clone.journal.get(f"clone_from_template/{VM}")
    assert entry is not None and entry.phase is Phase.DONE and entry.step == "ready"


def test_hot_added_vcpu_and_memory_are_seen_inside_the_guest(lab: Lab, clone: Clone) -> None:
    results = run_plan(
        clone.fleet,
        clone.journal,
        [
            HotAddVcpu(vm=VM, host=clone.host, vcpus=2, **WHY),
            HotAddMemory(vm=VM, host=clone.host, memory_mib=384, **WHY),
        ],
    )
    assert [r.status for r in results] == ["done", "done"], results
    conn, dom = guest(lab, clone.host)
    try:
        with SerialAgent(conn, dom) as agent:
            view = agent.wait_for(lambda v: v.online_cpus == 2, 5)
            assert view is not None, "the guest does not see 2 CPUs"
            assert view.mem_kib > 256 * 1024  # 256 MiB boot size: MemTotal ~153 MiB
        assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
        inactive = domain_xml(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert len(inactive.findall("./devices/memory[@model='dimm']")) == 1
    finally:
        conn.close()
    again = run_plan(
        clone.fleet, clone.journal, [HotAddVcpu(vm=VM, host=clone.host, vcpus=2, **WHY)]
    )
    assert again[0].status == "done" and again[0].reason.startswith("already done")


def test_removing_a_vcpu_is_refused_and_changes_nothing(lab: Lab, clone: Clone) -> None:
    conn, dom = guest(lab, clone.host)
    try:
        before = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert before >= 2
        # vcpus=2 is the floor of the action type; go above first so that 2 is a removal.
        up = run_plan(
            clone.fleet, clone.journal, [HotAddVcpu(vm=VM, host=clone.host, vcpus=3, **WHY)]
        )
        assert up[0].status == "done", up
        (result,) = run_plan(
            clone.fleet, clone.journal, [HotAddVcpu(vm=VM, host=clone.host, vcpus=2, **WHY)]
        )
        assert result.status == "failed" and "RefusedAction" in result.reason
        assert "QEMU" in result.reason
        assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 3
    finally:
        conn.close()


def test_a_migration_across_datacenters_merges_the_snapshot_first_and_the_guest_runs_on(
    lab: Lab, clone: Clone
) -> None:
    source = next(iter(where(lab, VM)))
    snap = run_plan(
        clone.fleet, clone.journal, [SnapshotDisk(vm=VM, host=source, tag="pre-move", **WHY)]
    )
    assert snap[0].status == "done", snap
    destination = host_in_other_datacenter(lab, source)
    assert lab.state.host(destination).datacenter != lab.state.host(source).datacenter
    (result,) = run_plan(
        clone.fleet,
        clone.journal,
        [LiveMigrate(vm=VM, source=source, destination=destination, max_downtime_ms=100, **WHY)],
    )
    assert result.status == "done", result
    assert where(lab, VM) == {destination: "running"}  # no copy, definition or overlay left
    assert result.figures["migration_downtime_s"] < 1.0
    conn, dom = guest(lab, destination)
    try:
        with SerialAgent(conn, dom) as agent:
            view = agent.wait_for(lambda v: v.ready, 10)
        assert view is not None and view.online_cpus == 3  # hot-added CPUs came along
        disk = domain_xml(dom).find("./devices/disk/source")
        assert disk is not None and disk.get("file", "").endswith(f"/{VM}.qcow2")
        assert dom.isPersistent()
    finally:
        conn.close()
    src = lab.connect(source)
    try:
        names = src.storagePoolLookupByName("images").listVolumes()
        assert not [n for n in names if n.startswith(f"{VM}.")]  # overlay and snapshot gone
    finally:
        src.close()


def test_a_migration_that_times_out_is_aborted_and_leaves_the_vm_on_its_source(
    lab: Lab, clone: Clone
) -> None:
    source = next(iter(where(lab, VM)))
    destination = host_in_other_datacenter(lab, source)
    registry = {**default_registry(), "live_migrate": MigrateActuator(bandwidth_mib_s=1)}
    started = time.monotonic()
    (result,) = run_plan(
        clone.fleet,
        clone.journal,
        [LiveMigrate(vm=VM, source=source, destination=destination, timeout_s=3, **WHY)],
        registry=registry,
    )
    assert time.monotonic() - started < 20
    assert result.status == "failed" and "timed out" in result.reason, result
    assert where(lab, VM) == {source: "running"}
    conn, dom = guest(lab, source)
    try:
        with SerialAgent(conn, dom) as agent:
            assert agent.wait_for(lambda v: v.ready, 10) is not None
    finally:
        conn.close()
    entry = clone.journal.get(result.key)
    assert entry is not None and entry.phase is Phase.COMPENSATED


def test_an_sriov_vm_is_refused_with_a_clear_reason(lab: Lab, clone: Clone) -> None:
    source = lab.state.hosts[0].name
    conn = lab.connect(source)
    try:
        # A db-replica instance (SR-IOV NIC by policy): defined only, its metadata is the proof.
        # (the lab manages only the businesses it starts: the example policy is read directly)
        policy = load_policy_dir(lab_mod.EXAMPLES / "businesses")["db-replica"]
        spec = lab_mod.instance_spec(lab, policy, "tact-sriov", source, "/nonexistent.qcow2")
        conn.defineXML(build_domain_xml(spec))
    finally:
        conn.close()
    try:
        (result,) = run_plan(
            clone.fleet,
            clone.journal,
            [
                LiveMigrate(
                    vm="tact-sriov",
                    business="db-replica",
                    source=source,
                    destination=host_in_other_datacenter(lab, source),
                    reason="test",
                )
            ],
        )
        assert result.status == "failed" and "RefusedAction" in result.reason
        assert "sr-iov" in result.reason and "cannot be live-migrated" in result.reason
    finally:
        remove_everywhere(lab, "tact-sriov")


def test_retire_refuses_to_go_below_the_business_minimum(lab: Lab, clone: Clone) -> None:
    host = next(iter(where(lab, "cache-1")))
    (result,) = run_plan(
        clone.fleet,
        clone.journal,
        [Retire(vm="cache-1", business="cache", host=host, reason="test")],
    )
    assert result.status == "failed" and "below its minimum of 1" in result.reason, result
    conn = lab.connect(host)
    try:
        dom = conn.lookupByName("cache-1")
        assert dom.isActive() and vm_attribute(dom, "draining") is None
    finally:
        conn.close()


def test_retire_drains_shuts_down_and_removes_every_trace(lab: Lab, clone: Clone) -> None:
    host = next(iter(where(lab, VM)))
    (result,) = run_plan(
        clone.fleet,
        clone.journal,
        [Retire(vm=VM, host=host, shutdown_timeout_s=20, **WHY)],
        limits=ExecutorLimits(action_timeout_s=60),
    )
    assert result.status == "done", result
    assert where(lab, VM) == {}
    entry = clone.journal.get(result.key)
    assert entry is not None and entry.step == "removed"
