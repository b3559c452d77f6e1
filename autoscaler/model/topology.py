"""The fleet as the controller sees it: regions > datacenters > racks > hosts > VMs.

Where it sits: the nouns of a Snapshot. Collectors fill them, policies read them, actuators
receive them inside Actions. All are frozen pydantic models with ``extra="forbid"`` so a
snapshot file with a typo fails loudly instead of being half-read.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaler.model.names import Name


class Frozen(BaseModel):
    """Base of every vocabulary type: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NicModel(StrEnum):
    """How a VM's NIC is attached. SR-IOV pins the VM to its host's physical function."""

    VIRTIO = "virtio"
    VHOST_NET = "vhost-net"
    MACVTAP = "macvtap"
    SRIOV = "sr-iov"

    @property
    def live_migratable(self) -> bool:
        return self is not NicModel.SRIOV


class VmState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MIGRATING = "migrating"
    UNKNOWN = "unknown"


class Health(StrEnum):
    """Health of a rack or host, as scored by the policies."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    UNKNOWN = "unknown"


class Region(Frozen):
    name: Name


class Datacenter(Frozen):
    name: Name
    region: Name


class Rack(Frozen):
    name: Name
    datacenter: Name


class Host(Frozen):
    """A libvirt host. ``cpus`` and ``memory_mib`` are what it offers to guests."""

    name: Name
    rack: Name
    uri: str = Field(min_length=1, description="libvirt URI the controller uses")
    cpus: float = Field(gt=0, description="physical cores offered to guests")
    memory_mib: int = Field(gt=0)
    free_memory_mib: int | None = Field(default=None, ge=0)
    reachable: bool = True
    cordoned: bool = False
    libvirt_latency_s: float | None = Field(default=None, ge=0)


class LocalStorage(Frozen):
    """A clone's disk is a qcow2 overlay in its host's ``images`` pool (the template is a file
    in every host's pool); live migration copies it (block migration)."""

    kind: Literal["local"] = "local"


class RbdStorage(Frozen):
    """A clone's disk is a copy-on-write RBD clone of the template version's protected
    snapshot, in ``pool``; every host reaches it, so live migration copies no disk."""

    kind: Literal["rbd"] = "rbd"
    pool: Name = Field(description="the Ceph pool of the template image and of its clones")
    user: Name = Field(
        default="admin", description="the cephx user QEMU opens the disks as (client.USER)"
    )


Storage = Annotated[LocalStorage | RbdStorage, Field(discriminator="kind")]


class NetworkSpec(Frozen):
    """Where a clone's NIC is plugged: a bridge of this name on whichever host it runs on (the
    same name on every host, so a live-migrated VM finds it on the destination). The NIC's
    model stays the template's ``nic_model``."""

    bridge: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$",
        description="the host bridge (a Linux interface name: at most 15 characters)",
    )


class Template(Frozen):
    """What every instance of a business is cloned from."""

    image: str = Field(
        min_length=1,
        description="local: the file name in the image folder; rbd: the template's RBD image",
    )
    storage: Storage = LocalStorage()
    version: Name | None = Field(
        default=None, description="the template version clones use (rbd: the image's snapshot)"
    )
    vcpus: int = Field(ge=1)
    max_vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=64)
    max_memory_mib: int = Field(ge=64)
    dimm_mib: int = Field(default=128, ge=128, description="size of one hot-added DIMM")
    nic_model: NicModel = NicModel.VIRTIO
    cpu_quota: float | None = Field(
        default=None, gt=0, le=1, description="host cores per vCPU (cgroup quota); None = whole"
    )
    network: NetworkSpec | None = Field(
        default=None, description="the bridge the NIC is on; None: a NIC attached to nothing"
    )

    @model_validator(mode="after")
    def _maxima_cover_current(self) -> Template:
        if self.max_vcpus < self.vcpus:
            raise ValueError(f"max_vcpus ({self.max_vcpus}) is below vcpus ({self.vcpus})")
        if self.max_memory_mib < self.memory_mib:
            raise ValueError(
                f"max_memory_mib ({self.max_memory_mib}) is below memory_mib ({self.memory_mib})"
            )
        return self

    @model_validator(mode="after")
    def _rbd_names_a_version(self) -> Template:
        if isinstance(self.storage, RbdStorage) and self.version is None:
            raise ValueError("an rbd template needs a version (the image snapshot clones use)")
        return self

    @property
    def live_migratable(self) -> bool:
        return self.nic_model.live_migratable


