"""What a lab looks like: its regions, datacenters, racks, hosts and first VMs.

Where it sits: the input of ``lab up``. The default is the seed cloud's layout in miniature:
two regions, three datacenters with two racks each, one host per rack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model import Name
from policies.yaml_source import read_yaml, validate_file


class LabSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: dict[Name, dict[Name, tuple[Name, ...]]] = Field(
        default={
            "north": {"n1": ("n1-r1", "n1-r2"), "n2": ("n2-r1", "n2-r2")},
            "south": {"s1": ("s1-r1", "s1-r2")},
        },
        description="region -> datacenter -> rack names",
    )
    hosts_per_rack: int = Field(default=1, ge=1, le=8)
    host_cpus: float = Field(default=1.0, gt=0, description="cores each lab host offers guests")
    host_memory_mib: int = Field(default=4096, gt=0)
    domain_type: str = Field(default="qemu", pattern="^(qemu|kvm)$")
    initial_vms: dict[Name, int] = Field(
        default={"web": 2, "api": 2, "cache": 1}, description="business -> instances at start"
    )
    access: tuple[Name, ...] = Field(
        default=(),
        description="businesses served through the lab's HAProxy (in the access namespace),"
        " each with an access section in its lab policy; none: no load balancer (as before)",
    )
    storage: Literal["local", "rbd"] = Field(
        default="local",
        description="where the lab's businesses keep their VM disks: qcow2 overlays on each"
        " host, or RBD clones in the lab Ceph's images pool (needs the ceph component)",
    )

    def racks(self) -> list[tuple[str, str, str]]:
        return [
            (region, dc, rack)
            for region, dcs in self.regions.items()
            for dc, racks in dcs.items()
            for rack in racks
        ]

    def host_names(self) -> list[tuple[str, str, str, str]]:
        """(region, datacenter, rack, host) for every host, in index order."""
        return [
            (region, dc, rack, f"{rack}-h{i + 1}")
            for region, dc, rack in self.racks()
            for i in range(self.hosts_per_rack)
        ]


def load_lab_spec(path: Path | None) -> LabSpec:
    if path is None:
        return LabSpec()
    return validate_file(LabSpec, path, read_yaml(path))
