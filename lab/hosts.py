"""Start and stop one lab libvirt host, and prepare its image pool.

Where it sits: called by ``lab up`` / ``lab down`` for every host record. The namespace work is
in ``host.sh`` (run with an argument list); this module supervises it, warms libvirt's QEMU
capability cache, defines the ``images`` pool and installs the business template disks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import libvirt

from autoscaler.model import TemporaryError
from autoscaler.model.bounded import BoundedCaller
from lab.layout import LabLayout
from lab.state import HostRecord

HOST_SCRIPT = Path(__file__).with_name("host.sh")
POOL_NAME = "images"
POOL_PATH = "/var/lib/libvirt/images"  # as seen inside the host's mount namespace

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return status != "Z"


def libvirtd_running(record: HostRecord) -> bool:
    pid = _read_pid(Path(record.base) / "run" / "libvirtd.pid")
    return pid is not None and _alive(pid)


def start_host(layout: LabLayout, record: HostRecord) -> None:
    if libvirtd_running(record):
        return
    low, high = layout.migration_ports(record.index)
    subprocess.run(
        [
            "/bin/bash",
            str(HOST_SCRIPT),
            record.name,
            record.netns,
            record.base,
            record.address,
            str(low),
            str(high),
            layout.cgroup(record.index),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def restart_libvirtd(layout: LabLayout, record: HostRecord) -> None:
    """Start a host's libvirtd again after it died (fault injection kills it with SIGKILL).

    Its guests kept running: the new daemon finds them through the status files and monitor
    sockets in the host's run folder. The dead daemon's socket files are removed first, or the
    wait for the new socket would pass at once.
    """
    if libvirtd_running(record):
        return
    run = Path(record.base) / "run"
    for leftover in ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock", "libvirtd.pid"):
        (run / leftover).unlink(missing_ok=True)
    start_host(layout, record)


def open_local(record: HostRecord) -> libvirt.virConnect:
    """The lab's own side door to a host (unix socket), for setup and teardown only."""
    return libvirt.open(record.local_uri)


def prepare_host(record: HostRecord, templates: dict[str, Path]) -> None:
    """Warm the capability cache, define the image pool and install template disks."""
    images = Path(record.base) / "lib" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, src in templates.items():
        dst = images / name
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            os.replace(dst.with_suffix(".tmp"), dst)
    conn = open_local(record)
    try:
        conn.getDomainCapabilities(None, None, None, None, 0)
        try:
            pool = conn.storagePoolLookupByName(POOL_NAME)
        except libvirt.libvirtError:
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>{POOL_NAME}</name>"
                f"<target><path>{POOL_PATH}</path></target></pool>",
                0,
            )
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        pool.refresh(0)
    finally:
        conn.close()


def _kill_pidfile(path: Path, timeout_s: float = 5.0) -> None:
    pid = _read_pid(path)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop_host(record: HostRecord) -> None:
    """Destroy its domains, stop its daemons and any QEMU left, remove its cgroups."""
    base = Path(record.base)
    if libvirtd_running(record):

        def destroy_all() -> None:
            conn = open_local(record)
            try:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
            finally:
                conn.close()

        # A deadlocked libvirtd never answers: give up on it after a while, the QEMU pid
        # files below end its guests anyway.
        with contextlib.suppress(libvirt.libvirtError, TemporaryError):
            BoundedCaller[None](f"{record.name}: destroy its domains").call(destroy_all, 60.0)
    _kill_pidfile(base / "run" / "libvirtd.pid")
    _kill_pidfile(base / "run" / "virtlogd.pid")
    qemu_dir = base / "run" / "qemu"
    if qemu_dir.exists():
        for pidfile in qemu_dir.glob("*.pid"):
            _kill_pidfile(pidfile, timeout_s=2.0)
    remove_cgroups(base)


def remove_cgroups(base: Path) -> None:
    listing = base / "cgroups"
    if not listing.exists():
        return
    for line in listing.read_text().splitlines():
        top = Path(line.strip())
        if not line.strip() or not top.exists():
            continue
        # Children first (libvirt's machine/... partitions); a cgroup with tasks cannot go.
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
