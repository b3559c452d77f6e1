"""Scale-out: a new instance as a linked clone of its business template, ready to serve.

Where it sits: the actuator of ``CloneFromTemplate``, run by the executor (and resumed by the
reconciler after a crash). Steps: a qcow2 overlay on the template through the host's storage
pool; a domain defined from the template with the new name, a new UUID and MAC, the business
configuration on its kernel command line (the journal stamps it once defined); start;
wait until the guest reports ready (pluggable probe); then end the boot boost (CPU quota) and
mark it ready, which is what the load balancer and the collectors look for. Every step checks
whether it was already taken, so running it again after a crash finishes the job.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import libvirt

from actuators.base import ActionContext, find_domain, libvirt_call, require_owned, vm_attribute
from actuators.domain_xml import (
    InstanceSpec,
    apply_cpu_quota,
    build_domain_xml,
    mark_ready,
)
from actuators.snapshot import delete_snapshot_files
from actuators.volumes import delete_overlay, ensure_overlay
from autoscaler.model import (
    CloneFromTemplate,
    PermanentError,
    PreconditionFailed,
    TemporaryError,
)


def serial_log_path(vm: str) -> str:
    # Inside the host's libvirt log folder, named from a validated VM name.
    return f"/var/log/libvirt/qemu/{vm}-serial.log"


class CloneActuator:
    kind = "clone_from_template"

    def already_done(self, action: CloneFromTemplate, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            return (
                dom is not None and bool(dom.isActive()) and vm_attribute(dom, "ready") is not None
            )

    def precondition(self, action: CloneFromTemplate, ctx: ActionContext) -> None:
        ctx.fleet.business(action.business)
        # A VM name is unique in the fleet: a domain of that name on another host means this
        # clone would duplicate it.
        for host in ctx.fleet.hosts:
            if host == action.host:
                continue
            try:
                with ctx.fleet.connection(host) as conn:
                    if find_domain(conn, action.vm) is not None:
                        raise PreconditionFailed(f"{action.vm} already exists on {host}")
            except TemporaryError:
                continue  # an unreachable host cannot start a duplicate either
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is not None:
                # Ours half-made (stamped when it was defined) is resumed; anything else of
                # that name is not touched.
                require_owned(dom, action.vm, action.business, ctx.fleet, "cloning")

    def _spec(self, action: CloneFromTemplate, ctx: ActionContext, disk: str) -> InstanceSpec:
        business = ctx.fleet.business(action.business)
        keys = ctx.fleet.keys
        if keys is None:
            raise PermanentError("no fleet key is configured: a clone could not be proven ours")
        created = f"{time.time():.3f}"
        return InstanceSpec(
            name=action.vm,
            business=action.business,
            template=business.template,
            disk_path=disk,
            domain_type=ctx.fleet.domain_type,
            boot=ctx.fleet.boot,
            created_at=float(created),
            channels=ctx.fleet.channels,
            serial_log=serial_log_path(action.vm),
            balloon_stats_period_s=ctx.fleet.balloon_stats_period_s,
            owner=keys.stamp(action.vm, action.business, created),
        )

    def execute(self, action: CloneFromTemplate, ctx: ActionContext) -> None:
        business = ctx.fleet.business(action.business)
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None:
                ctx.step("creating-overlay")
                disk = str(
                    libvirt_call(
                        "create overlay",
                        lambda: ensure_overlay(conn, action.vm, business.template.image),
                    )
                )
                ctx.step("overlay-created")
                xml = build_domain_xml(self._spec(action, ctx, disk))
                libvirt_call("define", lambda: conn.defineXML(xml))
                dom = conn.lookupByName(action.vm)
                ctx.step("defined")
            if not dom.isActive():
                libvirt_call("start", dom.create)
                ctx.step("started")
            if vm_attribute(dom, "ready") is None:
                self._wait_ready(action, ctx, conn, dom)
                apply_cpu_quota(dom, business.template.cpu_quota)
                mark_ready(dom, time.time())
                ctx.step("ready")

    def _wait_ready(
        self,
        action: CloneFromTemplate,
        ctx: ActionContext,
        conn: libvirt.virConnect,
        dom: libvirt.virDomain,
    ) -> None:
        probe = ctx.fleet.readiness
        if probe is None:
            return  # nothing can tell: running is all we know
        timeout = min(ctx.fleet.ready_timeout_s, max(1.0, ctx.remaining()))
        if not probe.wait_ready(conn, dom, timeout):
            raise TemporaryError(
                f"{action.vm} did not report ready within {timeout:.0f} s ({probe.name})",
                retry_after=1,
            )

    def verify(self, action: CloneFromTemplate, ctx: ActionContext) -> str:
        business = ctx.fleet.business(action.business)
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive() or not dom.isPersistent():
                raise TemporaryError(f"{action.vm} is not running persistently on {action.host}")
            root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
            if vm_attribute(dom, "business") != action.business:
                raise PermanentError(f"{action.vm} does not carry business {action.business}")
            if vm_attribute(dom, "ready") is None:
                raise TemporaryError(f"{action.vm} is not marked ready")
            quota = root.findtext("./cputune/quota")
            if business.template.cpu_quota is not None and quota is None:
                raise TemporaryError(f"{action.vm} still runs without its CPU quota")
            return f"{action.vm} running and ready on {action.host}"

    def compensate(self, action: CloneFromTemplate, ctx: ActionContext) -> str:
        """Remove the half-made clone: domain and overlay (nothing of it is serving yet)."""
        return remove_instance(ctx, action.host, action.vm, action.business)


def remove_instance(ctx: ActionContext, host: str, vm: str, business: str) -> str:
    """Destroy, undefine and delete the disk of ``vm`` on ``host``, if it is provably ours."""
    done = []
    with ctx.fleet.connection(host) as conn:
        dom = find_domain(conn, vm)
        if dom is not None:
            require_owned(dom, vm, business, ctx.fleet, "removing")
            if dom.isActive():
                libvirt_call("destroy", dom.destroy)
                done.append("destroyed")
            if dom.isPersistent():
                libvirt_call(
                    "undefine",
                    lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA),
                )
                done.append("undefined")
        if libvirt_call("delete overlay", lambda: delete_overlay(conn, vm)):
            done.append("overlay deleted")
        removed = delete_snapshot_files(conn, vm)
        if removed:
            done.append(f"{removed} snapshot file(s) deleted")
    return f"{vm} on {host}: " + (", ".join(done) or "nothing to remove")
