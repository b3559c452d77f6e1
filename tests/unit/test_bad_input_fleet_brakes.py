"""Fleet-wide brakes (``policies.brakes``) on snapshots from the small builders, no mocks.

A broken metrics pipeline (many businesses collapsing in one step, every VM at exactly zero
CPU) freezes retires and live migrations while scale-up goes on; one business going quiet alone
is not a freeze; the per-minute cap holds across businesses and keeps the most important
actions. Each test records its reliability row.
"""

from __future__ import annotations

from autoscaler.model import (
    Action,
    CloneFromTemplate,
    Controls,
    LiveMigrate,
    Retire,
    Scope,
    SignalName,
)
from policies.brakes import BrakeSettings, importance
from policies.decide import decide
from policies.decision import Decision
from policies.schema import BusinessPolicy
from policies.state import DecideSettings, DecisionState
from tests.reliability import record
from tests.unit.policies.builders import NOW, Fleet, history, policy

pytest_plugins = ["tests.reliability_plugin"]

STEP_S = 60.0
FAILING_RACK = "ra-d1-k1"
BUSY = [1.0] * 30
COLLAPSED = BUSY + [0.02] * 12  # 12 minutes low: past web's 10-minute stabilisation window
QUIET = [0.02] * 42


def _policies(recommend: frozenset[str] = frozenset()) -> dict[str, BusinessPolicy]:
    return {
        b: policy(
            b, instances={"min": 1, "max": 20}, mode="recommend" if b in recommend else "auto"
        )
        for b in ("web", "api", "cache")
    }


def _fleet() -> Fleet:
    """web and api quiet now (a retire each), web partly on a failing rack (migrations),
    cache saturated (clones)."""
    fleet = Fleet(hosts_per_rack=2)
    fleet.add_vms("web", 2, utilisation=0.02, rack=FAILING_RACK)
    fleet.add_vms("web", 4, utilisation=0.02, rack="rb-d1-k1")
    fleet.add_vms("api", 6, utilisation=0.02, rack="rb-d1-k2")
    fleet.add_vms("cache", 2, utilisation=0.95, rack="ra-d1-k2")
    fleet.signal(Scope.RACK, FAILING_RACK, SignalName.CEPH_OSDS_UP, 0)
    fleet.signal(Scope.RACK, FAILING_RACK, SignalName.CEPH_OSDS_TOTAL, 2)
    return fleet


def _decide(
    fleet: Fleet,
    demand: dict[str, list[float]],
    *,
    brakes: BrakeSettings | None = None,
    recent: dict[str, tuple[float, ...]] | None = None,
    recommend: frozenset[str] = frozenset(),
) -> Decision:
    policies = _policies(recommend)
    state = DecisionState(
        demand={b: history(v, step_s=STEP_S) for b, v in demand.items()},
        recent_actions=recent or {},
        settings=DecideSettings(brakes=brakes or BrakeSettings()),
    )
    return decide(fleet.snapshot(*policies.values()), policies, Controls(), state, NOW)


def _of(decision: Decision, kind: type) -> list[Action]:
    return [a for a in decision.plan.actions if isinstance(a, kind)]


def test_a_fleet_wide_collapse_freezes_retires_and_migrations_but_not_scale_up() -> None:
    """Demand of most businesses collapsing in one step (a broken metrics source)."""
    steady = _decide(_fleet(), {"web": QUIET, "api": QUIET, "cache": [1.9] * 42})
    assert steady.freeze is None
    assert _of(steady, Retire) and _of(steady, LiveMigrate) and _of(steady, CloneFromTemplate)

    collapsed = _decide(_fleet(), {"web": COLLAPSED, "api": COLLAPSED, "cache": [1.9] * 42})
    assert collapsed.freeze is not None
    assert "2 of 3 businesses (api, web)" in collapsed.freeze
    assert not _of(collapsed, Retire)
    assert not _of(collapsed, LiveMigrate)
    assert len(_of(collapsed, CloneFromTemplate)) == len(_of(steady, CloneFromTemplate))
    assert any(r.startswith("frozen: ") for r in collapsed.reasons["web"])
    record(
        "bad-input",
        "demand of most businesses collapses in one step",
        injected="web and api demand from 1.0 to 0.02 cores in one step and low for 12 min"
        " (past the scale-down window); web on a failing rack; cache saturated",
        behaviour=f"frozen ({collapsed.freeze}); no retire, no migration;"
        f" cache still got {len(_of(collapsed, CloneFromTemplate))} clone(s)",
        lost="nothing: no VM retired or moved on the broken reading",
    )


