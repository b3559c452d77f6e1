"""The access layer's rules (``policies.access``): which servers a backend should hold, and no
retire while the balancer that must drain it cannot be read."""

from __future__ import annotations

from autoscaler.model import Controls, Retire, Scope, Stale
from autoscaler.model.access import (
    Deregister,
    Register,
    ServerAdmin,
    ServerHealth,
    ServerState,
)
from policies.access import registrations, retire_hold
from policies.decide import decide
from policies.schema import BusinessPolicy
from policies.state import DecideSettings, DecisionState
from tests.unit.policies.builders import NOW, Fleet, access_view, history, policy

ACCESS = {"kind": "haproxy", "balancer": "edge", "port": 8080, "drain_timeout": "20s"}


def _web() -> BusinessPolicy:
    return policy("web", access=ACCESS)


def _server(
    name: str,
    address: str,
    *,
    admin: ServerAdmin = ServerAdmin.READY,
    health: ServerHealth = ServerHealth.UP,
    port: int = 8080,
) -> ServerState:
    return ServerState(name=name, address=address, port=port, admin=admin, health=health)


def test_a_ready_instance_missing_from_its_backend_is_registered_at_its_address() -> None:
    fleet = Fleet()
    a, b = fleet.add_vms("web", 2, addressed=True)
    fleet.access.append(access_view(_server(a.name, str(a.address))))
    (change,) = registrations(fleet.snapshot(_web()))
    assert change == Register("web", "edge", "web", b.name, b.host, str(b.address), 8080)


def test_a_balancer_that_restarted_empty_gets_every_ready_instance_back() -> None:
    fleet = Fleet()
    vms = fleet.add_vms("web", 3, addressed=True)
    fleet.access.append(access_view())
    changes = registrations(fleet.snapshot(_web()))
    assert sorted(c.server for c in changes) == sorted(v.name for v in vms)
    assert all(isinstance(c, Register) for c in changes)


def test_a_server_at_another_address_or_left_draining_is_registered_again() -> None:
    fleet = Fleet()
    a, b, c = fleet.add_vms("web", 3, addressed=True)
    fleet.access.append(
        access_view(
            _server(a.name, "10.9.9.9"),
            _server(b.name, str(b.address), admin=ServerAdmin.DRAIN),
            _server(c.name, str(c.address)),
        )
    )
    assert sorted(c.server for c in registrations(fleet.snapshot(_web()))) == [a.name, b.name]


def test_instances_not_ready_draining_or_without_an_address_are_not_registered() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 1, addressed=True, ready=False)
    fleet.add_vms("web", 1, addressed=False)
    (draining,) = fleet.add_vms("web", 1, addressed=True)
    fleet.vms[-1] = draining.model_copy(update={"draining": True})
    fleet.access.append(access_view())
    assert registrations(fleet.snapshot(_web())) == ()


def test_nothing_is_registered_on_a_stale_or_unread_backend() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, addressed=True)
    assert registrations(fleet.snapshot(_web())) == ()
    fleet.access.append(access_view(stale=True))
    assert registrations(fleet.snapshot(_web())) == ()


def test_a_business_without_an_access_layer_registers_nothing() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 2, addressed=True)
    fleet.access.append(access_view())
    assert registrations(fleet.snapshot(policy("web"))) == ()


def test_a_down_server_with_no_vm_anywhere_is_removed() -> None:
    fleet = Fleet()
    (a,) = fleet.add_vms("web", 1, addressed=True)
    fleet.access.append(
        access_view(
            _server(a.name, str(a.address)),
            _server("web-gone", "10.1.1.99", health=ServerHealth.DOWN),
            _server("web-up-still", "10.1.1.98"),
        )
    )
    (change,) = registrations(fleet.snapshot(_web()))
    assert change == Deregister("web", "edge", "web", "web-gone")


def test_no_server_is_removed_while_a_host_is_stale_it_could_hide_the_vm() -> None:
    fleet = Fleet()
    (a,) = fleet.add_vms("web", 1, addressed=True)
    fleet.stale.append(
        Stale(scope=Scope.HOST, target=a.host, source="libvirt", last_good=None, reason="x")
    )
    fleet.access.append(access_view(_server("web-gone", "10.1.1.99", health=ServerHealth.DOWN)))
    assert not [c for c in registrations(fleet.snapshot(_web())) if isinstance(c, Deregister)]


def _decide(fleet: Fleet, web: BusinessPolicy) -> tuple[int, list[str]]:
    """(retires planned, the reasons that name the access layer)."""
    state = DecisionState(demand={"web": history([0.15] * 24)}, settings=DecideSettings())
    decision = decide(fleet.snapshot(web), {"web": web}, Controls(), state, NOW)
    retires = [a for a in decision.plan.actions if isinstance(a, Retire)]
    return len(retires), [r for r in decision.reasons["web"] if "access layer" in r]


def test_an_idle_business_behind_a_balancer_that_answers_retires() -> None:
    fleet = Fleet()
    vms = fleet.add_vms("web", 6, utilisation=0.1, addressed=True)
    fleet.access.append(access_view(*(_server(v.name, str(v.address)) for v in vms)))
    retires, why = _decide(fleet, _web())
    assert retires > 0 and why == []


def test_no_retire_while_the_balancer_is_stale_and_the_reason_says_so() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 6, utilisation=0.1, addressed=True)
    fleet.access.append(access_view(stale=True))
    retires, (why,) = _decide(fleet, _web())
    assert retires == 0
    assert "edge stale (connection refused)" in why and "no retire" in why


def test_no_retire_before_the_balancer_was_read_at_all() -> None:
    fleet = Fleet()
    fleet.add_vms("web", 6, utilisation=0.1, addressed=True)
    snapshot = fleet.snapshot(_web())
    assert "not read yet" in (retire_hold(snapshot, "web") or "")
    assert retire_hold(fleet.snapshot(policy("web")), "web") is None
