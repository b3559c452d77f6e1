"""Small builders of policies, fleets, snapshots and demand histories for the policy tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from autoscaler.model import (
    VM,
    BackupCatalogue,
    Datacenter,
    Host,
    NicModel,
    Rack,
    Region,
    Scope,
    Signal,
    Snapshot,
    Stale,
    VmState,
)
from autoscaler.model.access import AccessView, ServerState
from policies.schema import BusinessPolicy

NOW = pd.Timestamp("2024-03-06T12:00:00", tz="UTC").timestamp()  # a Wednesday


def policy(business: str = "web", **overrides: Any) -> BusinessPolicy:
    """A business policy; ``overrides`` replace top-level sections (as plain dicts)."""
    data: dict[str, Any] = {
        "apiVersion": "autoscaler/v1",
        "kind": "BusinessPolicy",
        "business": business,
        "template": {
            "image": f"{business}.qcow2",
            "vcpus": {"now": 1, "max": 4},
            "memory_mib": {"now": 256, "max": 1024},
            "cpu_quota": 0.25,
        },
        "instances": {"min": 1, "max": 10},
        "scaling": {"target_utilisation": 0.6, "horizontal": {"max_step_up": 4}},
    }
    if "backup" in overrides and "template" not in overrides:
        # Backups copy RBD snapshots: a business with them keeps its disks on RBD.
        data["template"] = {
            **data["template"],
            "image": business,
            "storage": {"kind": "rbd", "pool": "images"},
            "version": "v1",
        }
    data.update(overrides)
    return BusinessPolicy.model_validate(data)


def history(
    values: list[float] | np.ndarray, *, step_s: float = 300, end: float = NOW
) -> pd.Series:
    """Demand (busy cores) ending at ``end`` with one value per ``step_s``."""
    index = pd.date_range(
        end=pd.Timestamp(end, unit="s", tz="UTC"),
        periods=len(values),
        freq=pd.Timedelta(seconds=step_s),
    )
    return pd.Series(np.asarray(values, dtype=float), index=index)


@dataclass
class Fleet:
    """Two regions x one datacenter x ``racks_per_dc`` racks x ``hosts_per_rack`` hosts."""

    racks_per_dc: int = 2
    hosts_per_rack: int = 2
    host_cpus: float = 16
    host_memory_mib: int = 65_536
    vms: list[VM] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    stale: list[Stale] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    cordoned: set[str] = field(default_factory=set)
    backups: list[BackupCatalogue] = field(default_factory=list)
    """Listed backup catalogues, one per business (none: the business's backups unknown)."""
    access: list[AccessView] = field(default_factory=list)
    """Backends as read from their balancers, one per business (none: not read)."""

    @property
    def rack_names(self) -> list[str]:
        return [f"{dc}-k{i}" for dc in ("ra-d1", "rb-d1") for i in range(1, self.racks_per_dc + 1)]

    def host_names(self, rack: str) -> list[str]:
        return [f"{rack}-h{i}" for i in range(1, self.hosts_per_rack + 1)]

    def add_vms(
        self,
        business: str,
        count: int,
        *,
        utilisation: float | None = 0.5,
        rack: str | None = None,
        nic: NicModel = NicModel.VIRTIO,
        vcpus: int = 1,
        ready: bool = True,
        memory_used_mib: float | None = None,
        memory_guest_total_mib: float | None = None,
        addressed: bool = False,
        version: str | None = None,
    ) -> list[VM]:
        hosts = (
            self.host_names(rack)
            if rack is not None
            else [h for r in self.rack_names for h in self.host_names(r)]
        )
        added = []
        for i in range(count):
            vm = VM(
                name=f"{business}-{len(self.vms):03d}",
                host=hosts[i % len(hosts)],
                business=business,
                state=VmState.RUNNING,
                vcpus=vcpus,
                max_vcpus=4,
                memory_mib=256,
                max_memory_mib=1024,
                nic_model=nic,
                cpu_quota=0.25,
                cpu_utilisation=utilisation,
                memory_used_mib=memory_used_mib,
                memory_guest_total_mib=memory_guest_total_mib,
                ready=ready,
                address=f"10.1.1.{len(self.vms) + 10}" if addressed else None,
                version=version,
                created_at=NOW - 86_400 + len(self.vms),
            )
            self.vms.append(vm)
            added.append(vm)
        return added

    def signal(self, scope: Scope, target: str, name: str, value: float, age_s: float = 0) -> None:
        self.signals.append(
            Signal(scope=scope, target=target, name=name, value=value, observed_at=NOW - age_s)
        )

    def snapshot(self, *policies: BusinessPolicy) -> Snapshot:
        regions = (Region(name="ra"), Region(name="rb"))
        dcs = (Datacenter(name="ra-d1", region="ra"), Datacenter(name="rb-d1", region="rb"))
        racks = tuple(Rack(name=r, datacenter=r.rsplit("-k", 1)[0]) for r in self.rack_names)
        hosts = tuple(
            Host(
                name=h,
                rack=r,
                uri=f"qemu+tcp://{h}/system",
                cpus=self.host_cpus,
                memory_mib=self.host_memory_mib,
                reachable=h not in self.unreachable,
                cordoned=h in self.cordoned,
            )
            for r in self.rack_names
            for h in self.host_names(r)
        )
        return Snapshot(
            now=NOW,
            regions=regions,
            datacenters=dcs,
            racks=racks,
            hosts=hosts,
            vms=tuple(self.vms),
            businesses=tuple(p.to_business() for p in policies),
            signals=tuple(self.signals),
            stale=tuple(self.stale),
            backups=tuple(self.backups),
            access=tuple(self.access),
        )


def access_view(
    *servers: ServerState, stale: bool = False, reason: str = "connection refused"
) -> AccessView:
    """web's backend at the balancer ``edge`` as read at NOW (stale: with ``reason``)."""
    return AccessView(
        business="web",
        balancer="edge",
        backend="web",
        read_at=NOW,
        stale=stale,
        reason=reason if stale else "",
        servers=() if stale else servers,
    )
