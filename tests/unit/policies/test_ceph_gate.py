"""The Ceph gate on clones: no clone of a business on RBD into a near-full pool, while PGs are
inactive, or while Ceph's health is unknown; the reason is stated; local disks, hot-adds and
retires are not affected; a rack whose OSDs are down still fails."""

from __future__ import annotations

from typing import Any

from autoscaler.model import (
    CloneFromTemplate,
    Controls,
    Health,
    HotAddVcpu,
    LiveMigrate,
    Retire,
    Scope,
    SignalName,
    Stale,
)
from policies.decide import decide
from policies.decision import Decision
from policies.rack_health import score_racks
from policies.schema import BusinessPolicy
from policies.state import DecideSettings, DecisionState
from policies.storage import StorageSettings
from tests.unit.policies.builders import NOW, Fleet, history, policy

RISING = [0.3] * 12 + [0.425]
"""Demand of two VMs at 85%: enough for clones (see test_decide's rising-load test)."""


def _template(business: str, storage: dict[str, str]) -> dict[str, Any]:
    return {
        "image": business if storage["kind"] == "rbd" else f"{business}.qcow2",
        "storage": storage,
        **({"version": "v1"} if storage["kind"] == "rbd" else {}),
        "vcpus": {"now": 1, "max": 4},
        "memory_mib": {"now": 256, "max": 1024},
        "cpu_quota": 0.25,
    }


def _rbd(business: str = "web", pool: str = "images", **overrides: Any) -> BusinessPolicy:
    storage = {"kind": "rbd", "pool": pool, "user": "autoscaler"}
    return policy(business, template=_template(business, storage), **overrides)


def _ceph(
    fleet: Fleet, *, used: float = 0.4, inactive: float = 0, pool: str = "images", age_s: float = 0
) -> None:
    fleet.signal(Scope.POOL, pool, SignalName.CEPH_POOL_PERCENT_USED, used, age_s)
    fleet.signal(Scope.CLUSTER, "ceph", SignalName.CEPH_PGS_INACTIVE, inactive, age_s)


def _decide(
    fleet: Fleet,
    *policies: BusinessPolicy,
    demand: list[float] = RISING,
    settings: DecideSettings | None = None,
) -> Decision:
    state = DecisionState(
        demand={p.business: history(demand) for p in policies},
        settings=settings or DecideSettings(),
    )
    snapshot = fleet.snapshot(*policies)
    return decide(snapshot, {p.business: p for p in policies}, Controls(), state, NOW)


def _clones(decision: Decision, business: str = "web") -> list[CloneFromTemplate]:
    return [
        a
        for a in decision.plan.actions
        if isinstance(a, CloneFromTemplate) and a.business == business
    ]


def _refusals(decision: Decision, business: str = "web") -> list[str]:
    return [r for r in decision.reasons[business] if r.startswith(f"no clone of {business}")]


def test_a_healthy_pool_and_active_pgs_let_an_rbd_business_clone() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.4, inactive=0)
    decision = _decide(fleet, web)
    assert _clones(decision)
    assert not _refusals(decision)


def test_a_near_full_pool_blocks_an_rbd_clone_and_the_reason_says_how_full() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.91)
    decision = _decide(fleet, web)
    assert not _clones(decision)
    (why,) = _refusals(decision)
    assert why.startswith("no clone of web: pool images is 91% full (near-full at 85%); ")
    assert "instance(s) wanted" in why


def test_the_near_full_ratio_is_a_fleet_setting_and_reaching_it_blocks() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.91)
    lenient = DecideSettings(storage=StorageSettings(pool_nearfull_ratio=0.95))
    assert _clones(_decide(fleet, web, settings=lenient))
    at = DecideSettings(storage=StorageSettings(pool_nearfull_ratio=0.91))
    assert not _clones(_decide(fleet, web, settings=at))
    assert StorageSettings().pool_nearfull_ratio == 0.85  # Ceph's mon_osd_nearfull_ratio


def test_inactive_pgs_block_an_rbd_clone_and_the_reason_counts_them() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.4, inactive=3)
    decision = _decide(fleet, web)
    assert not _clones(decision)
    (why,) = _refusals(decision)
    assert why.startswith("no clone of web: 3 PGs inactive")


def test_a_full_pool_and_inactive_pgs_are_both_stated() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.9, inactive=1)
    (why,) = _refusals(_decide(fleet, web))
    assert "pool images is 90% full" in why and "1 PG inactive" in why


def test_a_local_business_is_not_affected_by_a_full_pool_or_inactive_pgs() -> None:
    fleet = Fleet()
    web = policy("web")  # storage local (the default)
    db = _rbd("db")
    fleet.add_vms("web", 2, utilisation=0.85)
    fleet.add_vms("db", 2, utilisation=0.85)
    _ceph(fleet, used=0.99, inactive=7)
    decision = _decide(fleet, web, db)
    assert _clones(decision, "web")
    assert not _refusals(decision, "web")
    assert not _clones(decision, "db")
    assert _refusals(decision, "db")


