"""The controller's hands: the executor with its journal, as one object the loop calls.

Where it sits: between the Cycle (``autoscaler.runtime.cycle``) and ``actuators.executor``. It
builds the actuators' ``Fleet`` from the controller file and the current (last good) policies,
keeps the SQLite journal open, passes the lease so the executor refuses actions of a deposed
leader, and reconciles unfinished intents when this controller becomes the leader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from actuators.base import Fleet
from actuators.connections import LibvirtPool
from actuators.executor import execute_plan
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import reconcile
from autoscaler.config import ControllerConfig
from autoscaler.model import Lease, Plan
from autoscaler.runtime.logs import event
from autoscaler.runtime.ports import ActionOutcome
from autoscaler.runtime.wiring import (
    actuator_registry,
    build_fleet,
    crash_hook,
    executor_limits,
    open_journal,
)
from policies.schema import BusinessPolicy

log = logging.getLogger("autoscaler.actuation")


class ExecutorActuation:
    def __init__(
        self,
        config: ControllerConfig,
        lease: Lease,
        policies: Callable[[], Mapping[str, BusinessPolicy]],
    ) -> None:
        ensure_event_loop()
        self.config = config
        self.lease = lease
        self.policies = policies
        self.limits = executor_limits(config)
        self.registry = actuator_registry(config)
        self.on_step = crash_hook(config.testing.fault_hooks)
        # One connection per host for the controller's lifetime, checked before each reuse.
        self.pool = LibvirtPool()
        self.journal = open_journal(config.state_dir, self.fleet())
        self._pending: dict[str, str] = {}

    def fleet(self) -> Fleet:
        return build_fleet(self.config, self.policies(), pool=self.pool)

    def reconcile(self) -> int:
        done = reconcile(
            self.fleet(),
            self.journal,
            limits=self.limits,
            registry=self.registry,
            on_step=self.on_step,
        )
        for item in done:
            event(log, "reconciled", key=item.key, outcome=item.outcome, detail=item.detail)
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
        for uri, stuck_s in self.pool.stuck().items():
            host = by_uri.get(uri, "?")
            out[host] = f"no answer to a connect for {stuck_s:.0f} s"
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
