"""``autoscaler run``: the unattended controller loop.

Where it sits: it drives the whole flow on APScheduler (3.x) jobs with their own intervals —
collect (collectors → history → Snapshot), decide-and-act (``policies.decide`` → Plan →
executor, or exported for approval in recommend mode), SLA ledger, forecast refit, and the
leader lease renewed by its own job, independent of long actions. Only the lease holder acts;
a standby collects and stays ready. SIGTERM stops cleanly (the running action finishes and is
journalled); SIGHUP or a changed policy file reloads the policies, and a bad file keeps the last
good set (logged, and counted in ``autoscaler_policy_reload_errors_total``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
from apscheduler.schedulers.background import BackgroundScheduler

from autoscaler.config import ControllerConfig
from autoscaler.model import (
    Action,
    ConfigError,
    DeposedLeader,
    Health,
    Lease,
    LeaseState,
    Plan,
    Scope,
    SignalName,
    Snapshot,
    TemporaryError,
    VmState,
)
from autoscaler.observability.exporter import ControllerMetrics, HealthState
from autoscaler.runtime.collection import CollectionStage
from autoscaler.runtime.controls import ControlFile, Controls
from autoscaler.runtime.history import HistoryStore
from autoscaler.runtime.lease import FileLease
from autoscaler.runtime.logs import event
from autoscaler.runtime.snapshot_builder import build_snapshot
from policies.decide import decide
from policies.forecast import (
    FittedForecaster,
    ForecastSpec,
    predict_many,
    reactive_forecast,
    refit,
    spec_quantile,
)
from policies.loader import load_policy_dir
from policies.rack_health import score_racks
from policies.schema import BusinessPolicy, CapacitySli, Mode
from policies.sla import SlaLedger, capacity_interval, promql_interval, sla_status
from policies.state import DecideSettings, DecisionState

log = logging.getLogger("autoscaler.controller")
# How often entries left unfinished (their host unreachable) are tried again.
RESETTLE_S = 30.0


@dataclass(frozen=True)
class ActionOutcome:
    key: str
    kind: str
    business: str
    result: str  # done | failed | skipped
    reason: str
    duration_s: float


class Actuation(Protocol):
    """The executor with its journal: runs a Plan (one outcome per action), and settles what
    a previous leader left unfinished."""

    def execute(self, plan: Plan) -> Sequence[ActionOutcome]: ...

    def reconcile(self) -> int: ...

    def unfinished(self) -> int:
        """How many journal entries are unfinished (between cycles: waiting for a host)."""
        ...

    def close(self) -> None: ...


class LeaderLease(Lease, Protocol):
    """A Lease that also answers "do we still hold it at ``now``?" without I/O."""

    def held(self, now: float) -> LeaseState | None: ...


@dataclass
class BusinessFigures:
    demand_cores: float = 0.0
    capacity_cores: float = 0.0
    ready: int = 0


@dataclass
class ControllerState:
    """What the controller remembers between cycles (rebuilt from history on start)."""

    ledgers: dict[str, SlaLedger] = field(default_factory=dict)
    forecasters: dict[str, FittedForecaster] = field(default_factory=dict)
    last_scale_up: dict[str, float] = field(default_factory=dict)
    last_scale_down: dict[str, float] = field(default_factory=dict)
    recent_actions: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    clone_ready_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    temperatures: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    last_ledger_at: float | None = None


def business_figures(snapshot: Snapshot) -> dict[str, BusinessFigures]:
    out: dict[str, BusinessFigures] = {b.name: BusinessFigures() for b in snapshot.businesses}
    for vm in snapshot.vms:
        if vm.business is None or vm.business not in out or vm.state is not VmState.RUNNING:
            continue
        if not vm.ready or vm.draining:
            continue  # a booting clone's CPU is not demand; a draining VM gets none
        fig = out[vm.business]
        if vm.busy_cores is not None:
            fig.demand_cores += vm.busy_cores
        fig.ready += 1
        fig.capacity_cores += vm.capacity_cores
    return out


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
    ) -> None:
        self.config = config
        self.holder = holder
        self.metrics = metrics
        self.health = health
        self.collection = collection
        self.actuation = actuation
        self.dry_run = dry_run
        self.clock = clock
        config.state_dir.mkdir(parents=True, exist_ok=True)
        (config.state_dir / "plans").mkdir(exist_ok=True)
        self.lease: LeaderLease = lease or FileLease(
            config.state_dir / "lease", holder, config.lease.duration_s
        )
        self.controls = ControlFile(config.state_dir)
        self.history = HistoryStore(config.state_dir / "history.sqlite")
        self.state = ControllerState()
        self.policies: dict[str, BusinessPolicy] = {}
        self._policy_stamp: tuple[tuple[str, float], ...] = ()
        self._snapshot: Snapshot | None = None
        self._new_snapshot = threading.Condition()  # notified by the collect job
        self.on_event: Callable[[str], None] | None = None
        """Called with a one-line text for every planned action and outcome (live views)."""
        self._leader_generation: int | None = None
        self._reconcile_pending = False
        self._settled_at = 0.0
        self._state_problems: dict[str, str] = {}
        self._problems_lock = threading.Lock()
        self._act_lock = threading.Lock()
        self._stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.reload_policies(initial=True)

    @property
    def snapshot(self) -> Snapshot | None:
        """The last Snapshot the collect job built."""
        return self._snapshot

    def _tell(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

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
            policies = load_policy_dir(self.config.policy_dir, images=images)
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
        for name, policy in policies.items():
            self.metrics.objective.labels(name).set(policy.sla.objective / 100.0)
        return True

    def _reload_if_changed(self) -> None:
        if self._stamp() != self._policy_stamp:
            self.reload_policies()

    # -- lease ------------------------------------------------------------------------------
    def lease_job(self) -> None:
        now = self.clock()
        state: LeaseState | None
        try:
            if self.lease.held(now) is not None:
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
            # Settled by the next decide cycle, before it acts: a reconciliation can take
            # minutes (a clone to finish) and this job must go on renewing meanwhile.
            self._reconcile_pending = True
        elif state is None and was_leader:
            event(log, "lost the lease", logging.WARNING)

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

    def _snapshot_since(self, since: float) -> Snapshot | None:
        """The latest snapshot if it was taken at or after ``since``, waiting up to two
        collection intervals for one; None if none came."""
        with self._new_snapshot:
            self._new_snapshot.wait_for(
                lambda: self._snapshot is not None and self._snapshot.now >= since,
                timeout=2 * self.config.intervals.collect_s,
            )
            snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.now >= since else None

    def _reconcile_if_pending(self) -> None:
        if self.actuation is None or self.dry_run:
            return
        # Between cycles nothing runs, so an unfinished entry waits for a host that could not
        # be reached to finish or undo it: try again, at most every RESETTLE_S.
        due = self.clock() - self._settled_at >= RESETTLE_S
        unfinished = self.actuation.unfinished() if due or self._reconcile_pending else 0
        if not self._reconcile_pending and unfinished == 0:
            return
        with self._acting(rounds=unfinished):  # settled one by one
            settled = self.actuation.reconcile()
        event(log, "reconciled the journal", entries=settled)
        self._settled_at = self.clock()
        self._reconcile_pending = False

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
        controls = self.controls.read()
        if controls.cordoned:
            snapshot = snapshot.model_copy(
                update={
                    "hosts": tuple(
                        h.model_copy(update={"cordoned": h.cordoned or h.name in controls.cordoned})
                        for h in snapshot.hosts
                    )
                }
            )
        with self._new_snapshot:
            self._snapshot = snapshot
            self._new_snapshot.notify_all()
        for name, fig in business_figures(snapshot).items():
            self.metrics.instances.labels(name).set(fig.ready)
            self.metrics.demand.labels(name).set(fig.demand_cores)
            self.metrics.capacity.labels(name).set(fig.capacity_cores)
            self._record_history(
                name,
                now,
                busy_cores=fig.demand_cores,
                capacity_cores=fig.capacity_cores,
                instances=float(fig.ready),
            )
        self.metrics.signal.clear()
        for signal in snapshot.signals:
            self.metrics.signal.labels(signal.scope.value, signal.target, signal.name).set(
                signal.value
            )
            if signal.scope is Scope.RACK and signal.name == SignalName.TEMPERATURE_CELSIUS:
                series = self.state.temperatures[signal.target]
                series.append((signal.observed_at, signal.value))
                del series[:-2000]
        self.metrics.stale.clear()
        for source, scope, target in self.collection.stale_scopes():
            self.metrics.stale.labels(source, scope.value, target).set(1)
        for c in collections:
            if not c.stale:
                self.metrics.collector_last_success.labels(c.source).set(now)

    def _record_history(self, business: str, now: float, **figures: float) -> None:
        # A history that cannot be written (a full disk) loses these minutes of figures; the
        # cycle goes on with the snapshot it has, and the problem is reported.
        try:
            self.history.record_business(business, now, **figures)
        except sqlite3.Error as exc:
            self._state_failed("history", str(exc))
        else:
            self._state_written("history")

    # -- decide and act ---------------------------------------------------------------------
    def decision_state(self, now: float) -> DecisionState:
        horizon = max((p.forecast.history_days for p in self.policies.values()), default=14)
        demand = {
            b: self.history.busy_cores(b, start=now - horizon * 86400, end=now + 60)
            for b in self.policies
        }
        temps = {
            rack: pd.Series(
                [v for _, v in points],
                index=pd.to_datetime([t for t, _ in points], unit="s", utc=True),
                dtype="float64",
            )
            for rack, points in self.state.temperatures.items()
            if points
        }
        return DecisionState(
            demand=demand,
            last_scale_up=dict(self.state.last_scale_up),
            last_scale_down=dict(self.state.last_scale_down),
            recent_actions={b: tuple(t) for b, t in self.state.recent_actions.items()},
            forecasters=dict(self.state.forecasters),
            sla=dict(self.state.ledgers),
            temperatures=temps,
            clone_ready_s={
                b: float(pd.Series(v).median()) for b, v in self.state.clone_ready_s.items() if v
            },
            settings=DecideSettings(
                control_interval_s=self.config.intervals.decide_s,
                max_outgoing_migrations_per_host=self.config.executor.max_migrations_per_host,
            ),
        )

    def decide_job(self) -> None:
        self._reload_if_changed()
        snapshot = self._snapshot
        if snapshot is None:
            return
        now = self.clock()
        # The lease as held right now, not as the lease job last saw it: a leader frozen past
        # its lease's end must not decide on waking up before that job has run.
        held = self.lease.held(now) if self._leader_generation is not None else None
        generation = held.generation if held is not None else None
        if generation is None and not self.dry_run:
            return  # a standby collects and stays ready; only the leader decides
        self._reconcile_if_pending()
        # Settling may have moved or finished VMs since this snapshot was taken: deciding on it
        # would plan from where they were (a second migration of a VM just moved).
        snapshot = self._snapshot_since(self._settled_at)
        if snapshot is None:
            return
        started = time.monotonic()
        state = self.decision_state(now)
        controls = self.controls.read()
        decision = decide(snapshot, self.policies, controls, state, now)
        plan = decision.plan
        for why in decision.notes:
            event(log, "drain leaves a VM", logging.WARNING, why=why)
        self.metrics.stage_seconds.labels("decide").observe(time.monotonic() - started)
        self._export_views(snapshot, state, now)
        wanted = {b: f.ready for b, f in business_figures(snapshot).items()}
        for action in plan.actions:
            if action.kind == "clone_from_template":
                wanted[action.business] = wanted.get(action.business, 0) + 1
            elif action.kind == "retire":
                wanted[action.business] = wanted.get(action.business, 0) - 1
        for b, n in wanted.items():
            self.metrics.instances_wanted.labels(b).set(n)
        self._act(plan, controls, generation, now)
        self.metrics.cycle_seconds.observe(time.monotonic() - started)
        self.metrics.last_success.set(self.clock())
        self.health.last_success = self.clock()

    def _export_views(self, snapshot: Snapshot, state: DecisionState, now: float) -> None:
        """Rack health and forecasts as metrics (decide() computes them but returns a Plan)."""
        for rack, health in score_racks(
            snapshot, state.temperatures, now, state.settings.rack_health
        ).items():
            self.metrics.rack_health.labels(rack).set(health.score)
            for verdict in Health:
                self.metrics.rack_state.labels(rack, verdict.value).set(
                    1 if health.health is verdict else 0
                )
        fitted = {b: f for b, f in state.forecasters.items() if b in self.policies}
        forecasts = predict_many(fitted, state.demand, now) if fitted else {}
        for name, policy in self.policies.items():
            forecast = forecasts.get(name)
            history = state.demand.get(name)
            if forecast is None and history is not None and not history.empty:
                forecast = reactive_forecast(
                    history,
                    now,
                    state.lead_time_s(name),
                    spec_quantile(policy.forecast.quantile, policy.sla.objective),
                )
            if forecast is not None:
                self.metrics.forecast.labels(name).set(forecast.upper)

    def _act(self, plan: Plan, controls: Controls, generation: int | None, now: float) -> None:
        if not plan.actions:
            return
        auto: list[Action] = []
        recommend: list[Action] = []
        for action in plan.actions:
            policy = self.policies.get(action.business)
            if policy is None or controls.is_paused(action.business):
                continue
            (auto if policy.mode is Mode.AUTO else recommend).append(action)
        for action in plan.actions:
            self._tell(f"planned {action.kind} {action.vm}: {action.reason}")
            event(
                log,
                "planned",
                plan=plan.id,
                kind=action.kind,
                business=action.business,
                vm=action.vm,
                reason=action.reason,
            )
        if recommend or self.dry_run or generation is None:
            exported = Plan.build(
                recommend + (auto if (self.dry_run or generation is None) else []), now
            )
            if exported.actions:
                path = self.config.state_dir / "plans" / f"{exported.id}.json"
                path.write_text(exported.to_json())
                self.metrics.plans.labels("recommend").inc()
                event(
                    log,
                    "plan exported for approval",
                    plan=exported.id,
                    file=str(path),
                    actions=len(exported.actions),
                )
        if self.dry_run or generation is None:
            return
        approved = self._approved_plans(controls)
        to_run = [a.model_copy(update={"lease_generation": generation}) for a in auto]
        for extra in approved:
            to_run += [a.model_copy(update={"lease_generation": generation}) for a in extra.actions]
        if not to_run or self.actuation is None:
            return
        self.metrics.plans.labels("auto").inc()
        self._execute(Plan.build(to_run, now), now)

    def _approved_plans(self, controls: Controls) -> list[Plan]:
        plans = []
        for plan_id in sorted(controls.approved):
            if not re.fullmatch(r"plan-[0-9a-f]{12}", plan_id):
                continue  # not a plan id: never a path out of the plans folder
            path = self.config.state_dir / "plans" / f"{plan_id}.json"
            done = path.with_suffix(".done")
            if path.exists() and not done.exists():
                try:
                    plans.append(Plan.from_json(path.read_text()))
                except (OSError, ValueError) as exc:  # a bad file must not stop every cycle
                    event(
                        log,
                        "approved plan unreadable",
                        logging.ERROR,
                        plan=plan_id,
                        error=str(exc).splitlines()[0][:200],
                    )
                done.write_text(f"{self.clock()}\n")
        return plans

    def _execute(self, plan: Plan, now: float) -> None:
        if self.actuation is None:
            return
        concurrent = self.config.executor.max_concurrent_actions
        with self._acting(rounds=-(-len(plan.actions) // concurrent)):
            outcomes = self.actuation.execute(plan)
        for out in outcomes:
            self._tell(f"{out.result} {out.key} in {out.duration_s:.1f}s: {out.reason}")
            self.metrics.actions.labels(out.kind, out.result).inc()
            self.metrics.action_seconds.labels(out.kind).observe(out.duration_s)
            event(
                log,
                "action",
                key=out.key,
                kind=out.kind,
                business=out.business,
                result=out.result,
                reason=out.reason,
                duration_s=round(out.duration_s, 3),
            )
            if out.result != "done":
                continue
            self.state.recent_actions[out.business].append(now)
            del self.state.recent_actions[out.business][:-500]
            if out.kind in ("clone_from_template", "hot_add_vcpu", "hot_add_memory"):
                self.state.last_scale_up[out.business] = now
            if out.kind == "clone_from_template":
                self.state.clone_ready_s[out.business].append(out.duration_s)
                del self.state.clone_ready_s[out.business][:-20]
            if out.kind == "retire":
                self.state.last_scale_down[out.business] = now

    # -- SLA ledger -------------------------------------------------------------------------
    def ledger_job(self) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            return
        now = self.clock()
        duration = now - (self.state.last_ledger_at or now - self.config.intervals.ledger_s)
        self.state.last_ledger_at = now
        figures = business_figures(snapshot)
        for name, policy in self.policies.items():
            fig = figures.get(name, BusinessFigures())
            if isinstance(policy.sla.sli, CapacitySli):
                good, total = capacity_interval(
                    demand_cores=fig.demand_cores,
                    ready_capacity_cores=fig.capacity_cores,
                    ready_instances=fig.ready,
                    min_instances=policy.instances.min,
                    saturation=policy.sla.sli.saturation,
                    duration_s=duration,
                )
            else:
                pair = promql_interval(snapshot, name, duration)
                if pair is None:
                    continue  # no data this interval: neither good nor bad
                good, total = pair
            keep = policy.sla.window_days * 86400.0
            ledger = self.state.ledgers.get(name, SlaLedger()).record(now, good, total, keep)
            self.state.ledgers[name] = ledger
            self.metrics.sli_good.labels(name).inc(good)
            self.metrics.sli_total.labels(name).inc(total)
            status = sla_status(ledger, policy.sla, now)
            self.metrics.budget_left.labels(name).set(status.error_budget_left)
            self._record_history(name, now, sli_good_s=good, sli_total_s=total)

    # -- forecast refit ---------------------------------------------------------------------
    def refit_job(self) -> None:
        now = self.clock()
        specs: dict[str, ForecastSpec] = {}
        histories: dict[str, pd.Series] = {}
        state = self.decision_state(now)
        for name, policy in self.policies.items():
            lead = state.lead_time_s(name)
            specs[name] = ForecastSpec(
                models=tuple(m.value for m in policy.forecast.models),
                quantile=spec_quantile(policy.forecast.quantile, policy.sla.objective),
                horizon_s=lead,
                min_history_s=policy.forecast.min_history_hours * 3600,
                history_s=policy.forecast.history_days * 86400,
            )
            histories[name] = self.history.busy_cores(
                name, start=now - policy.forecast.history_days * 86400, end=now + 60
            )
        started = time.monotonic()
        self.state.forecasters = refit(histories, specs, now)
        event(
            log,
            "forecasts refitted",
            fitted=sorted(self.state.forecasters),
            seconds=round(time.monotonic() - started, 3),
        )

    # -- lifecycle --------------------------------------------------------------------------
    def _guard(self, name: str, job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if self._stopping.is_set():
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
            "decide": (self.decide_job, iv.decide_s),
            "ledger": (self.ledger_job, iv.ledger_s),
            "refit": (self.refit_job, iv.refit_s),
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
        self.scheduler.shutdown(wait=True)
        with self._act_lock:
            pass
        with contextlib.suppress(TemporaryError):
            self.lease.release()
        self.collection.close()
        self.history.close()
        if self.actuation is not None:
            self.actuation.close()
        event(log, "controller stopped", holder=self.holder)
