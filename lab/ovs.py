"""The lab's Open vSwitch: a userspace datapath with one active-backup bond per lab host.

Where it sits: a lab component read by the OVS bond and link collectors. A private
``ovsdb-server`` (database and sockets under ``layout.ovs_dir``) and an ``ovs-vswitchd`` running
inside the network namespace ``layout.ovs_netns`` (CPU-capped by a cgroup) hold, for each lab
host ``i``, a netdev bridge ``ob<i>`` whose bond ``bond<i>`` has two veth members ``ob<i>m0`` and
``ob<i>m1``. Their peers ``ob<i>p0``/``ob<i>p1`` sit in a top-of-rack Linux bridge ``tor<i>``
in ``layout.ovs_switch_netns``. A traffic process in the switch namespace sends UDP to every
bridge's address, so traffic really crosses each bond; ``set_member`` takes a member's far end
down (the member loses carrier: redundancy lost, traffic still flows through the other).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoscaler.model.names import check_name
from lab.layout import LabLayout
from lab.supervision import (
    ComponentStatus,
    create_cpu_cgroup,
    create_netns,
    remove_folder,
    remove_resources,
    run,
    running_pid,
    spawn,
    start_clean,
    stop_all,
    wait_until,
)

COMPONENT = "ovs"
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
VSWITCHD = "ovs-vswitchd"
OVSDB = "ovsdb-server"
TRAFFIC = "traffic"
MAX_HOSTS = 100
DISCARD_PORT = 9


@dataclass(frozen=True)
class HostBond:
    """The bond that carries one lab host's traffic, and the addresses at both ends."""

    host: str
    bridge: str
    bond: str
    members: tuple[str, str]
    switch_ports: tuple[str, str]
    bridge_address: str
    switch_address: str


@dataclass(frozen=True)
class OvsLab:
    netns: str
    switch_netns: str
    db_socket: Path
    vswitchd_control: Path
    bonds: dict[str, HostBond]
    pids: dict[str, int]


def _run_dir(layout: LabLayout) -> Path:
    return layout.ovs_dir / "run"


def _pids(layout: LabLayout) -> Path:
    return layout.ovs_dir / "pids"


def db_socket(layout: LabLayout) -> Path:
    return _run_dir(layout) / "db.sock"


def vswitchd_control(layout: LabLayout) -> Path:
    """ovs-vswitchd's unixctl socket (``ovs-appctl -t`` takes this path)."""
    return _run_dir(layout) / "ovs-vswitchd.ctl"


def host_bond(index: int, host: str) -> HostBond:
    if not 0 <= index < MAX_HOSTS:
        raise ValueError(f"host index {index} outside 0..{MAX_HOSTS - 1}")
    return HostBond(
        host=host,
        bridge=f"ob{index}",
        bond=f"bond{index}",
        members=(f"ob{index}m0", f"ob{index}m1"),
        switch_ports=(f"ob{index}p0", f"ob{index}p1"),
        bridge_address=f"172.31.{index}.1",
        switch_address=f"172.31.{index}.2",
    )


def _vsctl(layout: LabLayout, *args: str) -> str:
    return run(["ovs-vsctl", f"--db=unix:{db_socket(layout)}", "--timeout=10", *args])


def _ip(netns: str, *args: str) -> str:
    return run(["ip", "-n", netns, *args])


def start(
    layout: LabLayout,
    hosts: Sequence[str],
    *,
    cpu_cores: float = 0.2,
    traffic_pps: float = 20.0,
    timeout: float = 30.0,
) -> OvsLab:
    """Start (or keep) the OVS lab with one bonded bridge per host in ``hosts``."""
    names = tuple(check_name(h, what="host") for h in hosts)
    if not names or len(names) > MAX_HOSTS:
        raise ValueError(f"need 1..{MAX_HOSTS} hosts")
    current = status(layout)
    described = layout.ovs_dir / "hosts.json"
    if current.running and described.exists() and json.loads(described.read_text()) == list(names):
        return _describe(layout, names)
    return start_clean(
        layout, stop, lambda: _start_fresh(layout, names, cpu_cores, traffic_pps, timeout)
    )


def _start_fresh(
    layout: LabLayout, hosts: tuple[str, ...], cpu_cores: float, traffic_pps: float, timeout: float
) -> OvsLab:
    base, run_dir, pids = layout.ovs_dir, _run_dir(layout), _pids(layout)
    for folder in (run_dir, base / "db", base / "log", pids):
        folder.mkdir(parents=True, exist_ok=True)
    create_netns(pids, layout.ovs_netns)
    create_netns(pids, layout.ovs_switch_netns)
    cgroup = create_cpu_cgroup(pids, f"{layout.cpu_cgroup_prefix}-ovs", cpu_cores)
    database = base / "db" / "conf.db"
    run(["ovsdb-tool", "create", str(database), str(SCHEMA)])
    spawn(
        pids,
        OVSDB,
        [
            OVSDB,
            str(database),
            f"--remote=punix:{db_socket(layout)}",
            f"--unixctl={run_dir / 'ovsdb-server.ctl'}",
            f"--log-file={base / 'log' / 'ovsdb.log'}",
            "-vconsole:off",
        ],
        log=base / "log" / "ovsdb.stdout",
    )
    wait_until(db_socket(layout).exists, timeout=timeout, what="the OVSDB socket")
    _vsctl(layout, "--no-wait", "init")
    spawn(
        pids,
        VSWITCHD,
        [
            "nsenter",
            f"--net=/run/netns/{layout.ovs_netns}",
            VSWITCHD,
            f"unix:{db_socket(layout)}",
            f"--unixctl={vswitchd_control(layout)}",
            f"--log-file={base / 'log' / 'vswitchd.log'}",
            "-vconsole:off",
        ],
        log=base / "log" / "vswitchd.stdout",
        cgroup=cgroup,
    )
    wait_until(lambda: _vswitchd_answers(layout), timeout=timeout, what="ovs-vswitchd")
    (base / "hosts.json").write_text(json.dumps(list(hosts)))
    for index, host in enumerate(hosts):
        _build_host_bond(layout, host_bond(index, host))
    targets = [host_bond(i, h).bridge_address for i, h in enumerate(hosts)]
    spawn(
        pids,
        TRAFFIC,
        [
            "nsenter",
            f"--net=/run/netns/{layout.ovs_switch_netns}",
            sys.executable,
            "-m",
            "lab.ovs",
            "--pps",
            str(traffic_pps),
            *targets,
        ],
        log=base / "log" / "traffic.log",
    )
    lab = _describe(layout, hosts)
    for bond in lab.bonds.values():
        _wait_for_traffic(layout, bond, timeout)
    return lab


