"""The controller's hands: the executor with its journal, as one object the loop calls.

Where it sits: between the Cycle (``autoscaler.runtime.cycle``) and ``actuators.executor``. It
builds the actuators' ``Fleet`` from the controller file and the current (last good) policies,
keeps the SQLite journal open, passes the lease so the executor refuses actions of a deposed
leader, and reconciles unfinished intents when this controller becomes the leader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from actuators.access_sync import apply_registrations
from actuators.base import Fleet
from actuators.connections import LibvirtPool
from actuators.executor import execute_plan
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import reconcile
from autoscaler.config import ControllerConfig
from autoscaler.model import Action, Journal, JournalEntry, Lease, Phase, Plan, Snapshot
from autoscaler.model.access import Deregister, Register
from autoscaler.runtime.balancers import balancers_of
from autoscaler.runtime.logs import event
from autoscaler.runtime.ports import AccessChange, ActionOutcome
from autoscaler.runtime.shared_state import SharedState
from autoscaler.runtime.wiring import (
    actuator_registry,
    build_fleet,
    crash_hook,
    executor_lease,
    executor_limits,
    open_journal,
    rbd_store,
)
from policies.access import registrations
from policies.schema import BusinessPolicy

log = logging.getLogger("autoscaler.actuation")


class _SettleableNow:
    """The journal as a reconciliation sees it: an entry whose hosts include one that cannot
    be reached now (its connect stuck, its breaker open) is left out -- it stays unfinished for
    a later pass, instead of costing this one its retries while other businesses wait."""

    def __init__(self, journal: Journal, unreachable: Callable[[], set[str]]) -> None:
        self._journal = journal
        self._unreachable = unreachable
        self.skipped: list[JournalEntry] = []

    def unfinished(self) -> list[JournalEntry]:
        down = self._unreachable()
        entries = self._journal.unfinished()
        self.skipped = [e for e in entries if down & set(e.action.hosts)]
        return [e for e in entries if not down & set(e.action.hosts)]

    def record_intent(self, plan_id: str, action: Action, now: float) -> JournalEntry:
        return self._journal.record_intent(plan_id, action, now)

    def record_step(self, key: str, step: str, now: float) -> None:
        self._journal.record_step(key, step, now)

    def record_outcome(self, key: str, phase: Phase, now: float, detail: str = "") -> None:
        self._journal.record_outcome(key, phase, now, detail)

    def get(self, key: str) -> JournalEntry | None:
        return self._journal.get(key)


class ExecutorActuation:
    def __init__(
        self,
        config: ControllerConfig,
        lease: Lease,
        policies: Callable[[], Mapping[str, BusinessPolicy]],
        shared: SharedState | None = None,
    ) -> None:
        ensure_event_loop()
        self.config = config
        self.lease = executor_lease(config, lease)
        self.policies = policies
        self.limits = executor_limits(config)
        self.registry = actuator_registry(config)
        self.on_step = crash_hook(config.testing.fault_hooks)
        # One connection per host for the controller's lifetime, checked before each reuse.
        self.pool = LibvirtPool()
        self.rbd = rbd_store(config)
        self.balancers = balancers_of(config)
        self.journal = open_journal(config.state_dir, self.fleet(), shared)
        self._pending: dict[str, str] = {}
        self._registered: dict[tuple[str, str, str, str], float] = {}
        """(balancer, backend, server, address) -> when the access sync last registered it."""

    def fleet(self) -> Fleet:
        return build_fleet(
            self.config, self.policies(), pool=self.pool, rbd=self.rbd, balancers=self.balancers
        )

    def sync_access(self, snapshot: Snapshot) -> Sequence[AccessChange]:
        # A view taken before a server was registered still lacks it: not registered again.
        changes = [
            c
            for c in registrations(snapshot)
            if isinstance(c, Deregister)
            or self._registered.get((c.balancer, c.backend, c.server, c.address), -1.0)
            < snapshot.now
        ]
        if not changes:
            return ()
        applied = apply_registrations(self.fleet(), changes)
        now = time.time()
        # Only the last minutes matter (a view is at most a few collections old).
        self._registered = {k: t for k, t in self._registered.items() if now - t < 600}
        for a in applied:
            if a.done and isinstance(a.change, Register):
                key = (a.change.balancer, a.change.backend, a.change.server, a.change.address)
                self._registered[key] = now
        return [
            AccessChange(
                business=a.change.business,
                change="deregister" if isinstance(a.change, Deregister) else "register",
                done=a.done,
                detail=a.detail,
            )
            for a in applied
        ]

    def _unreachable_hosts(self) -> set[str]:
        by_uri = {h.uri: h.name for *_, h in self.config.inventory.hosts()}
        return {by_uri[uri] for uri in self.pool.unreachable() if uri in by_uri}

    def reconcile(self) -> int:
        journal = _SettleableNow(self.journal, self._unreachable_hosts)
        done = reconcile(
            self.fleet(),
            journal,
            lease=self.lease,
            limits=self.limits,
            registry=self.registry,
            on_step=self.on_step,
        )
        for item in done:
            event(log, "reconciled", key=item.key, outcome=item.outcome, detail=item.detail)
        for entry in journal.skipped:
            event(log, "reconciliation waits for a host", logging.WARNING, key=entry.action.key)
        self._pending = {
            host: f"{entry.action.key} waits for it to settle"
            for entry in self.journal.unfinished()
            for host in entry.action.hosts
        }
        return len(done)

    def waiting(self) -> dict[str, str]:
        """Host -> why the hands wait for it: a connection to it that has not answered (a
        hung libvirtd costs its one opener, nothing more), or an unfinished journal entry the
        last reconciliation could not settle. Thread-safe: /healthz reads it between cycles."""
        by_uri = {h.uri: h.name for *_, h in self.config.inventory.hosts()}
        out = dict(self._pending)
        for uri, why in self.pool.unreachable().items():
            out[by_uri.get(uri, "?")] = why
        return out

    def unfinished(self) -> int:
        return len(self.journal.unfinished())

    def execute(self, plan: Plan) -> Sequence[ActionOutcome]:
        results = execute_plan(
            plan,
            self.fleet(),
            self.journal,
            lease=self.lease,
            limits=self.limits,
            registry=self.registry,
            on_step=self.on_step,
        )
        by_key = {a.key: a for a in plan.actions}
        return [
            ActionOutcome(
                key=r.key,
                kind=r.kind,
                business=by_key[r.key].business if r.key in by_key else "",
                result=r.status,
                reason=r.reason,
                duration_s=r.duration_s,
            )
            for r in results
        ]

    def close(self) -> None:
        self.journal.close()
        self.pool.close()
