"""Fleet-wide brakes: a freeze on destructive actions when the fleet's metrics look broken, and
a cap on actions per minute across every business.

Where it sits: inside ``policies.decide``. ``fleet_freeze`` runs before planning: when it
returns a reason, decide plans no retire and no live migration (scale-up goes on: adding
capacity on bad data costs money, removing it on bad data costs the SLA). ``fleet_cap`` runs
on the finished action list and keeps the most important actions within the per-minute cap.
Pure: the demand histories and the snapshot are the only inputs, ``now`` is an argument.

Why a freeze: a broken metrics pipeline (an exporter restarted with empty counters, a
Prometheus rule gone, a libvirt stats call answering zeros) looks like a quiet night to each
business on its own. Many businesses falling at once, or every VM at exactly zero CPU, is far
more likely a broken source than the whole fleet going idle in one step; nothing is lost by
waiting for a second opinion, while retiring or moving VMs on it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model import Action, Scope, Snapshot
from policies.forecast.grid import epoch_seconds


class BrakeSettings(BaseModel):
    """Fleet-wide brakes (controller file, ``brakes:``). Defaults are conservative round
    numbers, not fitted to any trace: change them for a fleet whose businesses move together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_actions_per_minute: int = Field(
        default=20,
        ge=1,
        description="actions (executed in the last 60 s plus planned) across all businesses;"
        " beyond it the least important wait: evacuations and drains first, then scale-up,"
        " then scale-down",
    )
    collapse_drop: float = Field(
        default=0.85,
        gt=0,
        lt=1,
        description="a business collapses when its latest demand is below (1 - this) of its"
        " recent level (the median of its previous points)",
    )
    collapse_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="freeze when at least this share of the businesses with enough history"
        " collapse in one step ...",
    )
    collapse_min_businesses: int = Field(
        default=2,
        ge=2,
        description="... and at least this many (one business going quiet alone is its own"
        " business, never a freeze); also the fewest businesses an all-zero reading must span",
    )
    recent_points: int = Field(
        default=5,
        ge=1,
        description="points of a business's demand before a step that make its recent"
        " level (their median); a business with fewer, or only zeros, is not counted",
    )
    freeze_hold_s: float = Field(
        default=1800,
        ge=0,
        description="how long a collapse freezes retires and migrations while demand stays"
        " low; after it the new level is trusted (an all-zero reading holds while it lasts)."
        " Keep it longer than the businesses' scale_down_stabilisation_s, or a retire can"
        " follow the freeze on the broken reading",
    )


def collapsed_since(series: pd.Series, now: float, settings: BrakeSettings) -> float | None:
    """When this business's demand collapsed (the latest such step within ``freeze_hold_s``
    of ``now`` after which it stayed low), or None. A step collapses when its value is below
    ``1 - collapse_drop`` of the median of the ``recent_points`` before it."""
    v, t = _points(series)
    if len(v) < settings.recent_points + 1:
        return None
    keep = 1 - settings.collapse_drop
    for i in range(len(v) - 1, settings.recent_points - 1, -1):
        if t[i] < now - settings.freeze_hold_s:
            return None
        before = v[i - settings.recent_points : i]
        if v[i] >= keep * before.max():
            continue  # not below keep x the highest before, so not below keep x their median
        level = float(np.median(before))
        if level <= 0 or v[i] >= keep * level:
            continue
        if np.all(v[i:] < keep * level):
            return float(t[i])
        return None
    return None


def eligible(series: pd.Series | None, settings: BrakeSettings) -> bool:
    """Enough history to have a level of its own: ``recent_points`` + 1 points, not all zero."""
    if series is None:
        return False
    values, _ = _points(series)
    return len(values) > settings.recent_points and bool((values > 0).any())


