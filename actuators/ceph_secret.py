"""The hosts' libvirt secret holding a cephx key, so QEMU can open a VM's RBD disk.

Where it sits: called by the clone actuator before it defines a domain with an RBD disk, by the
migration actuator on the destination before a VM on RBD moves there, and by restore. The
secret's UUID is derived from the cluster's fsid and the cephx user, so every host holds the
same UUID for the same key and a domain's XML stays valid wherever it runs. The secret is
private (libvirt never shows its value back) and is set on every call: a rotated key reaches
the hosts with the next clone or migration.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import libvirt

from actuators.base import libvirt_call
from actuators.rbd_store import RbdDiskSource, RbdStore
from autoscaler.model import RbdStorage, check_name

_NAMESPACE = uuid.UUID("5f0c1f52-7f4e-4f0e-9d9a-6b1e9e3c2a10")


def secret_uuid(fsid: str, user: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"ceph:{fsid}:client.{check_name(user, what='user')}"))


def _secret_xml(secret: str, usage: str) -> str:
    el = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(el, "uuid").text = secret
    use = ET.SubElement(el, "usage", type="ceph")
    ET.SubElement(use, "name").text = usage
    return ET.tostring(el, encoding="unicode")


def ensure_ceph_secret(conn: libvirt.virConnect, store: RbdStore, user: str) -> str:
    """Define (or find) the host's secret for ``client.USER`` and set its key; its UUID."""
    fsid = store.fsid()
    secret = secret_uuid(fsid, user)
    key = store.user_key(user)

    def ensure() -> None:
        try:
            found = conn.secretLookupByUUIDString(secret)
        except libvirt.libvirtError:
            found = conn.secretDefineXML(
                _secret_xml(secret, f"kvm-autoscaler {fsid} client.{user}")
            )
        found.setValue(key)

    libvirt_call("define the ceph secret", ensure)
    return secret


def rbd_disk_source(
    conn: libvirt.virConnect, store: RbdStore, storage: RbdStorage, vm: str
) -> RbdDiskSource:
    """The disk of ``vm`` as a domain on ``conn``'s host opens it (the secret made sure of)."""
    return RbdDiskSource(
        pool=storage.pool,
        image=check_name(vm, what="vm name"),
        monitors=store.monitors(),
        user=storage.user,
        secret_uuid=ensure_ceph_secret(conn, store, storage.user),
    )
