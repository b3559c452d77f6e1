"""Scheduled backups: a VM's RBD snapshot copied to its business's backup target.

Where it sits: the actuator of ``BackupInstance`` (planned by ``policies.backups``), run by the
executor like every action: journalled steps, idempotent by key, verified, compensated. Steps:

1. an RBD snapshot named after the backup (``b20261201t0300``) of the VM's image, its file
   systems frozen first where the guest agent allows (``actuators.rbd_snapshot``);
2. the copy to the target:

   - a **pool** (on a CRUSH rule of its own): the backup image ``VM.LINEAGE`` receives only
     what changed since the previous backup it holds (the first copy is full), then a snapshot
     of the same name: RBD's export-diff/import-diff, done in-process (``actuators.rbd_diff``);
   - a **folder** outside Ceph: a full export in RBD's diff format (``rbd import-diff`` reads
     it), then a manifest, written last, so a manifest means a complete backup;

3. pruning: the source keeps only its newest backup snapshot (the base of the next
   incremental copy), the target only the ``keep`` newest backups.

A failure is recorded at the target (its VM and time) for the catalogue, so the next attempt
waits; a backup image is never removed by retire (backups outlive their VM).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import rados
import rbd

from actuators import rbd_snapshot
from actuators.base import ActionContext, find_domain, require_owned
from actuators.rbd_diff import apply_diff, copy_changes, write_diff
from actuators.rbd_store import META_RESTORED_FROM, RbdStore, read_metadata
from autoscaler.model import (
    BackupInstance,
    PermanentError,
    PreconditionFailed,
    TemporaryError,
    check_name,
)
from autoscaler.model.backups import (
    BACKUP_ID_PATTERN,
    BACKUP_IMAGE_KEYS,
    DIFF_SUFFIX,
    FAILURES_FILE,
    FAILURES_OBJECT,
    MANIFEST_SUFFIX,
    META_PREFIX,
    backup_image,
    backup_image_keys,
)

_BACKUP_ID = re.compile(rf"\A{BACKUP_ID_PATTERN}\Z")


@dataclass(frozen=True)
class BackupTarget:
    """Where a business's backups go, as the action's facts say (from its policy)."""

    kind: str
    where: str
    keep: int

    @classmethod
    def of(cls, action: BackupInstance) -> BackupTarget:
        kind, where, keep = (
            action.facts.get("target_kind"),
            action.facts.get("target"),
            action.facts.get("keep"),
        )
        if kind not in ("pool", "folder") or not isinstance(where, str) or not where:
            raise PermanentError(f"backup {action.key}: its facts name no target")
        if not isinstance(keep, int) or keep < 1:
            raise PermanentError(f"backup {action.key}: its facts say no 'keep' of at least 1")
        if kind == "pool":
            check_name(where, what="backup pool")
        elif not where.startswith("/") or ".." in Path(where).parts:
            raise PermanentError(f"backup folder {where!r} is not an absolute path")
        return cls(str(kind), where, keep)


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup at a target."""

    vm: str
    business: str
    lineage: str
    backup_id: str
    taken_at: float
    consistency: str
    parent: str | None
    location: str


def is_backup_id(name: str) -> bool:
    return bool(_BACKUP_ID.match(name))


def lineage_of(domain: libvirt.virDomain) -> str:
    return str(domain.UUIDString()).replace("-", "")[:8]


# ---- a pool target ---------------------------------------------------------------------------


def _open(ioctx: Any, name: str, snapshot: str | None = None) -> Any:
    return rbd.Image(ioctx, name, snapshot=snapshot, read_only=snapshot is not None)


def pool_backups(store: RbdStore, pool: str, business: str | None = None) -> list[BackupInfo]:
    """Every complete backup in ``pool`` (of ``business`` only, if given), oldest first."""
    out: list[BackupInfo] = []
    with store.ioctx(pool) as ioctx:
        for name in rbd.RBD().list(ioctx):
            try:
                with rbd.Image(ioctx, name, read_only=True) as img:
                    sids = [str(s["name"]) for s in img.list_snaps()]
                    meta = read_metadata(img, backup_image_keys(sids))
                    if META_PREFIX + "vm" not in meta:
                        continue
                    if business is not None and meta.get(META_PREFIX + "business") != business:
                        continue
                    for sid in sids:
                        if not is_backup_id(sid):
                            continue
                        out.append(
                            BackupInfo(
                                vm=meta[META_PREFIX + "vm"],
                                business=meta.get(META_PREFIX + "business", ""),
                                lineage=meta.get(META_PREFIX + "lineage", ""),
                                backup_id=sid,
                                taken_at=float(meta.get(f"{META_PREFIX}{sid}.taken_at", "0")),
                                consistency=meta.get(f"{META_PREFIX}{sid}.consistency", "unknown"),
                                parent=meta.get(f"{META_PREFIX}{sid}.parent") or None,
                                location=f"{pool}/{name}@{sid}",
                            )
                        )
            except rbd.ImageNotFound:
                continue
            except rbd.Error as exc:
                raise TemporaryError(f"rbd listing of backups in {pool}: {exc}") from exc
    return sorted(out, key=lambda b: (b.vm, b.backup_id))


