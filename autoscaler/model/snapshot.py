"""The Snapshot: an immutable view of the fleet at ``now``.

Where it sits: built by the controller from collector Samples (or read from a file), handed to
``policies.decide``. It holds the topology, every VM, the businesses, the health signals and the
scopes that are stale. It round-trips through JSON (format ``autoscaler.snapshot/v1``, see
docs/snapshot-format.md) so plans can be computed offline and in tests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from autoscaler.model.access import AccessView
from autoscaler.model.backups import BackupCatalogue
from autoscaler.model.signals import Scope, Signal, Stale
from autoscaler.model.topology import VM, Business, Datacenter, Frozen, Host, Rack, Region

SNAPSHOT_FORMAT: Literal["autoscaler.snapshot/v1"] = "autoscaler.snapshot/v1"


def _name_of(item: Region | Datacenter | Rack | Host | VM | Business | BackupCatalogue) -> str:
    return item.business if isinstance(item, BackupCatalogue) else item.name


def _duplicates(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


class Snapshot(Frozen):
    format: Literal["autoscaler.snapshot/v1"] = SNAPSHOT_FORMAT
    now: float = Field(description="seconds since the epoch at which the view was taken")
    regions: tuple[Region, ...] = ()
    datacenters: tuple[Datacenter, ...] = ()
    racks: tuple[Rack, ...] = ()
    hosts: tuple[Host, ...] = ()
    vms: tuple[VM, ...] = ()
    businesses: tuple[Business, ...] = ()
    signals: tuple[Signal, ...] = ()
    stale: tuple[Stale, ...] = ()
    backups: tuple[BackupCatalogue, ...] = Field(
        default=(),
        description="per business, the backups its target holds; a business without one was"
        " not listed (unknown: no backup is planned for it)",
    )
    access: tuple[AccessView, ...] = Field(
        default=(),
        description="per business with an access layer, its backend as the balancer reports"
        " it; stale when the balancer did not answer",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Snapshot:
        problems: list[str] = []
        for kind, items in (
            ("region", self.regions),
            ("datacenter", self.datacenters),
            ("rack", self.racks),
            ("host", self.hosts),
            ("vm", self.vms),
            ("business", self.businesses),
            ("backup catalogue", self.backups),
        ):
            for dup in _duplicates([_name_of(i) for i in items]):
                problems.append(f"{kind} {dup!r} appears twice")
        regions = {r.name for r in self.regions}
        dcs = {d.name for d in self.datacenters}
        racks = {r.name for r in self.racks}
        hosts = {h.name for h in self.hosts}
        businesses = {b.name for b in self.businesses}
        problems += [
            f"datacenter {d.name!r} names unknown region {d.region!r}"
            for d in self.datacenters
            if d.region not in regions
        ]
        problems += [
            f"rack {r.name!r} names unknown datacenter {r.datacenter!r}"
            for r in self.racks
            if r.datacenter not in dcs
        ]
        problems += [
            f"host {h.name!r} names unknown rack {h.rack!r}"
            for h in self.hosts
            if h.rack not in racks
        ]
        problems += [
            f"vm {v.name!r} names unknown host {v.host!r}" for v in self.vms if v.host not in hosts
        ]
        problems += [
            f"vm {v.name!r} names unknown business {v.business!r}"
            for v in self.vms
            if v.business is not None and v.business not in businesses
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Snapshot:
        """A copy with ``update`` applied; its indexes are rebuilt, never copied from ``self``."""
        copy = super().model_copy(update=update, deep=deep)
        for name in _CACHED:
            copy.__dict__.pop(name, None)
        if update:
            # Re-check references: an update may add a VM on a host that does not exist.
            return Snapshot.model_validate(copy.model_dump())
        return copy

    # Indexes, computed once per (immutable) snapshot.
    @cached_property
    def host_by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    @cached_property
    def rack_by_name(self) -> dict[str, Rack]:
        return {r.name: r for r in self.racks}

    @cached_property
    def datacenter_by_name(self) -> dict[str, Datacenter]:
        return {d.name: d for d in self.datacenters}

    @cached_property
    def vm_by_name(self) -> dict[str, VM]:
        return {v.name: v for v in self.vms}

    @cached_property
    def business_by_name(self) -> dict[str, Business]:
        return {b.name: b for b in self.businesses}

    @cached_property
    def vms_by_host(self) -> dict[str, list[VM]]:
        out: dict[str, list[VM]] = defaultdict(list)
        for vm in self.vms:
            out[vm.host].append(vm)
        return dict(out)

    @cached_property
    def vms_by_business(self) -> dict[str, list[VM]]:
        out: dict[str, list[VM]] = defaultdict(list)
        for vm in self.vms:
            if vm.business is not None:
                out[vm.business].append(vm)
        return dict(out)

    @cached_property
    def hosts_by_rack(self) -> dict[str, list[Host]]:
        out: dict[str, list[Host]] = defaultdict(list)
        for host in self.hosts:
            out[host.rack].append(host)
        return dict(out)

    @cached_property
    def _stale_index(self) -> dict[tuple[Scope, str], list[Stale]]:
        out: dict[tuple[Scope, str], list[Stale]] = defaultdict(list)
        for entry in self.stale:
            out[(entry.scope, entry.target)].append(entry)
        return dict(out)

    @cached_property
    def backups_by_business(self) -> dict[str, BackupCatalogue]:
        return {c.business: c for c in self.backups}

    @cached_property
    def access_by_business(self) -> dict[str, AccessView]:
        return {a.business: a for a in self.access}

    def rack_of(self, host: str) -> Rack:
        return self.rack_by_name[self.host_by_name[host].rack]

    def datacenter_of(self, host: str) -> Datacenter:
        return self.datacenter_by_name[self.rack_of(host).datacenter]

    def stale_entries(self, scope: Scope, target: str) -> list[Stale]:
        return self._stale_index.get((scope, target), [])

    def is_stale(self, scope: Scope, target: str) -> bool:
        """True if ``target`` itself is stale (for a host: also if its rack is)."""
        if (scope, target) in self._stale_index:
            return True
        if scope is Scope.HOST and target in self.host_by_name:
            return (Scope.RACK, self.host_by_name[target].rack) in self._stale_index
        return False

    def signals_for(self, scope: Scope, target: str) -> list[Signal]:
        return [s for s in self.signals if s.scope is scope and s.target == target]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_defaults=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Snapshot:
        return cls.model_validate_json(text)


_CACHED = tuple(n for n, v in vars(Snapshot).items() if isinstance(v, cached_property))
