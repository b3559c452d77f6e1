"""Rollouts and scale-down by replacement (``policies.rollout``): one instance at a time, the
oldest out-of-date one first, held with its reason while paused, in a maintenance window, on a
fast burn, while an instance is not ready or its balancer is stale; a grown VM that nothing
needed is replaced by a template-size clone; scale-in retires out-of-date instances first."""

from __future__ import annotations

from typing import Any

from autoscaler.model import CloneFromTemplate, Controls, ReplaceInstance, Retire
from autoscaler.model.access import ServerAdmin, ServerHealth, ServerState
from autoscaler.model.controls import Rollout
from policies.decide import decide
from policies.decision import Decision
from policies.schema import BusinessPolicy
from policies.sla import SlaLedger
from policies.state import DecideSettings, DecisionState
from tests.unit.policies.builders import NOW, Fleet, access_view, history, policy

STEADY = [0.5] * 24
"""Three VMs at ~two thirds of their 0.25 cores each: neither a clone nor a retire."""


def _web(version: str = "v2", **overrides: Any) -> BusinessPolicy:
    template = {
        "image": "web.qcow2",
        "version": version,
        "vcpus": {"now": 1, "max": 4},
        "memory_mib": {"now": 256, "max": 1024},
        "cpu_quota": 0.25,
    }
    return policy("web", template=template, **overrides)


def _decide(
    fleet: Fleet,
    web: BusinessPolicy,
    controls: Controls | None = None,
    demand: list[float] = STEADY,
    **state: Any,
) -> Decision:
    decision_state = DecisionState(
        demand={"web": history(demand)}, settings=DecideSettings(), **state
    )
    return decide(fleet.snapshot(web), {"web": web}, controls or Controls(), decision_state, NOW)


def _replacements(decision: Decision) -> list[ReplaceInstance]:
    return [a for a in decision.plan.actions if isinstance(a, ReplaceInstance)]


def _rollout_reasons(decision: Decision) -> list[str]:
    return [r for r in decision.reasons["web"] if r.startswith("rollout to")]


def test_a_new_template_version_replaces_the_oldest_instance_first_one_at_a_time() -> None:
    fleet = Fleet()
    oldest, _, _ = fleet.add_vms("web", 3, utilisation=0.66, version="v1")
    decision = _decide(fleet, _web("v2"))
    (step,) = _replacements(decision)
    assert step.vm == oldest.name and step.version == "v2" and step.cause == "rollout"
    assert step.new_vm != step.vm and "rollout to v2" in step.reason


def test_a_fleet_at_the_target_version_has_no_rollout() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 3, utilisation=0.66, version="v2")
    fleet.add_vms("web", 1, utilisation=0.66, version=None)  # unknown: left be
    assert _replacements(_decide(fleet, _web("v2"))) == []


def test_an_operator_rollout_overrides_the_policy_version_and_undo_goes_back() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 3, utilisation=0.66, version="v2")
    to_v3 = Controls(rollouts={"web": Rollout(to="v3", previous="v2")})
    (step,) = _replacements(_decide(fleet, _web("v2"), to_v3))
    assert step.version == "v3"
    fleet.vms[0] = fleet.vms[0].model_copy(update={"version": "v3"})
    undo = Controls(rollouts={"web": Rollout(to="v2", previous="v3")})
    (back,) = _replacements(_decide(fleet, _web("v2"), undo))
    assert back.vm == fleet.vms[0].name and back.version == "v2"


def test_clones_made_during_a_rollout_are_of_the_target_version() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.85, version="v2")
    rising = [0.3] * 12 + [0.425]
    to_v3 = Controls(rollouts={"web": Rollout(to="v3", previous="v2")})
    clones = [
        a
        for a in _decide(fleet, _web("v2"), to_v3, demand=rising).plan.actions
        if isinstance(a, CloneFromTemplate)
    ]
    assert clones and all(c.version == "v3" for c in clones)


def test_a_paused_rollout_plans_nothing_and_says_how_far_it_got() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.66, version="v1")
    fleet.add_vms("web", 1, utilisation=0.66, version="v2")
    paused = Controls(rollouts={"web": Rollout(to="v2", previous="v1", paused=True)})
    decision = _decide(fleet, _web("v2"), paused)
    assert _replacements(decision) == []
    assert _rollout_reasons(decision) == [
        "rollout to v2 (1 of 3 at v2): rollout paused by an operator"
    ]


