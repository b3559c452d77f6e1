"""The executor: runs a Plan's actions through their actuators, journalled, capped and retried.

Where it sits: the last stage of the flow (``policies.decide`` -> Plan -> here -> libvirt). It
keeps the plan's order where it matters (an action waits for the earlier actions on the same
VM, and scale-in waits for the earlier actions of its business), runs the rest side by side
under caps (at most ``max_migrations_per_host`` outgoing migrations per host, ``max_migrations``
in all, ``max_concurrent`` actions), gives each action a deadline, retries temporary errors
with backoff (tenacity), and returns one result per action: done, failed with its reason, or
skipped. The journal and the lease come in as objects (``Journal`` / ``Lease`` protocols): the
intent is recorded before the first side effect, each step as it is reached, the outcome after.
One fencing rule: no side effect (execute, verify, compensate) unless this process holds the
lease, inside its monotonic deadline, at exactly the generation the action was decided under;
it is checked before the action starts, before its first side effect, at each of its steps and
before a compensation (a deposed leader leaves the rest to the new one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from actuators.adopt import AdoptActuator
from actuators.backup import BackupActuator
from actuators.base import ActionContext, Actuator, Fleet, StepHook
from actuators.clone import CloneActuator
from actuators.hotadd import HotAddMemoryActuator, HotAddVcpuActuator
from actuators.migrate import MigrateActuator
from actuators.replace import ReplaceActuator
from actuators.retire import RetireActuator
from actuators.snapshot import MergeSnapshotActuator, SnapshotActuator
from autoscaler.model import (
    Action,
    AutoscalerError,
    DeposedLeader,
    Journal,
    Lease,
    LiveMigrate,
    Phase,
    Plan,
    TemporaryError,
)

log = logging.getLogger(__name__)

Status = Literal["done", "failed", "skipped"]


@dataclass(frozen=True)
class ExecutorLimits:
    max_migrations_per_host: int = 2
    max_migrations: int = 4
    max_concurrent: int = 8
    action_timeout_s: float = 180.0
    retries: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


DEFAULT_LIMITS = ExecutorLimits()
# The journal step of an action whose compensation waits for its host (see ``_compensate``).
PENDING_STEP = "compensation-pending"


@dataclass(frozen=True)
class ActionResult:
    key: str
    kind: str
    status: Status
    reason: str
    started_at: float
    duration_s: float
    attempts: int = 0
    figures: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "attempts": self.attempts,
            "figures": {k: round(v, 4) for k, v in self.figures.items()},
        }


Registry = Mapping[str, Actuator[Any]]


def default_registry(
    *, migration_bandwidth_mib_s: int = 0, migration_stall_s: float = 30.0
) -> dict[str, Actuator[Any]]:
    """One actuator per action kind; an unknown kind fails loudly (see ``actuator_for``)."""
    return {
        "hot_add_vcpu": HotAddVcpuActuator(),
        "hot_add_memory": HotAddMemoryActuator(),
        "clone_from_template": CloneActuator(),
        "retire": RetireActuator(),
        "live_migrate": MigrateActuator(migration_bandwidth_mib_s, migration_stall_s),
        "snapshot": SnapshotActuator(),
        "merge_snapshot": MergeSnapshotActuator(),
        "adopt": AdoptActuator(),
        "backup": BackupActuator(),
        "replace": ReplaceActuator(),
    }


def actuator_for(registry: Registry, kind: str) -> Actuator[Any]:
    try:
        return registry[kind]
    except KeyError:
        raise KeyError(f"no actuator for action kind {kind!r}; known: {sorted(registry)}") from None


def check_lease(action: Action, lease: Lease) -> None:
    """The fence: raise ``DeposedLeader`` unless we hold the lease at the action's generation."""
    lease.fence(action.lease_generation, action.key)


