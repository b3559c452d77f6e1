"""The controller's hands: the executor with its journal, as one object the loop calls.

Where it sits: between ``Controller.decide_job`` and ``actuators.executor``. It builds the
actuators' ``Fleet`` from the controller file and the current (last good) policies, keeps the
SQLite journal open, passes the lease so the executor refuses actions of a deposed leader, and
reconciles unfinished intents when this controller becomes the leader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from actuators.base import Fleet, LabAgentObserver
from actuators.domain_xml import GuestBoot
from actuators.executor import ExecutorLimits, default_registry, execute_plan
from actuators.guest_agent import readiness_probe
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import reconcile
from autoscaler.apply_cli import crash_hook, open_journal
from autoscaler.config import ControllerConfig
from autoscaler.controller import ActionOutcome
from autoscaler.logs import event
from autoscaler.model import Lease, Plan
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
        e = config.executor
        self.limits = ExecutorLimits(
            max_migrations_per_host=e.max_migrations_per_host,
            max_migrations=e.max_migrations,
            max_concurrent=e.max_concurrent_actions,
            action_timeout_s=e.action_timeout_s,
            retries=e.retries,
        )
        self.registry = default_registry(
            migration_bandwidth_mib_s=e.migration_bandwidth_mib_s,
            migration_stall_s=e.migration_stall_s,
        )
        self.on_step = crash_hook()
        self.journal = open_journal(config.state_dir, self.fleet())

    def fleet(self) -> Fleet:
        lab_guest = self.config.guest_kernel is not None
        return Fleet(
            hosts={h.name: h.uri for *_, h in self.config.inventory.hosts()},
            businesses={n: p.to_business() for n, p in self.policies().items()},
            boot=GuestBoot(kernel=self.config.guest_kernel, initrd=self.config.guest_initrd),
            domain_type=self.config.domain_type,
            readiness=readiness_probe("lab-agent" if lab_guest else "qemu-guest-agent"),
            observer=LabAgentObserver() if lab_guest else None,
        )

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
        return len(done)

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
