"""Applying the access layer's registrations: servers into and out of their backends.

Where it sits: the hands of the controller's access sync. ``policies.access.registrations``
says, from the Snapshot, what each backend lacks or holds in vain; this module makes it so,
each change on its own (a balancer that does not answer holds up no other). Before a server is
added its VM is read again from libvirt: it must still run on that host, carry the fleet's
stamp and not be draining, so a snapshot taken just before a retire began can never put the
retiring VM back into its backend. A registration needs no journal: every call is idempotent,
and the next cycle redoes what one cut short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import libvirt

from actuators.base import Fleet, find_domain, require_owned
from autoscaler.model import AutoscalerError
from autoscaler.model.access import Deregister, LoadBalancerUnavailable, Register, Registration


@dataclass(frozen=True)
class Applied:
    """What became of one registration: ``done`` or not, and why in words."""

    change: Registration
    done: bool
    detail: str


def _still_serving(fleet: Fleet, change: Register) -> str | None:
    """None when the VM still runs on its host, ours and not draining; else why not."""
    with fleet.connection(change.host) as conn:
        dom = find_domain(conn, change.server)
        if dom is None or not dom.isActive():
            return f"{change.server} no longer runs on {change.host}"
        meta = require_owned(dom, change.server, change.business, fleet, "registering")
        if meta.draining:
            return f"{change.server} is draining"
    return None


def apply_registrations(fleet: Fleet, changes: Sequence[Registration]) -> list[Applied]:
    """Apply each change; one that fails is reported, never raised (the loop goes on)."""
    out: list[Applied] = []
    for change in changes:
        try:
            balancer = fleet.balancer(change.balancer)
            if isinstance(change, Deregister):
                balancer.remove(change.backend, change.server)
                out.append(Applied(change, True, change.why))
                continue
            why_not = _still_serving(fleet, change)
            if why_not is not None:
                out.append(Applied(change, False, f"not registered: {why_not}"))
                continue
            balancer.add(change.backend, change.server, change.address, change.port)
            out.append(Applied(change, True, change.why))
        except (LoadBalancerUnavailable, AutoscalerError, libvirt.libvirtError) as exc:
            out.append(Applied(change, False, f"{change.why}: failed: {exc}"))
    return out
