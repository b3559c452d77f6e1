"""One cycle of the controller: snapshot → decide → route by mode → execute or export → record.

Where it sits: the heart of the runtime, between the collect job (which publishes snapshots)
and the actuators. The live controller (``autoscaler.runtime.controller``) only schedules it;
the simulator (``autoscaler.simulation``) runs the very same class on a simulated fleet, so
what is benchmarked is what runs. Its inputs are small Protocols (``autoscaler.runtime.ports``)
and ``now``; its memory (cooldowns, hourly cap, SLA ledgers, forecasters, refit schedule) is a
plain ``ControllerMemory`` it reads and updates.

``run_once(now)``:
1. records the SLA interval and refits the forecasters when they are due (on a standby too,
   so it is ready to lead; live, the refit runs beside the cycle, which goes on with the
   forecasters it has until the new ones are swapped in);
2. as the leader (or in a dry run): settles the journal first when it has just become leader
   (or entries wait for a host), then decides on a snapshot taken after settling, never on
   one older than ``snapshot_max_age_s`` (refused, logged and shown until a fresh one comes);
   a fleet-wide freeze or actions held by the per-minute cap are logged and counted;
3. routes the Plan: auto businesses' actions (and approved plans) are executed as one plan,
   recommend businesses' actions exported for approval as another; a dry run or a standby
   exports everything; paused businesses got no action from ``decide``;
4. records the outcomes in the memory (the hourly cap and the cooldowns read them), and saves
   the memory in its store (if any) after executed outcomes and after each SLA interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pandas as pd

from autoscaler.model import Action, Controls, DeposedLeader, MemoryStore, Plan, Snapshot
from autoscaler.observability.exporter import ControllerMetrics
from autoscaler.runtime.figures import BusinessFigures, business_figures
from autoscaler.runtime.logs import event
from autoscaler.runtime.memory import ControllerMemory
from autoscaler.runtime.memory_file import saved_memory
from autoscaler.runtime.ports import (
    AccessSync,
    ActionOutcome,
    Actuation,
    ControlsReader,
    History,
    PlanStore,
    SnapshotSource,
)
from policies.approvals import admit
from policies.decide import decide
from policies.decision import Decision
from policies.forecast import MARGIN_QUANTILES, ForecastSpec, refit, spec_quantile
from policies.rollout import HELD_PREFIX as ROLLOUT_HELD
from policies.rollout import out_of_date, target_version
from policies.schema import BusinessPolicy, CapacitySli, Mode
from policies.sla import SlaLedger, capacity_interval, promql_interval, sla_status
from policies.state import DecideSettings, DecisionState
from policies.storage import REFUSED_CLONE

log = logging.getLogger("autoscaler.controller")
# How often entries left unfinished (their host unreachable) are tried again.
RESETTLE_S = 30.0


@dataclass(frozen=True)
class CycleSettings:
    decide: DecideSettings
    ledger_every_s: float
    refit_every_s: float
    max_concurrent_actions: int = 1
    dry_run: bool = False
    """Decide and export every plan, never execute (``autoscaler run --dry-run``)."""
    snapshot_max_age_s: float | None = None
    """Refuse to decide on a snapshot taken longer ago than this (live: N collect
    intervals); None: no limit (the simulator's snapshots are taken at each step)."""


@dataclass(frozen=True)
class CycleResult:
    """What one run did: the Decision, and the plans it executed and exported (if any)."""

    decision: Decision | None = None
    executed: Plan | None = None
    exported: Plan | None = None
    outcomes: tuple[ActionOutcome, ...] = ()


@contextlib.contextmanager
def _unaccounted(_rounds: int) -> Iterator[None]:
    yield


class Cycle:
    def __init__(
        self,
        *,
        snapshots: SnapshotSource,
        actuation: Actuation | None,
        plans: PlanStore,
        controls: ControlsReader,
        history: History,
        policies: Callable[[], Mapping[str, BusinessPolicy]],
        settings: CycleSettings,
        metrics: ControllerMetrics | None = None,
        memory: ControllerMemory | None = None,
        acting: Callable[[int], AbstractContextManager[None]] = _unaccounted,
        tell: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
        log: logging.Logger = log,
        refit_in: Callable[[Callable[[], None]], None] | None = None,
        store: MemoryStore | None = None,
    ) -> None:
        """``acting(rounds)`` wraps every execution and settling (the live /healthz counts it
        as progress); ``tell`` gets a one-line text per planned action and outcome; ``clock``
        stamps the end of a settling (a snapshot to decide on must be newer), else ``now``;
        ``refit_in(work)`` runs a due refit elsewhere (live: a refit of many series takes
        minutes and must not hold up acting), else the cycle refits before deciding; ``store``
        keeps the memory's caps, cooldowns and ledgers after each execution and SLA interval
        (live; the simulator has none)."""
        self.snapshots = snapshots
        self.actuation = actuation
        self.plans = plans
        self.controls = controls
        self.history = history
        self.policies = policies
        self.settings = settings
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self.memory = memory if memory is not None else ControllerMemory()
        self.acting = acting
        self.tell = tell
        self.clock = clock
        self.log = log
        self.refit_in = refit_in
        self.store = store
        self._refitting = threading.Event()
        self.last_decision: Decision | None = None
        self.last_controls: Controls | None = None
        self.reconcile_pending = False
        """Set by the shell on becoming leader: settle the journal before acting."""
        self.settled_at = 0.0
        self.acted_at = 0.0
        """When the last execution ended: the next decision waits for a view taken after it."""
        self.frozen: str | None = None
        self.clone_refusals: dict[str, str] = {}
        self.access_stale: dict[str, str] = {}
        self.rollout_holds: dict[str, str | None] = {}
        """Per business, why its rollout last waited (logged when it changes)."""
        """Per business behind a balancer that did not answer: why (logged on the change)."""
        """Why the last decision froze retires and migrations fleet-wide, or None."""
        self.stale_snapshot: str | None = None
        """Why the last snapshot was refused as too old, or None once a fresh one came."""
        self._leading = False

    # -- the cycle --------------------------------------------------------------------------
    def run_once(self, now: float, *, generation: int | None) -> CycleResult:
        """One cycle at ``now``; ``generation`` is the lease held (None: a standby)."""
        if generation is not None and not self._leading:
            self.resume_memory(now)
        self._leading = generation is not None
        if self.memory.ledger_due(now, self.settings.ledger_every_s):
            self.record_sla(now)
            if generation is not None:
                self.save_memory(now)  # only the leader writes: a standby's would be stale
        if self.memory.refit_due(now, self.settings.refit_every_s):
            self._start_refit(now)
        if generation is None and not self.settings.dry_run:
            # A standby keeps its ledger and forecasts, and waits; it decides nothing, so it
            # shows no freeze and no refused snapshot (a deposed leader's would stay up).
            self.frozen = self.stale_snapshot = None
            self.metrics.freeze.set(0)
            self.metrics.stale_snapshot.set(0)
            return CycleResult()
        if not self._reconcile_if_pending(now):
            return CycleResult()  # deposed while settling: the new leader settles the rest
        # Settling or the last plan may have moved, grown or finished VMs since the last
        # snapshot was taken: deciding on it would plan from where they were (a second
        # migration of a VM just moved, a second DIMM for memory already added).
        # (A view stamped at the very moment the plan ended was taken before it: strictly after.)
        since = max(self.settled_at, math.nextafter(self.acted_at, math.inf))
        snapshot = self.snapshots.snapshot_since(since)
        if snapshot is None or self._refuse_stale(snapshot, now):
            return CycleResult()
        started = time.monotonic()
        policies = self.policies()
        self._sync_access(snapshot)
        for name, policy in policies.items():
            if policy.backup is not None:
                # The series exists from 0: increase() misses a counter's first sample.
                self.metrics.backup_failures.labels(name)
        controls = self.controls.read()
        self.last_controls = controls
        self._rollout_progress(snapshot, policies, controls)
        state = self.memory.decision_state(self.demand(now), self.settings.decide)
        decision = decide(snapshot, policies, controls, state, now)
        self.last_decision = decision
        keep = max((p.scaling.scale_down_stabilisation_s for p in policies.values()), default=0)
        self.memory.remember_needed(decision.needed_cores, now, keep)
        self.metrics.stage_seconds.labels("decide").observe(time.monotonic() - started)
        for why in decision.notes:
            event(self.log, "drain leaves a VM", logging.WARNING, why=why)
        self._brakes(decision)
        self._storage_refusals(decision, policies)
        self._rollout_holds(decision)
        result = self._route(decision, snapshot, policies, controls, state, generation, now)
        self.metrics.cycle_seconds.observe(time.monotonic() - started)
        return result

    def _rollout_holds(self, decision: Decision) -> None:
        """Log why a business's rollout waits, when the reason starts or changes."""
        for name, reasons in decision.reasons.items():
            held = next((r for r in reasons if r.startswith(ROLLOUT_HELD)), None)
            if held != self.rollout_holds.get(name):
                if held is not None:
                    event(self.log, "rollout held", business=name, why=held)
                self.rollout_holds[name] = held

    def _rollout_progress(
        self, snapshot: Snapshot, policies: Mapping[str, BusinessPolicy], controls: Controls
    ) -> None:
        """Show each versioned business's instances at its target version and out of date."""
        for name, policy in policies.items():
            target = target_version(policy, controls)
            if target is None:
                continue
            running = [v for v in snapshot.vms_by_business.get(name, ()) if v.ready]
            old = sum(1 for v in running if out_of_date(v, target))
            at = sum(1 for v in running if v.version == target)
            self.metrics.rollout_instances.labels(name, "at_target").set(at)
            self.metrics.rollout_instances.labels(name, "out_of_date").set(old)
            rollout = controls.rollouts.get(name)
            self.metrics.rollout_paused.labels(name).set(
                1 if rollout is not None and rollout.paused else 0
            )

    def _sync_access(self, snapshot: Snapshot) -> None:
        """Keep each business's backend in step with its ready instances (``policies.access``)
        before deciding; show which balancers are stale. Not in a dry run: it changes the
        balancer. Changes are logged and counted; a failed one is tried again next cycle."""
        for business in snapshot.businesses:
            if business.access is None:
                continue
            view = snapshot.access_by_business.get(business.name)
            stale = view is None or view.stale
            self.metrics.access_stale.labels(business.name, business.access.balancer).set(
                1 if stale else 0
            )
            was = self.access_stale.get(business.name)
            why = (view.reason if view is not None else "not read") if stale else None
            if why != was:
                if why is not None:
                    event(
                        self.log,
                        "access layer stale",
                        logging.WARNING,
                        business=business.name,
                        why=why,
                    )
                elif was is not None:
                    event(self.log, "access layer answers again", business=business.name)
            if why is None:
                self.access_stale.pop(business.name, None)
            else:
                self.access_stale[business.name] = why
        if self.settings.dry_run or not isinstance(self.actuation, AccessSync):
            return
        for change in self.actuation.sync_access(snapshot):
            result = "done" if change.done else "failed"
            self.metrics.access_changes.labels(change.business, change.change, result).inc()
            level = logging.INFO if change.done else logging.WARNING
            event(
                self.log,
                f"access {change.change}",
                level,
                business=change.business,
                result=result,
                detail=change.detail,
            )

    def _refuse_stale(self, snapshot: Snapshot, now: float) -> bool:
        """True (logged on the change, counted, shown) when ``snapshot`` is too old to decide
        on: a collection that stopped must not keep the last view acting for minutes."""
        limit = self.settings.snapshot_max_age_s
        age = now - snapshot.now
        if limit is None or age <= limit:
            if self.stale_snapshot is not None:
                event(self.log, "fresh snapshot again: deciding", age_s=round(age, 3))
            self.stale_snapshot = None
            self.metrics.stale_snapshot.set(0)
            return False
        why = f"snapshot taken {age:.0f} s ago, more than {limit:g} s: not deciding on it"
        if self.stale_snapshot is None:
            event(self.log, "stale snapshot refused", logging.WARNING, why=why)
        self.stale_snapshot = why
        self.metrics.stale_snapshot.set(1)
        self.metrics.stale_snapshot_refusals.inc()
        return True

    def _storage_refusals(self, decision: Decision, policies: Mapping[str, BusinessPolicy]) -> None:
        """Log (when it starts, changes its cause, or ends) and show each business's clone
        refused by its storage (``policies.storage``): the reason a plan lacks a clone."""
        for name in policies:
            refused = next(
                (r for r in decision.reasons.get(name, ()) if r.startswith(REFUSED_CLONE)), None
            )
            # The cause without its figures: logged again when it changes, not every cycle.
            head = refused.split(":", 1)[1] if refused else None
            cause = head.split(";", 1)[0].split("(", 1)[0].strip() if head else None
            before = self.clone_refusals.get(name)
            if cause != before:
                if refused is not None:
                    event(self.log, "clone refused by storage", logging.WARNING, why=refused)
                elif before is not None:
                    event(self.log, "storage takes clones again", business=name, was=before)
            if cause is None:
                self.clone_refusals.pop(name, None)
            else:
                self.clone_refusals[name] = cause
            self.metrics.clone_refused.labels(name).set(0 if refused is None else 1)

    def _brakes(self, decision: Decision) -> None:
        """Log, count and show the fleet-wide brakes of this decision (``policies.brakes``)."""
        if decision.freeze != self.frozen:
            if decision.freeze is not None:
                event(self.log, "fleet frozen", logging.WARNING, why=decision.freeze)
            else:
                event(self.log, "fleet freeze lifted", was=self.frozen)
        self.frozen = decision.freeze
        self.metrics.freeze.set(0 if decision.freeze is None else 1)
        for why in decision.held:
            event(self.log, "held by the fleet-wide cap", why=why)
        self.metrics.actions_held.inc(len(decision.held))

    def _route(
        self,
        decision: Decision,
        snapshot: Snapshot,
        policies: Mapping[str, BusinessPolicy],
        controls: Controls,
        state: DecisionState,
        generation: int | None,
        now: float,
    ) -> CycleResult:
        plan = decision.plan
        approved = controls.approved
        if not plan.actions and not approved:
            return CycleResult(decision=decision)
        acting = generation is not None and not self.settings.dry_run
        decided_keys = {a.key for a in plan.actions}
        auto: list[Action] = []
        recommend: list[Action] = []
        for action in plan.actions:
            policy = policies.get(action.business)
            if policy is None:
                continue
            # An operator's drain is done whatever the business's mode: recommending it would
            # leave VMs on a host about to be rebooted.
            if acting and (policy.mode is Mode.AUTO or action.key in decision.ordered):
                auto.append(action.model_copy(update={"lease_generation": generation}))
            else:
                recommend.append(action)
        # Approved plans run with this cycle's auto actions, under this lease generation, once
        # each, and only when they still mean what was approved (``policies.approvals``).
        taken = self.plans.take_approved(approved) if acting else []
        keys = {a.key for a in auto}
        for approved_plan in list(taken):
            admission = admit(approved_plan, snapshot, policies, controls, state, now)
            if not admission.admitted:
                taken.remove(approved_plan)
                self.metrics.approvals_refused.inc()
                self._tell(f"refused approved {approved_plan.id}: {admission.refused}")
                event(
                    self.log,
                    "approved plan refused",
                    logging.WARNING,
                    plan=approved_plan.id,
                    reason=admission.refused,
                )
                continue
            for action in approved_plan.actions:
                if action.key not in keys:  # decided again meanwhile: once is enough
                    keys.add(action.key)
                    auto.append(action.model_copy(update={"lease_generation": generation}))
        # Each part is a plan of its own, built once: its id is the one logged as planned and
        # the one journalled (executed), or the exported file's name (recommended).
        exported = Plan.build(recommend, now, snapshot.now) if recommend else None
        executed = Plan.build(auto, now, snapshot.now) if auto else None
        if plan.actions:
            event(
                self.log,
                "decided",
                plan=plan.id,
                actions=len(plan.actions),
                auto=executed.id if executed else None,
                recommend=exported.id if exported else None,
            )
        if taken and executed is not None:
            event(
                self.log, "approved plans joined", plan=executed.id, approved=[p.id for p in taken]
            )
        for part in (executed, exported):
            for action in part.actions if part is not None else ():
                if action.lease_generation is not None and action.key not in decided_keys:
                    continue  # from an approved plan: planned when it was exported
                self._tell(f"planned {action.kind} {action.vm}: {action.reason}")
                event(
                    self.log,
                    "planned",
                    plan=part.id if part is not None else None,
                    decided=plan.id,
                    kind=action.kind,
                    business=action.business,
                    vm=action.vm,
                    reason=action.reason,
                )
        if exported is not None:
            where = self.plans.export(exported)
            self.metrics.plans.labels("recommend").inc()
            event(
                self.log,
                "plan exported for approval",
                plan=exported.id,
                file=where,
                actions=len(exported.actions),
            )
        if not acting:
            return CycleResult(decision=decision, exported=exported)
        if executed is None or self.actuation is None:
            return CycleResult(decision=decision, exported=exported)
        self.metrics.plans.labels("auto").inc()
        outcomes = self.execute(executed, now)
        return CycleResult(
            decision=decision, executed=executed, exported=exported, outcomes=outcomes
        )

    def execute(self, plan: Plan, now: float) -> tuple[ActionOutcome, ...]:
        """Run ``plan`` and record its outcomes (metrics, log, memory)."""
        if self.actuation is None:
            return ()
        concurrent = max(1, self.settings.max_concurrent_actions)
        with self.acting(-(-len(plan.actions) // concurrent)):
            outcomes = tuple(self.actuation.execute(plan))
        self.acted_at = self.clock() if self.clock is not None else now
        for out in outcomes:
            self._tell(f"{out.result} {out.key} in {out.duration_s:.1f}s: {out.reason}")
            self.metrics.actions.labels(out.kind, out.result).inc()
            self.metrics.action_seconds.labels(out.kind).observe(out.duration_s)
            if out.kind == "backup" and out.result == "failed":
                self.metrics.backup_failures.labels(out.business).inc()
            event(
                self.log,
                "action",
                key=out.key,
                kind=out.kind,
                business=out.business,
                result=out.result,
                reason=out.reason,
                duration_s=round(out.duration_s, 3),
                plan=plan.id,
            )
        self.memory.remember_outcomes(outcomes, now)
        self.save_memory(now)
        return outcomes

    def _reconcile_if_pending(self, now: float) -> bool:
        """Settle the journal when due; False when this process turned out not to lead."""
        if self.actuation is None or self.settings.dry_run:
            return True
        # Between cycles nothing runs, so an unfinished entry waits for a host that could not
        # be reached to finish or undo it: try again, at most every RESETTLE_S.
        due = now - self.settled_at >= RESETTLE_S
        unfinished = self.actuation.unfinished() if due or self.reconcile_pending else 0
        if not self.reconcile_pending and unfinished == 0:
            return True
        try:
            with self.acting(unfinished):  # settled one by one
                settled = self.actuation.reconcile()
        except DeposedLeader as exc:
            event(self.log, "deposed while settling", logging.WARNING, reason=str(exc))
            return False
        event(self.log, "reconciled the journal", entries=settled)
        self.settled_at = self.clock() if self.clock is not None else now
        self.reconcile_pending = False
        return True

    def _start_refit(self, now: float) -> None:
        if self.refit_in is None:
            self.refit(now)
            return
        if self._refitting.is_set():
            return  # the last one is still running

        def work() -> None:
            try:
                self.refit(now)
            finally:
                self._refitting.clear()

        self._refitting.set()
        self.refit_in(work)

    def _tell(self, text: str) -> None:
        if self.tell is not None:
            self.tell(text)

    # -- memory: demand, SLA ledger, forecasts ----------------------------------------------
    def demand(self, now: float) -> dict[str, pd.Series]:
        policies = self.policies()
        horizon = max((p.forecast.history_days for p in policies.values()), default=14)
        return {
            b: self.history.busy_cores(b, start=now - horizon * 86400, end=now + 60)
            for b in policies
        }

    def record_sla(self, now: float) -> None:
        """One SLA interval per business, from the latest snapshot, into the ledgers."""
        snapshot = self.snapshots.latest()
        if snapshot is None:
            return
        memory = self.memory
        duration = now - (
            memory.last_ledger_at
            if memory.last_ledger_at is not None
            else now - self.settings.ledger_every_s
        )
        memory.last_ledger_at = now
        figures = business_figures(snapshot)
        for name, policy in self.policies().items():
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
            ledger = memory.ledgers.get(name, SlaLedger()).record(now, good, total, keep)
            memory.ledgers[name] = ledger
            memory.budget_left[name] = sla_status(ledger, policy.sla, now).error_budget_left
            self.metrics.sli_good.labels(name).inc(good)
            self.metrics.sli_total.labels(name).inc(total)
            self.history.record_business(name, now, sli_good_s=good, sli_total_s=total)

    def resume_memory(self, now: float) -> None:
        """On becoming leader: take in the caps, cooldowns and ledgers the last leader saved
        (a standby's own miss what the leader did; a store can be older than the standby's
        own ledger, so the two are merged, never one replacing the other)."""
        saved = saved_memory(self.store, now, self.log)
        if saved is not None:
            self.memory.adopt(saved)

    def save_memory(self, now: float) -> None:
        """Keep what a restart must not reset (caps, cooldowns, ledgers) in the store."""
        if self.store is not None:
            self.store.save(self.memory.to_record(now))

    def refit(self, now: float) -> None:
        """Refit every business's forecaster on its history up to ``now``. The schedule moves
        on once something was fitted: before that (too little history) each cycle tries."""
        policies = self.policies()
        state = self.memory.decision_state({}, self.settings.decide)
        specs: dict[str, ForecastSpec] = {}
        histories: dict[str, pd.Series] = {}
        for name, policy in policies.items():
            quantile = spec_quantile(policy.forecast.quantile, policy.sla.objective)
            specs[name] = ForecastSpec(
                models=tuple(m.value for m in policy.forecast.models),
                quantile=quantile,
                selection_quantile=min(quantile, MARGIN_QUANTILES[0]),
                horizon_s=state.lead_time_s(name),
                min_history_s=policy.forecast.min_history_hours * 3600,
                history_s=policy.forecast.history_days * 86400,
            )
            histories[name] = self.history.busy_cores(
                name, start=now - policy.forecast.history_days * 86400, end=now + 60
            )
        started = time.monotonic()
        fitted = refit(histories, specs, now)
        if not fitted:
            return
        self.memory.forecasters = fitted
        self.memory.last_refit_at = now
        event(
            self.log,
            "forecasts refitted",
            fitted=sorted(fitted),
            seconds=round(time.monotonic() - started, 3),
        )
