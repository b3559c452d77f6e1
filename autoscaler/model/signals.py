"""Samples, health signals and staleness.

Where it sits: between collectors and the Snapshot. A collector returns ``Sample`` values (a
metric, its labels, a value, a timestamp). The snapshot builder turns the ones policies need
into ``Signal`` values scoped to a host, rack, cluster, Ceph pool or business, and records every
scope it could not observe as ``Stale`` with the time of its last good sample. A missing value
is never reported as zero: it is absent and its scope is stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import Field, field_validator

from autoscaler.model.topology import Frozen


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation from one source (the collector protocol's unit of output)."""

    metric: str
    value: float
    timestamp: float
    labels: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"sample {self.metric} has a non-finite value {self.value!r}")

    def label(self, name: str) -> str | None:
        for key, value in self.labels:
            if key == name:
                return value
        return None


class Scope(StrEnum):
    HOST = "host"
    RACK = "rack"
    DATACENTER = "datacenter"
    CLUSTER = "cluster"
    VM = "vm"
    BUSINESS = "business"
    POOL = "pool"
    """A Ceph pool; the target is the pool's name (one Ceph cluster per controller)."""


class SignalName(StrEnum):
    """Signals the policies understand. Collectors may emit more; policies ignore the rest."""

    HOST_REACHABLE = "host_reachable"
    BOND_REDUNDANCY_LOST = "bond_redundancy_lost"
    LINK_DOWN = "link_down"
    CEPH_OSDS_UP = "ceph_osds_up"
    CEPH_OSDS_TOTAL = "ceph_osds_total"
    CEPH_POOL_PERCENT_USED = "ceph_pool_percent_used"
    """Pool scope: the share of the pool used, a ratio 0-1 despite its name (``ceph df``'s JSON
    ``percent_used``: used / (used + max_avail), so it reaches 1 when the fullest OSD the pool's
    CRUSH rule writes to reaches the cluster's full ratio; only the text table shows percent)."""
    CEPH_PGS_INACTIVE = "ceph_pgs_inactive"
    """Cluster scope: placement groups not active (peering, down, incomplete, stale...): I/O to
    the objects they hold blocks until they are."""
    DPDK_RX_DROP_RATE = "dpdk_rx_drop_rate"
    DPDK_RX_ERROR_RATE = "dpdk_rx_error_rate"
    TEMPERATURE_CELSIUS = "temperature_celsius"
    SLI_GOOD = "sli_good"
    SLI_TOTAL = "sli_total"


class Signal(Frozen):
    """A value about one scope at one time, e.g. rack r2's temperature."""

    scope: Scope
    target: str = Field(min_length=1)
    name: str = Field(min_length=1)
    value: float
    observed_at: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("signal values must be finite")
        return value


class Stale(Frozen):
    """A scope a source could not observe at snapshot time."""

    scope: Scope
    target: str = Field(min_length=1)
    source: str = Field(min_length=1, description="collector that failed, e.g. 'libvirt'")
    last_good: float | None = Field(description="time of the last good sample, if any")
    reason: str = ""
