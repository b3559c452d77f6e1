from __future__ import annotations

from autoscaler.model import Health, NicModel
from policies.placement import PlacementView
from policies.rack_health import RackHealth
from tests.unit.policies.builders import Fleet, policy


def _health(fleet: Fleet, **verdicts: Health) -> dict[str, RackHealth]:
    return {
        r: RackHealth(r, verdicts.get(r.replace("-", "_"), Health.HEALTHY), 1.0, ())
        for r in fleet.rack_names
    }


def test_clones_spread_over_racks_before_doubling_up() -> None:
    fleet = Fleet()
    web = policy("web")
    view = PlacementView(fleet.snapshot(web), _health(fleet))
    racks = []
    for i in range(4):
        where = view.choose(web, 0.25, 256)
        assert where is not None
        view.add_clone(f"web-new{i}", where.host, "web", 0.25, 256)
        racks.append(where.rack)
    assert sorted(racks) == sorted(fleet.rack_names)


def test_datacenter_spread_alternates_datacenters() -> None:
    fleet = Fleet()
    api = policy("api", placement={"spread": "datacenter"})
    view = PlacementView(fleet.snapshot(api), _health(fleet))
    first = view.choose(api, 0.25, 256)
    assert first is not None
    view.add_clone("api-a", first.host, "api", 0.25, 256)
    second = view.choose(api, 0.25, 256)
    assert second is not None
    assert second.datacenter != first.datacenter


def test_failing_unknown_racks_cordoned_and_unreachable_hosts_are_never_chosen() -> None:
    fleet = Fleet(hosts_per_rack=2)
    fleet.cordoned = {"ra-d1-k2-h1", "ra-d1-k2-h2"}
    fleet.unreachable = {"rb-d1-k1-h1", "rb-d1-k1-h2"}
    web = policy("web")
    health = _health(fleet, ra_d1_k1=Health.FAILING, rb_d1_k2=Health.UNKNOWN)
    view = PlacementView(fleet.snapshot(web), health)
    assert view.choose(web, 0.25, 256) is None


def test_the_per_rack_maximum_of_the_policy_is_respected() -> None:
    fleet = Fleet(racks_per_dc=1)
    web = policy("web", placement={"max_per_rack": 1})
    fleet.add_vms("web", 1, rack="ra-d1-k1")
    view = PlacementView(fleet.snapshot(web), _health(fleet))
    where = view.choose(web, 0.25, 256)
    assert where is not None and where.rack == "rb-d1-k1"
    view.add_clone("web-x", where.host, "web", 0.25, 256)
    assert view.choose(web, 0.25, 256) is None


def test_each_choice_sees_the_room_taken_by_earlier_ones() -> None:
    fleet = Fleet(racks_per_dc=1, hosts_per_rack=1, host_cpus=1)
    web = policy("web")
    view = PlacementView(fleet.snapshot(web), _health(fleet))
    for i in range(8):
        where = view.choose(web, 0.25, 256)
        assert where is not None
        view.add_clone(f"web-{i}", where.host, "web", 0.25, 256)
    assert view.choose(web, 0.25, 256) is None


def test_sr_iov_vms_have_no_migration_destination() -> None:
    fleet = Fleet()
    db = policy("db")
    (vm,) = fleet.add_vms("db", 1, rack="ra-d1-k1", nic=NicModel.SRIOV)
    view = PlacementView(fleet.snapshot(db), _health(fleet))
    assert view.choose(db, vm.capacity_cores, vm.memory_mib, migrating=vm) is None


def test_migrations_go_to_another_healthy_rack() -> None:
    fleet = Fleet()
    web = policy("web")
    (vm,) = fleet.add_vms("web", 1, rack="ra-d1-k1")
    health = _health(fleet, ra_d1_k1=Health.FAILING, ra_d1_k2=Health.DEGRADED)
    view = PlacementView(fleet.snapshot(web), health)
    where = view.choose(web, vm.capacity_cores, vm.memory_mib, migrating=vm)
    assert where is not None and where.rack.startswith("rb-")
