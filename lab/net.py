"""The lab network: a bridge in the root namespace and one namespace per host on it.

Where it sits: ``lab up`` builds it before starting libvirtd in each namespace; the controller
reaches every host over qemu+tcp through the bridge, as it would over a real network, so
setting a host's uplink down is a real fault. Argument lists only, names from the layout.

The guests get a second network, one L2 segment over every host: a bridge of the same name
(``gbr0``) in each host namespace, each joined by a veth to a root-namespace bridge (the guest
fabric, with no address: guest traffic stays in the lab's namespaces), so a live-migrated guest
keeps its address. The access namespace sits on both networks: the guests' gateway address
(and their DHCP server, ``lab.dhcp``) on the fabric, and an address in the hosts' subnet on the
lab bridge, so the controller and Prometheus reach what runs there (the load balancer).
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


def ensure_veth(outer: str, inner: str, ns: str, master: str) -> None:
    """A veth pair: ``outer`` on bridge ``master`` in the root namespace, ``inner`` in ``ns``."""
    if not link_exists(outer):
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", master)
    _ip("link", "set", outer, "up")
    _ip("-n", ns, "link", "set", inner, "up")


def ensure_guest_fabric(layout: LabLayout) -> None:
    """The root-namespace bridge of the guest segment: no address, so the root namespace takes
    no part in guest traffic (it only switches frames between the lab's namespaces)."""
    if not link_exists(layout.guest_fabric):
        _ip("link", "add", layout.guest_fabric, "type", "bridge")
    _ip("link", "set", layout.guest_fabric, "up")


def ensure_host_guest_bridge(layout: LabLayout, index: int) -> None:
    """Host ``index``'s guest bridge (what the domains' NICs attach to), on the fabric."""
    ns = layout.netns(index)
    bridge = layout.guest_bridge
    if _ip("-n", ns, "link", "show", "dev", bridge, check=False).returncode != 0:
        _ip("-n", ns, "link", "add", bridge, "type", "bridge")
    _ip("-n", ns, "link", "set", bridge, "up")
    outer, inner = layout.guest_veth(index)
    ensure_veth(outer, inner, ns, layout.guest_fabric)
    _ip("-n", ns, "link", "set", inner, "master", bridge)


def ensure_access_netns(layout: LabLayout) -> None:
    """The access namespace: the guests' gateway on the fabric, an address on the lab bridge."""
    ns = layout.access_netns
    if not netns_exists(ns):
        _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    for (outer, inner), master, address, prefix in (
        (layout.access_guest_veth, layout.guest_fabric, layout.guest_gateway, layout.guest_subnet),
        (layout.access_lab_veth, layout.bridge, layout.access_address, layout.subnet),
    ):
        ensure_veth(outer, inner, ns, master)
        addr = f"{address}/{prefix.prefixlen}"
        if addr not in _ip("-n", ns, "-o", "addr", "show", "dev", inner).stdout:
            _ip("-n", ns, "addr", "add", addr, "dev", inner)


def remove_guest_network(layout: LabLayout) -> None:
    """The access namespace, its veths and the fabric (the host sides go with the hosts)."""
    for outer in (layout.access_guest_veth[0], layout.access_lab_veth[0]):
        if link_exists(outer):
            _ip("link", "del", outer, check=False)
    if netns_exists(layout.access_netns):
        _ip("netns", "del", layout.access_netns, check=False)
    if link_exists(layout.guest_fabric):
        _ip("link", "del", layout.guest_fabric, check=False)


def set_uplink(layout: LabLayout, index: int, *, up: bool) -> None:
    """Cut or restore a host's only link to the rest of the lab (a real network fault)."""
    _ip("link", "set", layout.veth(index)[0], "up" if up else "down")


def remove_host_netns(layout: LabLayout, index: int) -> None:
    for outer in (layout.veth(index)[0], layout.guest_veth(index)[0]):
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