def _to_pool(
    store: RbdStore,
    source: tuple[str, str],
    backup_id: str,
    target: BackupTarget,
    image: str,
    stamp: dict[str, str],
    consistency: str,
) -> tuple[int, str | None]:
    """Copy ``source@backup_id`` into ``target.where/image``; (bytes written, base)."""
    src_pool, src_image = source
    with store.ioctx(src_pool) as sio, store.ioctx(target.where) as tio:
        try:
            with _open(sio, src_image, backup_id) as snap:
                size = snap.size()
                with contextlib.suppress(rbd.ImageExists):
                    rbd.RBD().create(tio, image, size, features=rbd.RBD_FEATURE_LAYERING)
                with rbd.Image(tio, image) as dst:
                    for key, value in stamp.items():
                        dst.metadata_set(META_PREFIX + key, value)
                    held = {str(s["name"]) for s in dst.list_snaps()}
                    if backup_id in held:
                        return 0, None  # copied before a crash: the snapshot came last
                    with _open(sio, src_image) as live:
                        source_snaps = {str(s["name"]) for s in live.list_snaps()}
                    bases = sorted(b for b in held & source_snaps if is_backup_id(b))
                    base = bases[-1] if bases else None
                    written = copy_changes(snap, base, dst)
                    dst.metadata_set(f"{META_PREFIX}{backup_id}.taken_at", f"{time.time():.3f}")
                    dst.metadata_set(f"{META_PREFIX}{backup_id}.consistency", consistency)
                    dst.metadata_set(f"{META_PREFIX}{backup_id}.parent", base or "")
                    dst.create_snap(backup_id)
                    return written, base
        except rbd.Error as exc:
            raise TemporaryError(f"backup copy to {target.where}/{image}: {exc}") from exc


def _prune_pool(store: RbdStore, pool: str, image: str, keep: int) -> list[str]:
    with store.ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
        ids = sorted(str(s["name"]) for s in img.list_snaps() if is_backup_id(str(s["name"])))
        dropped = ids[: max(0, len(ids) - keep)]
        for sid in dropped:
            img.remove_snap(sid)
            for key in backup_image_keys([sid])[len(BACKUP_IMAGE_KEYS) :]:
                with contextlib.suppress(KeyError, rbd.ObjectNotFound):
                    img.metadata_remove(key)
        return dropped


def _record_pool_failure(store: RbdStore, pool: str, vm: str, when: float) -> None:
    with store.ioctx(pool) as ioctx, rados.WriteOpCtx() as op:
        ioctx.set_omap(op, (vm,), (f"{when:.3f}".encode(),))
        ioctx.operate_write_op(op, FAILURES_OBJECT)


# ---- a folder target ------------------------------------------------------------------------


def folder_of(target: BackupTarget, business: str, image: str) -> Path:
    return Path(target.where) / check_name(business, what="business") / image


