"""Scheduled backups: which VMs are due, which wait and why, and what is pruned."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.model import (
    BackupCatalogue,
    BackupInstance,
    BackupRecord,
    Controls,
    HotAddVcpu,
    LiveMigrate,
    Plan,
    VmState,
    check_name,
)
from policies.backups import (
    BACKUPS_PER_CYCLE,
    RETRY_AFTER_S,
    backup_id,
    backups_to_prune,
    latest_slot,
    plan_backups,
)
from policies.brakes import BrakeSettings, fleet_cap
from policies.decide import decide
from policies.scaling import Budget
from policies.schema import Backup, BusinessPolicy
from policies.state import DecideSettings, DecisionState
from tests.unit.policies.builders import NOW, Fleet, history, policy

# NOW is Wednesday 2024-03-06 12:00 UTC: the 03:00 slot of that day is 9 h before.
SLOT = NOW - 9 * 3600
DAILY = {"every": "1d", "keep": 7, "at": "03:00", "target": {"kind": "pool", "pool": "backups"}}


def backed_up(
    business: str = "web", *, scaling: dict[str, Any] | None = None, **backup: Any
) -> BusinessPolicy:
    """An auto business backed up daily at 03:00 (``backup`` overrides DAILY's fields)."""
    sections: dict[str, Any] = {} if scaling is None else {"scaling": scaling}
    return policy(business, mode="auto", backup={**DAILY, **backup}, **sections)


def catalogue(business: str = "web", **last: float | None) -> BackupCatalogue:
    """``vm=time`` of each VM's last successful backup (``None``: a record without one)."""
    return BackupCatalogue(
        business=business,
        listed_at=NOW - 10,
        records=tuple(
            BackupRecord(vm=vm.replace("_", "-"), last_success_at=t, count=1 if t else 0)
            for vm, t in last.items()
        ),
    )


def fleet_with(count: int, cat: BackupCatalogue | None, **vm: Any) -> Fleet:
    fleet = Fleet()
    fleet.add_vms("web", count, utilisation=0.5)
    if vm:
        fleet.vms[0] = fleet.vms[0].model_copy(update=vm)
    if cat is not None:
        fleet.backups.append(cat)
    return fleet


def plan_for(
    fleet: Fleet,
    web: BusinessPolicy,
    *,
    left: int | None = None,
    now: float = NOW,
    **kw: Any,
) -> tuple[list[BackupInstance], list[str]]:
    budget = Budget(left=web.scaling.max_actions_per_hour if left is None else left)
    return plan_backups(fleet.snapshot(web), web, budget, now, **kw)


NO_CONTROLS = Controls()


def _decide(
    fleet: Fleet, web: BusinessPolicy, controls: Controls = NO_CONTROLS, **state: Any
) -> Plan:
    # Demand as the VMs measure it: steady, so that scaling plans nothing of its own.
    busy = sum(vm.busy_cores or 0.0 for vm in fleet.vms)
    demand = DecisionState(demand={"web": history([busy] * 12)}, **state)
    return decide(fleet.snapshot(web), {"web": web}, controls, demand, NOW).plan


# -- the schedule -------------------------------------------------------------------------------


def test_backup_id_names_its_slot_in_utc_and_is_a_safe_name() -> None:
    slot = 1_796_094_000.0  # 2026-12-01 03:00 UTC
    assert backup_id(slot) == "b20261201t0300"
    assert check_name(backup_id(slot)) == "b20261201t0300"
    assert backup_id(slot) < backup_id(slot + 86400)  # ids sort by slot


def test_the_latest_slot_follows_the_at_phase() -> None:
    daily = Backup.model_validate(DAILY)
    assert latest_slot(daily, NOW) == SLOT
    assert latest_slot(daily, SLOT) == SLOT  # a slot starts at its instant
    assert latest_slot(daily, SLOT - 1) == SLOT - 86400  # 02:59:59: still yesterday's
    six_hourly = Backup.model_validate({**DAILY, "every": "6h"})
    assert latest_slot(six_hourly, NOW) == NOW - 3 * 3600  # 09:00


def test_without_at_the_schedule_starts_at_midnight_utc() -> None:
    midnight = Backup.model_validate({**DAILY, "at": None})
    assert latest_slot(midnight, NOW) == NOW - 12 * 3600


# -- due or not --------------------------------------------------------------------------------


def test_a_vm_backed_up_before_the_latest_slot_is_due_with_its_reason_and_facts() -> None:
    fleet = fleet_with(1, catalogue(web_000=SLOT - 1))
    [action], waits = plan_for(fleet, backed_up())
    assert waits == []
    assert action.key == "backup/web-000/b20240306t0300"
    assert action.host == fleet.vms[0].host and action.hosts == (action.host,)
    assert action.reason == (
        "web: back up web-000 to pool backups for the slot of 2024-03-06 03:00 UTC"
        " (last at 2024-03-06 02:59 UTC; every 1d, keep 7)"
    )
    assert action.facts["slot"] == SLOT and action.facts["last_backup_at"] == SLOT - 1
    assert action.facts["target_kind"] == "pool" and action.facts["target"] == "backups"
    assert action.facts["keep"] == 7


def test_a_vm_backed_up_at_or_after_the_latest_slot_is_not_due() -> None:
    assert plan_for(fleet_with(1, catalogue(web_000=SLOT)), backed_up()) == ([], [])
    assert plan_for(fleet_with(1, catalogue(web_000=SLOT + 60)), backed_up()) == ([], [])


def test_the_next_slot_makes_it_due_again_at_its_first_second() -> None:
    fleet = fleet_with(1, catalogue(web_000=SLOT + 60))
    assert plan_for(fleet, backed_up(), now=SLOT + 86400 - 1)[0] == []
    [action], _ = plan_for(fleet, backed_up(), now=SLOT + 86400)
    assert action.backup_id == "b20240307t0300"


def test_the_at_phase_decides_the_slot_a_backup_is_measured_against() -> None:
    fleet = fleet_with(1, catalogue(web_000=NOW - 2 * 3600))  # 10:00 today
    assert plan_for(fleet, backed_up(at="03:00"))[0] == []
    [action], _ = plan_for(fleet, backed_up(at="11:00"))
    assert action.backup_id == "b20240306t1100"


def test_a_vm_without_any_backup_on_a_listed_catalogue_is_due() -> None:
    [action], _ = plan_for(fleet_with(1, catalogue()), backed_up())
    assert "never backed up" in action.reason
    assert "last_backup_at" not in action.facts


def test_an_unknown_catalogue_plans_no_backup_and_says_so() -> None:
    actions, waits = plan_for(fleet_with(3, None), backed_up())
    assert actions == []
    assert waits and "not listed" in waits[0] and "unknown" in waits[0]


def test_a_business_without_a_backup_policy_plans_none_and_says_nothing() -> None:
    assert plan_for(fleet_with(2, catalogue()), policy("web")) == ([], [])


def test_a_catalogue_listed_before_the_last_action_waits_for_a_newer_listing() -> None:
    actions, waits = plan_for(fleet_with(1, catalogue()), backed_up(), last_acted_at=NOW - 5)
    assert actions == [] and "waiting for a newer listing" in waits[0]
    assert plan_for(fleet_with(1, catalogue()), backed_up(), last_acted_at=NOW - 60)[0]


# -- when due VMs wait -------------------------------------------------------------------------


def test_no_backup_in_the_business_maintenance_window() -> None:
    window = [{"days": ["wed"], "start": "11:00", "duration_minutes": 120}]
    web = policy("web", mode="auto", backup=DAILY, maintenance=window)
    actions, waits = plan_for(fleet_with(2, catalogue()), web)
    assert actions == []
    assert waits == [
        "backups: 2 VM(s) due for the slot of 2024-03-06 03:00 UTC wait: in a maintenance window"
    ]


def test_a_paused_business_gets_no_backup() -> None:
    fleet = fleet_with(2, catalogue())
    plan = _decide(fleet, backed_up(), Controls(paused=frozenset({"web"})))
    assert not [a for a in plan.actions if isinstance(a, BackupInstance)]


def test_a_recommend_business_gets_its_backup_planned_for_approval_not_capped() -> None:
    fleet = fleet_with(2, catalogue())
    web = policy("web", mode="recommend", backup=DAILY)
    plan = _decide(fleet, web)
    backups = [a for a in plan.actions if isinstance(a, BackupInstance)]
    # The cycle exports a recommend business's actions for approval instead of running them.
    assert len(backups) == 1
    assert backups[0].vm == "web-000"


@pytest.mark.parametrize(
    ("update", "why"),
    [
        ({"state": VmState.MIGRATING}, "migrating"),
        ({"draining": True}, "being retired"),
        ({"ready": False}, "not ready"),
        ({"owned": False}, "no ownership stamp"),
        ({"state": VmState.SHUTOFF}, "shutoff"),
    ],
)
def test_a_vm_that_is_moving_retiring_or_not_running_is_not_backed_up(
    update: dict[str, Any], why: str
) -> None:
    actions, waits = plan_for(fleet_with(1, catalogue(), **update), backed_up())
    assert actions == []
    assert f"web-000: {why}" in waits[0]


def test_a_vm_on_a_drained_host_or_with_another_action_waits_and_the_next_one_goes() -> None:
    fleet = fleet_with(2, catalogue())
    first = fleet.vms[0]
    [action], waits = plan_for(fleet, backed_up(), draining_hosts={first.host})
    assert action.vm == "web-001" and f"its host {first.host} is drained" in waits[0]
    [action], waits = plan_for(fleet, backed_up(), busy={"web-000"})
    assert action.vm == "web-001" and "another action in this plan" in waits[0]


def test_a_drained_host_gets_migrations_in_the_plan_and_no_backup() -> None:
    fleet = fleet_with(1, catalogue())
    host = fleet.vms[0].host
    plan = _decide(fleet, backed_up(), Controls(draining=frozenset({host})))
    assert [a.kind for a in plan.actions] == ["live_migrate"]
    assert isinstance(plan.actions[0], LiveMigrate)


def test_a_recently_failed_backup_waits_and_does_not_hold_the_others_back() -> None:
    failed = BackupRecord(vm="web-000", last_success_at=None, last_failure_at=NOW - 60)
    cat = BackupCatalogue(business="web", listed_at=NOW - 10, records=(failed,))
    [action], waits = plan_for(fleet_with(2, cat), backed_up())
    assert action.vm == "web-001"
    assert "web-000: failed at" in waits[0]
    long_ago = failed.model_copy(update={"last_failure_at": NOW - RETRY_AFTER_S})
    retried = cat.model_copy(update={"records": (long_ago,)})
    [action], _ = plan_for(fleet_with(2, retried), backed_up())
    assert action.vm == "web-000"


# -- caps --------------------------------------------------------------------------------------


def test_one_backup_per_business_per_cycle_the_longest_waiting_first() -> None:
    cat = catalogue(web_000=SLOT - 3600, web_001=SLOT - 7200, web_003=SLOT - 60)
    actions, waits = plan_for(fleet_with(4, cat), backed_up())
    assert BACKUPS_PER_CYCLE == 1
    # web-002 was never backed up: it has waited longest; then web-001, web-000, web-003.
    assert [a.vm for a in actions] == ["web-002"]
    assert waits == [
        "backups: more VM(s) wait: web-001: 1 backup(s) per cycle; web-000: 1 backup(s) per"
        " cycle; web-003: 1 backup(s) per cycle"
    ]


def test_backups_leave_half_the_hourly_cap_to_scaling() -> None:
    web = backed_up(scaling={"max_actions_per_hour": 4})
    fleet = fleet_with(1, catalogue())
    actions, waits = plan_for(fleet, web, left=2)
    assert actions == [] and "2 action(s) left this hour, 2 kept for scaling" in waits[0]
    budget = Budget(left=3)
    [_] = plan_backups(fleet.snapshot(web), web, budget, NOW)[0]
    assert budget.left == 2  # a backup counts against the cap like any action


def test_the_hourly_cap_is_read_from_the_actions_done_in_the_last_hour() -> None:
    web = backed_up(scaling={"max_actions_per_hour": 4})
    fleet = fleet_with(1, catalogue())
    done = {"web": (NOW - 600, NOW - 1200)}
    plan = _decide(fleet, web, recent_actions=done)
    assert not [a for a in plan.actions if isinstance(a, BackupInstance)]
    plan = _decide(fleet, web, recent_actions={"web": (NOW - 600,)})
    assert [a.kind for a in plan.actions] == ["backup"]


def test_scaling_comes_first_in_the_plan_and_takes_the_cap_before_backups() -> None:
    web = backed_up(scaling={"max_actions_per_hour": 2, "horizontal": {"max_step_up": 1}})
    fleet = Fleet()
    fleet.add_vms("web", 2, utilisation=0.95)
    fleet.backups.append(catalogue())
    demand = DecisionState(demand={"web": history([0.475] * 12)})
    plan = decide(fleet.snapshot(web), {"web": web}, Controls(), demand, NOW).plan
    assert plan.actions and not [a for a in plan.actions if isinstance(a, BackupInstance)]
    roomy = backed_up(scaling={"max_actions_per_hour": 60, "horizontal": {"max_step_up": 1}})
    plan = decide(fleet.snapshot(roomy), {"web": roomy}, Controls(), demand, NOW).plan
    kinds = [a.kind for a in plan.actions]
    assert kinds[-1] == "backup" and len(kinds) > 1
    # The VM the plan already acts on (a hot-add) is not the one backed up.
    acted = {a.vm for a in plan.actions if isinstance(a, HotAddVcpu)}
    assert plan.actions[-1].vm not in acted


def test_backups_are_the_first_to_wait_under_the_fleet_wide_cap() -> None:
    fleet = fleet_with(2, catalogue())
    host = fleet.vms[0].host
    grow = HotAddVcpu(business="web", vm="web-001", host=host, vcpus=2, reason="load")
    backup = BackupInstance(business="web", vm="web-000", host=host, backup_id="b1", reason="r")
    kept, held = fleet_cap([backup, grow], 0, BrakeSettings(max_actions_per_minute=1))
    assert kept == [grow] and held == [backup]


def test_decide_explains_waiting_backups_in_the_business_reasons() -> None:
    fleet = fleet_with(1, None)
    decision = decide(
        fleet.snapshot(backed_up()),
        {"web": backed_up()},
        Controls(),
        DecisionState(demand={"web": history([0.25] * 12)}, settings=DecideSettings()),
        NOW,
    )
    assert any("backup target was not listed" in r for r in decision.reasons["web"])


# -- retention ---------------------------------------------------------------------------------


def test_prune_keeps_the_newest_scheduled_backups() -> None:
    ids = ["b20240301t0300", "b20240302t0300", "b20240303t0300", "b20240304t0300"]
    assert backups_to_prune(ids, 2) == ["b20240301t0300", "b20240302t0300"]
    assert backups_to_prune(ids, 4) == []
    assert backups_to_prune(ids, 7) == []


def test_prune_sorts_the_ids_itself_and_never_touches_ids_it_did_not_make() -> None:
    ids = ["b20240304t0300", "before-upgrade", "b20240301t0300", "b20240303t0300"]
    assert backups_to_prune(ids, 1) == ["b20240301t0300", "b20240303t0300"]


def test_prune_refuses_to_keep_nothing() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        backups_to_prune(["b20240301t0300"], 0)
