"""The lab network: a bridge in the root namespace and one namespace per host on it.

Where it sits: ``lab up`` builds it before starting libvirtd in each namespace; the controller
reaches every host over qemu+tcp through the bridge, as it would over a real network, so
setting a host's uplink down is a real fault. Argument lists only, names from the layout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lab.layout import LabLayout

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], check=check, capture_output=True, text=True)


def link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def ensure_bridge(layout: LabLayout) -> None:
    if not link_exists(layout.bridge):
        _ip("link", "add", layout.bridge, "type", "bridge")
    addr = f"{layout.bridge_address}/{layout.subnet.prefixlen}"
    if addr not in _ip("-o", "addr", "show", "dev", layout.bridge).stdout:
        _ip("addr", "add", addr, "dev", layout.bridge)
    _ip("link", "set", layout.bridge, "up")


def ensure_host_netns(layout: LabLayout, index: int) -> None:
    ns = layout.netns(index)
    outer, inner = layout.veth(index)
    if not netns_exists(ns):
        _ip("netns", "add", ns)
    if not link_exists(outer):
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", layout.bridge)
    _ip("link", "set", outer, "up")
    addr = f"{layout.host_address(index)}/{layout.subnet.prefixlen}"
    if addr not in _ip("-n", ns, "-o", "addr", "show", "dev", inner).stdout:
        _ip("-n", ns, "addr", "add", addr, "dev", inner)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "set", inner, "up")


def set_uplink(layout: LabLayout, index: int, *, up: bool) -> None:
    """Cut or restore a host's only link to the rest of the lab (a real network fault)."""
    _ip("link", "set", layout.veth(index)[0], "up" if up else "down")


def remove_host_netns(layout: LabLayout, index: int) -> None:
    outer, _ = layout.veth(index)
    if link_exists(outer):
        _ip("link", "del", outer, check=False)
    if netns_exists(layout.netns(index)):
        _ip("netns", "del", layout.netns(index), check=False)


def remove_bridge(layout: LabLayout) -> None:
    if link_exists(layout.bridge):
        _ip("link", "del", layout.bridge, check=False)


def leftover_links(layout: LabLayout) -> list[str]:
    out = _ip("-o", "link", "show").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(f"{layout.prefix}-")]


def leftover_netns(layout: LabLayout) -> list[str]:
    folder = Path("/run/netns")
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{layout.prefix}-"))