def folder_backups(root: Path, business: str | None = None) -> list[BackupInfo]:
    out: list[BackupInfo] = []
    businesses = [root / business] if business else sorted(p for p in root.iterdir() if p.is_dir())
    for folder in businesses:
        if not folder.is_dir():
            continue
        for manifest in sorted(folder.glob(f"*/*{MANIFEST_SUFFIX}")):
            try:
                data = json.loads(manifest.read_text())
                out.append(
                    BackupInfo(
                        vm=str(data["vm"]),
                        business=str(data["business"]),
                        lineage=str(data["lineage"]),
                        backup_id=str(data["id"]),
                        taken_at=float(data["taken_at"]),
                        consistency=str(data["consistency"]),
                        parent=None,
                        location=str(manifest.with_suffix(DIFF_SUFFIX)),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a manifest being written, or not ours: not a complete backup
    return sorted(out, key=lambda b: (b.vm, b.backup_id))


def _to_folder(
    store: RbdStore,
    source: tuple[str, str],
    backup_id: str,
    folder: Path,
    manifest: dict[str, str | float],
) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{backup_id}{DIFF_SUFFIX}"
    partial = final.with_suffix(".partial")
    src_pool, src_image = source
    with store.ioctx(src_pool) as sio:
        try:
            with _open(sio, src_image, backup_id) as snap, partial.open("wb") as out:
                written = write_diff(snap, None, backup_id, out)
                out.flush()
                os.fsync(out.fileno())
        except rbd.Error as exc:
            raise TemporaryError(f"backup export of {src_image}@{backup_id}: {exc}") from exc
    os.replace(partial, final)
    tmp = folder / f".{backup_id}{MANIFEST_SUFFIX}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / f"{backup_id}{MANIFEST_SUFFIX}")
    return written


def _prune_folder(folder: Path, keep: int) -> list[str]:
    ids = sorted(p.name.removesuffix(MANIFEST_SUFFIX) for p in folder.glob(f"b*{MANIFEST_SUFFIX}"))
    dropped = [i for i in ids[: max(0, len(ids) - keep)] if is_backup_id(i)]
    for sid in dropped:
        (folder / f"{sid}{MANIFEST_SUFFIX}").unlink(missing_ok=True)  # incomplete from here on
        (folder / f"{sid}{DIFF_SUFFIX}").unlink(missing_ok=True)
    return dropped


def _record_folder_failure(target: BackupTarget, business: str, vm: str, when: float) -> None:
    path = Path(target.where) / business / FAILURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[vm] = when
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known))
    os.replace(tmp, path)


# ---- the actuator ---------------------------------------------------------------------------


class BackupActuator:
    kind = "backup"

    @contextlib.contextmanager
    def _vm(self, action: BackupInstance, ctx: ActionContext) -> Iterator[Any]:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive():
                raise PreconditionFailed(f"{action.vm} is not running on {action.host}")
            yield dom

    def _source(self, dom: Any, vm: str) -> tuple[str, str]:
        disk = rbd_snapshot.rbd_disk_of(dom, vm)
        if disk is None:
            raise PreconditionFailed(
                f"{vm}'s disk is not on RBD: backups need the template's storage to be rbd"
            )
        return disk

    def _held(self, action: BackupInstance, ctx: ActionContext, lineage: str) -> bool:
        target = BackupTarget.of(action)
        image = backup_image(action.vm, lineage)
        if target.kind == "pool":
            snaps = ctx.fleet.rbd_store().snapshots(target.where, image)
            return any(s.name == action.backup_id for s in snaps)
        folder = folder_of(target, action.business, image)
        return (folder / f"{action.backup_id}{MANIFEST_SUFFIX}").exists()

    def already_done(self, action: BackupInstance, ctx: ActionContext) -> bool:
        with self._vm(action, ctx) as dom:
            if rbd_snapshot.rbd_disk_of(dom, action.vm) is None:
                return False  # the precondition says why; no need to reach Ceph for it
            return self._held(action, ctx, lineage_of(dom))

    def precondition(self, action: BackupInstance, ctx: ActionContext) -> None:
        BackupTarget.of(action)
        with self._vm(action, ctx) as dom:
            require_owned(dom, action.vm, action.business, ctx.fleet, "backing up")
            self._source(dom, action.vm)

    def execute(self, action: BackupInstance, ctx: ActionContext) -> None:
        target = BackupTarget.of(action)
        store = ctx.fleet.rbd_store()
        started = time.monotonic()
        with self._vm(action, ctx) as dom:
            source = self._source(dom, action.vm)
            lineage = lineage_of(dom)
            ctx.step("snapshotting")
            rbd_snapshot.take(store, dom, *source, action.backup_id)
            # Read back, not taken from the call: a snapshot made before a crash says its own.
            consistency = rbd_snapshot.consistency_of(store, *source, action.backup_id)
        image = backup_image(action.vm, lineage)
        ctx.step("copying")
        if target.kind == "pool":
            stamp = {"vm": action.vm, "business": action.business, "lineage": lineage}
            written, base = _to_pool(
                store, source, action.backup_id, target, image, stamp, consistency
            )
        else:
            manifest: dict[str, str | float] = {
                "vm": action.vm,
                "business": action.business,
                "lineage": lineage,
                "id": action.backup_id,
                "taken_at": time.time(),
                "consistency": consistency,
                "source": "/".join(source),
                "format": "rbd diff v1 (rbd import-diff reads it), full",
            }
            folder = folder_of(target, action.business, image)
            written, base = _to_folder(store, source, action.backup_id, folder, manifest), None
        ctx.figures["backup_s"] = time.monotonic() - started
        ctx.figures["backup_mib"] = written / (1 << 20)
        ctx.figures["backup_incremental"] = 1.0 if base else 0.0
        ctx.step("copied")
        # The source keeps only this snapshot: the base of the next incremental copy.
        for snap in store.snapshots(*source):
            if is_backup_id(snap.name) and snap.name != action.backup_id:
                store.remove_snapshot(*source, snap.name)
        if target.kind == "pool":
            _prune_pool(store, target.where, image, target.keep)
        else:
            _prune_folder(folder_of(target, action.business, image), target.keep)
        ctx.step("pruned")

    def verify(self, action: BackupInstance, ctx: ActionContext) -> str:
        target = BackupTarget.of(action)
        with self._vm(action, ctx) as dom:
            lineage = lineage_of(dom)
        if not self._held(action, ctx, lineage):
            raise TemporaryError(f"backup {action.backup_id} of {action.vm} is not at the target")
        return f"backup {action.backup_id} of {action.vm} at {target.kind} {target.where}"

    def compensate(self, action: BackupInstance, ctx: ActionContext) -> str:
        """Record the failure at the target (the catalogue holds the next attempt back) and
        remove a partial folder export; a snapshot already taken stays as the next base."""
        target = BackupTarget.of(action)
        now = time.time()
        try:
            if target.kind == "pool":
                _record_pool_failure(ctx.fleet.rbd_store(), target.where, action.vm, now)
            else:
                _record_folder_failure(target, action.business, action.vm, now)
                for partial in Path(target.where, action.business).glob(
                    f"{action.vm}.*/{action.backup_id}.partial"
                ):
                    partial.unlink(missing_ok=True)
        except (OSError, rados.Error, TemporaryError, PermanentError) as exc:
            return f"the failure could not be recorded at the target: {exc}"
        return f"failure of {action.vm}'s backup recorded at {target.kind} {target.where}"


