"""The access layer's rules: which servers each backend should hold, and when it holds retires.

Where it sits: pure functions of the Snapshot (no I/O). ``decide()`` asks ``retire_hold`` before
it plans a scale-in: a business whose balancer could not be read gets no retire, since a retire
must drain its server first and nothing is guessed from a stale view. The controller's access
sync asks ``registrations`` every cycle and has ``actuators.access_sync`` apply them: it is
level-triggered, like an endpoints controller, so a clone that became ready, a balancer that
restarted empty (HAProxy's runtime state is not persistent) and a registration cut short all
come right on the next cycle the balancer answers.

Rules:
- a server is wanted for every running, ready, owned instance of the business that is not
  draining and whose address is known; it is added when it is missing, or when the balancer
  holds it at another address or not ready (a retire that was undone leaves its server
  draining; a VM that is draining itself is the retire actuator's and never wanted here);
- a server is removed only when the balancer already finds it down and libvirt shows no
  instance of that name anywhere, with no host stale: a host that did not answer could be
  hiding a VM that still serves.
"""

from __future__ import annotations

from autoscaler.model import VM, Scope, Snapshot, VmState
from autoscaler.model.access import (
    AccessView,
    Deregister,
    Register,
    Registration,
    ServerAdmin,
    ServerHealth,
)


def _wanted(vm: VM) -> bool:
    return (
        vm.state is VmState.RUNNING
        and vm.ready
        and not vm.draining
        and vm.owned
        and vm.address is not None
    )


def registrations(snapshot: Snapshot) -> tuple[Registration, ...]:
    """What to change in every backend whose balancer answered, to match the fleet."""
    out: list[Registration] = []
    every_host_seen = not any(s.scope in (Scope.HOST, Scope.RACK) for s in snapshot.stale)
    for business in snapshot.businesses:
        target = business.access
        view = snapshot.access_by_business.get(business.name)
        if target is None or view is None or view.stale:
            continue
        for vm in sorted(snapshot.vms_by_business.get(business.name, ()), key=lambda v: v.name):
            if not _wanted(vm):
                continue
            address = str(vm.address)
            server = view.server(vm.name)
            if (
                server is None
                or server.address != address
                or server.port != target.port
                or server.admin is not ServerAdmin.READY
            ):
                out.append(
                    Register(
                        business.name,
                        target.balancer,
                        target.backend,
                        vm.name,
                        vm.host,
                        address,
                        target.port,
                    )
                )
        if not every_host_seen:
            continue
        for server in view.servers:
            if server.name in snapshot.vm_by_name or server.health is not ServerHealth.DOWN:
                continue
            out.append(Deregister(business.name, target.balancer, target.backend, server.name))
    return tuple(out)


def retire_hold(snapshot: Snapshot, business: str) -> str | None:
    """Why ``business`` may not retire now (its access layer cannot drain), or None."""
    known = snapshot.business_by_name.get(business)
    if known is None or known.access is None:
        return None
    view: AccessView | None = snapshot.access_by_business.get(business)
    if view is None:
        return f"access layer {known.access.balancer} not read yet: no retire (it must drain first)"
    if view.stale:
        return f"access layer {view.balancer} stale ({view.reason}): no retire until it answers"
    return None
