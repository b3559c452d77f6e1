"""VM disks on Ceph RBD: template versions, copy-on-write clones, snapshots and removal.

Where it sits: the disk half of the clone, retire, snapshot, backup and restore actuators for a
business whose template has ``storage: rbd``, and of ``autoscaler images push``. A template is
one RBD image per business with one protected snapshot per version (``web@v3``); a clone is a
copy-on-write child of that snapshot named after its VM, and carries the VM's ownership stamp
in its image metadata, so nothing removes an image this fleet did not make. Every call goes
through python-rbd on the process's one rados handle (whose client timeouts bound each call);
a cluster that does not answer is a ``TemporaryError``, a missing template a ``PermanentError``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import rados
import rbd

from autoscaler.model import (
    FleetKeys,
    NotOwned,
    OwnershipStamp,
    PermanentError,
    TemporaryError,
    check_name,
)

META_VM = "autoscaler.vm"
META_BUSINESS = "autoscaler.business"
META_CREATED = "autoscaler.created"
META_OWNER = "autoscaler.owner"
META_RESTORED_FROM = "autoscaler.restored-from"
SNAP_META_PREFIX = "autoscaler.snap."
STAMP_KEYS = (META_VM, META_BUSINESS, META_CREATED, META_OWNER)
OBJECT_ORDER = 22  # 4 MiB objects, RBD's default
_MON_ADDR = re.compile(r"(?:v[12]:)?(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})")


@dataclass(frozen=True)
class RbdSnapshot:
    name: str
    timestamp: float
    protected: bool


@dataclass(frozen=True)
class RbdDiskSource:
    """What a domain's ``<disk type='network'>`` needs to open an RBD image."""

    pool: str
    image: str
    monitors: tuple[tuple[str, int], ...]
    user: str
    secret_uuid: str | None