def _points(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, epoch seconds) of the series' points that are not NaN (numpy: this runs for
    every business at every cycle)."""
    values = np.asarray(series.to_numpy(dtype=float), dtype=float)
    known = ~np.isnan(values)
    seconds = epoch_seconds(series.index)
    return values[known], seconds[known]


def fleet_freeze(
    snapshot: Snapshot,
    demand: Mapping[str, pd.Series],
    businesses: Iterable[str],
    now: float,
    settings: BrakeSettings,
) -> str | None:
    """Why retires and migrations are frozen now, or None. Two triggers:

    - every measured VM (a fresh CPU reading) reports exactly zero, across at least
      ``collapse_min_businesses`` businesses, and their demand history was not all zero:
      held for as long as the zeros last (a real guest never reads exactly 0);
    - the demand of at least ``collapse_share`` of the businesses with enough history (and at
      least ``collapse_min_businesses``) fell by more than ``collapse_drop`` in one step and
      stayed there: held for ``freeze_hold_s`` after the step (or until demand comes back),
      after which the new level is trusted (the alert has fired by then).
    """
    names = sorted(businesses)
    measured = [
        vm
        for vm in snapshot.vms
        if vm.business in names
        and vm.cpu_utilisation is not None
        and not snapshot.is_stale(Scope.VM, vm.name)
    ]
    spanned = {vm.business for vm in measured if vm.business is not None}
    # NaN > 0 is False: a gap is not demand.
    had_demand = sorted(
        b for b in spanned if b in demand and bool((demand[b].to_numpy(dtype=float) > 0).any())
    )
    if (
        measured
        and all(vm.cpu_utilisation == 0 for vm in measured)
        and len(spanned) >= settings.collapse_min_businesses
        and had_demand
    ):
        return (
            f"every measured VM ({len(measured)}, {len(spanned)} businesses) reports 0 CPU"
            f" while {', '.join(had_demand)} had demand: a source reporting zeros,"
            " not a quiet fleet"
        )
    counted = [b for b in names if eligible(demand.get(b), settings)]
    collapsed = sorted(b for b in counted if collapsed_since(demand[b], now, settings) is not None)
    needed = max(
        settings.collapse_min_businesses, math.ceil(settings.collapse_share * len(counted))
    )
    if counted and len(collapsed) >= needed:
        return (
            f"demand of {len(collapsed)} of {len(counted)} businesses ({', '.join(collapsed)})"
            f" fell by more than {settings.collapse_drop:.0%} in one step: a broken metrics"
            " source, not a quiet night"
        )
    return None


FREEZE_HOLDS = frozenset({"retire", "live_migrate", "replace"})


def importance(action: Action) -> int:
    """Lower first: moving VMs (off failing racks, off drained hosts) protects capacity that
    is about to be lost; scale-up protects the SLA against demand; scale-down only saves
    money and loses nothing by waiting a minute; a scheduled backup is due for a whole slot
    (hours) and loses least of all by waiting."""
    if action.kind == "live_migrate":
        return 0
    if action.kind in ("retire", "replace"):
        return 2
    if action.kind == "backup":
        return 3
    return 1


def actions_in_last_minute(recent: Mapping[str, Sequence[float]], now: float) -> int:
    return sum(1 for times in recent.values() for t in times if now - 60 < t <= now)


def fleet_cap(
    actions: Sequence[Action],
    done_last_minute: int,
    settings: BrakeSettings,
    counted: Callable[[Action], bool] = lambda _: True,
) -> tuple[list[Action], list[Action]]:
    """(kept, held): the most important ``counted`` actions that fit in the per-minute cap,
    and every other action (a recommend-mode business's, only exported), in plan order."""
    room = max(0, settings.max_actions_per_minute - done_last_minute)
    capped = [i for i, a in enumerate(actions) if counted(a)]
    if len(capped) <= room:
        return list(actions), []
    ranked = sorted(capped, key=lambda i: (importance(actions[i]), i))
    dropped = set(ranked[room:])
    kept = [a for i, a in enumerate(actions) if i not in dropped]
    held = [a for i, a in enumerate(actions) if i in dropped]
    return kept, held
