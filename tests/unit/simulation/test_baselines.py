"""The timed simulation's baselines on small hand-made traces (``autoscaler.simulation.baselines``).

Each expected figure is worked out by hand in the test's comments: steps of 300 s, instances of
0.25 cores unless said otherwise, clones ready 60 s after they are defined.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.simulation.baselines import (
    HPA_TARGETS,
    PAIR_UPPERS,
    hpa,
    hpa_recommendation,
    instances_needed,
    oracle,
    peak_instances,
    static_peak,
    threshold_pair,
)
from autoscaler.simulation.baselines import best_baseline as sweep
from autoscaler.simulation.timeline import CapacityTimeline, StepDemand, account

CORES = 0.25


def steps(*values: float, step_s: float = 300.0) -> StepDemand:
    return StepDemand(np.arange(len(values)) * step_s, np.array(values, dtype=float), step_s)


def at(timeline: CapacityTimeline, time_s: float) -> tuple[float, float]:
    """(ready, defined) cores at ``time_s``."""
    ready, defined = timeline.at(np.array([time_s]))
    return float(ready[0]), float(defined[0])


def random_walk(seed: int, count: int, step_s: float = 300.0) -> StepDemand:
    """A wandering demand with a few spikes, on epoch-like (rounding-prone) step starts."""
    rng = np.random.default_rng(seed)
    walk = np.abs(np.cumsum(rng.normal(0.0, 0.15, count))) + 0.05
    walk[rng.random(count) < 0.05] *= 4.0
    return StepDemand(1_600_000_000.3 + np.arange(count) * step_s, walk, step_s)


def same(a: CapacityTimeline, b: CapacityTimeline) -> bool:
    return (
        np.array_equal(a.times_s, b.times_s)
        and np.array_equal(a.ready_cores, b.ready_cores)
        and np.array_equal(a.defined_cores, b.defined_cores)
        and a.actions == b.actions
    )


# --- static peak --------------------------------------------------------------------------------


def test_static_peak_holds_the_peak_at_saturation_all_the_time() -> None:
    demand = steps(0.1, 0.9, 0.3)
    # ceil(0.9 / (0.25 x 0.9)) = 4 instances, 1.0 core, from start to end, no action.
    timeline = static_peak(demand, CORES, 0.9, min_instances=1)
    assert list(timeline.defined_cores) == [1.0] and list(timeline.ready_cores) == [1.0]
    assert timeline.actions == 0
    assert account(demand, timeline, 0.9, CORES).bad_seconds == 0
    assert peak_instances(demand, CORES, 0.9, min_instances=6) == 6


def test_a_whole_number_of_instances_is_not_rounded_up_by_float_noise() -> None:
    # 0.45 / (0.25 x 0.9) is 2 up to a rounding error: 2 instances carry it at saturation.
    assert list(instances_needed(np.array([0.45, 0.4501, 0.0]), CORES, 0.9)) == [2, 3, 0]


# --- the Kubernetes HPA -------------------------------------------------------------------------


def test_hpa_scales_up_at_the_first_sync_and_the_clones_carry_load_a_latency_later() -> None:
    # 0.3 cores on 2 instances is 60%: on target. At 300 s 3 cores arrive: the 2 ready ones show
    # 100% (a VM cannot show more), ratio 100/60, ceil(1.67 x 2) = 4 instances defined at once.
    timeline = hpa(steps(0.3, 3.0), CORES, start_instances=2, min_instances=1, max_instances=100)
    assert at(timeline, 299.0) == (0.5, 0.5)
    assert at(timeline, 300.0) == (0.5, 1.0)
    assert at(timeline, 359.9) == (0.5, 1.0)
    assert at(timeline, 360.0)[0] == 1.0


@pytest.mark.parametrize(("start", "bounded"), [(4, 8), (10, 20)])
def test_hpa_scale_up_per_period_is_bounded_by_four_pods_or_doubling(
    start: int, bounded: int
) -> None:
    # At a 30% target with 30% utilisation, then 100%: the ratio 3.33 asks ceil(3.33 x n), but
    # one 15-s period allows max(n + 4, 2n): 8 from 4, 20 from 10.
    demand = steps(0.3 * start * CORES, 40.0)
    timeline = hpa(
        demand, CORES, start_instances=start, min_instances=1, max_instances=1000, target=0.3
    )
    assert at(timeline, 299.0)[1] == start * CORES
    assert at(timeline, 300.0)[1] == bounded * CORES


def test_hpa_counts_unready_pods_as_idle_when_scaling_up() -> None:
    # 7 instances at 60%. At 300 s, 1.45 cores: 82% -> ceil(1.3667 x 7) = 10, 3 clones booting.
    # At 315 s, 1.575 cores: the 7 ready ones show 90%, ratio 1.5, which over the ready pods
    # alone would ask ceil(1.5 x 7) = 11; with the 3 unready counted as 0%, 1.575 / 2.5 = 63%,
    # ratio 1.05, within the tolerance: the count stays 10.
    demand = StepDemand(np.array([0.0, 300.0, 315.0]), np.array([1.05, 1.45, 1.575]), 300.0)
    timeline = hpa(demand, CORES, start_instances=7, min_instances=1, max_instances=100)
    assert at(timeline, 300.0) == (7 * CORES, 10 * CORES)
    assert float(timeline.defined_cores.max()) == 10 * CORES
    assert at(timeline, 360.0) == (10 * CORES, 10 * CORES)
    assert math.ceil(90 / 60 * 7) == 11  # what counting only the ready pods would have done


def test_hpa_keeps_the_count_when_counting_unready_pods_reverses_the_direction() -> None:
    # 3 pods, 1 ready at 100%: ratio 1.67 over the ready one alone would give ceil(1.67) = 2, a
    # scale-down under full load; with the 2 unready at 0%, 33% -> ratio 0.55 < 1, the
    # direction reverses, and replica_calculator keeps the current 3.
    assert hpa_recommendation(3, 1, 0.25, CORES, 60, 0.1) == 3
    # No unready pod: within the tolerance the count stays, outside it is ceil(ratio x ready).
    assert hpa_recommendation(2, 2, 0.325, CORES, 60, 0.1) == 2  # 65%: 1.083
    assert hpa_recommendation(2, 2, 0.13, CORES, 60, 0.1) == 1  # 26%: ceil(0.43 x 2)
    assert hpa_recommendation(2, 0, 0.0, CORES, 60, 0.1) is None  # no metric: the sync fails


def test_hpa_does_not_scale_in_after_one_low_sample_in_the_oscillation_case() -> None:
    # 0.26 and 0.13 cores alternating every 300 s on 2 instances, target 60%. High: 52%, ratio
    # 0.87, ceil(1.73) = 2. Low: 26%, ratio 0.43, ceil(0.87) = 1. The 300-s stabilisation keeps
    # the highest recommendation of the last 300 s, so the low step's first 19 syncs (300..570)
    # keep 2; the 20th (585) is the first whose window holds only low recommendations.
    demand = steps(*[0.26, 0.13] * 6)
    timeline = hpa(demand, CORES, start_instances=2, min_instances=1, max_instances=100)
    for time_s in (300.0, 315.0, 570.0, 584.9):
        assert at(timeline, time_s)[1] == 0.5
    assert at(timeline, 585.0) == (0.25, 0.25)
    # Back to 0.26 at 600 on 1 instance (0.26 > 0.9 x 0.25): it clones at once, ready at 660.
    # 60 bad seconds in each of the 5 later high steps: 300 of 3,600 s (8.3%, not the 23% of
    # intervals the coarse one-sample-per-step version showed).
    figures = account(demand, timeline, 0.9, CORES)
    assert figures.bad_seconds == pytest.approx(300.0)
    assert figures.actions == 11  # 6 scale-ins (the last at 3,585 s) and 5 scale-ups


@pytest.mark.parametrize("phase_s", [0.0, 7.0, 14.9])
def test_hpa_oscillation_costs_at_most_a_sync_and_a_clone_per_cycle_whatever_the_phase(
    phase_s: float,
) -> None:
    # Per 600-s cycle the shortage lasts at most until the next sync (< 15 s) plus the clone's
    # 60 s: (15 + 60) / 600 = 12.5% of the time, against 23% for the coarse version.
    demand = steps(*[0.26, 0.13] * 6)
    timeline = hpa(
        demand, CORES, start_instances=2, min_instances=1, max_instances=100, phase_s=phase_s
    )
    figures = account(demand, timeline, 0.9, CORES)
    assert figures.bad_seconds <= 5 * (phase_s + 60.0) + 1e-6
    assert figures.bad_seconds / figures.seconds < 0.125


def test_hpa_first_sync_is_at_start_plus_phase() -> None:
    timeline = hpa(
        steps(3.0), CORES, start_instances=2, min_instances=1, max_instances=100, phase_s=40.0
    )
    assert at(timeline, 39.9)[1] == 0.5
    assert at(timeline, 40.0)[1] == 1.0  # 100% on 2: ceil(1.67 x 2) = 4


def test_hpa_brings_the_count_within_its_bounds_at_the_first_sync() -> None:
    timeline = hpa(steps(0.0, 0.0), CORES, start_instances=9, min_instances=2, max_instances=5)
    assert at(timeline, 0.0) == (5 * CORES, 5 * CORES)
    # Idle: ceil(0 x n) = 0, held by the window while it holds the first record (the start's 9,
    # recordInitialRecommendation), that is until the sync at 300 s; then the floor.
    assert at(timeline, 299.9)[1] == 5 * CORES
    assert at(timeline, 300.0) == (2 * CORES, 2 * CORES)


def test_hpa_refuses_a_target_that_is_not_a_whole_percentage_and_a_start_at_zero() -> None:
    with pytest.raises(ValueError, match="whole percentage"):
        hpa(steps(1.0), CORES, start_instances=2, min_instances=1, max_instances=9, target=0.625)
    with pytest.raises(ValueError, match="start_instances"):
        hpa(steps(1.0), CORES, start_instances=0, min_instances=0, max_instances=9)


@pytest.mark.parametrize(
    ("target", "phase_s", "clone_ready_s", "sync_s"),
    [(0.3, 0.0, 60.0, 15.0), (0.6, 7.3, 60.0, 15.0), (0.9, 14.2, 45.0, 15.0), (0.3, 3.0, 0.0, 7.0)],
)
def test_hpa_skipping_quiet_syncs_gives_the_same_timeline_as_running_every_sync(
    target: float, phase_s: float, clone_ready_s: float, sync_s: float
) -> None:
    # Instant clones and syncs closer than the 15-s rate period too: a rise held back by the
    # period's limit must not be skipped over.
    demand = random_walk(seed=int(target * 100), count=150)
    runs = [
        hpa(
            demand,
            CORES,
            start_instances=3,
            min_instances=1,
            max_instances=40,
            target=target,
            clone_ready_s=clone_ready_s,
            phase_s=phase_s,
            sync_s=sync_s,
            skip=skip,
        )
        for skip in (False, True)
    ]
    assert same(*runs)
    assert runs[0].actions > 0


# --- the Aodh alarm and Senlin policy pair ------------------------------------------------------


def test_pair_adds_above_upper_retires_below_lower_and_waits_out_each_cooldown() -> None:
    # Instances of 1 core, 2 to start, bounds 1..4. Evaluations every 60 s on the last 60 s.
    demand = steps(1.0, 1.0, 3.5, 3.5, 3.5, 0.5, 0.5, 0.5, 0.5, 0.5)
    timeline = threshold_pair(demand, 1.0, start_instances=2, min_instances=1, max_instances=4)
    # 50% until 600: nothing. [600, 660] at 100% > 80%: +1 at 660, ready (the action complete)
    # at 720; the cooldown holds until strictly after 1,020, so the next +1 is at 1,080 (ready
    # 1,140). At 4 (the max) 87.5% asks nothing. From 1,500, 0.5 core: 12.5% < 30% at 1,560
    # (420 s after 1,140): -1. At 1,860, 300 s after, the cooldown still holds (Senlin's
    # ``is_older_than`` is strict): -1 at 1,920 and at 2,280; then 50%, nothing.
    assert list(timeline.times_s) == [0.0, 660.0, 720.0, 1080.0, 1140.0, 1560.0, 1920.0, 2280.0]
    assert list(timeline.defined_cores) == [2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0]
    assert list(timeline.ready_cores) == [2.0, 2.0, 3.0, 3.0, 4.0, 3.0, 2.0, 1.0]
    assert timeline.actions == 5


def test_pair_has_no_measure_at_the_first_instant_and_respects_its_bounds() -> None:
    # Phase 0: the evaluation at the start has an empty window (Aodh: insufficient data).
    timeline = threshold_pair(steps(10.0), 1.0, start_instances=2, min_instances=1, max_instances=3)
    assert at(timeline, 59.9)[1] == 2.0
    assert at(timeline, 60.0)[1] == 3.0
    assert float(timeline.defined_cores.max()) == 3.0  # the max holds at 100%
    idle = threshold_pair(steps(0.0), 1.0, start_instances=2, min_instances=0, max_instances=3)
    assert float(idle.defined_cores.min()) == 1.0  # the floor: at least one instance to measure


@pytest.mark.parametrize(("upper", "phase_s"), [(0.4, 0.0), (0.8, 23.0), (0.95, 59.0)])
def test_pair_skipping_quiet_evaluations_gives_the_same_timeline(
    upper: float, phase_s: float
) -> None:
    demand = random_walk(seed=int(upper * 100), count=150)
    every = threshold_pair(
        demand,
        CORES,
        start_instances=3,
        min_instances=1,
        max_instances=40,
        upper=upper,
        phase_s=phase_s,
        skip=False,
    )
    skipping = threshold_pair(
        demand,
        CORES,
        start_instances=3,
        min_instances=1,
        max_instances=40,
        upper=upper,
        phase_s=phase_s,
    )
    assert same(every, skipping)
    assert every.actions > 0


# --- the latency-aware oracle -------------------------------------------------------------------


def test_oracle_defines_a_latency_early_and_pays_the_hand_computed_minimum() -> None:
    # Need at 0.8 saturation: 0.2 / 0.2 = 1 instance, 2.0 / 0.2 = 10 during [600, 900).
    # Defined: 1 until 540, 10 on [540, 900), 1 after: 540 + 10 x 360 + 600 = 4,740
    # instance-seconds. Ready: 10 on [600, 900) exactly.
    demand = steps(0.2, 0.2, 2.0, 0.2, 0.2)
    timeline = oracle(demand, CORES, 0.8, min_instances=1)
    assert list(timeline.times_s) == [0.0, 540.0, 600.0, 900.0]
    assert list(timeline.defined_cores / CORES) == [1, 10, 10, 1]
    assert list(timeline.ready_cores / CORES) == [1, 1, 10, 1]
    figures = account(demand, timeline, 0.8, CORES)
    assert figures.bad_seconds == 0
    assert figures.instance_hours == pytest.approx(4740 / 3600)
    assert timeline.actions == 18


def test_oracle_starts_with_its_first_need_ready_and_keeps_instances_over_short_gaps() -> None:
    # Steps of 30 s: need 4 at [0, 30), 1, then 4 again at [60, 90): the gap of 30 s is shorter
    # than the 60-s latency, so the 4 stay defined (and ready) throughout; then 1 at 90, and the
    # minimum of 2 holds.
    demand = steps(0.9, 0.2, 0.9, 0.2, 0.2, step_s=30.0)
    timeline = oracle(demand, CORES, 0.9, min_instances=2)
    assert at(timeline, 0.0) == (1.0, 1.0)
    assert at(timeline, 45.0) == (1.0, 1.0)
    assert at(timeline, 90.0) == (0.5, 0.5)


def test_oracle_is_never_short_and_equals_the_sliding_windows_on_a_random_trace() -> None:
    rng = np.random.default_rng(5)
    values = rng.choice([0.0, 0.2, 0.5, 1.4, 3.0], size=60)
    demand = StepDemand(np.arange(60) * 30.0, values, 30.0)  # 30-s steps: windows span several
    timeline = oracle(demand, CORES, 0.9, min_instances=1)
    assert account(demand, timeline, 0.9, CORES).bad_seconds == 0
    need = np.maximum(instances_needed(values, CORES, 0.9), 1)
    grid = np.arange(0.0, demand.end_s) + 0.5  # between the integer-second breakpoints

    def need_at(times: np.ndarray) -> np.ndarray:
        return np.asarray(need[np.clip((times // 30).astype(int), 0, 59)])

    defined = np.array([need_at(np.arange(x, min(x + 60, demand.end_s), 0.5)).max() for x in grid])
    ready = np.array([defined[max(0, k - 60) : k + 1].min() for k in range(len(grid))])
    got_ready, got_defined = timeline.at(grid)
    assert np.array_equal(got_defined / CORES, defined)
    assert np.array_equal(got_ready / CORES, ready)
    assert np.all(ready >= need_at(grid))


def test_oracle_is_never_short_on_rounding_prone_epoch_times() -> None:
    for seed in range(3):
        demand = random_walk(seed, 400)
        figures = account(demand, oracle(demand, CORES, 0.9, min_instances=1), 0.9, CORES)
        assert figures.bad_seconds == 0


# --- the hindsight-best baseline ----------------------------------------------------------------


def test_best_baseline_is_the_cheapest_setting_that_holds_the_objective() -> None:
    # Long quiet stretches around one step of 0.8 cores: static pays 4 instances throughout,
    # the scalers about 2 and miss ~60 s at the jump (99.5% > 99%).
    demand = steps(*([0.2] * 20 + [0.8] + [0.2] * 20))
    best = sweep(demand, CORES, 0.9, 99.0, start_instances=4, min_instances=1, max_instances=12)
    assert best.policy in ("hpa", "threshold")
    assert best.figures.attainment >= 0.99
    timelines = [
        hpa(demand, CORES, start_instances=4, min_instances=1, max_instances=12, target=t)
        for t in HPA_TARGETS
    ] + [
        threshold_pair(demand, CORES, start_instances=4, min_instances=1, max_instances=12, upper=u)
        for u in PAIR_UPPERS
    ]
    runs = [account(demand, timeline, 0.9, CORES) for timeline in timelines]
    holding = [r.instance_hours for r in runs if r.attainment >= 0.99]
    assert best.figures.instance_hours == min(holding)
    static = account(demand, static_peak(demand, CORES, 0.9, 1), 0.9, CORES)
    assert best.figures.instance_hours < static.instance_hours


def test_best_baseline_falls_back_to_static_when_no_scaler_holds() -> None:
    # A jump from 0.2 to 0.8 cores with a 100% objective: every scaler is short while its
    # clones boot; static peak (4 instances) holds by construction.
    demand = steps(*([0.2] * 5 + [0.8] + [0.2] * 4))
    best = sweep(demand, CORES, 0.9, 100.0, start_instances=4, min_instances=1, max_instances=12)
    assert best.policy == "static"
    assert best.setting == 4.0
    assert best.figures.attainment == 1.0