def _vswitchd_answers(layout: LabLayout) -> bool:
    try:
        run(["ovs-appctl", "-t", str(vswitchd_control(layout)), "version"], timeout=5)
    except RuntimeError:
        return False
    return True


def _wait_for_traffic(layout: LabLayout, bond: HostBond, timeout: float) -> None:
    wait_until(
        lambda: _received_packets(layout, bond) > 0,
        timeout=timeout,
        what=f"traffic through {bond.bond}",
    )


def _build_host_bond(layout: LabLayout, bond: HostBond) -> None:
    ovs_ns, tor_ns = layout.ovs_netns, layout.ovs_switch_netns
    tor = f"tor{bond.bridge[2:]}"
    _ip(tor_ns, "link", "add", tor, "type", "bridge")
    for member, port in zip(bond.members, bond.switch_ports, strict=True):
        _ip(ovs_ns, "link", "add", member, "type", "veth", "peer", "name", port, "netns", tor_ns)
        _ip(ovs_ns, "link", "set", member, "up")
        _ip(tor_ns, "link", "set", port, "master", tor)
        _ip(tor_ns, "link", "set", port, "up")
    _ip(tor_ns, "addr", "add", f"{bond.switch_address}/24", "dev", tor)
    _ip(tor_ns, "link", "set", tor, "up")
    _vsctl(
        layout, "add-br", bond.bridge, "--", "set", "bridge", bond.bridge, "datapath_type=netdev"
    )
    _vsctl(layout, "add-bond", bond.bridge, bond.bond, *bond.members, "bond_mode=active-backup")
    _ip(ovs_ns, "addr", "add", f"{bond.bridge_address}/24", "dev", bond.bridge)
    _ip(ovs_ns, "link", "set", bond.bridge, "up")


def _received_packets(layout: LabLayout, bond: HostBond) -> int:
    """Packets the bridge's own port received (they crossed the bond from the switch)."""
    shown = json.loads(_ip(layout.ovs_netns, "-j", "-s", "link", "show", "dev", bond.bridge))
    return int(shown[0]["stats64"]["rx"]["packets"])


def _describe(layout: LabLayout, hosts: tuple[str, ...]) -> OvsLab:
    pids = {n: p for n in (OVSDB, VSWITCHD, TRAFFIC) if (p := running_pid(_pids(layout), n))}
    return OvsLab(
        netns=layout.ovs_netns,
        switch_netns=layout.ovs_switch_netns,
        db_socket=db_socket(layout),
        vswitchd_control=vswitchd_control(layout),
        bonds={h: host_bond(i, h) for i, h in enumerate(hosts)},
        pids=pids,
    )


def set_member(layout: LabLayout, bond: HostBond, member: int, *, up: bool) -> None:
    """Fault injection: take member ``member``'s switch-side end down (or back up)."""
    _ip(layout.ovs_switch_netns, "link", "set", bond.switch_ports[member], "up" if up else "down")


def stop(layout: LabLayout) -> None:
    """Stop traffic, vswitchd and OVSDB; delete the namespaces, cgroup and folder."""
    stop_all(_pids(layout))
    remove_resources(_pids(layout))
    remove_folder(layout.ovs_dir)


def status(layout: LabLayout) -> ComponentStatus:
    pids = _pids(layout)
    return ComponentStatus(
        component=COMPONENT,
        processes={n: running_pid(pids, n) for n in (OVSDB, VSWITCHD, TRAFFIC)},
        details={"netns": layout.ovs_netns, "control": str(vswitchd_control(layout))},
    )


def send_traffic(targets: Sequence[str], pps: float) -> None:
    """Body of the traffic process: UDP datagrams to each target's discard port, forever."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    interval = 1.0 / max(pps, 0.1)
    while True:
        for target in targets:
            # unreachable for a moment (ARP, a member failing over): keep sending
            with contextlib.suppress(OSError):
                sender.sendto(b"lab traffic", (target, DISCARD_PORT))
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="send lab traffic across the OVS bonds")
    parser.add_argument("--pps", type=float, default=20.0)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args(argv)
    send_traffic(args.targets, args.pps)


if __name__ == "__main__":
    main()
