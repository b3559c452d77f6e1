"""Linked clones in a host's storage pool: a qcow2 overlay on a business template.

Where it sits: the disk half of the clone actuator (and of the lab's first VMs) and of
retirement (the overlay is deleted with the VM). Goes through the libvirt storage pool API so
it works on a remote host exactly as on the lab.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from autoscaler.model import check_name

POOL_NAME = "images"


def overlay_name(vm: str) -> str:
    return f"{check_name(vm, what='vm name')}.qcow2"


def _volume_xml(name: str, capacity: int, backing_path: str) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="qcow2")
    backing = ET.SubElement(vol, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")


def ensure_overlay(conn: libvirt.virConnect, vm: str, template_image: str) -> str:
    """Create (or find) ``<vm>.qcow2`` backed by ``template_image``; returns its path."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    name = overlay_name(vm)
    try:
        return str(pool.storageVolLookupByName(name).path())
    except libvirt.libvirtError:
        pass
    template = pool.storageVolLookupByName(template_image)
    capacity = int(template.info()[1])
    vol = pool.createXML(_volume_xml(name, capacity, str(template.path())), 0)
    return str(vol.path())


def overlay_exists(conn: libvirt.virConnect, vm: str) -> bool:
    return volume_exists(conn, overlay_name(vm))


def volume_exists(conn: libvirt.virConnect, name: str) -> bool:
    """Whether the pool holds volume ``name`` (the pool refreshed first)."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    pool.refresh(0)
    try:
        pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def delete_overlay(conn: libvirt.virConnect, vm: str) -> bool:
    """Delete the VM's overlay; True if one was deleted."""
    return delete_volume(conn, overlay_name(vm))


def delete_volume(conn: libvirt.virConnect, name: str) -> bool:
    """Delete the pool's volume ``name``; True if there was one."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return False
    vol.delete(0)
    return True


def list_overlays(conn: libvirt.virConnect, templates: set[str]) -> list[str]:
    """Names of VMs that have an overlay in the pool (template volumes excluded)."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    pool.refresh(0)
    out = []
    for name in pool.listVolumes():
        if name in templates or not name.endswith(".qcow2"):
            continue
        out.append(name.removesuffix(".qcow2"))
    return sorted(out)