class RbdStore:
    """RBD operations on the process's rados handle (``connect`` is called once, at first use:
    a Ceph that is down when the controller starts costs only the RBD work until it is back)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._cluster: Any = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> Any:
        with self._lock:
            if self._cluster is None:
                self._cluster = self._connect()
            return self._cluster

    @contextlib.contextmanager
    def ioctx(self, pool: str) -> Iterator[Any]:
        check_name(pool, what="pool")
        try:
            ioctx = self.cluster.open_ioctx(pool)
        except rados.ObjectNotFound as exc:
            raise PermanentError(f"ceph pool {pool!r} does not exist") from exc
        except rados.Error as exc:
            raise TemporaryError(f"ceph pool {pool}: {exc}", retry_after=5) from exc
        try:
            yield ioctx
        finally:
            ioctx.close()

    # ---- the cluster ----------------------------------------------------------------------

    def monitors(self) -> tuple[tuple[str, int], ...]:
        """The monitors' addresses as QEMU must be given them (from the client's mon_host)."""
        text = str(self.cluster.conf_get("mon_host") or "")
        found = tuple((host, int(port)) for host, port in _MON_ADDR.findall(text))
        if not found:
            raise PermanentError(f"no monitor address of the form IP:PORT in mon_host {text!r}")
        return found

    def fsid(self) -> str:
        return str(self.cluster.get_fsid())

    def user_key(self, user: str) -> bytes:
        """The cephx key of ``client.USER`` (for the hosts' libvirt secret)."""
        check_name(user, what="cephx user")
        command = json.dumps({"prefix": "auth get-key", "entity": f"client.{user}"})
        try:
            ret, out, err = self.cluster.mon_command(command, b"", timeout=10)
        except rados.Error as exc:
            raise TemporaryError(f"ceph auth get-key client.{user}: {exc}") from exc
        if ret != 0:
            raise PermanentError(f"ceph auth get-key client.{user}: {err or ret}")
        return base64.b64decode(out.strip())

    # ---- images ----------------------------------------------------------------------------

    def exists(self, pool: str, image: str) -> bool:
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image, read_only=True):
                    return True
            except rbd.ImageNotFound:
                return False
            except rbd.Error as exc:
                raise TemporaryError(f"rbd {pool}/{image}: {exc}", retry_after=2) from exc

    def metadata(self, pool: str, image: str) -> dict[str, str] | None:
        """The image's metadata, None when there is no such image."""
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image, read_only=True) as img:
                    return read_metadata(img, vm_image_keys(img))
            except rbd.ImageNotFound:
                return None
            except rbd.Error as exc:
                raise TemporaryError(f"rbd {pool}/{image}: {exc}", retry_after=2) from exc

    def clone(
        self,
        pool: str,
        template: str,
        version: str,
        vm: str,
        business: str,
        created: str,
        stamp: OwnershipStamp,
    ) -> bool:
        """Make ``pool/vm`` a copy-on-write clone of ``template@version`` stamped as ours;
        False when it already exists (a clone resumed after a crash)."""
        check_name(vm, what="vm name")
        with self.ioctx(pool) as ioctx:
            try:
                rbd.RBD().clone(
                    ioctx, template, version, ioctx, vm, features=rbd.RBD_FEATURE_LAYERING
                )
            except rbd.ImageExists:
                return False
            except rbd.ImageNotFound as exc:
                raise PermanentError(
                    f"template {pool}/{template}@{version} does not exist"
                    " (autoscaler images push makes it)"
                ) from exc
            except rbd.Timeout as exc:
                raise TemporaryError(
                    f"rbd clone {pool}/{vm} timed out: pool {pool} takes no writes (full, over"
                    f" its quota, or the cluster paused): {exc}",
                    retry_after=5,
                ) from exc
            except rbd.Error as exc:
                raise TemporaryError(f"rbd clone {pool}/{vm}: {exc}", retry_after=2) from exc
            # The stamp goes on before anything can use the image; a crash in between leaves an
            # unstamped image that the clone's own resume finds (it is named after its VM).
            self._stamp(ioctx, vm, business, created, stamp)
            return True

    def _stamp(
        self,
        ioctx: Any,
        vm: str,
        business: str,
        created: str,
        stamp: OwnershipStamp,
        image: str | None = None,
    ) -> None:
        """Stamp ``image`` (the VM's own disk unless named) with the VM's ownership."""
        try:
            with rbd.Image(ioctx, image or vm) as img:
                img.metadata_set(META_VM, vm)
                img.metadata_set(META_BUSINESS, business)
                img.metadata_set(META_CREATED, created)
                img.metadata_set(META_OWNER, f"{stamp.key_id}:{stamp.mac}")
        except rbd.Error as exc:
            raise TemporaryError(f"rbd stamp {vm}: {exc}", retry_after=2) from exc

    def ensure_stamped(
        self,
        pool: str,
        vm: str,
        business: str,
        created: str,
        stamp: OwnershipStamp,
    ) -> None:
        """Stamp a clone left unstamped by a crash between its creation and its stamp."""
        meta = self.metadata(pool, vm)
        if meta is None:
            raise TemporaryError(f"rbd image {pool}/{vm} vanished", retry_after=1)
        if META_OWNER in meta:
            return
        with self.ioctx(pool) as ioctx:
            self._stamp(ioctx, vm, business, created, stamp)

    def put_image(
        self,
        pool: str,
        image: str,
        data: bytes,
        vm: str,
        business: str,
        created: str,
        stamp: OwnershipStamp,
    ) -> None:
        """Make ``pool/image`` (a VM's own image besides its disk: its config drive) hold
        ``data``, stamped with the VM's ownership first. Written whole each time, so a crash
        mid-write is repaired by the resumed clone; the caller checks an existing image is
        this VM's before."""
        check_name(image, what="rbd image")
        with self.ioctx(pool) as ioctx:
            try:
                with contextlib.suppress(rbd.ImageExists):
                    rbd.RBD().create(
                        ioctx,
                        image,
                        len(data),
                        order=OBJECT_ORDER,
                        features=rbd.RBD_FEATURE_LAYERING,
                    )
                self._stamp(ioctx, vm, business, created, stamp, image)
                with rbd.Image(ioctx, image) as img:
                    if img.size() != len(data):
                        img.resize(len(data))
                    img.write(data, 0)
                    img.flush()
            except rbd.Error as exc:
                raise TemporaryError(f"rbd write {pool}/{image}: {exc}", retry_after=2) from exc

    def owned(
        self, pool: str, vm: str, business: str, keys: FleetKeys | None, image: str | None = None
    ) -> bool | None:
        """Whether ``pool/image`` (the VM's disk unless named) carries this fleet's stamp for
        ``vm`` of ``business``; None: no image."""
        meta = self.metadata(pool, image or vm)
        if meta is None:
            return None
        return image_owned(meta, vm, business, keys)

    def remove(
        self,
        pool: str,
        vm: str,
        business: str,
        keys: FleetKeys | None,
        *,
        half_made_clone: bool = False,
        image: str | None = None,
    ) -> int | None:
        """Remove the VM's image (its disk, or ``image``: its config drive) and its snapshots
        if it is provably ours; how many snapshots went with it, None when there was no image.
        Raises ``NotOwned`` otherwise.

        ``half_made_clone``: the journal says this VM's clone was under way, so an image of its
        name with none of our metadata is that clone, interrupted before its stamp."""
        name = image or vm
        meta = self.metadata(pool, name)
        if meta is None:
            return None
        unstamped = not meta
        if not image_owned(meta, vm, business, keys) and not (half_made_clone and unstamped):
            raise NotOwned(f"rbd image {pool}/{name} does not carry this fleet's stamp for {vm}")
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as img:
                    snaps = list(img.list_snaps())
                    for snap in snaps:
                        if img.is_protected_snap(snap["name"]):
                            img.unprotect_snap(snap["name"])
                        img.remove_snap(snap["name"])
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                return 0
            except rbd.ImageBusy as exc:
                raise TemporaryError(
                    f"rbd {pool}/{name} is still open: {exc}", retry_after=2
                ) from exc
            except rbd.Error as exc:
                raise TemporaryError(f"rbd remove {pool}/{name}: {exc}", retry_after=2) from exc
        return len(snaps)

    def images(self, pool: str) -> list[str]:
        with self.ioctx(pool) as ioctx:
            try:
                return sorted(str(n) for n in rbd.RBD().list(ioctx))
            except rbd.Error as exc:
                raise TemporaryError(f"rbd ls {pool}: {exc}", retry_after=2) from exc

    # ---- snapshots --------------------------------------------------------------------------

    def snapshots(self, pool: str, image: str) -> list[RbdSnapshot]:
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image, read_only=True) as img:
                    return [
                        RbdSnapshot(
                            name=str(s["name"]),
                            timestamp=img.get_snap_timestamp(s["id"]).timestamp(),
                            protected=bool(img.is_protected_snap(s["name"])),
                        )
                        for s in img.list_snaps()
                    ]
            except rbd.ImageNotFound:
                return []
            except rbd.Error as exc:
                raise TemporaryError(f"rbd snap ls {pool}/{image}: {exc}", retry_after=2) from exc

    def create_snapshot(
        self, pool: str, image: str, snap: str, note: dict[str, str] | None = None
    ) -> bool:
        """Snapshot ``pool/image@snap`` (False if it exists); ``note`` is kept in the image's
        metadata under ``autoscaler.snap.SNAP.KEY`` (e.g. whether it is crash-consistent)."""
        check_name(snap, what="snapshot name")
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image) as img:
                    for key, value in (note or {}).items():
                        img.metadata_set(snapshot_key(snap, key), value)
                    try:
                        img.create_snap(snap)
                    except rbd.ImageExists:
                        return False
                    return True
            except rbd.ImageNotFound as exc:
                raise PermanentError(f"rbd image {pool}/{image} does not exist") from exc
            except rbd.Error as exc:
                raise TemporaryError(f"rbd snap create {pool}/{image}@{snap}: {exc}") from exc

    def remove_snapshot(self, pool: str, image: str, snap: str) -> bool:
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, image) as img:
                    if img.is_protected_snap(snap):
                        img.unprotect_snap(snap)
                    img.remove_snap(snap)
                    with contextlib.suppress(KeyError, rbd.ObjectNotFound):
                        img.metadata_remove(snapshot_key(snap, "consistency"))
                    return True
            except rbd.ImageNotFound:
                return False
            except rbd.Error as exc:
                raise TemporaryError(f"rbd snap rm {pool}/{image}@{snap}: {exc}") from exc

    # ---- templates --------------------------------------------------------------------------

    def template_versions(self, pool: str, template: str) -> list[RbdSnapshot]:
        return [s for s in self.snapshots(pool, template) if s.protected]

    def push_template(
        self, pool: str, template: str, version: str, size: int, write: Callable[[Any], None]
    ) -> None:
        """Make ``template@version``: create the image if it is new (or grow it), let ``write``
        fill it through an open ``rbd.Image``, then snapshot and protect the version."""
        check_name(template, what="template image")
        check_name(version, what="template version")
        with self.ioctx(pool) as ioctx:
            if any(s.name == version for s in self.snapshots(pool, template)):
                raise PermanentError(f"{pool}/{template}@{version} exists: versions are immutable")
            with contextlib.suppress(rbd.ImageExists):
                rbd.RBD().create(
                    ioctx, template, size, order=OBJECT_ORDER, features=rbd.RBD_FEATURE_LAYERING
                )
            with rbd.Image(ioctx, template) as img:
                if img.size() < size:
                    img.resize(size)
                write(img)
                img.flush()
                img.create_snap(version)
                img.protect_snap(version)


