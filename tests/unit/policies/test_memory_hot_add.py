"""Memory hot-add decided from the memory the guest reports in use (balloon statistics).

QEMU's RSS is never a reason: it only grows. A VM without a fresh figure gets no hot-add.
"""

from __future__ import annotations

from autoscaler.model import Controls, HotAddMemory, Scope, Stale
from policies.decide import decide
from policies.state import DecisionState
from tests.unit.policies.builders import NOW, Fleet, history, policy

# The lab guest's figures: 256 MiB of which its kernel keeps ~100 MiB; it sees 153 MiB.
GUEST_TOTAL = 153.0


def _plan(fleet: Fleet, **web: object) -> list[HotAddMemory]:
    web_policy = policy("web", **web)
    state = DecisionState(demand={"web": history([0.1] * 12)})
    plan = decide(fleet.snapshot(web_policy), {"web": web_policy}, Controls(), state, NOW).plan
    return [a for a in plan.actions if isinstance(a, HotAddMemory)]


def test_guest_memory_in_use_above_the_threshold_hot_adds_a_dimm_with_its_reason() -> None:
    fleet = Fleet()
    (full,) = fleet.add_vms(
        "web", 1, utilisation=0.2, memory_used_mib=140, memory_guest_total_mib=GUEST_TOTAL
    )
    fleet.add_vms("web", 1, utilisation=0.2, memory_used_mib=40, memory_guest_total_mib=GUEST_TOTAL)
    (add,) = _plan(fleet)
    assert (add.vm, add.host, add.memory_mib) == (full.name, full.host, 256 + 128)
    assert add.reason == (
        f"web: {full.name}'s guest uses 140 of the 153 MiB it sees (92% >= 85%):"
        " memory 256 -> 384 MiB (+128 MiB DIMM)"
    )
    assert add.facts["memory_used_mib"] == 140
    assert add.facts["memory_threshold"] == 0.85


def test_the_threshold_comes_from_the_policy() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 1, utilisation=0.2, memory_used_mib=100, memory_guest_total_mib=153)
    assert _plan(fleet) == []
    scaling = {"target_utilisation": 0.6, "vertical": {"memory_threshold": 0.6}}
    assert [a.memory_mib for a in _plan(fleet, scaling=scaling)] == [384]


def test_high_rss_but_low_guest_memory_in_use_hot_adds_nothing() -> None:
    """QEMU's RSS is all of the VM's memory once touched (it never shrinks); the guest says it
    uses 30 MiB. Only the guest's figure reaches the VM, and it is far below the threshold."""
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.2, memory_used_mib=30, memory_guest_total_mib=153)
    assert _plan(fleet) == []


def test_no_memory_figure_means_no_memory_hot_add_and_the_facts_say_so() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.95)  # no balloon statistics: memory_used_mib None
    plan = decide(
        fleet.snapshot(policy("web")),
        {"web": policy("web")},
        Controls(),
        DecisionState(demand={"web": history([0.3] * 12 + [0.475])}),
        NOW,
    ).plan
    assert not [a for a in plan.actions if isinstance(a, HotAddMemory)]
    assert plan.actions  # the load still scales the business: its facts name the blind spot
    assert all(a.facts["memory_unreported_vms"] == 2 for a in plan.actions)


def test_a_stale_vm_gets_no_memory_hot_add() -> None:
    fleet = Fleet()
    (vm,) = fleet.add_vms(
        "web", 1, utilisation=0.2, memory_used_mib=150, memory_guest_total_mib=153
    )
    fleet.stale.append(
        Stale(scope=Scope.HOST, target=vm.host, source="libvirt", last_good=NOW - 60, reason="x")
    )
    assert _plan(fleet) == []


def test_memory_stops_at_the_template_maximum() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 1, utilisation=0.2, memory_used_mib=150, memory_guest_total_mib=153)
    fleet.vms[0] = fleet.vms[0].model_copy(update={"memory_mib": 1024})
    assert _plan(fleet) == []
