"""The controller in the timed simulation: the live loop's own ``Cycle``, every 10 s, on a
fleet whose actions take time.

Where it sits: used by ``autoscaler.simulation.simulator`` for the ``controller`` policy of
``autoscaler simulate --timed``. Cycles run at ``start + phase + k * decide_s`` (a seeded
random phase against the trace's steps), on ``autoscaler.simulation.timed_fleet``.

A trace of months has millions of 10-s cycles, and in almost all of them nothing changed. A
cycle is skipped when none of its inputs can have changed since the last one that ran: the
next cycle that runs is the first at or after the earliest of

- a demand step's start, and one collection later (the averaged utilisation settles);
- a pending action becoming capacity, and one collection later;
- the cycle after one that planned anything;
- an end of a cooldown, of the scale-down stabilisation, or of an action's hour in the cap;
- the highest capacity asked for in the scale-down stabilisation window leaving it;
- a bad SLA interval leaving a burn-rate window or the SLA window, and a window not yet full
  diluting its bad share past a threshold decide reads;
- the history first spanning ``min_history_hours`` (its peak starts to bound forecasts);
- a step leaving the scale-down stabilisation window (the observed peak changes);
- a maintenance window opening or closing, and the next refit.

The SLA ledger is written once per cycle that runs (its interval is the time since the last),
and once for the cycle just before it (so a change is not smeared back over the skipped time).
``tests/unit/simulation/test_timed.py`` checks that skipping gives the result of running every
cycle on a short trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoscaler.runtime.cycle import Cycle
from autoscaler.simulation.fleet import Topology
from autoscaler.simulation.sim_controller import SIMULATED_GENERATION, simulated_cycle
from autoscaler.simulation.timed_fleet import Latencies, ObservedHistory, TimedFleet
from autoscaler.simulation.timeline import CapacityTimeline, StepDemand
from policies.schema import BusinessPolicy, Mode
from policies.sla import BURN_WINDOWS_S, SlaLedger

BURN_THRESHOLDS = (0.5, 0.75, 1.0, 6.0, 14.4)
"""Burn rates at which something decide reads changes (alerts, burning, the budget tiers)."""


@dataclass(frozen=True, slots=True)
class TimedSettings:
    decide_s: float = 10.0
    refit_every_s: float = 86_400.0
    phase_s: float = 0.0
    latencies: Latencies = field(default_factory=Latencies)
    skip: bool = True
    """Skip cycles in which no input changed (False: run every one, for the equivalence test)."""


def _maintenance_edges(policy: BusinessPolicy, start_s: float, end_s: float) -> np.ndarray:
    """Minute boundaries at which the policy's maintenance state changes, within the trace."""
    if not policy.maintenance:
        return np.zeros(0)
    minutes = np.arange(math.floor(start_s / 60) * 60, end_s + 60, 60.0)
    inside = np.array([policy.in_maintenance(float(t)) for t in minutes])
    return np.asarray(minutes[1:][inside[1:] != inside[:-1]], dtype=float)


