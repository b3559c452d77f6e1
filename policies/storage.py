"""May a new disk be made for a business now? The Ceph gate on clones.

Where it sits: read by ``policies.assess`` for every business, its answer kept in the
``BusinessView`` (``clone_block``) and obeyed by ``policies.scaling.scale_up``. A business whose
template is on RBD gets no clone while its pool is near full or the cluster has PGs that serve
no I/O: a clone there is a new image whose writes would fill the pool further or block on a PG
that is not active. A business on local storage is not affected. Only clones are gated: a
hot-add on a running VM and a retire make no new disk.

Unknown is not healthy: a business on RBD whose pool figures or PG states are missing, stale or
too old gets no clone either, with the reason ("Ceph health unknown"), as stale host data never
starts an action elsewhere. Pure: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model import RbdStorage, Scope, SignalName, Snapshot
from policies.schema import BusinessPolicy

REFUSED_CLONE = "no clone of "
"""How a reason of a clone refused by the storage starts (the cycle logs and counts them)."""


class StorageSettings(BaseModel):
    """Thresholds of the Ceph gate (controller configuration, fleet-wide).

    Fleet-wide rather than per business: the near-full ratio is a property of the Ceph cluster
    (Ceph's ``mon_osd_nearfull_ratio`` is one value for the whole cluster), and a pool is shared
    by every business that clones into it: a per-business threshold would let one business
    fill the pool the others' clones need.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_nearfull_ratio: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="no clone into a pool whose ceph_pool_percent_used (a ratio 0-1) is at or"
        " above this; the default is Ceph's mon_osd_nearfull_ratio. A pool's share is measured"
        " against the room left before its fullest OSD reaches the full ratio (0.95), so 0.85"
        " of it comes a little before Ceph's own near-full warning: on the safe side",
    )
    max_signal_age_s: float = Field(
        default=300, gt=0, description="older Ceph figures are unknown (as in rack health)"
    )


def _fresh(
    snapshot: Snapshot, scope: Scope, name: str, now: float, settings: StorageSettings
) -> list[float]:
    """The values of the fresh signals ``name`` of any target of ``scope``."""
    return [
        s.value
        for s in snapshot.signals
        if s.scope is scope and s.name == name and now - s.observed_at <= settings.max_signal_age_s
    ]


def _pool_used(
    snapshot: Snapshot, pool: str, now: float, settings: StorageSettings
) -> tuple[float | None, str]:
    """The pool's used share, or None and why it is unknown."""
    stale = snapshot.stale_entries(Scope.POOL, pool)
    if stale:
        return None, f"pool {pool} stale: {stale[0].reason[:120] or stale[0].source}"
    values = [
        s.value
        for s in snapshot.signals_for(Scope.POOL, pool)
        if s.name == SignalName.CEPH_POOL_PERCENT_USED
        and now - s.observed_at <= settings.max_signal_age_s
    ]
    if not values:
        return None, f"no fresh figures for pool {pool}"
    return max(values), ""


def clone_block(
    snapshot: Snapshot, policy: BusinessPolicy, settings: StorageSettings, now: float
) -> str | None:
    """Why no clone of ``policy.business`` may be made now, or None if one may."""
    storage = policy.template.storage
    if not isinstance(storage, RbdStorage):
        return None  # a local disk: the state of Ceph is not its concern
    ratio = settings.pool_nearfull_ratio
    problems: list[str] = []
    unknown: list[str] = []
    used, why = _pool_used(snapshot, storage.pool, now, settings)
    if used is None:
        unknown.append(why)
    elif used >= ratio:
        problems.append(f"pool {storage.pool} is {used:.0%} full (near-full at {ratio:.0%})")
    # One Ceph cluster per controller: its PG states are the cluster-scope signal, whatever
    # the collector's target name; with more than one, the worst counts.
    inactive = _fresh(snapshot, Scope.CLUSTER, SignalName.CEPH_PGS_INACTIVE, now, settings)
    if not inactive:
        unknown.append("no fresh PG states")
    elif (worst := max(inactive)) > 0:
        problems.append(f"{worst:g} PG{'' if worst == 1 else 's'} inactive")
    if unknown:
        problems.append(f"Ceph health unknown ({'; '.join(unknown)})")
    if not problems:
        return None
    return f"{REFUSED_CLONE}{policy.business}: {'; '.join(problems)}"
