"""Snapshots of a VM whose disk is on RBD: an RBD snapshot, application-consistent if it can.

Where it sits: the RBD half of the snapshot actuators (``SnapshotDisk`` / ``MergeSnapshot``)
and the first step of a backup. The guest's file systems are frozen through the QEMU guest
agent around the snapshot when the VM has one that answers; otherwise (the lab's serial agent,
or an agent that does not answer) the snapshot is crash-consistent, like a power cut. Which of
the two it is, is written beside the snapshot in the image's metadata, so a restore can say so.
An RBD image has no chain to merge: the VM always writes to the image itself, so "merging" a
snapshot is dropping it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt

from actuators.domain_xml import QEMU_GA_CHANNEL, rbd_disks
from actuators.rbd_store import RbdStore, snapshot_key

CONSISTENCY_KEY = "consistency"
FROZEN = "filesystem-frozen"
CRASH = "crash-consistent"


def rbd_disk_of(domain: libvirt.virDomain, vm: str) -> tuple[str, str] | None:
    """(pool, image) of the VM's own RBD disk, None when its disk is not on RBD."""
    for pool, image in rbd_disks(domain.XMLDesc(0)):
        if image == vm:
            return pool, image
    return None


def _has_guest_agent(domain: libvirt.virDomain) -> bool:
    return QEMU_GA_CHANNEL in domain.XMLDesc(0)


@contextlib.contextmanager
def frozen(domain: libvirt.virDomain) -> Iterator[str]:
    """Freeze the guest's file systems for the block if its QEMU guest agent can; yields the
    consistency the snapshot taken inside will have. Always thaws what it froze."""
    froze = False
    if _has_guest_agent(domain):
        with contextlib.suppress(libvirt.libvirtError):
            froze = domain.fsFreeze(None, 0) >= 0
    try:
        yield FROZEN if froze else CRASH
    finally:
        if froze:
            with contextlib.suppress(libvirt.libvirtError):
                domain.fsThaw(None, 0)


def take(
    store: RbdStore, domain: libvirt.virDomain, pool: str, image: str, snap: str
) -> tuple[bool, str]:
    """Snapshot ``pool/image@snap`` (frozen if the guest allows); (made now, consistency)."""
    with frozen(domain) as consistency:
        made = store.create_snapshot(pool, image, snap, {CONSISTENCY_KEY: consistency})
    return made, consistency


def consistency_of(store: RbdStore, pool: str, image: str, snap: str) -> str:
    meta = store.metadata(pool, image) or {}
    return meta.get(snapshot_key(snap, CONSISTENCY_KEY), CRASH)
