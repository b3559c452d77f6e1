"""Config drives: a template version's configuration and business code, as an ISO 9660 image.

Where it sits: the configuration half of a template version (the image half is the RBD
snapshot, or the qcow2 template). The clone actuator (and the lab's first VMs) builds the drive
from ``delivery_dir/<business>/<version>/`` plus a generated ``VERSION`` and ``meta.json``, and
puts it where the VM's disks live: a raw ``<vm>-config.iso`` volume in the host's storage pool
(uploaded through a libvirt stream, so it works on a remote host), or an RBD image
``<vm>-config`` stamped with the VM's ownership. The guest's init mounts it read-only at
/config; its ``www/`` becomes the web root. Retire removes it with the VM's disk; a local drive
is copied by a live migration like the overlay (``migrate.py``).

The image is built in memory with pycdlib: Rock Ridge keeps long names and the executable bit
of a CGI, Joliet the names for other readers. ISO 9660's own names are generated (``D<n>``,
``F<n>.;1``): they are always valid and unique, and nobody reads them.
"""

from __future__ import annotations

import io
import json
import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pycdlib

from actuators.volumes import POOL_NAME, delete_volume
from autoscaler.model import PermanentError, check_name

MAX_DRIVE_BYTES = 64 << 20
"""A config drive carries configuration and small code, not data: a larger folder is refused."""
DEVICE = "vdb"
GENERATED = ("VERSION", "meta.json")


def volume_name(vm: str) -> str:
    """The local drive's volume in the host's ``images`` pool."""
    return f"{check_name(vm, what='vm name')}-config.iso"


def rbd_image_name(vm: str) -> str:
    """The drive's RBD image (in the template's pool) when the template's storage is rbd."""
    return f"{check_name(vm, what='vm name')}-config"


@dataclass(frozen=True)
class DriveFile:
    path: str
    """Relative, with '/' separators (the Rock Ridge / Joliet name)."""
    data: bytes
    mode: int


def version_folder(delivery_dir: Path | None, business: str, version: str | None) -> Path | None:
    """The version's folder, None when there is none (then the clone gets no drive)."""
    if delivery_dir is None or version is None:
        return None
    folder = delivery_dir / check_name(business, what="business") / check_name(version)
    return folder if folder.is_dir() else None


def collect(folder: Path, max_bytes: int = MAX_DRIVE_BYTES) -> tuple[list[str], list[DriveFile]]:
    """The folder's directories and files (sorted), refusing symlinks that leave it, links to
    folders (not followed: they could loop), anything that is neither file nor folder, and a
    total over ``max_bytes``."""
    root = folder.resolve()
    dirs: list[str] = []
    entries: list[tuple[str, Path, int]] = []
    total = 0
    for here, subdirs, names in os.walk(root):
        base = Path(here)
        subdirs.sort()
        for d in subdirs:
            p = base / d
            if p.is_symlink():
                raise PermanentError(
                    f"config folder {folder}: {p.relative_to(root)} links to a folder"
                )
            dirs.append(p.relative_to(root).as_posix())
        for name in sorted(names):
            p = base / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(root):
                    raise PermanentError(
                        f"config folder {folder}: {rel} is a symlink leaving it (to {target})"
                    )
                p = target
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise PermanentError(f"config folder {folder}: {rel} is not a regular file")
            total += st.st_size
            if total > max_bytes:
                raise PermanentError(
                    f"config folder {folder} holds over {max_bytes >> 20} MiB: a config drive"
                    " carries configuration and code, not data"
                )
            entries.append((rel, p, st.st_mode))
    files = [
        DriveFile(rel, p.read_bytes(), 0o755 if mode & 0o111 else 0o644)
        for rel, p, mode in entries
        if rel not in GENERATED
    ]
    return dirs, files


def build_iso(
    folder: Path, vm: str, business: str, version: str, max_bytes: int = MAX_DRIVE_BYTES
) -> bytes:
    """The drive's ISO image: the folder's tree plus ``VERSION`` and ``meta.json``."""
    dirs, files = collect(folder, max_bytes)
    meta = json.dumps({"vm": vm, "business": business, "version": version}, sort_keys=True)
    files += [
        DriveFile("VERSION", f"{version}\n".encode(), 0o644),
        DriveFile("meta.json", (meta + "\n").encode(), 0o644),
    ]
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CONFIG", rock_ridge="1.09", joliet=3)
    iso_dirs: dict[str, str] = {"": ""}
    for n, rel in enumerate(dirs):
        parent, _, name = rel.rpartition("/")
        iso_path = f"{iso_dirs[parent]}/D{n}"
        iso_dirs[rel] = iso_path
        iso.add_directory(iso_path=iso_path, rr_name=name, joliet_path=f"/{rel}", file_mode=0o40755)
    for n, f in enumerate(files):
        parent, _, name = f.path.rpartition("/")
        iso.add_fp(
            io.BytesIO(f.data),
            len(f.data),
            iso_path=f"{iso_dirs[parent]}/F{n}.;1",
            rr_name=name,
            joliet_path=f"/{f.path}",
            file_mode=0o100000 | f.mode,
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def drive_bytes(
    delivery_dir: Path | None, vm: str, business: str, version: str | None
) -> bytes | None:
    """The VM's config drive for that version, None when the version has no folder."""
    folder = version_folder(delivery_dir, business, version)
    if folder is None or version is None:
        return None
    return build_iso(folder, vm, business, version)


# ---- storage local: a raw volume in the host's pool --------------------------------------------


def _volume_xml(name: str, capacity: int) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="raw")
    return ET.tostring(vol, encoding="unicode")


def ensure_volume(conn: libvirt.virConnect, vm: str, size: int) -> libvirt.virStorageVol:
    """The VM's drive volume of ``size`` bytes, made or found (one of another size, left by an
    earlier try at another version, is made again). Also the empty destination of a live
    migration, which copies the content."""
    pool = conn.storagePoolLookupByName(POOL_NAME)
    name = volume_name(vm)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        vol = None
    if vol is not None and int(vol.info()[1]) != size:
        vol.delete(0)
        vol = None
    if vol is None:
        vol = pool.createXML(_volume_xml(name, size), 0)
    return vol


def write_volume(conn: libvirt.virConnect, vm: str, data: bytes) -> str:
    """Make the VM's drive volume hold ``data`` (written whole each time: a crash mid-upload
    is repaired by the resumed clone); returns its path."""
    vol = ensure_volume(conn, vm, len(data))
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    view = memoryview(data)
    try:
        while view:
            sent = stream.send(bytes(view[: 1 << 20]))
            view = view[sent:]
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    return str(vol.path())


def volume_size(conn: libvirt.virConnect, vm: str) -> int | None:
    pool = conn.storagePoolLookupByName(POOL_NAME)
    try:
        return int(pool.storageVolLookupByName(volume_name(vm)).info()[1])
    except libvirt.libvirtError:
        return None


def delete_drive_volume(conn: libvirt.virConnect, vm: str) -> bool:
    """Delete the VM's drive volume; True if there was one."""
    return delete_volume(conn, volume_name(vm))
