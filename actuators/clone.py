"""Scale-out: a new instance as a linked clone of its business template, ready to serve.

Where it sits: the actuator of ``CloneFromTemplate``, run by the executor (and resumed by the
reconciler after a crash). Steps: the disk (a qcow2 overlay on the template through the host's
storage pool, or with storage rbd a copy-on-write RBD clone of the template version, stamped
with the VM's ownership, and the host's libvirt secret for its cephx key); a domain defined
from the template with the new name, a new UUID and MAC, the business configuration on its
kernel command line (the journal stamps it once defined), and the template version's config
drive (``config_drive``) beside the disk when the version has a folder in ``delivery_dir``;
start;
wait until the guest reports ready (pluggable probe); then end the boot boost (CPU quota) and
mark it ready, with the address the guest reports on its network (in the domain's metadata,
which migrates with it), which is what the load balancer and the collectors look for. Every
step checks whether it was already taken, so running it again after a crash finishes the job.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import replace

import libvirt

from actuators.base import ActionContext, find_domain, libvirt_call, require_owned, vm_attribute
from actuators.ceph_secret import rbd_disk_source
from actuators.config_drive import delete_drive_volume, drive_bytes, rbd_image_name, write_volume
from actuators.domain_xml import (
    InstanceSpec,
    apply_cpu_quota,
    build_domain_xml,
    mark_ready,
    rbd_disks,
)
from actuators.rbd_store import META_CREATED, RbdDiskSource
from actuators.snapshot import delete_snapshot_files
from actuators.volumes import delete_overlay, ensure_overlay
from autoscaler.model import (
    CloneFromTemplate,
    PermanentError,
    PreconditionFailed,
    RbdStorage,
    Template,
    TemporaryError,
)


def serial_log_path(vm: str) -> str:
    # Inside the host's libvirt log folder, named from a validated VM name.
    return f"/var/log/libvirt/qemu/{vm}-serial.log"


def template_of(action: CloneFromTemplate, ctx: ActionContext) -> Template:
    """The business's template at the version the clone asks for (a rollout's target), else
    at the policy's."""
    template = ctx.fleet.business(action.business).template
    if action.version is None or action.version == template.version:
        return template
    return template.model_copy(update={"version": action.version})


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

    def _spec(
        self,
        action: CloneFromTemplate,
        ctx: ActionContext,
        disk: str,
        created: str,
        rbd: RbdDiskSource | None = None,
        drive: str | RbdDiskSource | None = None,
    ) -> InstanceSpec:
        keys = ctx.fleet.keys
        if keys is None:
            raise PermanentError("no fleet key is configured: a clone could not be proven ours")
        return InstanceSpec(
            name=action.vm,
            business=action.business,
            template=template_of(action, ctx),
            disk_path=disk,
            domain_type=ctx.fleet.domain_type,
            boot=ctx.fleet.boot,
            created_at=float(created),
            channels=ctx.fleet.channels,
            serial_log=serial_log_path(action.vm),
            balloon_stats_period_s=ctx.fleet.balloon_stats_period_s,
            owner=keys.stamp(action.vm, action.business, created),
            rbd=rbd,
            config_drive=drive,
        )

    def execute(self, action: CloneFromTemplate, ctx: ActionContext) -> None:
        business = ctx.fleet.business(action.business)
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None:
                storage = business.template.storage
                # Built before any disk: a version folder that is refused (too large, a link
                # out of it) fails the clone before it has made anything.
                drive = self._drive_bytes(action, ctx)
                if isinstance(storage, RbdStorage):
                    created = self._rbd_image(action, ctx, storage)
                    rbd = rbd_disk_source(conn, ctx.fleet.rbd_store(), storage, action.vm)
                    drive_source = None
                    if drive is not None:
                        self._rbd_drive(action, ctx, storage, created, drive)
                        drive_source = replace(rbd, image=rbd_image_name(action.vm))
                    spec = self._spec(action, ctx, "", created, rbd, drive_source)
                else:
                    ctx.step("creating-overlay")
                    disk = str(
                        libvirt_call(
                            "create overlay",
                            lambda: ensure_overlay(conn, action.vm, business.template.image),
                        )
                    )
                    ctx.step("overlay-created")
                    drive_path = None
                    if drive is not None:
                        ctx.step("writing-config-drive")
                        drive_path = str(
                            libvirt_call(
                                "write config drive",
                                lambda: write_volume(conn, action.vm, drive),
                            )
                        )
                        ctx.step("config-drive-written")
                    spec = self._spec(action, ctx, disk, f"{time.time():.3f}", None, drive_path)
                xml = build_domain_xml(spec)
                libvirt_call("define", lambda: conn.defineXML(xml))
                dom = conn.lookupByName(action.vm)
                ctx.step("defined")
            if not dom.isActive():
                libvirt_call("start", dom.create)
                ctx.step("started")
            if vm_attribute(dom, "ready") is None:
                address = self._wait_ready(action, ctx, conn, dom)
                apply_cpu_quota(dom, business.template.cpu_quota)
                mark_ready(dom, time.time(), address)
                ctx.step("ready")

    def _drive_bytes(self, action: CloneFromTemplate, ctx: ActionContext) -> bytes | None:
        """The clone's config drive for its version, None when the version has no folder."""
        template = template_of(action, ctx)
        return drive_bytes(ctx.fleet.delivery_dir, action.vm, action.business, template.version)

    def _rbd_drive(
        self,
        action: CloneFromTemplate,
        ctx: ActionContext,
        storage: RbdStorage,
        created: str,
        drive: bytes,
    ) -> None:
        """The config drive as the RBD image ``<vm>-config`` beside the VM's disk, stamped
        like it; one of that name stamped for anyone else is not overwritten."""
        store = ctx.fleet.rbd_store()
        keys = ctx.fleet.keys
        assert keys is not None  # noqa: S101 - _rbd_image refused a fleet without keys
        image = rbd_image_name(action.vm)
        meta = store.metadata(storage.pool, image)
        # Unstamped: ours, interrupted between its creation and its stamp (the name is the
        # journal's VM's).
        if meta and not store.owned(storage.pool, action.vm, action.business, keys, image):
            raise PreconditionFailed(f"rbd image {storage.pool}/{image} exists and is not ours")
        ctx.step("writing-config-drive")
        store.put_image(
            storage.pool,
            image,
            drive,
            action.vm,
            action.business,
            created,
            keys.stamp(action.vm, action.business, created),
        )
        ctx.step("config-drive-written")

    def _rbd_image(self, action: CloneFromTemplate, ctx: ActionContext, storage: RbdStorage) -> str:
        """The VM's RBD clone, made or found; the creation time its stamps sign."""
        store = ctx.fleet.rbd_store()
        keys = ctx.fleet.keys
        if keys is None:
            raise PermanentError("no fleet key is configured: a clone could not be proven ours")
        template = template_of(action, ctx)
        meta = store.metadata(storage.pool, action.vm)
        created = (meta or {}).get(META_CREATED) or f"{time.time():.3f}"
        stamp = keys.stamp(action.vm, action.business, created)
        if meta is None:
            ctx.step("creating-image")
            store.clone(
                storage.pool,
                template.image,
                str(template.version),
                action.vm,
                action.business,
                created,
                stamp,
            )
            ctx.step("image-created")
        elif not meta:
            # Our clone, interrupted between its creation and its stamp (this step is only
            # reached for a VM name the journal gave to this clone).
            store.ensure_stamped(storage.pool, action.vm, action.business, created, stamp)
        elif not store.owned(storage.pool, action.vm, action.business, keys):
            raise PreconditionFailed(
                f"rbd image {storage.pool}/{action.vm} exists and is not this clone's"
            )
        return created

    def _wait_ready(
        self,
        action: CloneFromTemplate,
        ctx: ActionContext,
        conn: libvirt.virConnect,
        dom: libvirt.virDomain,
    ) -> str | None:
        """Wait until the guest is ready; the address it reports (None: none, or no probe)."""
        probe = ctx.fleet.readiness
        if probe is None:
            return None  # nothing can tell: running is all we know
        timeout = min(ctx.fleet.ready_timeout_s, max(1.0, ctx.remaining()))
        if not probe.wait_ready(conn, dom, timeout):
            raise TemporaryError(
                f"{action.vm} did not report ready within {timeout:.0f} s ({probe.name})",
                retry_after=1,
            )
        return probe.address(conn, dom)

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
        """Remove the half-made clone: domain and disk (nothing of it is serving yet)."""
        return remove_instance(ctx, action.host, action.vm, action.business, half_made_clone=True)