def test_a_rollout_waits_while_an_instance_is_not_ready() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.66, version="v1")
    fleet.add_vms("web", 1, utilisation=None, version="v2", ready=False)
    decision = _decide(fleet, _web("v2"))
    assert _replacements(decision) == []
    (why,) = _rollout_reasons(decision)
    assert "held: waiting for" in why and "to be ready" in why


def test_a_rollout_holds_in_a_maintenance_window() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 3, utilisation=0.66, version="v1")
    window = [{"days": ["wed"], "start": "11:00", "duration_minutes": 120}]
    decision = _decide(fleet, _web("v2", maintenance=window))
    assert _replacements(decision) == []
    assert "held: in a maintenance window" in _rollout_reasons(decision)[0]


def test_a_rollout_holds_while_the_page_alert_condition_holds() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 3, utilisation=0.2, version="v1")
    web = _web("v2", instances={"min": 3, "max": 10})  # light load: no clone, no retire
    # Every minute of the last 6 hours bad: far above 14.4x over 1 h and 5 min.
    ledger = SlaLedger()
    for i in range(360, 0, -1):
        ledger = ledger.record(NOW - 60 * i, 0.0, 60.0, keep_s=30 * 86_400)
    decision = _decide(fleet, web, demand=[0.15] * 24, sla={"web": ledger})
    assert _replacements(decision) == []
    assert "page alert" in _rollout_reasons(decision)[0]


def test_behind_a_balancer_a_rollout_waits_for_the_new_instance_to_serve() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.66, version="v1", addressed=True)
    (new,) = fleet.add_vms("web", 1, utilisation=0.66, version="v2", addressed=True)
    web = _web("v2", access={"kind": "haproxy", "balancer": "edge"})
    down = ServerState(
        name=new.name,
        address=str(new.address),
        port=80,
        admin=ServerAdmin.READY,
        health=ServerHealth.DOWN,
    )
    fleet.access.append(access_view(down))
    decision = _decide(fleet, web)
    assert _replacements(decision) == []
    assert f"waiting for {new.name} to serve" in _rollout_reasons(decision)[0]
    fleet.access[0] = access_view(down.model_copy(update={"health": ServerHealth.UP}))
    assert len(_replacements(_decide(fleet, web))) == 1
    fleet.access[0] = access_view(stale=True, reason="no socket")
    assert "stale" in _rollout_reasons(_decide(fleet, web))[0]


def test_scale_in_during_a_rollout_retires_an_out_of_date_instance_first() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 3, utilisation=0.1, version="v2")
    (old,) = fleet.add_vms("web", 1, utilisation=0.1, version="v1")
    retires = [
        a
        for a in _decide(fleet, _web("v2"), demand=[0.1] * 24).plan.actions
        if isinstance(a, Retire)
    ]
    assert retires and retires[0].vm == old.name


def test_a_grown_idle_vm_is_replaced_by_a_template_size_clone() -> None:
    fleet = Fleet()
    (big,) = fleet.add_vms("web", 1, utilisation=0.05, vcpus=4, version="v2")
    fleet.add_vms("web", 2, utilisation=0.3, version="v2")
    at_minimum = {"min": 3, "max": 10}  # no instance may go: only a replacement shrinks
    decision = _decide(fleet, _web("v2", instances=at_minimum), demand=[0.2] * 24)
    (step,) = _replacements(decision)
    assert step.vm == big.name and step.cause == "shrink" and "template-size" in step.reason


def test_a_grown_vm_whose_capacity_is_still_needed_is_kept() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 1, utilisation=0.9, vcpus=4, version="v2")
    decision = _decide(fleet, _web("v2"), demand=[0.9] * 24)
    assert _replacements(decision) == []


def test_a_vm_grown_within_the_stabilisation_window_is_kept() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 1, utilisation=0.05, vcpus=4, version="v2")
    fleet.add_vms("web", 2, utilisation=0.3, version="v2")
    at_minimum = {"min": 3, "max": 10}
    decision = _decide(
        fleet, _web("v2", instances=at_minimum), demand=[0.2] * 24, last_scale_up={"web": NOW - 60}
    )
    assert _replacements(decision) == []