def test_a_local_business_clones_with_no_ceph_data_at_all() -> None:
    fleet = Fleet()
    web = policy("web")
    fleet.add_vms("web", 2, utilisation=0.85)
    decision = _decide(fleet, web)
    assert _clones(decision)
    assert not _refusals(decision)


def test_hot_add_still_happens_when_an_rbd_clone_is_refused() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.95)  # saturated, and the forecast wants a clone too
    _ceph(fleet, used=0.4)
    rising = [0.3] * 12 + [0.475]
    allowed = _decide(fleet, web, demand=rising)
    assert _clones(allowed)
    assert [a for a in allowed.plan.actions if isinstance(a, HotAddVcpu)]
    full = Fleet()
    full.add_vms("web", 2, utilisation=0.95)
    _ceph(full, used=0.91)
    decision = _decide(full, web, demand=rising)
    assert not _clones(decision)
    hot = [a for a in decision.plan.actions if isinstance(a, HotAddVcpu)]
    assert hot and all(a.vcpus > 1 for a in hot)
    (why,) = _refusals(decision)
    assert "1 instance(s) wanted: p99 forecast" in why


def test_stale_ceph_data_blocks_an_rbd_clone_as_health_unknown_with_the_reason() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    # What a collector whose mon did not answer leaves: its scopes stale, no figures.
    fleet.stale += [
        Stale(scope=Scope.CLUSTER, target="ceph", source="ceph", last_good=NOW - 60),
        Stale(
            scope=Scope.POOL,
            target="images",
            source="ceph",
            last_good=NOW - 60,
            reason="ceph status: timed out",
        ),
    ]
    (why,) = _refusals(_decide(fleet, web))
    assert why.startswith(
        "no clone of web: Ceph health unknown (pool images stale: ceph status: timed out;"
        " no fresh PG states)"
    )
    assert not _clones(_decide(fleet, web))


def test_a_stale_pool_is_unknown_even_with_a_figure_in_the_snapshot() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, used=0.1)
    fleet.stale.append(Stale(scope=Scope.POOL, target="images", source="ceph", last_good=None))
    (why,) = _refusals(_decide(fleet, web))
    assert "Ceph health unknown (pool images stale" in why


def test_no_ceph_figures_or_figures_too_old_block_an_rbd_clone_as_health_unknown() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 2, utilisation=0.85)
    (why,) = _refusals(_decide(fleet, web))
    assert why.startswith(
        "no clone of web: Ceph health unknown (no fresh figures for pool images;"
        " no fresh PG states)"
    )
    old = Fleet()
    old.add_vms("web", 2, utilisation=0.85)
    _ceph(old, used=0.1, age_s=StorageSettings().max_signal_age_s + 1)
    assert not _clones(_decide(old, web))
    assert _refusals(_decide(old, web))


def test_a_pool_ceph_does_not_report_is_unknown() -> None:
    fleet = Fleet()
    web = _rbd(pool="vms")
    fleet.add_vms("web", 2, utilisation=0.85)
    _ceph(fleet, pool="images")
    (why,) = _refusals(_decide(fleet, web))
    assert "no fresh figures for pool vms" in why


def test_retires_are_not_blocked_and_no_refusal_is_stated_when_no_clone_is_wanted() -> None:
    fleet = Fleet()
    web = _rbd()
    fleet.add_vms("web", 6, utilisation=0.1)
    _ceph(fleet, used=0.99, inactive=4)
    decision = _decide(fleet, web, demand=[0.15] * 24)
    assert [a for a in decision.plan.actions if isinstance(a, Retire)]
    assert not _refusals(decision)


def test_a_rack_whose_osds_are_down_still_fails_and_is_evacuated_on_rbd() -> None:
    fleet = Fleet()
    web = _rbd()
    rack = "ra-d1-k1"
    fleet.add_vms("web", 2, utilisation=0.3, rack=rack)
    fleet.add_vms("web", 2, utilisation=0.3, rack="rb-d1-k1")
    fleet.signal(Scope.RACK, rack, SignalName.CEPH_OSDS_UP, 0)
    fleet.signal(Scope.RACK, rack, SignalName.CEPH_OSDS_TOTAL, 2)
    _ceph(fleet, used=0.4, inactive=0)
    health = score_racks(fleet.snapshot(web), {}, NOW, DecideSettings().rack_health)
    assert health[rack].health is Health.FAILING
    plan = _decide(fleet, web, demand=[0.3] * 12).plan
    assert {a.vm for a in plan.actions if isinstance(a, LiveMigrate)} == {"web-000", "web-001"}
