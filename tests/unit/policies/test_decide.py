from __future__ import annotations

from autoscaler.model import (
    CloneFromTemplate,
    Controls,
    HotAddVcpu,
    LiveMigrate,
    NicModel,
    Retire,
    Scope,
    SignalName,
    Stale,
)
from policies.decide import decide
from policies.schema import BusinessPolicy
from policies.sla import SlaLedger
from policies.state import DecideSettings, DecisionState
from tests.unit.policies.builders import NOW, Fleet, history, policy

CONTROLS = Controls()

FAILING_RACK = "ra-d1-k1"


def _state(demand: dict[str, list[float]], **kw: object) -> DecisionState:
    return DecisionState(demand={b: history(v) for b, v in demand.items()}, **kw)  # type: ignore[arg-type]


def _fail_rack(fleet: Fleet, rack: str = FAILING_RACK) -> None:
    fleet.signal(Scope.RACK, rack, SignalName.CEPH_OSDS_UP, 0)
    fleet.signal(Scope.RACK, rack, SignalName.CEPH_OSDS_TOTAL, 2)


def _kinds(plan_actions: tuple[object, ...], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in plan_actions if isinstance(a, kind)]


def test_rising_load_adds_instances_on_distinct_racks_with_a_readable_reason() -> None:
    fleet = Fleet()
    web = policy("web")
    fleet.add_vms("web", 2, utilisation=0.85)
    plan = decide(
        fleet.snapshot(web), {"web": web}, CONTROLS, _state({"web": [0.3] * 12 + [0.425]}), NOW
    ).plan
    clones = _kinds(plan.actions, CloneFromTemplate)
    assert len(clones) >= 1
    assert len({c.host for c in clones}) == len(clones)
    reason = clones[0].reason
    # Half the error budget or more left: the 99th percentile at the saturation threshold.
    assert reason.startswith("web: p99 forecast")
    assert "cores at +" in reason and "> capacity 0.50" in reason
    assert clones[0].facts["forecast_model"] == "reactive"
    assert clones[0].facts["forecast_upper_cores"] >= 0.425


def test_a_business_at_its_maximum_gets_vcpus_hot_added_instead_of_clones() -> None:
    fleet = Fleet()
    web = policy("web", instances={"min": 1, "max": 2})
    fleet.add_vms("web", 2, utilisation=0.95)
    plan = decide(
        fleet.snapshot(web), {"web": web}, CONTROLS, _state({"web": [0.475] * 12}), NOW
    ).plan
    assert not _kinds(plan.actions, CloneFromTemplate)
    hot = _kinds(plan.actions, HotAddVcpu)
    assert hot and all(a.vcpus == 2 for a in hot)
    assert "faster than a clone" in hot[0].reason


def test_a_vm_at_its_limit_gets_all_its_vcpus_at_once_and_twice_what_it_serves_is_needed() -> None:
    fleet = Fleet()
    web = policy("web", instances={"min": 1, "max": 10})
    fleet.add_vms("web", 2, utilisation=1.0)
    plan = decide(
        fleet.snapshot(web), {"web": web}, CONTROLS, _state({"web": [0.5] * 12}), NOW
    ).plan
    hot = _kinds(plan.actions, HotAddVcpu)
    assert len(hot) == 2 and all(a.vcpus == 4 for a in hot)
    # 0.5 cores served at the limit: what it would serve with more is unknown, at least twice.
    assert hot[0].facts["needed_cores"] >= 2 * 0.5 - 1e-9


