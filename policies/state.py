"""DecisionState: everything ``decide()`` needs besides the Snapshot, as plain data.

Where it sits: the controller (or the simulator) owns it and builds a new one each cycle: it
appends the latest demand to each business's history, records the SLA interval, stamps the
times of the actions it executed, and swaps in new forecasters after a refit. ``decide()`` only
reads it, which keeps decide a pure function: same snapshot, policies, state and ``now``, same
Plan. Demand histories are pandas Series of busy cores on a UTC DatetimeIndex at one-minute or
coarser resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from policies.brakes import BrakeSettings
from policies.forecast import FittedForecaster
from policies.placement import PlacementSettings
from policies.rack_health import RackHealthSettings
from policies.sla import SlaLedger
from policies.storage import StorageSettings


class DecideSettings(BaseModel):
    """Controller-wide knobs of ``decide()`` (not per business: those are in the policies)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    control_interval_s: float = Field(default=30, gt=0, description="time between decisions")
    clone_ready_s: float = Field(
        default=120, ge=0, description="clone-to-ready time when none was measured yet"
    )
    max_outgoing_migrations_per_host: int = Field(default=2, ge=1)
    max_migrations_per_plan: int = Field(default=20, ge=0)
    evacuate_degraded_below_budget: float = Field(
        default=0.5, description="evacuate degraded racks when error budget left is below this"
    )
    placement: PlacementSettings = PlacementSettings()
    rack_health: RackHealthSettings = RackHealthSettings()
    brakes: BrakeSettings = BrakeSettings()
    storage: StorageSettings = StorageSettings()


@dataclass(frozen=True)
class DecisionState:
    """Per-business memory of the controller, and the fitted forecasters.

    ``recent_actions``: times of actions already executed per business (for the hourly cap).
    ``clone_ready_s``: measured clone-to-ready time per business (median of recent clones).
    ``temperatures``: per-rack temperature history (°C) for the rack health trend.
    (Memory in use is a figure of the Snapshot's VMs, ``VM.memory_used_mib``.)
    """

    demand: Mapping[str, pd.Series] = field(default_factory=dict)
    last_scale_up: Mapping[str, float] = field(default_factory=dict)
    last_scale_down: Mapping[str, float] = field(default_factory=dict)
    recent_actions: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    forecasters: Mapping[str, FittedForecaster] = field(default_factory=dict)
    sla: Mapping[str, SlaLedger] = field(default_factory=dict)
    temperatures: Mapping[str, pd.Series] = field(default_factory=dict)
    clone_ready_s: Mapping[str, float] = field(default_factory=dict)
    recent_needed: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    """(time, capacity asked for) of the recent decisions per business: a scale-down keeps
    the highest of its stabilisation window (the HPA's stabilisation over recommendations)."""
    settings: DecideSettings = field(default_factory=DecideSettings)

    def needed_since(self, business: str, since: float) -> float:
        """The most capacity any decision after ``since`` asked for (0 if none)."""
        return max((n for t, n in self.recent_needed.get(business, ()) if t > since), default=0.0)

    def lead_time_s(self, business: str) -> float:
        """How far ahead capacity must be decided: clone-to-ready plus one control interval."""
        ready = self.clone_ready_s.get(business, self.settings.clone_ready_s)
        return ready + self.settings.control_interval_s

    def actions_in_last_hour(self, business: str, now: float) -> int:
        return sum(1 for t in self.recent_actions.get(business, ()) if now - 3600 < t <= now)
