"""Live disk snapshots without libvirt snapshot metadata, and their merge back.

A VM whose disk is on RBD gets an RBD snapshot instead (``actuators.rbd_snapshot``); the rest of
this docstring is about local overlays.

Where it sits: the actuators of ``SnapshotDisk`` and ``MergeSnapshot`` (before risky steps and
for scheduled backups), and the merge the migration actuator runs first: libvirt refuses to
migrate a domain with snapshot metadata, so snapshots are taken with ``NO_METADATA`` and the
chain itself is the record. A snapshot is a qcow2 file ``<vm>.<tag>.snap`` in the host's
``images`` pool on top of the VM's overlay; the merge is a shallow active block commit into the
overlay, then a pivot, then the file is deleted. Only one level is kept: a second snapshot of
the same VM waits for the merge of the first.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import libvirt

from actuators import rbd_snapshot
from actuators.base import ActionContext, disk_sources, find_domain, libvirt_call, require_owned
from actuators.volumes import POOL_NAME
from autoscaler.model import (
    MergeSnapshot,
    PreconditionFailed,
    SnapshotDisk,
    TemporaryError,
    check_name,
)

DISK = "vda"
SNAP_SUFFIX = ".snap"
COMMIT_TIMEOUT_S = 120.0


def snapshot_file_name(vm: str, tag: str) -> str:
    return f"{check_name(vm, what='vm name')}.{check_name(tag, what='snapshot tag')}{SNAP_SUFFIX}"


def pool_dir(conn: libvirt.virConnect) -> str:
    pool = conn.storagePoolLookupByName(POOL_NAME)
    path = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path")  # noqa: S314 - libvirt XML
    if not path:
        raise TemporaryError(f"pool {POOL_NAME} has no target path")
    return path


def snapshot_tag_of(vm: str, disk_path: str) -> str | None:
    """The tag of our snapshot file that ``disk_path`` is, or None (the plain overlay)."""
    name = disk_path.rsplit("/", 1)[-1]
    prefix = f"{vm}."
    if name.startswith(prefix) and name.endswith(SNAP_SUFFIX):
        return name[len(prefix) : -len(SNAP_SUFFIX)]
    return None


def delete_snapshot_files(conn: libvirt.virConnect, vm: str) -> int:
    """Delete every ``<vm>.*.snap`` volume of the pool; how many were deleted."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    pool.refresh(0)
    deleted = 0
    for name in pool.listVolumes():
        if name.startswith(f"{vm}.") and name.endswith(SNAP_SUFFIX):
            pool.storageVolLookupByName(name).delete(0)
            deleted += 1
    return deleted


def _snapshot_xml(tag: str, path: str) -> str:
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = tag
    disks = ET.SubElement(snap, "disks")
    disk = ET.SubElement(disks, "disk", name=DISK, snapshot="external")
    ET.SubElement(disk, "driver", type="qcow2")
    ET.SubElement(disk, "source", file=path)
    return ET.tostring(snap, encoding="unicode")


def _active_disk(ctx: ActionContext, conn: libvirt.virConnect, vm: str) -> libvirt.virDomain:
    dom = find_domain(conn, vm)
    if dom is None or not dom.isActive():
        raise PreconditionFailed(f"{vm} is not running")
    return dom


def _rbd_snap_exists(ctx: ActionContext, disk: tuple[str, str], tag: str) -> bool:
    return any(s.name == tag for s in ctx.fleet.rbd_store().snapshots(*disk))


