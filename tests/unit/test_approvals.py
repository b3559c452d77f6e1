"""Approvals mean what was approved, once: edited, replayed, stale, expired, paused, cordoned
or over-cap approved plans are refused; recommendations are deduplicated and old plan files
cleaned up; an operator's drain is done whatever the business's mode.

``policies.approvals.admit`` is pure and checked on snapshots from the builders; the plans
folder is the real one on a temporary folder; the Cycle runs on the simulated fleet.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from autoscaler.model import CloneFromTemplate, Controls, LiveMigrate, Plan, Retire
from autoscaler.runtime.plans import PlanFolder
from policies.approvals import admit
from policies.decide import decide
from policies.schema import BusinessPolicy
from policies.state import DecisionState
from tests.reliability import record
from tests.unit.policies.builders import NOW, Fleet, policy
from tests.unit.test_cycle import STEP_S, Run, trace, web

pytest_plugins = ["tests.reliability_plugin"]
RELIABILITY_SUITE = "safety"


def setup() -> tuple[Fleet, BusinessPolicy]:
    fleet = Fleet()
    fleet.add_vms("web", 3)
    return fleet, policy("web", mode="recommend", instances={"min": 1, "max": 10})


def clone_plan(fleet: Fleet, at: float = NOW - 60) -> Plan:
    host = fleet.vms[0].host
    action = CloneFromTemplate(business="web", vm="web-new", host=host, reason="more load")
    return Plan.build([action], created_at=at, snapshot_at=at - 5)


def test_an_untouched_approved_plan_is_admitted() -> None:
    fleet, web_policy = setup()
    plan = clone_plan(fleet)
    got = admit(
        plan, fleet.snapshot(web_policy), {"web": web_policy}, Controls(), DecisionState(), NOW
    )
    assert got.admitted, got.refused


def test_an_approved_plan_edited_after_export_is_refused() -> None:
    fleet, web_policy = setup()
    plan = clone_plan(fleet)
    edited = json.loads(plan.to_json())
    edited["actions"][0]["vm"] = "web-999"  # the id stays, the content changed
    tampered = Plan.model_validate(edited)
    got = admit(
        tampered, fleet.snapshot(web_policy), {"web": web_policy}, Controls(), DecisionState(), NOW
    )
    assert not got.admitted and "edited after export" in str(got.refused)
    record(
        "safety",
        "approved plan edited",
        injected="an exported plan's clone renamed in its file, its id kept, then approved",
        behaviour=f"refused at execution: {got.refused}",
        lost="nothing (nothing ran)",
    )


def test_two_recommendations_from_one_view_cannot_both_run() -> None:
    fleet, web_policy = setup()
    first, second = clone_plan(fleet), clone_plan(fleet, at=NOW - 50)
    state = DecisionState(recent_actions={"web": (NOW - 30,)})  # the first one ran
    got = admit(second, fleet.snapshot(web_policy), {"web": web_policy}, Controls(), state, NOW)
    assert first.snapshot_at is not None and not got.admitted
    assert "acted on after the view" in str(got.refused)
    record(
        "safety",
        "two approvals from one view",
        injected="two clone recommendations made from the same view, both approved",
        behaviour=f"the first ran; the second was refused: {got.refused}",
        lost="nothing (no second clone)",
    )


def test_an_expired_approval_is_refused() -> None:
    fleet, web_policy = setup()
    plan = clone_plan(fleet, at=NOW - web_policy.approval.expires_after_s - 1)
    got = admit(
        plan, fleet.snapshot(web_policy), {"web": web_policy}, Controls(), DecisionState(), NOW
    )
    assert not got.admitted and "expired" in str(got.refused)


def test_an_approval_still_honours_pause_cordon_maintenance_and_the_cap() -> None:
    fleet, web_policy = setup()
    plan = clone_plan(fleet)
    snap = fleet.snapshot(web_policy)
    policies = {"web": web_policy}
    paused = admit(plan, snap, policies, Controls(paused=frozenset({"web"})), DecisionState(), NOW)
    assert "paused" in str(paused.refused)
    host = plan.actions[0].hosts[0]
    cordoned = admit(
        plan, snap, policies, Controls(cordoned=frozenset({host})), DecisionState(), NOW
    )
    assert "cordoned" in str(cordoned.refused)
    tight = web_policy.model_copy(
        update={"scaling": web_policy.scaling.model_copy(update={"max_actions_per_hour": 1})}
    )
    state = DecisionState(recent_actions={"web": (NOW - 3000,)})  # before the view, this hour
    over = admit(plan, snap, {"web": tight}, Controls(), state, NOW)
    assert not over.admitted and "action(s) left this hour" in str(over.refused)
    vm = fleet.vms[0]
    retire = Retire(business="web", vm=vm.name, host=vm.host, reason="less load")
    window = policy(
        "web",
        mode="recommend",
        instances={"min": 1, "max": 10},
        maintenance=[
            {
                "start": "00:00",
                "duration_minutes": 7 * 24 * 60,
                "days": ["mon"],
            }
        ],
    )
    in_window = admit(
        Plan.build([retire], NOW - 10, NOW - 15),
        snap,
        {"web": window},
        Controls(),
        DecisionState(),
        NOW,
    )
    assert not in_window.admitted and "maintenance" in str(in_window.refused)


def test_an_approved_migration_of_a_vm_that_moved_meanwhile_is_refused() -> None:
    fleet, web_policy = setup()
    vm = fleet.vms[0]
    elsewhere = next(h for r in fleet.rack_names for h in fleet.host_names(r) if h != vm.host)
    move = LiveMigrate(
        business="web", vm=vm.name, source=elsewhere, destination=vm.host, reason="drain"
    )
    got = admit(
        Plan.build([move], NOW - 10, NOW - 15),
        fleet.snapshot(web_policy),
        {"web": web_policy},
        Controls(),
        DecisionState(),
        NOW,
    )
    assert not got.admitted and f"on {vm.host} now" in str(got.refused)


def test_an_approved_plan_runs_once_even_when_approved_again(tmp_path: Path) -> None:
    folder = PlanFolder(tmp_path / "plans", time.time)
    fleet, _ = setup()
    plan = clone_plan(fleet)
    folder.export(plan)
    assert [p.id for p in folder.take_approved(frozenset({plan.id}))] == [plan.id]
    assert folder.take_approved(frozenset({plan.id})) == []  # the same approval, replayed
    (tmp_path / "plans" / f"{plan.id}.json").write_text(plan.to_json())  # the file put back
    assert folder.take_approved(frozenset({plan.id})) == []
    record(
        "safety",
        "approved plan replayed",
        injected="a plan approved and run, then approved again and its file written back",
        behaviour="taken once: the .done mark written before it runs refuses every replay",
        lost="nothing (one execution)",
    )


def test_recommendations_are_deduplicated_and_old_plan_files_cleaned_up(tmp_path: Path) -> None:
    now = [time.time()]
    folder = PlanFolder(tmp_path / "plans", lambda: now[0], keep_s=3600, dedupe_s=300)
    fleet, _ = setup()
    host = fleet.vms[0].host

    def recommendation(name: str, at: float) -> Plan:
        clone = CloneFromTemplate(business="web", vm=name, host=host, reason=f"load at {at}")
        return Plan.build([clone], created_at=at, snapshot_at=at)

    first = folder.export(recommendation("web-101", now[0]))
    for i in range(1, 30):  # one cycle every 10 s, each naming a new clone
        now[0] += 10
        assert folder.export(recommendation(f"web-{101 + i}", now[0])) == first
    assert len(list((tmp_path / "plans").glob("plan-*.json"))) == 1
    now[0] += 300
    assert folder.export(recommendation("web-200", now[0])) != first  # refreshed, not expired
    old = tmp_path / "plans" / Path(first).name
    os.utime(old, (now[0] - 4000, now[0] - 4000))
    now[0] += 61
    folder.export(recommendation("web-201", now[0]))
    assert not old.exists()
    assert len(list((tmp_path / "plans").glob("plan-*.json"))) == 1
    files = list((tmp_path / "plans").glob("plan-*.json"))
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_drain_in_recommend_mode_migrates_instead_of_only_recommending() -> None:
    run = Run(
        web().model_copy(update={"mode": "recommend"}), trace(np.full(3, 0.2)), instances=2
    ).step()
    host = next(vm.host for vm in run.fleet.vms.values() if vm.business == "web")
    run.controls.controls = Controls(cordoned=frozenset({host}), draining=frozenset({host}))
    result = run.cycle.run_once(float(run.times[-1]) + STEP_S, generation=3)
    assert result.executed is not None
    moves = [a for a in result.executed.actions if isinstance(a, LiveMigrate)]
    assert moves and all(a.source == host for a in moves)
    assert all(vm.host != host for vm in run.fleet.vms.values())
    record(
        "safety",
        "drain of a recommend-mode business",
        injected="`autoscaler drain HOST` on a host of a business in recommend mode",
        behaviour=f"{len(moves)} VM(s) live-migrated off {host} in the next cycle (a drain is an"
        " operator's order, not a recommendation)",
        lost="nothing",
    )


def test_actions_on_vms_without_a_valid_stamp_are_only_reported() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 4)
    web_policy = policy("web", mode="auto", instances={"min": 1, "max": 10})
    host = fleet.vms[0].host
    drain = Controls(cordoned=frozenset({host}), draining=frozenset({host}))
    owned = decide(fleet.snapshot(web_policy), {"web": web_policy}, drain, DecisionState(), NOW)
    assert [a.kind for a in owned.plan.actions] == ["live_migrate"]
    fleet.vms[:] = [vm.model_copy(update={"owned": False}) for vm in fleet.vms]
    foreign = decide(fleet.snapshot(web_policy), {"web": web_policy}, drain, DecisionState(), NOW)
    assert foreign.plan.actions == ()
    assert any("adopt" in note and fleet.vms[0].name in note for note in foreign.notes)