def remove_instance(
    ctx: ActionContext, host: str, vm: str, business: str, *, half_made_clone: bool = False
) -> str:
    """Destroy, undefine and delete the disk of ``vm`` on ``host``, if it is provably ours.

    An RBD disk (the domain's, or the one the business's template would give it) goes with its
    snapshots, after the ownership check of the domain and of the image's own stamp; backups
    live elsewhere and are never touched."""
    done = []
    rbd_images: set[tuple[str, str]] = set()
    storage = ctx.fleet.business(business).template.storage
    if isinstance(storage, RbdStorage):
        rbd_images.update({(storage.pool, vm), (storage.pool, rbd_image_name(vm))})
    with ctx.fleet.connection(host) as conn:
        dom = find_domain(conn, vm)
        if dom is not None:
            require_owned(dom, vm, business, ctx.fleet, "removing")
            rbd_images.update(
                (pool, image)
                for pool, image in rbd_disks(dom.XMLDesc(0))
                if image in (vm, rbd_image_name(vm))
            )
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
        if libvirt_call("delete config drive", lambda: delete_drive_volume(conn, vm)):
            done.append("config drive deleted")
        removed = delete_snapshot_files(conn, vm)
        if removed:
            done.append(f"{removed} snapshot file(s) deleted")
    for pool, image in sorted(rbd_images):
        snaps = ctx.fleet.rbd_store().remove(
            pool, vm, business, ctx.fleet.keys, half_made_clone=half_made_clone, image=image
        )
        if snaps is not None:
            done.append(f"rbd image {pool}/{image} removed with {snaps} snapshot(s)")
    return f"{vm} on {host}: " + (", ".join(done) or "nothing to remove")
