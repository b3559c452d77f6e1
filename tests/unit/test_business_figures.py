"""The controller's per-business figures: only ready, serving instances carry demand."""

from __future__ import annotations

from autoscaler.model import (
    VM,
    Business,
    Datacenter,
    Host,
    Rack,
    Region,
    Snapshot,
    Template,
    VmState,
)
from autoscaler.runtime.figures import business_figures

TEMPLATE = Template(
    image="web.qcow2", vcpus=1, max_vcpus=4, memory_mib=256, max_memory_mib=1024, cpu_quota=0.25
)


def vm(name: str, *, ready: bool, utilisation: float | None, draining: bool = False) -> VM:
    return VM(
        name=name,
        host="h1",
        business="web",
        state=VmState.RUNNING,
        vcpus=1,
        max_vcpus=4,
        memory_mib=256,
        max_memory_mib=1024,
        cpu_quota=0.25,
        cpu_utilisation=utilisation,
        ready=ready,
        draining=draining,
    )


def snapshot_of(*vms: VM) -> Snapshot:
    return Snapshot(
        now=1.0,
        regions=(Region(name="r"),),
        datacenters=(Datacenter(name="d", region="r"),),
        racks=(Rack(name="k", datacenter="d"),),
        hosts=(Host(name="h1", rack="k", uri="test:///default", cpus=4, memory_mib=8192),),
        vms=vms,
        businesses=(Business(name="web", template=TEMPLATE, min_instances=1, max_instances=8),),
    )


def test_a_booting_clone_and_a_draining_vm_carry_no_demand_nor_capacity() -> None:
    snapshot = snapshot_of(
        vm("web-1", ready=True, utilisation=0.5),
        vm("web-2", ready=True, utilisation=0.7),
        vm("web-3", ready=False, utilisation=4.0),  # booting without its quota yet
        vm("web-4", ready=True, utilisation=0.1, draining=True),
    )
    figures = business_figures(snapshot)["web"]
    assert figures.ready == 2
    assert figures.capacity_cores == 0.5
    assert abs(figures.demand_cores - 0.3) < 1e-9
    assert figures.demand_known


def test_a_ready_vm_not_measured_yet_makes_the_demand_unknown_not_smaller() -> None:
    """A clone just ready has no CPU rate for one collection: its share of the load left the
    others, so the sum of the measured ones is a dip that never happened."""
    figures = business_figures(
        snapshot_of(
            vm("web-1", ready=True, utilisation=0.5),
            vm("web-2", ready=True, utilisation=None),
        )
    )["web"]
    assert figures.ready == 2
    assert figures.unmeasured == 1
    assert not figures.demand_known
