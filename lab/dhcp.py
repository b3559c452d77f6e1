"""The guests' DHCP server: busybox udhcpd in the lab's access namespace.

Where it sits: ``lab up`` starts it once the guest segment exists (``lab.net``), before the
first VM boots; a guest started with ``as.net=dhcp`` asks it for an address before it says
ready. It leases from the layout's guest pool only, on the access namespace's leg into the
guest segment, so it answers nobody outside the lab. ``stop`` (from ``lab down``) ends it and
removes its folder. Argument lists only.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab.layout import LabLayout
from lab.net import IP
from lab.supervision import (
    ComponentStatus,
    remove_folder,
    running_pid,
    spawn,
    start_clean,
    stop_all,
)

COMPONENT = "dhcp"
PROCESS = "udhcpd"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
LEASE_S = 600
"""Short enough that a lab's leases turn over, long enough that renewals are rare under TCG."""
ARP_PROBE_MS = 200
"""How long udhcpd waits for an answer to its ARP probe of an address before offering it. Its
default, 2 s, is most of a guest's time to an address (every guest's kernel answers ARP within
milliseconds even under TCG; 200 ms leaves slack for a busy host)."""


@dataclass(frozen=True)
class DhcpServer:
    pid: int
    config: Path
    leases: Path


def _run_dir(layout: LabLayout) -> Path:
    return layout.dhcp_dir / "run"


def config_text(layout: LabLayout, leases: Path) -> str:
    first, last = layout.guest_pool()
    lines = [
        f"start {first}",
        f"end {last}",
        f"interface {layout.access_guest_veth[1]}",
        f"max_leases {int(last) - int(first) + 1}",
        f"lease_file {leases}",
        # udhcpd writes its lease file every auto_time seconds; the lab reads leases from the
        # guests themselves, so a minute is plenty.
        "auto_time 60",
        f"option subnet {layout.guest_subnet.netmask}",
        f"option router {layout.guest_gateway}",
        f"option lease {LEASE_S}",
    ]
    return "\n".join(lines) + "\n"


def start(layout: LabLayout) -> DhcpServer:
    """Start udhcpd in the access namespace (which ``lab.net`` must have made); a running one
    is kept (``lab up`` again), so the guests' leases stay as they are."""
    folder = layout.dhcp_dir
    leases, config = folder / "udhcpd.leases", folder / "udhcpd.conf"
    pid = running_pid(_run_dir(layout), PROCESS)
    if pid is not None:
        return DhcpServer(pid=pid, config=config, leases=leases)
    return start_clean(layout, stop, lambda: _start(layout))


def _start(layout: LabLayout) -> DhcpServer:
    folder = layout.dhcp_dir
    folder.mkdir(parents=True, exist_ok=True)
    leases = folder / "udhcpd.leases"
    leases.touch()
    config = folder / "udhcpd.conf"
    config.write_text(config_text(layout, leases))
    # `ip netns exec` execs busybox in the namespace: the recorded pid is udhcpd's own.
    pid = spawn(
        _run_dir(layout),
        PROCESS,
        [
            *(IP, "netns", "exec", layout.access_netns, BUSYBOX, "udhcpd", "-f"),
            *("-a", str(ARP_PROBE_MS), str(config)),
        ],
        log=folder / "udhcpd.log",
    )
    # udhcpd exits at once on a bad config or a missing interface: give it a moment to.
    time.sleep(0.3)
    if running_pid(_run_dir(layout), PROCESS) is None:
        log = (folder / "udhcpd.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"udhcpd exited at start: {log}")
    return DhcpServer(pid=pid, config=config, leases=leases)


def stop(layout: LabLayout) -> None:
    stop_all(_run_dir(layout))
    remove_folder(layout.dhcp_dir)


def status(layout: LabLayout) -> ComponentStatus:
    return ComponentStatus(
        component=COMPONENT, processes={PROCESS: running_pid(_run_dir(layout), PROCESS)}
    )