class _Wakes:
    """The earliest time after ``now`` at which some input of the cycle may change."""

    def __init__(
        self, cycle: Cycle, fleet: TimedFleet, policy: BusinessPolicy, settings: TimedSettings
    ) -> None:
        self.cycle, self.fleet, self.policy, self.settings = cycle, fleet, policy, settings
        demand = fleet.demand
        collection = settings.latencies.collection_s
        stabilisation = policy.scaling.scale_down_stabilisation_s
        self.fixed = np.unique(
            np.concatenate(
                [
                    demand.starts_s,
                    demand.starts_s + collection,
                    demand.starts_s + stabilisation,
                    [demand.start_s + policy.forecast.min_history_hours * 3600.0],
                    _maintenance_edges(policy, demand.start_s, demand.end_s),
                ]
            )
        )
        windows = [*BURN_WINDOWS_S.values(), policy.sla.window_days * 86_400.0]
        self.windows = np.asarray(windows, dtype=float)

    def _ratio_crossings(self, ledger: SlaLedger, now: float) -> list[float]:
        """When a window not yet full of history dilutes its bad share past a threshold that
        decide reads (burn rates 1, 6 and 14.4; the budget tiers at burn 0.5, 0.75 and 1):
        its total grows by a second a second, its bad seconds stay."""
        allowed = 1.0 - self.policy.sla.objective / 100.0
        out: list[float] = []
        for span in self.windows:
            good, total = ledger.totals_since(now - span)
            bad = total - good
            if bad <= 1e-9 or total >= span - 1e-6:
                continue
            for rate in BURN_THRESHOLDS:
                grow = bad / (rate * allowed) - total
                if grow > 0:
                    out.append(now + grow)
        return out

    def after(self, now: float) -> float:
        memory, policy = self.cycle.memory, self.policy
        business = policy.business
        collection = self.settings.latencies.collection_s
        candidates = [self.fleet.next_change_s()]
        last = self.fleet.last_change_s()
        if last + collection > now:
            candidates.append(last + collection)
        i = int(np.searchsorted(self.fixed, now, side="right"))
        if i < len(self.fixed):
            candidates.append(float(self.fixed[i]))
        scaling = policy.scaling
        up = memory.last_scale_up.get(business)
        if up is not None:
            candidates.append(up + scaling.scale_down_stabilisation_s)
            candidates.append(up + scaling.cooldowns.scale_up_s)
        down = memory.last_scale_down.get(business)
        if down is not None:
            candidates.append(down + scaling.cooldowns.scale_down_s)
        candidates += [t + 3600.0 for t in memory.recent_actions.get(business, ())]
        needed = memory.needed.get(business, ())
        if needed:
            # Decide reads only the window's highest value: it changes when the last decision
            # that asked for it leaves the window.
            highest = max(n for _, n in needed)
            asked_at = max(t for t, n in needed if n == highest)
            candidates.append(asked_at + scaling.scale_down_stabilisation_s)
        ledger = memory.ledgers.get(business)
        if ledger is not None and len(ledger.ends_s):
            bad = ledger.ends_s[ledger.good < ledger.total - 1e-9]
            if len(bad):
                candidates += list((bad[:, None] + self.windows[None, :]).ravel())
                candidates += self._ratio_crossings(ledger, now)
        if memory.last_refit_at is not None:
            candidates.append(memory.last_refit_at + self.settings.refit_every_s)
        later = [c for c in candidates if c > now]
        return min(later, default=math.inf)


def run_timed_controller(
    demand: StepDemand,
    policy: BusinessPolicy,
    topology: Topology,
    start_instances: int,
    settings: TimedSettings,
    progress: Callable[[float], None] | None = None,
) -> CapacityTimeline:
    """The controller's capacity over the trace; ``progress`` gets the share of it done."""
    business = policy.business
    # The simulator measures the policy as it would act: in auto mode.
    policy = policy.model_copy(update={"mode": Mode.AUTO})
    history = ObservedHistory(business, demand)
    fleet = TimedFleet(policy, topology, demand, history, settings.latencies, start_instances)
    cycle = simulated_cycle(
        fleet,
        fleet,
        history,
        policy,
        interval_s=settings.decide_s,
        clone_ready_s=settings.latencies.clone_ready_s,
        refit_every_s=settings.refit_every_s,
    )
    wakes = _Wakes(cycle, fleet, policy, settings)
    first = demand.start_s + settings.phase_s
    step = settings.decide_s
    last_tick = math.floor((demand.end_s - first) / step - 1e-9)
    tick = 0
    ran_before = -1
    reported = 0.0
    while tick <= last_tick:
        now = first + tick * step
        if ran_before >= 0 and tick - 1 > ran_before:
            # What the skipped cycles would have recorded, up to the tick before this one: the
            # ledger interval on the unchanged view, and the same capacity asked for.
            cycle.record_sla(now - step)
            if cycle.last_decision is not None:
                cycle.memory.remember_needed(
                    cycle.last_decision.needed_cores,
                    now - step,
                    policy.scaling.scale_down_stabilisation_s,
                )
        fleet.observe(now)
        result = cycle.run_once(now, generation=SIMULATED_GENERATION)
        ran_before = tick
        if progress is not None and now - reported >= 86_400.0:
            reported = now
            progress((now - demand.start_s) / demand.duration_s)
        planned = result.decision is not None and bool(result.decision.plan.actions)
        if not settings.skip or planned:
            tick += 1
            continue
        wake = wakes.after(now)
        if not math.isfinite(wake):
            break
        tick = max(tick + 1, math.ceil((wake - first) / step - 1e-9))
    fleet.advance(demand.end_s)
    return fleet.timeline.build()
