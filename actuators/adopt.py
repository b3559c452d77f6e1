"""Adopt: an operator's word that a domain is an instance of a business, made provable.

Where it sits: the actuator of ``Adopt`` (``autoscaler adopt VM --business B``), run through the
executor like any action, so it is fenced by the lease and journalled. A domain the controller
did not create (made by hand, or by an older version) carries no valid ownership stamp, so the
controller only reports it; adopting it writes the business and a stamp of the fleet key into
its metadata, live and persistent. Nothing else of the domain changes.
"""

from __future__ import annotations

import time

from actuators.base import ActionContext, find_domain, libvirt_call, vm_metadata
from actuators.domain_xml import update_vm_metadata
from autoscaler.model import Adopt, PermanentError, PreconditionFailed


class AdoptActuator:
    kind = "adopt"

    def _owned(self, action: Adopt, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None:
                return False
            try:
                meta = vm_metadata(dom)
            except ValueError:
                return False
            return (
                meta is not None
                and meta.business == action.business
                and meta.owned(action.vm, ctx.fleet.keys)
            )

    def already_done(self, action: Adopt, ctx: ActionContext) -> bool:
        return self._owned(action, ctx)

    def precondition(self, action: Adopt, ctx: ActionContext) -> None:
        ctx.fleet.business(action.business)
        if ctx.fleet.keys is None:
            raise PermanentError("no fleet key is configured: nothing can be stamped")
        with ctx.fleet.connection(action.host) as conn:
            if find_domain(conn, action.vm) is None:
                raise PreconditionFailed(f"{action.vm} is not defined on {action.host}")

    def execute(self, action: Adopt, ctx: ActionContext) -> None:
        keys = ctx.fleet.keys
        if keys is None:  # checked by the precondition; kept for the type checker
            raise PermanentError("no fleet key is configured")
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None:
                raise PreconditionFailed(f"{action.vm} is not defined on {action.host}")
            try:
                meta = vm_metadata(dom)
            except ValueError:
                meta = None
            created = meta.created_text if meta is not None and meta.created_text else ""
            created = created or f"{time.time():.3f}"
            stamp = keys.stamp(action.vm, action.business, created)
            ctx.step("stamping")
            libvirt_call(
                "stamp ownership",
                lambda: update_vm_metadata(
                    dom,
                    business=action.business,
                    created=created,
                    owner_key=stamp.key_id,
                    owner_mac=stamp.mac,
                ),
            )

    def verify(self, action: Adopt, ctx: ActionContext) -> str:
        if not self._owned(action, ctx):
            raise PermanentError(f"{action.vm} does not carry a valid stamp after adoption")
        return f"{action.vm} on {action.host} adopted into {action.business}"

    def compensate(self, action: Adopt, ctx: ActionContext) -> str:
        return "nothing to undo (a stamp alone changes nothing the guest sees)"