def test_vms_leave_a_failing_rack_and_an_sr_iov_vm_is_replaced_not_migrated() -> None:
    fleet = Fleet()
    web = policy("web")
    db = policy(
        "db",
        template={
            "image": "db.qcow2",
            "vcpus": {"now": 1, "max": 4},
            "memory_mib": {"now": 256, "max": 1024},
            "cpu_quota": 0.25,
            "nic": "sr-iov",
        },
    )
    fleet.add_vms("web", 2, utilisation=0.3, rack=FAILING_RACK)
    fleet.add_vms("web", 2, utilisation=0.3, rack="rb-d1-k1")
    (stuck,) = fleet.add_vms("db", 1, utilisation=0.5, rack=FAILING_RACK, nic=NicModel.SRIOV)
    _fail_rack(fleet)
    plan = decide(
        fleet.snapshot(web, db),
        {"web": web, "db": db},
        CONTROLS,
        _state({"web": [0.3] * 12, "db": [0.125] * 12}),
        NOW,
    ).plan
    moves = _kinds(plan.actions, LiveMigrate)
    assert {m.vm for m in moves} == {"web-000", "web-001"}
    assert all(not m.destination.startswith(FAILING_RACK) for m in moves)
    assert "Ceph OSDs down" in moves[0].reason
    assert stuck.name not in {m.vm for m in moves}
    replacement = [c for c in _kinds(plan.actions, CloneFromTemplate) if c.business == "db"]
    assert replacement and not replacement[0].host.startswith(FAILING_RACK)


def test_outgoing_migrations_per_host_are_capped() -> None:
    fleet = Fleet(hosts_per_rack=1)
    web = policy("web", instances={"min": 1, "max": 20})
    fleet.add_vms("web", 5, utilisation=0.3, rack=FAILING_RACK)
    _fail_rack(fleet)
    state = _state(
        {"web": [0.375] * 12}, settings=DecideSettings(max_outgoing_migrations_per_host=2)
    )
    plan = decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan
    assert len(_kinds(plan.actions, LiveMigrate)) == 2


def test_stale_hosts_never_lead_to_migrations_or_retires() -> None:
    fleet = Fleet()
    web = policy("web")
    fleet.add_vms("web", 2, utilisation=0.05, rack=FAILING_RACK)
    fleet.add_vms("web", 4, utilisation=0.05, rack="rb-d1-k1")
    _fail_rack(fleet)
    for host in fleet.host_names(FAILING_RACK):
        fleet.stale.append(
            Stale(scope=Scope.HOST, target=host, source="libvirt", last_good=NOW - 600)
        )
    plan = decide(
        fleet.snapshot(web), {"web": web}, CONTROLS, _state({"web": [0.075] * 24}), NOW
    ).plan
    assert not _kinds(plan.actions, LiveMigrate)
    assert not _kinds(plan.actions, Retire)


def _quiet(web: BusinessPolicy, **kw: object) -> tuple[Fleet, DecisionState]:
    fleet = Fleet()
    fleet.add_vms("web", 6, utilisation=0.1)
    return fleet, _state({"web": [0.15] * 24}, **kw)


def test_low_load_retires_one_instance_after_the_stabilisation_window() -> None:
    web = policy("web")
    fleet, state = _quiet(web)
    plan = decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan
    retires = _kinds(plan.actions, Retire)
    assert len(retires) == 1
    assert "surplus" in retires[0].reason and "peak 0.15" in retires[0].reason


def test_no_scale_down_within_the_stabilisation_window_after_a_scale_up() -> None:
    web = policy("web")
    fleet, state = _quiet(web, last_scale_up={"web": NOW - 60})
    assert not _kinds(
        decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan.actions, Retire
    )


def test_no_scale_down_while_the_error_budget_burns() -> None:
    web = policy("web")
    ledger = SlaLedger()
    for m in range(120):
        ledger = ledger.record(NOW - (119 - m) * 60, 0.0 if m > 100 else 60.0, 60.0, 86_400 * 30)
    fleet, state = _quiet(web, sla={"web": ledger})
    assert not _kinds(
        decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan.actions, Retire
    )


