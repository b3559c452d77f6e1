"""Scale-in: drain an instance, shut it down gracefully, and remove every trace of it.

Where it sits: the actuator of ``Retire``, run by the executor (and resumed by the reconciler).
The VM is first marked draining in its metadata (the access sync never registers a draining
VM, and the lab's load driver sends it no work); for a business behind a load balancer its
server is then drained there, waited on until its sessions end (at most the policy's
``drain_timeout``) and taken out of the backend; only then an ACPI power-button press with a
timeout, a destroy if the guest did not stop, undefine, and the overlay (and any snapshot file)
deleted.
It never takes a business below its minimum: the actuator counts the live, serving instances
across the fleet itself rather than trusting the plan's view.
"""

from __future__ import annotations

import contextlib
import time

import libvirt

from actuators.base import (
    ActionContext,
    find_domain,
    libvirt_call,
    require_owned,
    vm_metadata,
    wait_until,
)
from actuators.clone import remove_instance
from actuators.domain_xml import update_vm_metadata
from actuators.volumes import overlay_exists
from autoscaler.model import AccessTarget, PreconditionFailed, Retire, TemporaryError
from autoscaler.model.access import (
    LoadBalancer,
    LoadBalancerUnavailable,
    ServerAdmin,
    ServerState,
)

DRAIN_POLL_S = 0.2


def server_of(balancer: LoadBalancer, access: AccessTarget, vm: str) -> ServerState | None:
    """``vm``'s server in its business's backend, as the balancer reports it now."""
    return next((s for s in balancer.servers(access.backend) if s.name == vm), None)


def serving_instances(ctx: ActionContext, business: str) -> tuple[set[str], list[str]]:
    """(names of running, non-draining instances of ``business``, hosts that did not answer)."""
    serving: set[str] = set()
    unreachable: list[str] = []
    for host in ctx.fleet.hosts:
        try:
            with ctx.fleet.connection(host) as conn:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        meta = vm_metadata(dom)
                    except ValueError:
                        continue
                    if meta is not None and meta.business == business and not meta.draining:
                        serving.add(dom.name())
        except (TemporaryError, libvirt.libvirtError):
            unreachable.append(host)
    return serving, unreachable


class RetireActuator:
    kind = "retire"

    def already_done(self, action: Retire, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            return find_domain(conn, action.vm) is None and not overlay_exists(conn, action.vm)

    def precondition(self, action: Retire, ctx: ActionContext) -> None:
        minimum = ctx.fleet.business(action.business).min_instances
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None:
                return  # undefined by an earlier attempt: only our overlay is left to delete
            # Running or not: a domain is destroyed only when its stamp proves it ours.
            meta = require_owned(dom, action.vm, action.business, ctx.fleet, "retiring")
            if not dom.isActive() or meta.draining:
                return  # shut down or drained by an earlier attempt: finish it
        serving, unreachable = serving_instances(ctx, action.business)
        remaining = serving - {action.vm}
        if len(remaining) < minimum:
            lost = f" ({', '.join(unreachable)} did not answer)" if unreachable else ""
            raise PreconditionFailed(
                f"retiring {action.vm} would leave {len(remaining)} serving instance(s) of"
                f" {action.business}, below its minimum of {minimum}{lost}"
            )

    def execute(self, action: Retire, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            # Not serving any more (gone, or shut down by an earlier attempt that was cut
            # short): nothing to drain or stop, go straight on to removing what is left.
            if dom is not None and dom.isActive():
                meta = vm_metadata(dom)
                if meta is None or not meta.draining:
                    ctx.step("draining")
                    libvirt_call("mark draining", lambda: update_vm_metadata(dom, draining="1"))
                access = ctx.fleet.business(action.business).access
                if access is not None:
                    self._drain_server(action, ctx, access, serving=True)
                if dom.isActive():
                    ctx.step("shutting-down")
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                    timeout = max(0.5, min(action.shutdown_timeout_s, ctx.remaining()))
                    if not wait_until(lambda: not dom.isActive(), timeout, poll_s=0.2):
                        ctx.step("destroying")
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.destroy()
                    ctx.step("stopped")
            elif (access := ctx.fleet.business(action.business).access) is not None:
                self._drain_server(action, ctx, access, serving=False)
        ctx.step("removing")
        remove_instance(ctx, action.host, action.vm, action.business)
        ctx.step("removed")

    def _drain_server(
        self, action: Retire, ctx: ActionContext, access: AccessTarget, *, serving: bool
    ) -> None:
        """Drain the VM's server (no new sessions), wait until its sessions end or the
        policy's ``drain_timeout`` passes, then take it out of the backend; ``serving``: the
        VM still runs (a stopped one has nothing in flight: it is only taken out)."""
        balancer = ctx.fleet.balancer(access.balancer)
        try:
            server = server_of(balancer, access, action.vm)
            if server is None:
                return  # never registered, or taken out by an earlier attempt
            if serving and server.admin is ServerAdmin.READY:
                ctx.step("lb-draining")
                balancer.drain(access.backend, action.vm)
            started = time.monotonic()
            while serving and server is not None and server.sessions > 0:
                waited = time.monotonic() - started
                if waited >= min(access.drain_timeout_s, max(0.0, ctx.remaining() - 30)):
                    break  # bounded by the policy: what is still open is cut
                time.sleep(DRAIN_POLL_S)
                server = server_of(balancer, access, action.vm)
            ctx.figures["drain_s"] = round(time.monotonic() - started, 3)
            ctx.step("lb-removing")
            balancer.remove(access.backend, action.vm)
        except LoadBalancerUnavailable as exc:
            raise TemporaryError(
                f"balancer {access.balancer} did not answer draining {action.vm}: {exc}",
                retry_after=2,
            ) from exc

    def verify(self, action: Retire, ctx: ActionContext) -> str:
        if not self.already_done(action, ctx):
            raise TemporaryError(f"{action.vm} or its overlay is still on {action.host}")
        return f"{action.vm} gone from {action.host} (domain and overlay)"

    def compensate(self, action: Retire, ctx: ActionContext) -> str:
        """A retirement that failed before the guest stopped gives the VM back its load."""
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is not None and dom.isActive():
                require_owned(dom, action.vm, action.business, ctx.fleet, "un-draining")
                libvirt_call("clear draining", lambda: update_vm_metadata(dom, draining=None))
                return f"{action.vm} serves again (draining mark removed)"
        return "nothing to undo"
