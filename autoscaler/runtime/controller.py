"""``autoscaler run``: the scheduling shell around the Cycle.

Where it sits: it drives the flow on APScheduler (3.x) jobs with their own intervals — the
leader lease (renewed independently of long actions), collection (collectors → history →
Snapshot, published for the cycle) and the cycle itself (``autoscaler.runtime.cycle``: SLA
ledger and refits when due, decide, route by mode, execute or export, record). The shell owns
what is live-only: leadership (only the lease holder acts; a standby collects, keeps its ledger
and stays ready), /healthz (busy accounting, state-write problems), policy reloads (SIGHUP or a
changed file; a bad file keeps the last good set, logged and counted in
``autoscaler_policy_reload_errors_total``). SIGTERM stops cleanly (the running action finishes
and is journalled).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import pandas as pd
from apscheduler.schedulers.background import BackgroundScheduler

from autoscaler.config import ControllerConfig
from autoscaler.model import (
    AutoscalerError,
    ConfigError,
    ControllerRecord,
    DeposedLeader,
    Lease,
    LeaseState,
    MemoryStore,
    Plan,
    Snapshot,
    TemporaryError,
)
from autoscaler.observability.exporter import ControllerMetrics, HealthState
from autoscaler.observability.fleet_metrics import FleetView, last_backups
from autoscaler.runtime.collection import CollectionStage
from autoscaler.runtime.controls import ControlFile
from autoscaler.runtime.cycle import Cycle, CycleSettings
from autoscaler.runtime.figures import business_figures
from autoscaler.runtime.history import HistoryStore
from autoscaler.runtime.logs import event
from autoscaler.runtime.memory import ControllerMemory
from autoscaler.runtime.memory_file import MemoryFile, restore_memory
from autoscaler.runtime.plans import PlanFolder
from autoscaler.runtime.ports import ActionOutcome, ControlsReader
from autoscaler.runtime.private_files import ensure_private_dir
from autoscaler.runtime.rados_history import SharedHistory, warm_from_shared
from autoscaler.runtime.shared_state import SharedState
from autoscaler.runtime.snapshot_builder import build_snapshot
from autoscaler.runtime.snapshots import LatestSnapshot
from autoscaler.runtime.wiring import file_lease
from policies.loader import load_policy_dir
from policies.schema import BusinessPolicy
from policies.state import DecideSettings, DecisionState
from policies.storage import StorageSettings

log = logging.getLogger("autoscaler.controller")
HEARTBEAT_KEY = "leader"
SHARE_HISTORY_S = 60.0

__all__ = ["ActionOutcome", "Actuation", "Controller", "LeaderLease"]


class Actuation(Protocol):
    """The executor with its journal (``autoscaler.runtime.ports.Actuation``), closed on stop."""

    def execute(self, plan: Plan) -> Sequence[ActionOutcome]: ...

    def reconcile(self) -> int: ...

    def unfinished(self) -> int: ...

    def waiting(self) -> dict[str, str]: ...

    def close(self) -> None: ...


class LeaderLease(Lease, Protocol):
    """The Lease (``held`` and ``fence`` answer without I/O, on the monotonic clock)."""


class _AccountedHistory:
    """The history store as the cycle sees it: a write that fails (a full disk) loses these
    minutes of figures, is reported as a state-write problem, and the cycle goes on."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def busy_cores(
        self, business: str, *, start: float | None = None, end: float | None = None
    ) -> pd.Series:
        return self.controller.history.busy_cores(business, start=start, end=end)

    def record_business(self, business: str, when: float, **figures: float) -> None:
        self.controller.record_history(business, when, **figures)


