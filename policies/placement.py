"""Placement: which host receives a clone or a migrating VM.

Where it sits: inside ``decide()``. A ``PlacementView`` starts as the Snapshot's allocation
(cores and memory promised to VMs on each host, instances of each business per rack,
datacenter and region) and every action ``decide()`` adds is applied to it at once, so each
later choice is made on a copy of the fleet that already holds the plan's earlier actions. It
is a light mutable ledger rather than a new Snapshot per action: 10,000 VMs are indexed once.

Filters: host reachable, not cordoned, not stale; rack not failing (and not of unknown health);
room for the VM's cores and memory within the overcommit ratios; the policy's per-rack
maximum; for a migration, a live-migratable NIC and another rack. Weights: spread of the
business across racks, datacenters and regions (the policy's spread level first), then the
least loaded host, then a healthy rather than a degraded rack. Ties go to the first name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model import VM, Health, Scope, Snapshot
from policies.rack_health import RackHealth
from policies.schema import BusinessPolicy, SpreadLevel


class PlacementSettings(BaseModel):
    """Overcommit and weights of placement (controller configuration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_overcommit: float = Field(default=1.0, gt=0, description="guest cores per host core")
    memory_overcommit: float = Field(default=1.0, gt=0)
    spread_weight: float = Field(default=4.0, ge=0)
    load_weight: float = Field(default=1.0, ge=0)
    health_weight: float = Field(default=0.5, ge=0)


@dataclass
class _HostRoom:
    name: str
    rack: str
    datacenter: str
    region: str
    cores_limit: float
    memory_limit: float
    cores_used: float
    memory_used: float
    free_memory_left: float | None
    usable: bool

    def fits(self, cores: float, memory_mib: float) -> bool:
        if self.cores_used + cores > self.cores_limit + 1e-9:
            return False
        if self.memory_used + memory_mib > self.memory_limit + 1e-9:
            return False
        return self.free_memory_left is None or self.free_memory_left >= memory_mib

    @property
    def load(self) -> float:
        return max(self.cores_used / self.cores_limit, self.memory_used / self.memory_limit)


@dataclass(frozen=True, slots=True)
class Placed:
    host: str
    rack: str
    datacenter: str
    region: str


@dataclass
class _VmRecord:
    host: str
    business: str | None
    cores: float
    memory_mib: float


class PlacementView:
    """The fleet's allocation, updated as the plan grows."""

    def __init__(
        self,
        snapshot: Snapshot,
        rack_health: Mapping[str, RackHealth],
        settings: PlacementSettings | None = None,
    ) -> None:
        self.settings = settings or PlacementSettings()
        self.rack_health = rack_health
        self._hosts: dict[str, _HostRoom] = {}
        self._racks: dict[str, list[_HostRoom]] = defaultdict(list)
        for host in snapshot.hosts:
            rack = snapshot.rack_by_name[host.rack]
            dc = snapshot.datacenter_by_name[rack.datacenter]
            room = _HostRoom(
                name=host.name,
                rack=rack.name,
                datacenter=dc.name,
                region=dc.region,
                cores_limit=host.cpus * self.settings.cpu_overcommit,
                memory_limit=host.memory_mib * self.settings.memory_overcommit,
                cores_used=0.0,
                memory_used=0.0,
                free_memory_left=(
                    None if host.free_memory_mib is None else float(host.free_memory_mib)
                ),
                usable=host.reachable
                and not host.cordoned
                and not snapshot.is_stale(Scope.HOST, host.name),
            )
            self._hosts[host.name] = room
            self._racks[rack.name].append(room)
        self._vms: dict[str, _VmRecord] = {}
        self._count: dict[tuple[str, str], int] = defaultdict(int)
        for vm in snapshot.vms:
            self._add(vm.name, vm.host, vm.business, vm.capacity_cores, vm.memory_mib, fresh=False)

    # -- the ledger --------------------------------------------------------------------------
    def _add(
        self, vm: str, host: str, business: str | None, cores: float, memory: float, *, fresh: bool
    ) -> None:
        room = self._hosts[host]
        room.cores_used += cores
        room.memory_used += memory
        if fresh and room.free_memory_left is not None:
            room.free_memory_left -= memory
        self._vms[vm] = _VmRecord(host, business, cores, memory)
        if business is not None:
            for key in (room.rack, room.datacenter, room.region):
                self._count[(business, key)] += 1

    def _remove(self, vm: str) -> _VmRecord:
        record = self._vms.pop(vm)
        room = self._hosts[record.host]
        room.cores_used -= record.cores
        room.memory_used -= record.memory_mib
        if record.business is not None:
            for key in (room.rack, room.datacenter, room.region):
                self._count[(record.business, key)] -= 1
        return record

    def add_clone(self, vm: str, host: str, business: str, cores: float, memory_mib: float) -> None:
        self._add(vm, host, business, cores, memory_mib, fresh=True)

    def retire(self, vm: str) -> None:
        self._remove(vm)

    def migrate(self, vm: str, destination: str) -> None:
        record = self._remove(vm)
        self._add(vm, destination, record.business, record.cores, record.memory_mib, fresh=True)

    def grow(self, vm: str, cores: float, memory_mib: float) -> None:
        """Account for a hot-add of ``cores`` and ``memory_mib`` more on the VM's host."""
        record = self._vms[vm]
        room = self._hosts[record.host]
        room.cores_used += cores
        room.memory_used += memory_mib
        if room.free_memory_left is not None:
            room.free_memory_left -= memory_mib
        record.cores += cores
        record.memory_mib += memory_mib

    def host_fits(self, host: str, cores: float, memory_mib: float) -> bool:
        room = self._hosts[host]
        return room.usable and room.fits(cores, memory_mib)

    def instances(self, business: str, domain: str) -> int:
        """Instances of ``business`` in a rack, datacenter or region (by its name)."""
        return self._count.get((business, domain), 0)

    def rack_of(self, host: str) -> str:
        return self._hosts[host].rack

    def host_load(self, host: str) -> float:
        return self._hosts[host].load

    # -- choosing ----------------------------------------------------------------------------
    def choose(
        self,
        policy: BusinessPolicy,
        cores: float,
        memory_mib: float,
        *,
        migrating: VM | None = None,
    ) -> Placed | None:
        """The best host for one more instance of ``policy.business`` (or for ``migrating``)."""
        business = policy.business
        source_rack = None
        if migrating is not None:
            if not migrating.live_migratable:
                return None
            source_rack = self._hosts[migrating.host].rack
        max_per_rack = policy.placement.max_per_rack
        best: tuple[float, tuple[int, ...]] | None = None
        best_room: _HostRoom | None = None
        for rack, rooms in self._racks.items():
            health = self.rack_health.get(rack)
            verdict = health.health if health is not None else Health.UNKNOWN
            if verdict in (Health.FAILING, Health.UNKNOWN) or rack == source_rack:
                continue
            if migrating is not None and verdict is not Health.HEALTHY:
                continue
            if max_per_rack is not None and self.instances(business, rack) >= max_per_rack:
                continue
            room = _least_loaded_fitting(rooms, cores, memory_mib)
            if room is None:
                continue
            score = self._score(policy, room, verdict)
            key = (score, _negated(room.name))
            if best is None or key > best:
                best, best_room = key, room
        if best_room is None:
            return None
        return Placed(best_room.name, best_room.rack, best_room.datacenter, best_room.region)

    def _score(self, policy: BusinessPolicy, room: _HostRoom, verdict: Health) -> float:
        business = policy.business
        levels = {
            SpreadLevel.RACK: room.rack,
            SpreadLevel.DATACENTER: room.datacenter,
            SpreadLevel.REGION: room.region,
        }
        # The policy's level counts most; the others still break ties toward wider spread.
        spread = 0.0
        for level, domain in levels.items():
            weight = 1.0 if level is policy.placement.spread else 0.25
            spread += weight / (1 + self.instances(business, domain))
        s = self.settings
        healthy = 1.0 if verdict is Health.HEALTHY else 0.0
        load = 1.0 - room.load
        return s.spread_weight * spread + s.load_weight * load + s.health_weight * healthy


def _least_loaded_fitting(
    rooms: list[_HostRoom], cores: float, memory_mib: float
) -> _HostRoom | None:
    best: _HostRoom | None = None
    for room in rooms:
        if not room.usable or not room.fits(cores, memory_mib):
            continue
        if best is None or (room.load, room.name) < (best.load, best.name):
            best = room
    return best


def _negated(name: str) -> tuple[int, ...]:
    """A key that sorts names in reverse, so the max() of (score, key) prefers the first name."""
    return tuple(-ord(c) for c in name)