def test_every_vm_reporting_zero_cpu_freezes_retires_and_migrations() -> None:
    """A source reporting zero CPU for every VM while demand was there before."""
    fleet = _fleet()
    fleet.vms[:] = [vm.model_copy(update={"cpu_utilisation": 0.0}) for vm in fleet.vms]
    decision = _decide(fleet, {"web": QUIET, "api": QUIET, "cache": [1.9] * 42})
    assert decision.freeze is not None and "reports 0 CPU" in decision.freeze
    assert not _of(decision, Retire) and not _of(decision, LiveMigrate)
    record(
        "bad-input",
        "every VM reports 0 CPU",
        injected="all 14 VMs of 3 businesses at exactly 0 CPU, demand history not zero",
        behaviour=f"frozen ({decision.freeze}); no retire, no migration",
        lost="nothing",
    )


def test_one_business_going_quiet_alone_is_not_a_freeze() -> None:
    """One business's demand collapsing while the others hold is that business's own night."""
    decision = _decide(_fleet(), {"web": COLLAPSED, "api": QUIET, "cache": [1.9] * 42})
    assert decision.freeze is None
    assert [a.business for a in _of(decision, Retire)].count("web") == 1
    assert _of(decision, LiveMigrate)
    record(
        "bad-input",
        "one business going quiet alone",
        injected="web demand from 1.0 to 0.02 cores in one step; api and cache steady",
        behaviour="not frozen: web scales in after its window, the failing rack is evacuated",
        lost="nothing",
    )


def test_the_per_minute_cap_holds_across_businesses_and_keeps_the_most_important() -> None:
    """More actions than the fleet-wide per-minute cap allows, with actions of other businesses
    done in the last minute."""
    demand = {"web": QUIET, "api": QUIET, "cache": [1.9] * 42}
    free = _decide(_fleet(), demand, brakes=BrakeSettings(max_actions_per_minute=1000))
    recent = {"web": (NOW - 10, NOW - 200), "api": (NOW - 30,), "cache": (NOW - 59,)}
    cap = 5
    capped = _decide(
        _fleet(), demand, brakes=BrakeSettings(max_actions_per_minute=cap), recent=recent
    )
    room = cap - 3  # three of the four done actions are within the last minute
    assert len(free.plan.actions) > room
    assert len(capped.plan.actions) == room
    assert len(capped.held) == len(free.plan.actions) - room
    kept = [importance(a) for a in capped.plan.actions]
    held = [importance(a) for a in free.plan.actions if a not in capped.plan.actions]
    assert max(kept) <= min(held)
    assert all(isinstance(a, LiveMigrate) for a in capped.plan.actions)  # the evacuation first
    assert all("3 done in the last minute, 5 a minute" in h for h in capped.held)
    held_businesses = {h.rsplit(" of ", 1)[1] for h in capped.held}
    assert {"api", "cache"} <= held_businesses
    record(
        "bad-input",
        "more actions than the fleet-wide per-minute cap",
        injected=f"{len(free.plan.actions)} actions planned over 3 businesses, 3 done in the"
        f" last minute, cap {cap} a minute",
        behaviour=f"{room} kept (the failing rack's migrations), {len(capped.held)} held and"
        " named in the Decision (scale-up before scale-down)",
        lost="nothing: held actions are decided again next cycle",
    )


def test_a_recommend_business_takes_no_room_in_the_per_minute_cap() -> None:
    """Actions of a business in recommend mode are exported, not executed: never held, and
    they leave the cap's room to the auto businesses."""
    demand = {"web": QUIET, "api": QUIET, "cache": [1.9] * 42}
    brakes = BrakeSettings(max_actions_per_minute=3)
    auto = _decide(_fleet(), demand, brakes=brakes)
    cache_recommends = _decide(_fleet(), demand, brakes=brakes, recommend=frozenset({"cache"}))
    assert any(h.endswith(" of cache") for h in auto.held)
    assert not any(h.endswith(" of cache") for h in cache_recommends.held)
    kept_auto = [a for a in cache_recommends.plan.actions if a.business != "cache"]
    assert len(kept_auto) == 3
    assert len(_of(cache_recommends, CloneFromTemplate)) == len(
        [a for a in _decide(_fleet(), demand).plan.actions if isinstance(a, CloneFromTemplate)]
    )
    record(
        "bad-input",
        "a recommend business under the per-minute cap",
        injected="cap 3 a minute; cache's clones in recommend mode, web and api in auto",
        behaviour="cache's recommendations exported in full, never held; web and api keep"
        " the 3 places",
        lost="nothing",
    )