class _ReportedMemoryFile:
    """The memory store as the cycle sees it: a save that fails (a full disk, a pool that
    cannot be written, a newer leader's fence) is reported as a state-write problem, and the
    cycle goes on with the memory it has."""

    def __init__(self, controller: Controller, store: MemoryStore) -> None:
        self.controller = controller
        self.store = store

    def load(self) -> ControllerRecord | None:
        return self.store.load()

    def save(self, record: ControllerRecord) -> None:
        try:
            self.store.save(record)
        except DeposedLeader as exc:
            # Not a store failing: a newer leader has claimed the shared state (its next
            # renewal tells this process so); nothing of ours is lost by not writing.
            event(log, "memory not saved: deposed", logging.WARNING, reason=str(exc))
        except (OSError, AutoscalerError) as exc:
            self.controller._state_failed("memory", str(exc))
        else:
            self.controller._state_written("memory")


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        *,
        holder: str,
        metrics: ControllerMetrics,
        health: HealthState,
        collection: CollectionStage,
        actuation: Actuation | None,
        dry_run: bool = False,
        lease: LeaderLease | None = None,
        clock: Callable[[], float] = time.time,
        shared: SharedState | None = None,
    ) -> None:
        """``shared``: the state in a Ceph pool (``state: {kind: rados}``): the controls, the
        memory and the recommended plans are kept there instead of the state folder."""
        self.config = config
        self.holder = holder
        self.metrics = metrics
        self.health = health
        self.collection = collection
        self.dry_run = dry_run
        self.clock = clock
        self._actuation = actuation
        self._shared = shared
        self._shared_until: dict[str, float] = {}
        """Per business: up to when its busy cores are in the pool (this process's copy)."""
        ensure_private_dir(config.state_dir)  # 0700: the journal, lease and controls
        # The runner passes the lease the controller file names (RADOS needs the cluster).
        self.lease: LeaderLease = lease or file_lease(config, holder)
        self.controls: ControlsReader = (
            shared.controls if shared is not None else ControlFile(config.state_dir)
        )
        self.history = HistoryStore(config.state_dir / "history.sqlite")
        self.policies: dict[str, BusinessPolicy] = {}
        self._policy_stamp: tuple[tuple[str, float], ...] = ()
        self.snapshots = LatestSnapshot(wait_s=2 * config.intervals.collect_s)
        self._stale: tuple[tuple[str, str, str], ...] = ()
        self.on_event: Callable[[str], None] | None = None
        """Called with a one-line text for every planned action and outcome (live views)."""
        self._leader_generation: int | None = None
        self._state_problems: dict[str, str] = {}
        self._problems_lock = threading.Lock()
        self._act_lock = threading.Lock()
        self._cycle_lock = threading.Lock()
        self._stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        iv = config.intervals
        kept: MemoryStore = (
            shared.memory(clock)
            if shared is not None
            else MemoryFile(config.state_dir / "memory.json", clock)
        )
        store = _ReportedMemoryFile(self, kept)
        self.cycle = Cycle(
            snapshots=self.snapshots,
            actuation=actuation,
            plans=(
                shared.plans(clock)
                if shared is not None
                else PlanFolder(config.state_dir / "plans", clock)
            ),
            controls=self.controls,
            history=_AccountedHistory(self),
            policies=lambda: self.policies,
            settings=CycleSettings(
                decide=DecideSettings(
                    control_interval_s=iv.decide_s,
                    max_outgoing_migrations_per_host=config.executor.max_migrations_per_host,
                    brakes=config.brakes,
                    storage=StorageSettings()
                    if config.ceph is None
                    else StorageSettings(pool_nearfull_ratio=config.ceph.nearfull_ratio),
                ),
                # A round may take its whole deadline when a source hangs (its scopes are then
                # stale); only a view older than that and a few intervals means collection stopped.
                snapshot_max_age_s=iv.stale_snapshot_collects * iv.collect_s
                + collection.deadline_s,
                ledger_every_s=iv.ledger_s,
                refit_every_s=iv.refit_s,
                max_concurrent_actions=config.executor.max_concurrent_actions,
                dry_run=dry_run,
            ),
            metrics=metrics,
            memory=restore_memory(store, clock(), log),
            store=store,
            acting=self._acting,
            tell=self._tell,
            clock=clock,
            refit_in=self._in_background,
        )
        metrics.watch(self.fleet_view)
        self.reload_policies(initial=True)

    @property
    def actuation(self) -> Actuation | None:
        return self._actuation

    @actuation.setter
    def actuation(self, actuation: Actuation | None) -> None:
        # Built after the controller (it needs its lease and policies): the cycle uses it too.
        self._actuation = actuation
        self.cycle.actuation = actuation

    @property
    def snapshot(self) -> Snapshot | None:
        """The last Snapshot the collect job built."""
        return self.snapshots.latest()

    @property
    def memory(self) -> ControllerMemory:
        return self.cycle.memory

    def _tell(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    def fleet_view(self) -> FleetView:
        """What the fleet's gauges show at a scrape (read by the metrics collector)."""
        snapshot = self.snapshots.latest()
        figures = business_figures(snapshot) if snapshot is not None else {}
        policies = self.policies
        controls = self.cycle.last_controls
        return FleetView(
            figures=figures,
            signals=snapshot.signals if snapshot is not None else (),
            stale=self._stale,
            decision=self.cycle.last_decision,
            budget_left=dict(self.memory.budget_left),
            objectives={b: p.sla.objective / 100.0 for b, p in policies.items()},
            paused={b: controls.is_paused(b) for b in policies} if controls is not None else {},
            last_backups=last_backups(snapshot),
        )

    # -- policies ---------------------------------------------------------------------------
    def _stamp(self) -> tuple[tuple[str, float], ...]:
        folder = self.config.policy_dir
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        return tuple((str(p), p.stat().st_mtime) for p in files)

    def reload_policies(self, *, initial: bool = False) -> bool:
        stamp = self._stamp()
        images = (
            {p.name for p in self.config.image_dir.iterdir()}
            if self.config.image_dir.is_dir()
            else None
        )
        try:
            policies = load_policy_dir(
                self.config.policy_dir,
                images=images,
                balancers={b.name for b in self.config.balancers},
            )
        except ConfigError as exc:
            self._policy_stamp = stamp
            if initial:
                raise
            self.metrics.policy_reload_errors.inc()
            event(
                log,
                "policy reload rejected, keeping the last good set",
                logging.ERROR,
                problems=str(exc),
            )
            return False
        self.policies = policies
        self._policy_stamp = stamp
        event(log, "policies loaded", businesses=sorted(policies))
        return True

    def _reload_if_changed(self) -> None:
        if self._stamp() != self._policy_stamp:
            self.reload_policies()

    # -- lease ------------------------------------------------------------------------------
    def lease_job(self) -> None:
        now = self.clock()
        state: LeaseState | None
        try:
            if self.lease.held() is not None:
                state = self.lease.renew(now)
            else:
                state = self.lease.try_acquire(now)
            self._state_written("lease")
        except DeposedLeader as exc:
            event(log, "deposed", logging.WARNING, reason=str(exc))
            state = None
        except TemporaryError as exc:
            # Cannot take or keep the lease (its file cannot be written, a full disk; or Ceph
            # cannot be reached): do not lead, and say why instead of passing for a standby.
            self._state_failed("lease", str(exc))
            state = None
        if state is not None and self._shared is not None:
            state = self._check_shared_state(state, now)
        was_leader = self._leader_generation is not None
        self._leader_generation = state.generation if state is not None else None
        self.metrics.leader.set(1 if state is not None else 0)
        current = self.lease.current()
        if current is not None:
            self.metrics.lease_generation.set(current.generation)
        self.health.role = "leader" if state is not None else "standby"
        self.health.lease_expires_at = state.expires_at if state is not None else None
        if state is not None and not was_leader:
            event(log, "became leader", generation=state.generation)
            # Settled by the next cycle, before it acts: a reconciliation can take minutes (a
            # clone to finish) and this job must go on renewing meanwhile.
            self.cycle.reconcile_pending = True
        elif state is None and was_leader:
            event(log, "lost the lease", logging.WARNING)

    def _check_shared_state(self, state: LeaseState, now: float) -> LeaseState | None:
        """Lead only while the shared state takes our writes: a fenced heartbeat each renewal.
        A pool that cannot be written (OSDs down past min_size, no monitor) stops the acting,
        says why on /healthz, and is tried again at the next renewal."""
        if self._shared is None:
            return state
        beat = json.dumps({"holder": self.holder, "generation": state.generation, "at": now})
        try:
            self._shared.fenced.write({HEARTBEAT_KEY: beat.encode()})
        except DeposedLeader as exc:
            event(log, "deposed", logging.WARNING, reason=str(exc))
            return None
        except AutoscalerError as exc:
            self._state_failed("shared state", f"{exc}; not acting until it can be written")
            return None
        self._state_written("shared state")
        return state

    @contextlib.contextmanager
    def _acting(self, rounds: int) -> Iterator[None]:
        """One actor at a time within this process. /healthz counts the time as progress for
        as long as ``rounds`` actions one after the other may take (each is bounded by the
        action timeout, and its compensation by as much again)."""
        with self._act_lock:
            self.health.busy_limit_s = max(1, rounds) * 2 * self.config.executor.action_timeout_s
            self.health.busy_since = self.clock()
            try:
                yield
            finally:
                self.health.busy_since = None

    # -- state folder -----------------------------------------------------------------------
    def _state_failed(self, store: str, error: str) -> None:
        """A write of our own state failed: counted, logged when it starts, and /healthz
        unhealthy until the same store is written again."""
        self.metrics.state_write_errors.labels(store).inc()
        with self._problems_lock:  # the lease, collect and ledger jobs run side by side
            new = store not in self._state_problems
            self._state_problems[store] = error
            self._show_problems()
        if new:
            event(log, "state write failing", logging.ERROR, store=store, error=error)

    def _state_written(self, store: str) -> None:
        with self._problems_lock:
            was = self._state_problems.pop(store, None) is not None
            self._show_problems()
        if was:
            event(log, "state write recovered", store=store)

    def _show_problems(self) -> None:
        problems = [f"{store}: {error}" for store, error in sorted(self._state_problems.items())]
        self.health.problem = "; ".join(problems) or None

    # -- collect ----------------------------------------------------------------------------
    def collect_job(self) -> None:
        started = time.monotonic()
        now = self.clock()
        collections = self.collection.run(now)
        self.metrics.stage_seconds.labels("collect").observe(time.monotonic() - started)
        snapshot = build_snapshot(
            self.config,
            self.policies,
            collections,
            now,
            warmup_s=2 * self.config.intervals.collect_s,
        )
        self.memory.remember_temperatures(snapshot)
        if self._actuation is not None:
            self.health.waiting_for = self._actuation.waiting()
        self._stale = tuple(
            (source, scope.value, target)
            for source, scope, target in self.collection.stale_scopes()
        )
        self.snapshots.publish(snapshot)
        for name, fig in business_figures(snapshot).items():
            figures = {"capacity_cores": fig.capacity_cores, "instances": float(fig.ready)}
            # A part of the demand is not demand: recorded, the dip (a clone just ready, its
            # share moved off the others but not measured yet) and the jump back would stay in
            # the forecasts' error quantiles as a change that never happened. A gap instead.
            if fig.demand_known:
                figures["busy_cores"] = fig.demand_cores
            self.record_history(name, now, **figures)
        for c in collections:
            if not c.stale:
                self.metrics.collector_last_success.labels(c.source).set(now)

    def record_history(self, business: str, now: float, **figures: float) -> None:
        # A history that cannot be written (a full disk) loses these minutes of figures; the
        # cycle goes on with the snapshot it has, and the problem is reported.
        try:
            self.history.record_business(business, now, **figures)
        except sqlite3.Error as exc:
            self._state_failed("history", str(exc))
        else:
            self._state_written("history")

    # -- the shared history (state: rados) --------------------------------------------------
    def _history_windows(self) -> dict[str, float]:
        return {b: p.forecast.history_days * 86_400.0 for b, p in self.policies.items()}

    def _shared_history(self) -> SharedHistory | None:
        if self._shared is None:
            return None
        keep = max(self._history_windows().values(), default=14 * 86_400.0)
        return self._shared.history(keep)

    def _warm_history(self) -> None:
        """Before the first refit (at start): the minutes of demand the pool holds and this
        machine lacks (a new machine forecasts at once instead of after days)."""
        shared = self._shared_history()
        if shared is None:
            return
        try:
            copied = warm_from_shared(self.history, shared, self._history_windows(), self.clock())
        except (AutoscalerError, sqlite3.Error) as exc:
            event(log, "shared history unreadable at start", logging.WARNING, error=str(exc))
            return
        event(log, "history warmed from the pool", minutes=copied)

    def share_history_job(self) -> None:
        """The leader copies the complete minutes of busy cores it recorded into the pool."""
        shared = self._shared_history()
        if shared is None or self._leader_generation is None:
            return
        now = self.clock()
        until = math.floor(now / 60.0) * 60.0  # the current minute is still being averaged
        windows = self._history_windows()
        for business, window_s in windows.items():
            since = self._shared_until.get(business, now - window_s)
            points = self.history.busy_cores(business, start=since, end=until)
            try:
                shared.publish(
                    business,
                    zip(pd.DatetimeIndex(points.index).asi8 / 1e9, points.to_numpy(), strict=True),
                    now,
                )
            except AutoscalerError as exc:
                self._state_failed("shared history", str(exc))
                return
            self._shared_until[business] = until
        self._state_written("shared history")

    # -- the cycle --------------------------------------------------------------------------
    def decision_state(self, now: float) -> DecisionState:
        """The DecisionState the cycle would decide on at ``now`` (for live views)."""
        return self.memory.decision_state(self.cycle.demand(now), self.cycle.settings.decide)

    def cycle_job(self) -> None:
        with self._cycle_lock:
            # Checked again under the lock: ``stop`` takes it to wait for a running cycle,
            # and a cycle that passed its guard just before must not act after that.
            if self._stopping.is_set():
                return
            self._cycle()

    def _cycle(self) -> None:
        self._reload_if_changed()
        now = self.clock()
        # The lease as held right now, not as the lease job last saw it: a leader frozen past
        # its lease's end must not decide on waking up before that job has run.
        held = self.lease.held() if self._leader_generation is not None else None
        generation = held.generation if held is not None else None
        result = self.cycle.run_once(now, generation=generation)
        self.health.freeze = self.cycle.frozen
        self.health.stale_snapshot = self.cycle.stale_snapshot
        if result.decision is not None:
            self.metrics.last_success.set(self.clock())
            self.health.last_success = self.clock()

    def _in_background(self, work: Callable[[], None]) -> None:
        """A one-off job on the scheduler's pool (a refit), so the cycle goes on meanwhile."""
        if self.scheduler.running:
            self.scheduler.add_job(self._guard("refit", work))
        else:
            self._guard("refit", work)()

    def refit_job(self) -> None:
        """Refit the forecasters now (the cycle refits on its own schedule too)."""
        self.cycle.refit(self.clock())

    # -- lifecycle --------------------------------------------------------------------------
    def _guard(self, name: str, job: Callable[[], None]) -> Callable[[], None]:
        # A stopping controller starts no new work, but goes on renewing its lease until the
        # running action has finished: every step of that action checks the lease, and a
        # lease run out mid-clone would leave the clone to the next leader.
        keeps_running_while_stopping = name == "lease"

        def run() -> None:
            if self._stopping.is_set() and not keeps_running_while_stopping:
                return
            try:
                job()
            except Exception as exc:  # one failing job never stops the loop
                event(log, f"{name} failed", logging.ERROR, error=repr(exc))
                log.debug("traceback", exc_info=True)

        return run

    def start(self) -> None:
        iv = self.config.intervals
        self.health.started = self.clock()
        jobs: Mapping[str, tuple[Callable[[], None], float]] = {
            "lease": (self.lease_job, max(0.5, self.config.lease.duration_s / 3)),
            "collect": (self.collect_job, iv.collect_s),
            "decide": (self.cycle_job, iv.decide_s),
        }
        for name, (job, seconds) in jobs.items():
            self.scheduler.add_job(
                self._guard(name, job),
                "interval",
                seconds=seconds,
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        if self._shared is not None:
            self.scheduler.add_job(
                self._guard("share history", self.share_history_job),
                "interval",
                seconds=SHARE_HISTORY_S,
                id="share history",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            self._warm_history()
        # The first collection can take seconds (every host, every source): do it before the
        # lease, or the lease taken first runs out before its first renewal and a controller
        # started alongside takes it over (leadership flapping at start).
        self._guard("collect", self.collect_job)()
        self._guard("lease", self.lease_job)()
        self.scheduler.start()
        event(log, "controller started", holder=self.holder, dry_run=self.dry_run)

    def stop(self) -> None:
        """Stop taking new work, let the running action finish (it is journalled), release."""
        self._stopping.set()
        with self._cycle_lock:  # the running cycle's actions finish; the lease job renews
            pass
        self.scheduler.shutdown(wait=True)
        with contextlib.suppress(TemporaryError):
            self.lease.release()
        self.collection.close()
        self.history.close()
        if self.actuation is not None:
            self.actuation.close()
        event(log, "controller stopped", holder=self.holder)
