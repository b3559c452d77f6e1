"""The timed simulation's accounting: demand as steps, capacity as a timeline, and what they cost.

Where it sits: shared by every policy of the timed simulation (``autoscaler.simulation``): the
controller's run and each baseline produce a ``CapacityTimeline``; ``account`` turns it and the
trace's ``StepDemand`` into the figures the report prints. Pure and vectorised (numpy).

- Demand is each trace value held as a step from the start of its interval to the start of the
  next: the adversarial assumption, a jump arrives all at once.
- Capacity is piecewise constant between events: ``ready_cores`` carries load (VMs ready and
  the vCPUs they have been given); ``defined_cores`` is paid for, from the moment a VM is
  defined until it is gone, whether ready or not.
- A second is bad when demand exceeds ``saturation`` x ready capacity (the live capacity SLI,
  counted in seconds). Cost is in template-sized instances (``instance_cores``), so a hot-added
  vCPU costs what it gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON_CORES = 1e-9


@dataclass(frozen=True)
class StepDemand:
    """``values[i]`` busy cores from ``starts_s[i]`` until ``starts_s[i + 1]`` (the last step
    lasts ``step_s``)."""

    starts_s: np.ndarray
    values: np.ndarray
    step_s: float

    def __post_init__(self) -> None:
        if len(self.starts_s) != len(self.values) or len(self.values) == 0:
            raise ValueError("a demand needs as many step starts as values, and at least one")
        if np.any(np.diff(self.starts_s) <= 0):
            raise ValueError("step starts must increase")

    @property
    def start_s(self) -> float:
        return float(self.starts_s[0])

    @property
    def end_s(self) -> float:
        return float(self.starts_s[-1] + self.step_s)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def at(self, times_s: np.ndarray) -> np.ndarray:
        """Demand at each of ``times_s`` (within the trace)."""
        index = np.searchsorted(self.starts_s, times_s, side="right") - 1
        return np.asarray(self.values[np.clip(index, 0, len(self.values) - 1)], dtype=float)


@dataclass(frozen=True)
class CapacityTimeline:
    """From ``times_s[i]`` until ``times_s[i + 1]`` (the last until the trace ends): the cores
    ready to carry load and the cores paid for."""

    times_s: np.ndarray
    ready_cores: np.ndarray
    defined_cores: np.ndarray
    actions: int = 0

    def __post_init__(self) -> None:
        n = len(self.times_s)
        if n == 0 or len(self.ready_cores) != n or len(self.defined_cores) != n:
            raise ValueError("a timeline needs one ready and one defined figure per event time")
        if np.any(np.diff(self.times_s) < 0):
            raise ValueError("timeline events must not go back in time")

    @staticmethod
    def constant(start_s: float, cores: float, actions: int = 0) -> CapacityTimeline:
        one = np.array([cores], dtype=float)
        return CapacityTimeline(np.array([start_s], dtype=float), one, one.copy(), actions)

    def at(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ready, defined) cores at each of ``times_s``; the last event at a tied time wins."""
        index = np.searchsorted(self.times_s, times_s, side="right") - 1
        index = np.clip(index, 0, len(self.times_s) - 1)
        return self.ready_cores[index], self.defined_cores[index]


class TimelineBuilder:
    """Collects capacity changes in time order (later calls at the same time win)."""

    def __init__(self, start_s: float, ready_cores: float, defined_cores: float) -> None:
        self._times = [start_s]
        self._ready = [ready_cores]
        self._defined = [defined_cores]
        self.actions = 0

    def set(self, at_s: float, ready_cores: float, defined_cores: float) -> None:
        if at_s < self._times[-1]:
            raise ValueError(f"event at {at_s} is before the last one at {self._times[-1]}")
        if ready_cores == self._ready[-1] and defined_cores == self._defined[-1]:
            return
        self._times.append(at_s)
        self._ready.append(ready_cores)
        self._defined.append(defined_cores)

    def build(self) -> CapacityTimeline:
        return CapacityTimeline(
            np.asarray(self._times, dtype=float),
            np.asarray(self._ready, dtype=float),
            np.asarray(self._defined, dtype=float),
            self.actions,
        )


@dataclass(frozen=True, slots=True)
class TimedFigures:
    """What one policy did over one trace, as the report prints it."""

    attainment: float
    bad_seconds: float
    seconds: float
    instance_hours: float
    slack: float
    actions: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "attainment": self.attainment,
            "bad_seconds": self.bad_seconds,
            "seconds": self.seconds,
            "instance_hours": self.instance_hours,
            "slack": self.slack,
            "actions": self.actions,
        }


def account(
    demand: StepDemand, timeline: CapacityTimeline, saturation: float, instance_cores: float
) -> TimedFigures:
    """Bad seconds, attainment, instance-hours and idle share of ``timeline`` under ``demand``.

    ``slack`` is the share of the paid core-seconds that carried no demand.
    """
    start, end = demand.start_s, demand.end_s
    inside = timeline.times_s[(timeline.times_s > start) & (timeline.times_s < end)]
    edges = np.union1d(np.union1d(demand.starts_s, inside), [start, end])
    edges = edges[(edges >= start) & (edges <= end)]
    lengths = np.diff(edges)
    left = edges[:-1]
    wanted = demand.at(left)
    ready, defined = timeline.at(left)
    bad = wanted > saturation * ready + EPSILON_CORES
    bad_seconds = float(lengths[bad].sum())
    paid = float((defined * lengths).sum())
    used = float((np.minimum(wanted, ready) * lengths).sum())
    seconds = float(lengths.sum())
    return TimedFigures(
        attainment=1.0 - bad_seconds / seconds if seconds else 1.0,
        bad_seconds=bad_seconds,
        seconds=seconds,
        instance_hours=paid / instance_cores / 3600.0 if instance_cores else 0.0,
        slack=1.0 - used / paid if paid > 0 else 0.0,
        actions=timeline.actions,
    )
