"""Replace an instance: surge a clone, wait until it serves, then drain and retire the old one.

Where it sits: the actuator of ``ReplaceInstance`` (a rollout's step, or a scale-down by
replacement), run by the executor and resumed by the reconciler like any other action. It is
the clone actuator and the retire actuator in sequence, each step journalled under this
action (``clone:...``, ``serving``, ``retire:...``), so a controller killed anywhere resumes
where it was: the clone finishes on the same VM and the retire drains and stops the same one.

Between the two, behind a load balancer, the new instance is registered in its backend at once
(the access sync would do it next cycle; a rollout must not wait for it) and the old one is
retired only when the balancer's health check passes for the new one: the business never has
fewer serving instances than before. Without a load balancer, ready is serving.
"""

from __future__ import annotations

import dataclasses
import time

from actuators.base import ActionContext, find_domain, vm_metadata
from actuators.clone import CloneActuator
from actuators.retire import RetireActuator, server_of
from autoscaler.model import AccessTarget, ReplaceInstance, TemporaryError
from autoscaler.model.access import LoadBalancerUnavailable, ServerHealth

SERVE_POLL_S = 0.25


def _within(ctx: ActionContext, prefix: str) -> ActionContext:
    """``ctx`` whose steps are recorded as ``prefix:step`` (one journal entry, two parts)."""
    return dataclasses.replace(ctx, record_step=lambda step: ctx.record_step(f"{prefix}:{step}"))


class ReplaceActuator:
    kind = "replace"

    def __init__(
        self,
        clone: CloneActuator | None = None,
        retire: RetireActuator | None = None,
        serve_timeout_s: float = 60.0,
    ) -> None:
        self.clone = clone or CloneActuator()
        self.retire = retire or RetireActuator()
        self.serve_timeout_s = serve_timeout_s

    def already_done(self, action: ReplaceInstance, ctx: ActionContext) -> bool:
        return self.retire.already_done(action.retire(), ctx) and self.clone.already_done(
            action.clone(), ctx
        )

    def precondition(self, action: ReplaceInstance, ctx: ActionContext) -> None:
        if not self.clone.already_done(action.clone(), ctx):
            self.clone.precondition(action.clone(), ctx)
        with ctx.fleet.connection(action.host) as conn:
            if find_domain(conn, action.vm) is None:
                return  # retired by an earlier attempt: only the clone may be left to finish
        # The old one is checked as a retire would be, counting the surge clone only once
        # it serves (the retire's own precondition runs again before it, in execute).

    def execute(self, action: ReplaceInstance, ctx: ActionContext) -> None:
        clone = action.clone()
        if not self.clone.already_done(clone, ctx):
            self.clone.execute(clone, _within(ctx, "clone"))
        self.clone.verify(clone, ctx)
        access = ctx.fleet.business(action.business).access
        if access is not None:
            self._until_serving(action, ctx, access)
        ctx.step("serving")
        retire = action.retire()
        if not self.retire.already_done(retire, ctx):
            self.retire.precondition(retire, ctx)
            self.retire.execute(retire, _within(ctx, "retire"))

    def _until_serving(
        self, action: ReplaceInstance, ctx: ActionContext, access: AccessTarget
    ) -> None:
        """Register the new instance in its backend and wait until its health check passes."""
        with ctx.fleet.connection(action.new_host) as conn:
            dom = find_domain(conn, action.new_vm)
            meta = vm_metadata(dom) if dom is not None else None
        if meta is None or meta.address is None:
            raise TemporaryError(
                f"{action.new_vm} reported no address: it cannot join {access.backend}",
                retry_after=2,
            )
        balancer = ctx.fleet.balancer(access.balancer)
        started = time.monotonic()
        limit = min(self.serve_timeout_s, max(1.0, ctx.remaining() - 60))
        try:
            balancer.add(access.backend, action.new_vm, meta.address, access.port)
            while True:
                server = server_of(balancer, access, action.new_vm)
                if server is not None and server.serving and server.health is ServerHealth.UP:
                    break
                if time.monotonic() - started > limit:
                    raise TemporaryError(
                        f"{action.new_vm} did not pass {access.balancer}'s health check within"
                        f" {limit:.0f} s; {action.vm} keeps serving",
                        retry_after=5,
                    )
                time.sleep(SERVE_POLL_S)
        except LoadBalancerUnavailable as exc:
            raise TemporaryError(
                f"balancer {access.balancer} did not answer registering {action.new_vm}: {exc}",
                retry_after=2,
            ) from exc
        ctx.figures["serve_s"] = round(time.monotonic() - started, 3)

    def verify(self, action: ReplaceInstance, ctx: ActionContext) -> str:
        new = self.clone.verify(action.clone(), ctx)
        old = self.retire.verify(action.retire(), ctx)
        return f"{new}; {old}"

    def compensate(self, action: ReplaceInstance, ctx: ActionContext) -> str:
        """A replacement cut short keeps both instances (the surge clone serves too): a later
        scale-in or the next rollout step settles the count; nothing is undone by force."""
        if self.retire.already_done(action.retire(), ctx):
            return f"{action.vm} is retired; {action.new_vm} is left as it is"
        undone = self.retire.compensate(action.retire(), ctx)
        return f"{action.vm} kept ({undone}); {action.new_vm} left as it is"
