"""Live migration: move a running VM to another host, with block migration of a local overlay.

Where it sits: the actuator of ``LiveMigrate`` (evacuations of failing racks, rebalancing), run
by the executor under its per-host caps, and settled by the reconciler after a crash. Steps:
refuse what cannot move (SR-IOV NICs, libvirt snapshot metadata); merge our disk snapshot first;
pre-create the destination overlay on the same template (``NON_SHARED_INC`` then copies only the
overlay); ``migrateToURI3`` peer to peer, live, persistent on the destination and undefined on
the source, with the policy's maximum downtime; the job's progress watched and the job aborted
on timeout or stall; then the source overlay deleted. A VM whose disk is on RBD moves without
any of the disk steps: every host opens the same image (the destination gets the cephx secret
first), so only memory crosses. Afterwards the VM runs on exactly one host, and the guest
answers there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import libvirt

from actuators.base import (
    ActionContext,
    disk_sources,
    find_domain,
    libvirt_call,
    require_owned,
)
from actuators.ceph_secret import ensure_ceph_secret
from actuators.config_drive import DEVICE as DRIVE
from actuators.config_drive import delete_drive_volume, ensure_volume, volume_size
from actuators.domain_xml import rbd_disks, rbd_user
from actuators.snapshot import DISK, merge_into_overlay, snapshot_tag_of
from actuators.volumes import delete_overlay, ensure_overlay, overlay_exists
from autoscaler.model import (
    LiveMigrate,
    PermanentError,
    PreconditionFailed,
    RbdStorage,
    RefusedAction,
    TemporaryError,
)

SHARED_STORAGE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
FLAGS = SHARED_STORAGE_FLAGS | libvirt.VIR_MIGRATE_NON_SHARED_INC
NOT_LIVE_MIGRATABLE_NICS = ("sr-iov",)


def migration_flags(*uris: str, shared_storage: bool = False) -> int:
    """The migration flags for hosts reached at ``uris`` (source, destination): the migration
    stream is encrypted (``VIR_MIGRATE_TLS``, with the hosts' libvirt TLS certificates) when
    any of them is reached over ``qemu+tls`` -- a fleet that protects its control channel
    does not send guest memory in clear. ``shared_storage``: the disk is on RBD, not copied."""
    tls = any(urlsplit(uri).scheme == "qemu+tls" for uri in uris)
    base = SHARED_STORAGE_FLAGS if shared_storage else FLAGS
    return int(base | (libvirt.VIR_MIGRATE_TLS if tls else 0))


@dataclass(frozen=True)
class Placement:
    """Where a VM is: per host, None (absent), 'running', 'paused' or 'defined' (inactive)."""

    source: str | None
    destination: str | None


def _state(conn: libvirt.virConnect, vm: str) -> str | None:
    dom = find_domain(conn, vm)
    if dom is None:
        return None
    try:
        if not dom.isActive():
            return "defined"
        state = dom.state(0)[0]
    except libvirt.libvirtError:
        return None  # it left this host between the lookup and the question (a migration)
    return "running" if state == libvirt.VIR_DOMAIN_RUNNING else "paused"


def placement(ctx: ActionContext, action: LiveMigrate) -> Placement:
    with (
        ctx.fleet.connection(action.source) as src,
        ctx.fleet.connection(action.destination) as dst,
    ):
        return Placement(_state(src, action.vm), _state(dst, action.vm))


class MigrateActuator:
    """``bandwidth_mib_s`` caps the migration stream (0: unlimited); ``stall_s`` is how long the
    remaining data may stop shrinking before the job is aborted."""

    kind = "live_migrate"

    def __init__(self, bandwidth_mib_s: int = 0, stall_s: float = 30.0) -> None:
        self.bandwidth_mib_s = bandwidth_mib_s
        self.stall_s = stall_s

    def already_done(self, action: LiveMigrate, ctx: ActionContext) -> bool:
        where = placement(ctx, action)
        return where.source is None and where.destination == "running"

    def precondition(self, action: LiveMigrate, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.source) as src:
            dom = find_domain(src, action.vm)
            if dom is None:
                raise PreconditionFailed(f"{action.vm} is not on {action.source}")
            meta = require_owned(dom, action.vm, action.business, ctx.fleet, "migrating")
            if meta.nic in NOT_LIVE_MIGRATABLE_NICS:
                raise RefusedAction(
                    f"{action.vm} has an {meta.nic} NIC (a passed-through device): it cannot be"
                    " live-migrated; clone a replacement on the destination and retire it instead"
                )
            if not dom.isActive():
                raise PreconditionFailed(f"{action.vm} is not running on {action.source}")
            if dom.snapshotNum(0) > 0:
                raise RefusedAction(
                    f"{action.vm} has libvirt snapshot metadata, which libvirt refuses to"
                    " migrate; merge and delete those snapshots first"
                )
        with ctx.fleet.connection(action.destination) as dst:
            if find_domain(dst, action.vm) is not None:
                raise PreconditionFailed(f"{action.vm} is already defined on {action.destination}")

    def execute(self, action: LiveMigrate, ctx: ActionContext) -> None:
        with (
            ctx.fleet.connection(action.source) as src,
            ctx.fleet.connection(action.destination) as dst,
        ):
            dom = find_domain(src, action.vm)
            if dom is None or not dom.isActive():
                raise PreconditionFailed(f"{action.vm} is not running on {action.source}")
            meta = require_owned(dom, action.vm, action.business, ctx.fleet, "migrating")
            shared = self._shared_storage(action, ctx, dom, dst)
            if not shared:
                if snapshot_tag_of(action.vm, disk_sources(dom).get(DISK, "")) is not None:
                    ctx.step("merging-snapshot")
                    merge_into_overlay(src, dom, max(1.0, ctx.remaining()))
                ctx.step("creating-destination-overlay")
                libvirt_call(
                    "destination overlay", lambda: ensure_overlay(dst, action.vm, meta.image)
                )
                ctx.step("destination-overlay-created")
                # The config drive is copied like the overlay, into an empty volume of its size.
                drive_size = volume_size(src, action.vm) if DRIVE in disk_sources(dom) else None
                if drive_size is not None:
                    libvirt_call(
                        "destination config drive",
                        lambda: ensure_volume(dst, action.vm, drive_size),
                    )
                    ctx.step("destination-config-drive-created")
            libvirt_call(
                "set max downtime", lambda: dom.migrateSetMaxDowntime(action.max_downtime_ms, 0)
            )
            started = time.monotonic()
            self._migrate(action, ctx, dom, shared)
            ctx.figures["migration_total_s"] = time.monotonic() - started
            ctx.step("migrated")
            moved = find_domain(dst, action.vm)
            if moved is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                    if "downtime" in stats:
                        ctx.figures["migration_downtime_s"] = stats["downtime"] / 1000.0
            if not shared:
                libvirt_call("delete source overlay", lambda: delete_overlay(src, action.vm))
                libvirt_call("delete source drive", lambda: delete_drive_volume(src, action.vm))
                ctx.step("source-overlay-deleted")

    def _shared_storage(
        self,
        action: LiveMigrate,
        ctx: ActionContext,
        dom: libvirt.virDomain,
        dst: libvirt.virConnect,
    ) -> bool:
        """True when every disk of the VM is on RBD (then the destination gets the secret)."""
        xml = dom.XMLDesc(0)
        if not rbd_disks(xml) or disk_sources(dom):
            return False
        storage = ctx.fleet.business(action.business).template.storage
        user = storage.user if isinstance(storage, RbdStorage) else rbd_user(xml)
        ctx.step("destination-secret")
        ensure_ceph_secret(dst, ctx.fleet.rbd_store(), user)
        return True

    def _migrate(
        self, action: LiveMigrate, ctx: ActionContext, dom: libvirt.virDomain, shared: bool
    ) -> None:
        params: dict[str, object] = {}
        if not shared:
            # Only the VM's own volumes are copied (the overlay, and the config drive if any).
            disks = [d for d in (DISK, DRIVE) if d in disk_sources(dom)]
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks
        if self.bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib_s
        dest_uri = ctx.fleet.uri(action.destination)
        flags = migration_flags(ctx.fleet.uri(action.source), dest_uri, shared_storage=shared)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                dom.migrateToURI3(dest_uri, params, flags)
            except BaseException as exc:  # handed to the watching thread
                failure.append(exc)

        worker = threading.Thread(target=run, name=f"migrate-{action.vm}", daemon=True)
        # The job is watched over a connection of its own: a call on the connection that is
        # inside migrateToURI3 waits for it.
        with ctx.fleet.connection(action.source) as watch_conn:
            watched = watch_conn.lookupByName(action.vm)
            worker.start()
            self._watch(action, ctx, worker, watched)
        if failure:
            exc = failure[0]
            raise TemporaryError(f"migration of {action.vm} failed: {exc}", retry_after=5) from exc

    def _watch(
        self,
        action: LiveMigrate,
        ctx: ActionContext,
        worker: threading.Thread,
        dom: libvirt.virDomain,
    ) -> None:
        timeout = min(action.timeout_s, max(0.1, ctx.remaining()))
        deadline = time.monotonic() + timeout
        best_remaining: int | None = None
        most_processed = 0
        progressed_at = time.monotonic()
        announced = False
        abort_reason = ""
        while worker.is_alive():
            worker.join(0.1)
            if not worker.is_alive():
                break
            now = time.monotonic()
            with contextlib.suppress(libvirt.libvirtError):
                stats = dom.jobStats(0)
                remaining = stats.get("data_remaining")
                processed = stats.get("data_processed", 0) + stats.get("disk_processed", 0)
                if stats.get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE and not announced:
                    announced = True
                    ctx.step("migrating")
                # Progress is less left to send, or more sent: while the disk is copied (and
                # under a bandwidth cap) the memory left can stay flat for a long time.
                if remaining is not None and (best_remaining is None or remaining < best_remaining):
                    best_remaining = remaining
                    progressed_at = now
                if processed > most_processed:
                    most_processed = processed
                    progressed_at = now
            if not abort_reason and now > deadline:
                abort_reason = f"timed out after {timeout:.1f} s"
            elif not abort_reason and announced and now - progressed_at > self.stall_s:
                abort_reason = f"stalled for {self.stall_s:.0f} s"
            if abort_reason:
                # abortJob fails while the job is still being set up: keep trying.
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
        if abort_reason:
            # Not retried within this plan: the same migration would most likely time out
            # again; the next decision sees the VM still on its source.
            raise PermanentError(f"migration of {action.vm} aborted: {abort_reason}")

    def verify(self, action: LiveMigrate, ctx: ActionContext) -> str:
        where = placement(ctx, action)
        if where.source is not None or where.destination != "running":
            raise TemporaryError(
                f"{action.vm}: source {where.source or 'absent'},"
                f" destination {where.destination or 'absent'}"
            )
        with (
            ctx.fleet.connection(action.source) as src,
            ctx.fleet.connection(action.destination) as dst,
        ):
            if overlay_exists(src, action.vm):
                raise TemporaryError(f"{action.vm}'s overlay is still on {action.source}")
            dom = find_domain(dst, action.vm)
            if dom is None or not dom.isPersistent():
                raise TemporaryError(f"{action.vm} is not persistent on {action.destination}")
            guest = _guest_after_move(ctx, dst, dom)
            if guest is not None and not guest[0]:
                raise TemporaryError(f"{action.vm}: {guest[1]} on the destination")
        return f"{action.vm} runs on {action.destination} only" + (f"; {guest[1]}" if guest else "")

    def compensate(self, action: LiveMigrate, ctx: ActionContext) -> str:
        return settle(ctx, action)[1]


def settle(ctx: ActionContext, action: LiveMigrate, job_wait_s: float = 60.0) -> tuple[bool, str]:
    """End with the VM on exactly one host and no leftovers, whatever was interrupted.

    A migration job still running on the source (libvirt finishes a peer-to-peer migration
    even when its client died) is waited for first. Then the running copy wins; the other
    host's definition and overlay are removed. Returns (moved to the destination, what was
    done).
    """
    with (
        ctx.fleet.connection(action.source) as src,
        ctx.fleet.connection(action.destination) as dst,
    ):
        dom = find_domain(src, action.vm)
        if dom is not None and _state(src, action.vm) in ("running", "paused"):
            deadline = time.monotonic() + job_wait_s
            while time.monotonic() < deadline:
                try:
                    if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                        break
                except libvirt.libvirtError:
                    break  # the domain left the source meanwhile
                time.sleep(0.2)
            else:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
        src_state, dst_state = _state(src, action.vm), _state(dst, action.vm)
        if dst_state == "running" and src_state != "running":
            _remove_copy(src, action.vm)
            guest = _guest_after_move(ctx, dst, dst.lookupByName(action.vm))
            return True, f"{action.vm} completed its move: on {action.destination} only" + (
                f"; {guest[1]}" if guest else ""
            )
        if src_state in ("running", "paused"):
            if src_state == "paused":
                libvirt_call("resume on source", src.lookupByName(action.vm).resume)
            _remove_copy(dst, action.vm)
            # An interrupted migration can leave the guest hung on the source too (TCG): say so.
            guest = _guest_after_move(ctx, src, src.lookupByName(action.vm))
            return False, (
                f"{action.vm} stays on {action.source}; {action.destination} cleaned"
                + (f"; {guest[1]}" if guest else "")
            )
        if dst_state == "paused":
            libvirt_call("resume on destination", dst.lookupByName(action.vm).resume)
            _remove_copy(src, action.vm)
            guest = _guest_after_move(ctx, dst, dst.lookupByName(action.vm))
            return True, (
                f"{action.vm} resumed on {action.destination}; {action.source} cleaned"
                + (f"; {guest[1]}" if guest else "")
            )
        raise TemporaryError(
            f"{action.vm} runs on neither host (source {src_state}, destination {dst_state})",
            retry_after=5,
        )


def _guest_after_move(
    ctx: ActionContext, conn: libvirt.virConnect, dom: libvirt.virDomain
) -> tuple[bool, str] | None:
    """Whether the moved guest answers on its new host, and what it says; None when the fleet
    has no way to ask.

    A migration that libvirt calls complete can still leave a guest that no longer runs
    (seen on TCG after long, throttled migrations): the journal says so rather than "done"
    alone.
    """
    observer = ctx.fleet.observer
    if observer is None:
        return None
    view = observer.wait_for(conn, dom, lambda _v: True, max(2.0, min(15.0, ctx.remaining())))
    if view is None:
        return False, "the guest does not answer"
    return True, f"the guest answers ({view.online_cpus} CPUs, {view.mem_kib} KiB)"


def _remove_copy(conn: libvirt.virConnect, vm: str) -> None:
    """Remove an inactive definition, the overlay and the config drive of ``vm`` on this host
    (never a running domain)."""
    dom = find_domain(conn, vm)
    if dom is not None:
        if dom.isActive():
            raise TemporaryError(f"{vm} is unexpectedly active on {conn.getHostname()}")
        libvirt_call(
            "undefine leftover",
            lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA),
        )
    libvirt_call("delete leftover overlay", lambda: delete_overlay(conn, vm))
    libvirt_call("delete leftover drive", lambda: delete_drive_volume(conn, vm))
