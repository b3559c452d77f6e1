"""Decision: the Plan of a cycle together with what ``decide()`` saw when it made it.

Where it sits: the output of ``policies.decide``. The cycle executes or exports the Plan; the
metrics, the plan exports and the terminal views read the rest (rack health, forecasts, SLA
status, the reasons per business), so nothing downstream recomputes what decide already knew.
Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from autoscaler.model import Plan
from policies.forecast import QuantileForecast
from policies.rack_health import RackHealth
from policies.sla import SlaStatus


@dataclass(frozen=True)
class Decision:
    """``plan``: every action decided at ``now`` (paused businesses have none), in order.

    ``rack_health``: the health of every rack; ``forecasts``, ``sla``: per business;
    ``reasons``: per business, why it has the actions it has (or none); ``notes``: what the
    decision could not do outside a business (a VM a drain must leave where it is);
    ``ordered``: the actions an operator ordered (a drain); ``freeze``: why retires and live
    migrations were frozen fleet-wide (``policies.brakes``), or None; ``held``: actions the
    fleet-wide per-minute cap held back, one line each.
    """

    plan: Plan
    now: float
    rack_health: Mapping[str, RackHealth] = field(default_factory=dict)
    forecasts: Mapping[str, QuantileForecast] = field(default_factory=dict)
    sla: Mapping[str, SlaStatus] = field(default_factory=dict)
    reasons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    ordered: frozenset[str] = frozenset()
    """Keys of actions an operator ordered (a drain): done whatever the business's mode."""
    freeze: str | None = None
    held: tuple[str, ...] = ()
    needed_cores: Mapping[str, float] = field(default_factory=dict)
    """Per business, the capacity its forecast and margin asked for (the controller keeps
    these for the scale-down stabilisation window, as the HPA keeps its recommendations)."""

    def instances_wanted(self, ready: Mapping[str, int]) -> dict[str, int]:
        """Instances per business once the plan is done, from the ``ready`` counts now."""
        wanted = dict(ready)
        for action in self.plan.actions:
            if action.kind == "clone_from_template":
                wanted[action.business] = wanted.get(action.business, 0) + 1
            elif action.kind == "retire":
                wanted[action.business] = wanted.get(action.business, 0) - 1
        return wanted
