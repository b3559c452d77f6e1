"""Names, addresses and ports of one lab, all derived from its slot.

Where it sits: every lab component (libvirt hosts, Ceph, DPDK, OVS, Prometheus, load driver)
asks its ``LabLayout`` for names and ports instead of choosing its own. A slot is claimed
machine-wide (see ``slots``), so CI, a working session and a demo each get their own prefix
(``as<slot>``), subnet (``10.<210+slot>.0.0/24``) and port range (``20000 + 200*slot`` on).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

MAX_SLOTS = 16
PORTS_PER_SLOT = 200

# Offsets inside a slot's port range. Each component owns a fixed block.
PORT_PROMETHEUS = 0
PORT_ALERTMANAGER = 1
PORT_ALERTMANAGER_CLUSTER = 2
PORT_NODE_EXPORTER = 3
PORT_CEPH_MON = 10
PORT_CEPH_MGR_PROMETHEUS = 11
PORT_CONTROLLER_METRICS = 20
PORT_CONTROLLER_METRICS_2 = 21
# Ceph daemons other than the mon (mgr, OSDs) bind their messenger ports in this block.
PORT_CEPH_MESSENGER_FIRST = 100
PORT_CEPH_MESSENGER_LAST = 179
PORT_LIBVIRT_TCP = 16509  # inside each host's own network namespace: no clash between hosts
MIGRATION_PORTS_PER_HOST = 20


@dataclass(frozen=True)
class LabLayout:
    """Where one lab lives. ``root`` is its private folder (state, host dirs, logs)."""

    slot: int
    root: Path

    def __post_init__(self) -> None:
        if not 0 <= self.slot < MAX_SLOTS:
            raise ValueError(f"slot must be in 0..{MAX_SLOTS - 1}, got {self.slot}")

    @property
    def prefix(self) -> str:
        """Short name prefix for namespaces, links, cgroups and processes (<= 5 chars)."""
        return f"as{self.slot}"

    @property
    def port_base(self) -> int:
        return 20000 + PORTS_PER_SLOT * self.slot

    def port(self, offset: int) -> int:
        if not 0 <= offset < PORTS_PER_SLOT:
            raise ValueError(f"port offset {offset} outside the slot's range")
        return self.port_base + offset

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{210 + self.slot}.0.0/24")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def bridge_address(self) -> ipaddress.IPv4Address:
        """The controller's address on the lab bridge (the root namespace)."""
        return self.subnet.network_address + 254

    def host_address(self, index: int) -> ipaddress.IPv4Address:
        if not 0 <= index < 200:
            raise ValueError(f"host index {index} out of range")
        return self.subnet.network_address + 1 + index

    def netns(self, index: int) -> str:
        return f"{self.prefix}-h{index}"

    def veth(self, index: int) -> tuple[str, str]:
        """(bridge side, host side) names of host ``index``'s uplink (<= 15 chars)."""
        return f"{self.prefix}-h{index}-br", f"{self.prefix}-h{index}-up"

    def migration_ports(self, index: int) -> tuple[int, int]:
        low = 49152 + MIGRATION_PORTS_PER_HOST * index
        return low, low + MIGRATION_PORTS_PER_HOST - 1

    def cgroup(self, index: int) -> str:
        return f"{self.prefix}-h{index}"

    @property
    def state_file(self) -> Path:
        return self.root / "lab-state.json"

    @property
    def ceph_dir(self) -> Path:
        return self.root / "ceph"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    @property
    def dpdk_dir(self) -> Path:
        return self.root / "dpdk"

    @property
    def ovs_dir(self) -> Path:
        return self.root / "ovs"

    @property
    def dpdk_file_prefix(self) -> str:
        return f"{self.prefix}-dpdk"

    @property
    def node_textfile_dir(self) -> Path:
        """node-exporter's textfile collector folder (the lab's sensor feed writes there)."""
        return self.prometheus_dir / "textfile"

    @property
    def ovs_netns(self) -> str:
        """Network namespace of the lab's userspace ovs-vswitchd and its bond members."""
        return f"{self.prefix}-ovs"

    @property
    def ovs_switch_netns(self) -> str:
        """Network namespace of the top-of-rack switches the OVS bonds uplink to."""
        return f"{self.prefix}-tor"

    # --- the guests' network: one L2 segment over every host (see lab/net.py) ---------------

    @property
    def guest_subnet(self) -> ipaddress.IPv4Network:
        """The guests' subnet, next to (not inside) the hosts' ``subnet``."""
        return ipaddress.IPv4Network(f"10.{210 + self.slot}.1.0/24")

    @property
    def guest_gateway(self) -> ipaddress.IPv4Address:
        """The access namespace's address on the guest segment (DHCP server, gateway)."""
        return self.guest_subnet.network_address + 1

    def guest_pool(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """First and last address the lab's DHCP server leases to guests."""
        base = self.guest_subnet.network_address
        return base + 100, base + 199

    @property
    def guest_bridge(self) -> str:
        """The guests' bridge in every host namespace: one name everywhere, so a migrated
        domain finds its bridge on the destination (product side: template.network.bridge)."""
        return "gbr0"

    @property
    def guest_fabric(self) -> str:
        """The root-namespace bridge joining every host's ``guest_bridge`` (no address)."""
        return f"{self.prefix}-gf"

    def guest_veth(self, index: int) -> tuple[str, str]:
        """(fabric side, host side) of host ``index``'s link into the guest segment."""
        return f"{self.prefix}-h{index}-g", "gbr0-up"

    @property
    def access_netns(self) -> str:
        """The lab's access namespace: DHCP for guests now, the load balancer later."""
        return f"{self.prefix}-acc"

    @property
    def access_guest_veth(self) -> tuple[str, str]:
        """(fabric side, access side) of the access namespace's leg on the guest segment."""
        return f"{self.prefix}-acc-g", "guest0"

    @property
    def access_lab_veth(self) -> tuple[str, str]:
        """(lab bridge side, access side) of its leg on the lab bridge (the hosts' subnet)."""
        return f"{self.prefix}-acc-l", "lab0"

    @property
    def access_address(self) -> ipaddress.IPv4Address:
        """The access namespace's address in the hosts' subnet (reachable from the root)."""
        return self.subnet.network_address + 250

    @property
    def dhcp_dir(self) -> Path:
        return self.root / "dhcp"

    @property
    def cpu_cgroup_prefix(self) -> str:
        """Prefix of the CPU-capped cgroups of busy-polling lab processes (testpmd, OVS)."""
        return f"{self.prefix}-cap"
