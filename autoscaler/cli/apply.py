"""``autoscaler apply PLAN.json --config CONTROLLER [--state-dir DIR]``: run a plan file.

Where it sits: the operator's (and the tests') way into the executor. It acts only as the
holder of the same leader lease the controller takes (``open_lease``): when a controller leads,
``apply`` is refused (approve the controller's plan instead, ``autoscaler approve``); when none
does, it takes the lease itself, so no controller can start acting meanwhile, decides the plan
anew under its generation, reconciles whatever a previous run left unfinished, runs the plan,
and releases the lease. It opens the SQLite journal in the state folder (stamping each intent
into its domain) and prints one line per action (or JSON). Its fleet, limits and actuators
(migration bandwidth and stall settings included) come from the same builder as ``run``'s
(``autoscaler.runtime.wiring``), crash hooks included.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from actuators.base import Fleet, StepHook, find_domain
from actuators.executor import ActionResult, ExecutorLimits, Registry, execute_plan
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import Reconciled, reconcile
from autoscaler.config import load_controller_config
from autoscaler.model import (
    Adopt,
    AutoscalerError,
    ConfigError,
    ConfigProblem,
    DeposedLeader,
    Lease,
    LeaseState,
    Plan,
)
from autoscaler.runtime.lease import Renewing
from autoscaler.runtime.runner import ceph_handle
from autoscaler.runtime.shared_state import open_shared_state
from autoscaler.runtime.wiring import (
    ActionJournal,
    actuator_registry,
    build_fleet,
    crash_hook,
    executor_limits,
    open_journal,
    open_lease,
    quiet_libvirt,
)
from policies.loader import load_policy_dir
from policies.yaml_source import printable


@dataclass(frozen=True)
class ApplyReport:
    reconciled: list[Reconciled]
    results: list[ActionResult]

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results) and all(
            r.outcome != "failed" for r in self.reconciled
        )


class LeaderPresent(AutoscalerError):
    """Another holder leads: ``apply`` does not act beside it."""


def take_lease(lease: Lease, wait_s: float, poll_s: float = 0.5) -> LeaseState:
    """The lease, once nobody else holds it; ``LeaderPresent`` as soon as a holder shows it
    is alive (its record changes) or after ``wait_s`` (a lease that nobody renews is taken
    after one duration, seen on this process's own clock)."""
    deadline = time.monotonic() + wait_s
    seen = lease.current()
    while True:
        state = lease.try_acquire(time.time())
        if state is not None:
            return state
        current = lease.current()
        if current is not None and seen is not None and current != seen:
            raise LeaderPresent(
                f"{current.holder} leads (lease generation {current.generation}) and renews its"
                " lease: apply does not act beside a leader; approve its plan instead"
                " (autoscaler approve PLAN_ID)"
            )
        seen = current
        if time.monotonic() >= deadline:
            holder = current.holder if current is not None else "another process"
            raise LeaderPresent(f"{holder} holds the lease; apply does not act beside a leader")
        time.sleep(poll_s)


def apply_plan(
    plan: Plan,
    fleet: Fleet,
    journal: ActionJournal,
    *,
    lease: Lease,
    limits: ExecutorLimits | None = None,
    registry: Registry | None = None,
    on_step: StepHook | None = None,
) -> ApplyReport:
    """Reconcile what a previous run left unfinished, then run ``plan``, as the holder of
    ``lease`` (taken by the caller): the plan is decided anew under its generation."""
    ensure_event_loop()
    quiet_libvirt()
    held = lease.held()
    if held is None:
        raise DeposedLeader("apply: the lease is not held; refusing to act")
    limits = limits or ExecutorLimits()
    reconciled = reconcile(
        fleet, journal, lease=lease, limits=limits, registry=registry, on_step=on_step
    )
    results = execute_plan(
        plan.under(held.generation),
        fleet,
        journal,
        lease=lease,
        limits=limits,
        registry=registry,
        on_step=on_step,
    )
    return ApplyReport(reconciled, results)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("apply", help="run a plan file through the executor and journal")
    p.add_argument("plan", type=Path, help="plan file (JSON, autoscaler.plan/v1)")
    _common(p)
    p.set_defaults(func=run)
    p = subparsers.add_parser(
        "adopt", help="stamp a domain the controller did not create as an instance of a business"
    )
    p.add_argument("vm", help="the domain's name")
    p.add_argument("--business", required=True, help="the business it serves")
    p.add_argument("--host", help="the host it is on (default: looked up across the fleet)")
    _common(p)
    p.set_defaults(func=run_adopt)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.add_argument("--state-dir", type=Path, help="journal folder (default: the config's)")
    p.add_argument("--readiness", choices=["serial-agent", "qemu-guest-agent"], help="probe")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def read_plan(path: Path) -> Plan:
    try:
        return Plan.from_json(path.read_text())
    except ValidationError as exc:  # say which action and field, not just "1 validation error"
        problems = [
            ConfigProblem(
                line=None,
                field=".".join(str(part) for part in e["loc"]) or "plan",
                message=printable(e["msg"]),
            )
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(str(path), problems) from exc
    except (OSError, ValueError) as exc:
        problem = ConfigProblem(line=None, field="plan", message=str(exc).splitlines()[0])
        raise ConfigError(str(path), [problem]) from exc


def run(args: argparse.Namespace) -> int:
    return run_as_holder(args, lambda _fleet: read_plan(Path(args.plan)))


def run_adopt(args: argparse.Namespace) -> int:
    def plan_for(fleet: Fleet) -> Plan:
        host = args.host or locate(fleet, args.vm)
        action = Adopt(
            business=args.business, vm=args.vm, host=host, reason="adopted by an operator"
        )
        return Plan.build([action], created_at=time.time())

    return run_as_holder(args, plan_for)


def locate(fleet: Fleet, vm: str) -> str:
    """The one host where ``vm`` is defined; a clear error when none or several."""
    found = []
    for host in fleet.hosts:
        with fleet.connection(host) as conn:
            if find_domain(conn, vm) is not None:
                found.append(host)
    if len(found) != 1:
        where = ", ".join(found) if found else "no host"
        problem = ConfigProblem(line=None, field="vm", message=f"{vm} is defined on {where}")
        raise ConfigError(vm, [problem])
    return found[0]


def run_as_holder(args: argparse.Namespace, plan_for: Callable[[Fleet], Plan]) -> int:
    """Take the lease (or refuse beside a leader), then reconcile and run the plan."""
    config = load_controller_config(args.config)
    if args.state_dir is not None:
        config = config.model_copy(update={"state_dir": args.state_dir})
    fleet = build_fleet(config, load_policy_dir(config.policy_dir), args.readiness)
    plan = plan_for(fleet)
    cluster = ceph_handle(config) if config.lease.kind == "rados" else None
    shared = open_shared_state(config, cluster)
    lease = open_lease(config, f"apply:{socket.gethostname()}:{os.getpid()}", cluster, shared)
    try:
        take_lease(lease, wait_s=config.lease.duration_s * 1.5 + 1)
    except LeaderPresent as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    with (
        Renewing(lease, every_s=config.lease.duration_s / 3),
        open_journal(config.state_dir, fleet, shared) as journal,
    ):
        report = apply_plan(
            plan,
            fleet,
            journal,
            lease=lease,
            limits=executor_limits(config),
            registry=actuator_registry(config),
            on_step=crash_hook(config.testing.fault_hooks),
        )
    if args.json:
        print(
            json.dumps(
                {
                    "plan": plan.id,
                    "reconciled": [r.__dict__ for r in report.reconciled],
                    "results": [r.as_dict() for r in report.results],
                },
                indent=1,
            )
        )
    else:
        for rec in report.reconciled:
            print(f"reconciled {rec.key}: {rec.outcome}: {rec.detail}")
        for res in report.results:
            print(f"{res.status:7s} {res.key} ({res.duration_s:.1f} s): {res.reason}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m autoscaler.cli.apply``) until the CLI wires ``apply``."""
    parser = argparse.ArgumentParser(prog="autoscaler")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["apply", *(argv if argv is not None else sys.argv[1:])])
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