def _backoff(limits: ExecutorLimits) -> Callable[[RetryCallState], float]:
    def wait_s(state: RetryCallState) -> float:
        exponential = limits.backoff_initial_s * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, TemporaryError) else 0.0
        return float(min(limits.backoff_max_s, max(exponential, asked)))

    return wait_s


def run_action(
    plan_id: str,
    action: Action,
    fleet: Fleet,
    journal: Journal,
    *,
    lease: Lease,
    limits: ExecutorLimits = DEFAULT_LIMITS,
    registry: Registry | None = None,
    on_step: StepHook | None = None,
    clock: Callable[[], float] = time.time,
) -> ActionResult:
    """One action, start to finish: lease, already-done, precondition, intent, execute, verify,
    outcome; compensation when it finally fails. Also used by the reconciler to resume."""
    actuator = actuator_for(registry or default_registry(), action.kind)
    started_wall, started = clock(), time.monotonic()
    ctx = ActionContext(fleet=fleet, deadline=started + limits.action_timeout_s)
    attempts = 0
    recorded = False

    def result(status: Status, reason: str) -> ActionResult:
        return ActionResult(
            key=action.key,
            kind=action.kind,
            status=status,
            reason=reason,
            started_at=started_wall,
            duration_s=time.monotonic() - started,
            attempts=attempts,
            figures=dict(ctx.figures),
        )

    def record_step(step: str) -> None:
        # Fenced at every step: a leader frozen mid-action (SIGSTOP, a VM pause, a long GC)
        # or cut off from its lease store stops at its next step once its deadline passes,
        # instead of racing the new leader, which settles this entry itself.
        check_lease(action, lease)
        journal.record_step(action.key, step, clock())
        if on_step is not None:
            on_step(action, step)

    ctx.record_step = record_step

    def attempt() -> str:
        nonlocal attempts, recorded
        attempts += 1
        check_lease(action, lease)
        if actuator.already_done(action, ctx):
            return "already done; " + actuator.verify(action, ctx)
        actuator.precondition(action, ctx)
        if not recorded:
            existing = journal.get(action.key)
            if existing is None or existing.phase.finished:
                journal.record_intent(plan_id, action, clock())
            recorded = True
            record_step("intent")
        check_lease(action, lease)  # the last word before the first side effect
        journal.record_outcome(action.key, Phase.RUNNING, clock())
        actuator.execute(action, ctx)
        ctx.check_deadline("before verification")
        return actuator.verify(action, ctx)

    retrying = Retrying(
        retry=retry_if_exception_type(TemporaryError),
        stop=stop_after_attempt(limits.retries + 1) | stop_after_delay(limits.action_timeout_s),
        wait=_backoff(limits),
        reraise=True,
        sleep=time.sleep,
    )
    try:
        detail = retrying(attempt)
    except DeposedLeader as exc:
        # Neither compensate nor write the outcome: the entry now belongs to the new leader,
        # whose reconciliation finishes or undoes it; touching it here would race that.
        return result("failed", f"{type(exc).__name__}: {exc}; left to the new leader")
    except AutoscalerError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if recorded:
            reason += _compensate(actuator, action, ctx, journal, reason, clock, lease)
        elif journal.get(action.key) is not None and not _finished(journal, action.key):
            journal.record_outcome(action.key, Phase.FAILED, clock(), reason)
        return result("failed", reason)
    except Exception as exc:  # a bug or an unexpected libvirt error: the loop must go on
        log.exception("action %s crashed", action.key)
        reason = f"unexpected {type(exc).__name__}: {exc}"
        if recorded:
            reason += _compensate(actuator, action, ctx, journal, reason, clock, lease)
        return result("failed", reason)
    if recorded or not _finished(journal, action.key):
        journal.record_outcome(action.key, Phase.DONE, clock(), detail)
    return result("done", detail)


def _finished(journal: Journal, key: str) -> bool:
    entry = journal.get(key)
    return entry is None or entry.phase.finished