class SnapshotActuator:
    """A VM on a local overlay gets an external qcow2 layer; a VM on RBD an RBD snapshot."""

    kind = "snapshot"

    def already_done(self, action: SnapshotDisk, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive():
                return False
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                return _rbd_snap_exists(ctx, rbd_disk, action.tag)
            source = disk_sources(dom).get(DISK, "")
            return snapshot_tag_of(action.vm, source) == action.tag

    def precondition(self, action: SnapshotDisk, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            require_owned(dom, action.vm, action.business, ctx.fleet, "snapshotting")
            if rbd_snapshot.rbd_disk_of(dom, action.vm) is not None:
                return
            current = snapshot_tag_of(action.vm, disk_sources(dom).get(DISK, ""))
            if current is not None and current != action.tag:
                raise PreconditionFailed(
                    f"{action.vm} already runs on snapshot {current!r}: merge it first"
                )

    def execute(self, action: SnapshotDisk, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                ctx.step("snapshotting")
                started = time.monotonic()
                _, consistency = rbd_snapshot.take(
                    ctx.fleet.rbd_store(), dom, *rbd_disk, action.tag
                )
                ctx.figures["snapshot_s"] = time.monotonic() - started
                ctx.step(f"snapshotted-{consistency}")
                return
            path = f"{pool_dir(conn)}/{snapshot_file_name(action.vm, action.tag)}"
            ctx.step("snapshotting")
            started = time.monotonic()
            flags = (
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            )
            xml = _snapshot_xml(action.tag, path)
            libvirt_call("disk snapshot", lambda: dom.snapshotCreateXML(xml, flags))
            ctx.figures["snapshot_s"] = time.monotonic() - started
            conn.storagePoolLookupByName(POOL_NAME).refresh(0)
            ctx.step("snapshotted")

    def verify(self, action: SnapshotDisk, ctx: ActionContext) -> str:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                if not _rbd_snap_exists(ctx, rbd_disk, action.tag):
                    raise TemporaryError(f"rbd snapshot {action.vm}@{action.tag} is not there")
                store = ctx.fleet.rbd_store()
                consistency = rbd_snapshot.consistency_of(store, *rbd_disk, action.tag)
                return f"rbd snapshot {'/'.join(rbd_disk)}@{action.tag} ({consistency})"
            live = disk_sources(dom).get(DISK, "")
            persistent = disk_sources(dom, libvirt.VIR_DOMAIN_XML_INACTIVE).get(DISK, "")
            if snapshot_tag_of(action.vm, live) != action.tag:
                raise TemporaryError(f"{action.vm} writes to {live}, not snapshot {action.tag}")
            if dom.snapshotNum(0) != 0:
                raise TemporaryError(f"{action.vm} has libvirt snapshot metadata")
            return f"{action.vm} writes to {live} (persistent: {persistent})"

    def compensate(self, action: SnapshotDisk, ctx: ActionContext) -> str:
        # An ATOMIC snapshot either happened or did not; a leftover file without a domain
        # pointing at it is removed.
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is not None and rbd_snapshot.rbd_disk_of(dom, action.vm) is not None:
                return "nothing to undo (an RBD snapshot is made whole or not at all)"
            current = disk_sources(dom).get(DISK, "") if dom is not None else ""
            if snapshot_tag_of(action.vm, current) is None:
                return f"{delete_snapshot_files(conn, action.vm)} stray snapshot file(s) deleted"
        return "nothing to undo"


def merge_into_overlay(conn: libvirt.virConnect, dom: libvirt.virDomain, timeout_s: float) -> bool:
    """Commit the active snapshot layer into its backing overlay and pivot; True if merged.

    Resumable: a commit job already running (from a crashed run) is waited for, not restarted.
    """
    vm = dom.name()
    tag = snapshot_tag_of(vm, disk_sources(dom).get(DISK, ""))
    if tag is None:
        return False
    info = dom.blockJobInfo(DISK, 0)
    if not info:
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
        libvirt_call("block commit", lambda: dom.blockCommit(DISK, None, None, 0, flags))
    deadline = time.monotonic() + timeout_s
    while True:
        info = dom.blockJobInfo(DISK, 0)
        # The job is ready to pivot once it has copied everything (cur == end, end > 0).
        if info and info.get("end", 0) > 0 and info.get("cur") == info.get("end"):
            break
        if time.monotonic() > deadline:
            raise TemporaryError(f"block commit of {vm} not ready after {timeout_s:.0f} s")
        time.sleep(0.05)
    pivoted_at = time.monotonic()
    while True:
        try:
            dom.blockJobAbort(DISK, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            break
        except libvirt.libvirtError as exc:
            # "not ready for pivot" right after cur == end: QEMU's ready event is still coming.
            if time.monotonic() - pivoted_at > 10:
                raise TemporaryError(f"pivot of {vm} failed: {exc}") from exc
            time.sleep(0.1)
    if snapshot_tag_of(vm, disk_sources(dom).get(DISK, "")) is not None:
        raise TemporaryError(f"{vm} still writes to its snapshot after the pivot")
    delete_snapshot_files(conn, vm)
    return True


class MergeSnapshotActuator:
    kind = "merge_snapshot"

    def already_done(self, action: MergeSnapshot, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive():
                return False
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                return not _rbd_snap_exists(ctx, rbd_disk, action.tag)
            return snapshot_tag_of(action.vm, disk_sources(dom).get(DISK, "")) is None

    def precondition(self, action: MergeSnapshot, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            require_owned(dom, action.vm, action.business, ctx.fleet, "merging a snapshot of")
            if rbd_snapshot.rbd_disk_of(dom, action.vm) is not None:
                return
            current = snapshot_tag_of(action.vm, disk_sources(dom).get(DISK, ""))
            if current not in (None, action.tag):
                raise PreconditionFailed(
                    f"{action.vm} runs on snapshot {current!r}, not {action.tag!r}"
                )

    def execute(self, action: MergeSnapshot, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                ctx.step("dropping-rbd-snapshot")
                ctx.fleet.rbd_store().remove_snapshot(*rbd_disk, action.tag)
                ctx.step("merged")
                return
            ctx.step("committing")
            started = time.monotonic()
            merge_into_overlay(conn, dom, min(COMMIT_TIMEOUT_S, max(1.0, ctx.remaining())))
            ctx.figures["merge_s"] = time.monotonic() - started
            ctx.step("merged")

    def verify(self, action: MergeSnapshot, ctx: ActionContext) -> str:
        with ctx.fleet.connection(action.host) as conn:
            dom = _active_disk(ctx, conn, action.vm)
            rbd_disk = rbd_snapshot.rbd_disk_of(dom, action.vm)
            if rbd_disk is not None:
                if _rbd_snap_exists(ctx, rbd_disk, action.tag):
                    raise TemporaryError(f"rbd snapshot {action.vm}@{action.tag} is still there")
                return f"{action.vm} has no snapshot {action.tag} (its disk is on RBD)"
            live = disk_sources(dom).get(DISK, "")
            persistent = disk_sources(dom, libvirt.VIR_DOMAIN_XML_INACTIVE).get(DISK, "")
            for where, path in (("live", live), ("persistent", persistent)):
                if snapshot_tag_of(action.vm, path) is not None:
                    raise TemporaryError(f"{action.vm}'s {where} disk is still {path}")
            return f"{action.vm} writes to {live} again"

    def compensate(self, action: MergeSnapshot, ctx: ActionContext) -> str:
        # A failed commit leaves the chain intact and the guest on the snapshot: consistent.
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is not None and dom.isActive() and dom.blockJobInfo(DISK, 0):
                libvirt_call("abort commit", lambda: dom.blockJobAbort(DISK, 0))
                return "commit job aborted; the VM stays on its snapshot"
        return "nothing to undo"