def test_no_scale_down_on_a_forecast_alone_when_the_window_saw_a_peak() -> None:
    web = policy("web")
    fleet = Fleet()
    fleet.add_vms("web", 6, utilisation=0.1)
    state = _state({"web": [0.15] * 20 + [1.3] + [0.15] * 1})
    assert not _kinds(
        decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan.actions, Retire
    )


def test_no_retire_or_migration_inside_a_maintenance_window() -> None:
    # NOW is Wednesday 12:00 UTC.
    web = policy("web", maintenance=[{"days": ["wed"], "start": "11:30", "duration_minutes": 60}])
    fleet, state = _quiet(web)
    fleet.add_vms("web", 1, utilisation=0.1, rack=FAILING_RACK)
    _fail_rack(fleet)
    plan = decide(fleet.snapshot(web), {"web": web}, CONTROLS, state, NOW).plan
    assert not _kinds(plan.actions, Retire) and not _kinds(plan.actions, LiveMigrate)


def test_the_same_inputs_give_the_same_plan() -> None:
    fleet = Fleet()
    web = policy("web")
    fleet.add_vms("web", 2, utilisation=0.85)
    snapshot = fleet.snapshot(web)
    state = _state({"web": [0.3] * 12 + [0.425]})
    first = decide(snapshot, {"web": web}, CONTROLS, state, NOW).plan
    second = decide(snapshot, {"web": web}, CONTROLS, state, NOW).plan
    assert first.actions and first.id == second.id


def test_the_operators_controls_are_an_input_paused_cordoned_and_drained() -> None:
    fleet = Fleet()
    web, api = policy("web"), policy("api")
    fleet.add_vms("web", 2, utilisation=0.85)
    fleet.add_vms("api", 2, utilisation=0.3)
    drained = fleet.vms[0].host
    cordoned = {h for r in fleet.rack_names for h in fleet.host_names(r)} - {
        fleet.host_names(fleet.rack_names[-1])[0],
        fleet.host_names(fleet.rack_names[-2])[0],
    }
    controls = Controls(
        paused=frozenset({"api"}), cordoned=frozenset(cordoned), draining=frozenset({drained})
    )
    state = _state({"web": [0.3] * 12 + [0.425], "api": [0.15] * 12})
    decision = decide(fleet.snapshot(web, api), {"web": web, "api": api}, controls, state, NOW)
    actions = decision.plan.actions
    assert actions and all(a.business == "web" for a in actions)
    assert "paused by an operator" in decision.reasons["api"]
    assert set(decision.sla) == set(decision.forecasts) == {"web", "api"}
    for clone in _kinds(actions, CloneFromTemplate):
        assert clone.host not in cordoned
    moves = [m for m in _kinds(actions, LiveMigrate) if m.source == drained]
    assert [m.vm for m in moves] == [fleet.vms[0].name]
    assert moves[0].destination not in cordoned
    # The whole decision is one plan, built once: the same inputs give the same id.
    again = decide(fleet.snapshot(web, api), {"web": web, "api": api}, controls, state, NOW)
    assert again.plan.id == decision.plan.id


def test_a_retire_must_leave_the_tolerance_above_what_the_window_asked_for() -> None:
    # Six VMs of a quarter core: a retire leaves 1.25 cores. The window asked for 1.2 cores at
    # most: 1.25 covers it, but not with the default 10% tolerance (1.32).
    asked = {"web": ((NOW - 60, 1.2),)}
    tolerant = policy("web")
    fleet, state = _quiet(tolerant, recent_needed=asked)
    plan = decide(fleet.snapshot(tolerant), {"web": tolerant}, CONTROLS, state, NOW).plan
    assert not _kinds(plan.actions, Retire)
    exact = policy("web", scaling={"scale_down_tolerance": 0.0})
    plan = decide(fleet.snapshot(exact), {"web": exact}, CONTROLS, state, NOW).plan
    retires = _kinds(plan.actions, Retire)
    assert len(retires) == 1
    assert "1.20 needed (+0% tolerance)" in retires[0].reason