def _compensate(
    actuator: Actuator[Any],
    action: Action,
    ctx: ActionContext,
    journal: Journal,
    reason: str,
    clock: Callable[[], float],
    lease: Lease,
) -> str:
    try:
        check_lease(action, lease)
    except DeposedLeader as exc:
        # Deposed while it failed (frozen mid-call, then woken): the new leader settles the
        # entry, and undoing it here could undo what that leader has already finished.
        return f"; not compensated, left to the new leader ({exc})"
    try:
        undone = actuator.compensate(action, ctx)
    except TemporaryError as exc:
        # The host cannot be reached to undo what was done (its libvirtd down, its link cut):
        # closing the entry now would leave a half-made VM nobody settles. It stays unfinished,
        # and the reconciler finishes or undoes it once the host answers again.
        journal.record_step(action.key, PENDING_STEP, clock())
        return f"; compensation pending until the host answers: {exc}"
    except Exception as exc:  # the failure is reported, not raised
        journal.record_outcome(action.key, Phase.FAILED, clock(), f"{reason}; compensation: {exc}")
        return f"; compensation failed: {exc}"
    journal.record_outcome(action.key, Phase.COMPENSATED, clock(), f"{reason}; {undone}")
    return f"; compensated: {undone}"


def _depends_on(later: Action, earlier: Action) -> bool:
    if later.vm == earlier.vm:
        return True
    # Scale-in counts the business's serving instances: let earlier changes to it land first.
    return later.kind == "retire" and later.business == earlier.business


def execute_plan(
    plan: Plan,
    fleet: Fleet,
    journal: Journal,
    *,
    lease: Lease,
    limits: ExecutorLimits = DEFAULT_LIMITS,
    registry: Registry | None = None,
    on_step: StepHook | None = None,
    clock: Callable[[], float] = time.time,
) -> list[ActionResult]:
    """Run ``plan``; one result per action, in the plan's order."""
    registry = registry or default_registry()
    for action in plan.actions:
        actuator_for(registry, action.kind)  # fail before doing anything on an unknown kind
    actions = list(plan.actions)
    results: dict[int, ActionResult] = {}
    running: dict[Future[ActionResult], int] = {}
    lock = threading.Lock()

    def blocked_by(index: int) -> list[int]:
        return [j for j in range(index) if _depends_on(actions[index], actions[j])]

    def migrations_out(host: str | None = None) -> int:
        moving = [a for i in running.values() if isinstance(a := actions[i], LiveMigrate)]
        return sum(1 for a in moving if host is None or a.source == host)

    def may_start(index: int) -> bool:
        action = actions[index]
        if len(running) >= limits.max_concurrent:
            return False
        if isinstance(action, LiveMigrate):
            if migrations_out() >= limits.max_migrations:
                return False
            if migrations_out(action.source) >= limits.max_migrations_per_host:
                return False
        return True

    with ThreadPoolExecutor(max_workers=limits.max_concurrent) as pool:
        while len(results) < len(actions):
            with lock:
                for index, action in enumerate(actions):
                    if index in results or index in running.values():
                        continue
                    deps = blocked_by(index)
                    failed = [j for j in deps if j in results and results[j].status != "done"]
                    if failed:
                        results[index] = ActionResult(
                            key=action.key,
                            kind=action.kind,
                            status="skipped",
                            reason=f"skipped: {actions[failed[0]].key} did not succeed",
                            started_at=clock(),
                            duration_s=0.0,
                        )
                        continue
                    if any(j not in results for j in deps) or not may_start(index):
                        continue
                    future = pool.submit(
                        run_action,
                        plan.id,
                        action,
                        fleet,
                        journal,
                        lease=lease,
                        limits=limits,
                        registry=registry,
                        on_step=on_step,
                        clock=clock,
                    )
                    running[future] = index
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            with lock:
                for future in done:
                    index = running.pop(future)
                    results[index] = future.result()
    return [results[i] for i in range(len(actions))]