def read_metadata(image: Any, keys: Iterable[str]) -> dict[str, str]:
    """The image's metadata under ``keys`` (those it has). Each is read by its key: python-rbd
    16.2's ``metadata_list`` is not to be trusted (seen in the lab with nine keys: one missing
    and every value paired with the wrong key), so the caller names what it looks for."""
    out: dict[str, str] = {}
    for key in keys:
        try:
            out[key] = str(image.metadata_get(key))
        except (KeyError, rbd.ObjectNotFound):
            continue
    return out


def vm_image_keys(image: Any) -> list[str]:
    """Every metadata key this fleet writes on a VM's image (its stamp, a restore's source,
    and per snapshot its consistency)."""
    snaps = [str(s["name"]) for s in image.list_snaps()]
    return [*STAMP_KEYS, META_RESTORED_FROM, *(snapshot_key(s, "consistency") for s in snaps)]


def snapshot_key(snap: str, what: str) -> str:
    return f"{SNAP_META_PREFIX}{snap}.{what}"


def image_owned(meta: dict[str, str], vm: str, business: str, keys: FleetKeys | None) -> bool:
    owner = meta.get(META_OWNER, "")
    if keys is None or ":" not in owner or meta.get(META_VM) != vm:
        return False
    if meta.get(META_BUSINESS) != business:
        return False
    key_id, mac = owner.split(":", 1)
    return keys.verify(vm, business, meta.get(META_CREATED, ""), OwnershipStamp(key_id, mac))