class AccessTarget(Frozen):
    """Where a business is served: a backend of a load balancer named in the inventory.

    Each ready instance is a server of ``backend`` named after its VM, reached on its address
    at ``port``; a retire drains it there for at most ``drain_timeout_s`` before it stops.
    """

    balancer: Name = Field(description="the balancer's name in the controller file")
    backend: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    port: int = Field(default=80, ge=1, le=65535)
    drain_timeout_s: float = Field(default=30.0, gt=0, le=3600)


class Business(Frozen):
    """A business as the fleet knows it: its template, instance bounds and access layer."""

    name: Name
    template: Template
    min_instances: int = Field(ge=0)
    max_instances: int = Field(ge=1)
    access: AccessTarget | None = Field(
        default=None, description="the load balancer in front of it; None: none (as before)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Business:
        if self.max_instances < self.min_instances:
            raise ValueError(
                f"max_instances ({self.max_instances}) is below min_instances"
                f" ({self.min_instances})"
            )
        return self


class VM(Frozen):
    """One guest. Utilisation is measured against the VM's own capacity (vCPUs x quota)."""

    name: Name
    host: Name
    business: Name | None = Field(default=None, description="None: not managed by us")
    state: VmState
    vcpus: int = Field(ge=1)
    max_vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    max_memory_mib: int = Field(ge=1)
    nic_model: NicModel = NicModel.VIRTIO
    cpu_quota: float | None = Field(default=None, gt=0, le=1)
    cpu_utilisation: float | None = Field(
        default=None, ge=0, description="busy share of the VM's capacity; None = not measured"
    )
    memory_used_mib: float | None = Field(
        default=None,
        ge=0,
        description="memory the guest itself reports in use (balloon stats: its total less"
        " what it can still use); None = not reported or stale. Never QEMU's RSS, which only grows",
    )
    memory_guest_total_mib: float | None = Field(
        default=None,
        ge=0,
        description="the memory the guest sees (its MemTotal: the VM's memory less what its"
        " kernel reserves), reported with memory_used_mib; None = not reported or stale",
    )
    ready: bool = False
    draining: bool = False
    created_at: float | None = None
    address: str | None = Field(
        default=None,
        description="the address the guest reported when it became ready (kept in the domain's"
        " metadata, so it survives a live migration; the load balancer reaches it there);"
        " None: not reported",
    )
    version: Name | None = Field(
        default=None, description="the template version it was cloned from; None: not known"
    )
    owned: bool = Field(
        default=True,
        description="carries a valid ownership stamp of the fleet key; False: reported only,"
        " never acted on until an operator adopts it",
    )

    @field_validator("address")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.ip_address(value))

    @property
    def capacity_cores(self) -> float:
        """Host cores this VM can use at most."""
        return self.vcpus * (self.cpu_quota if self.cpu_quota is not None else 1.0)

    @property
    def busy_cores(self) -> float | None:
        if self.cpu_utilisation is None:
            return None
        return self.cpu_utilisation * self.capacity_cores

    @property
    def live_migratable(self) -> bool:
        return self.nic_model.live_migratable

    @property
    def memory_used_share(self) -> float | None:
        """Memory in use as a share of what the guest sees (of its size if it says no total)."""
        if self.memory_used_mib is None:
            return None
        total = self.memory_guest_total_mib or float(self.memory_mib)
        return self.memory_used_mib / total if total > 0 else None