# ---- restore ----------------------------------------------------------------------------------


def find_backup(
    store: RbdStore, target: tuple[str, str], business: str, vm: str, backup_id: str
) -> BackupInfo | None:
    kind, where = target
    found = pool_backups(store, where, business) if kind == "pool" else []
    if kind == "folder":
        found = folder_backups(Path(where), business)
    matches = [b for b in found if b.vm == vm and b.backup_id == backup_id]
    return max(matches, key=lambda b: b.taken_at) if matches else None


def restore_image(
    store: RbdStore,
    backup: BackupInfo,
    target_kind: str,
    pool: str,
    new_vm: str,
    created: str,
    stamp: Any,
) -> None:
    """Write ``backup`` into a new image ``pool/new_vm``, stamped as ``new_vm`` of its business
    (the clone actuator then defines and starts it like any clone whose image is made). Refuses
    an image of that name that is not this restore's own, left by an interrupted run."""
    check_name(new_vm, what="vm name")
    meta = store.metadata(pool, new_vm)
    if meta is not None:
        if meta.get(META_RESTORED_FROM) == backup.location:
            return
        raise PreconditionFailed(f"rbd image {pool}/{new_vm} exists: restore never overwrites")
    with store.ioctx(pool) as ioctx:
        try:
            if target_kind == "pool":
                bpool, rest = backup.location.split("/", 1)
                bimage, snap = rest.split("@", 1)
                with store.ioctx(bpool) as bio, _open(bio, bimage, snap) as source:
                    rbd.RBD().create(
                        ioctx, new_vm, source.size(), features=rbd.RBD_FEATURE_LAYERING
                    )
                    with rbd.Image(ioctx, new_vm) as dst:
                        copy_changes(source, None, dst)
            else:
                rbd.RBD().create(ioctx, new_vm, 0, features=rbd.RBD_FEATURE_LAYERING)
                with rbd.Image(ioctx, new_vm) as dst, open(backup.location, "rb") as stream:
                    apply_diff(stream, dst)
            with rbd.Image(ioctx, new_vm) as dst:
                dst.metadata_set(META_RESTORED_FROM, backup.location)
        except rbd.ImageExists as exc:
            raise PreconditionFailed(f"rbd image {pool}/{new_vm} appeared meanwhile") from exc
        except rbd.Error as exc:
            raise TemporaryError(f"restore into {pool}/{new_vm}: {exc}") from exc
    store.ensure_stamped(pool, new_vm, backup.business, created, stamp)
