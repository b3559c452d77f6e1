"""``autoscaler apply PLAN.json --config CONTROLLER [--state-dir DIR]``: run a plan file.

Where it sits: the operator's (and the tests') way into the executor; the controller loop calls
the same ``apply_plan``. It opens the SQLite journal in the state folder (stamping each intent
into its domain), reconciles whatever a previous run left unfinished, then runs the plan and
prints one line per action (or JSON). Its fleet, limits and actuators
(migration bandwidth and stall settings included) come from the same builder as ``run``'s
(``autoscaler.runtime.wiring``), crash hooks included.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from actuators.base import Fleet, StepHook
from actuators.executor import ActionResult, ExecutorLimits, Registry, execute_plan
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import Reconciled, reconcile
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError, ConfigProblem, Lease, Plan
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import (
    actuator_registry,
    build_fleet,
    crash_hook,
    executor_limits,
    open_journal,
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


def apply_plan(
    plan: Plan,
    fleet: Fleet,
    journal: SqliteJournal,
    *,
    lease: Lease | None = None,
    limits: ExecutorLimits | None = None,
    registry: Registry | None = None,
    on_step: StepHook | None = None,
) -> ApplyReport:
    """Reconcile what a previous run left unfinished, then run ``plan``."""
    ensure_event_loop()
    quiet_libvirt()
    limits = limits or ExecutorLimits()
    reconciled = reconcile(fleet, journal, limits=limits, registry=registry, on_step=on_step)
    results = execute_plan(
        plan, fleet, journal, lease=lease, limits=limits, registry=registry, on_step=on_step
    )
    return ApplyReport(reconciled, results)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("apply", help="run a plan file through the executor and journal")
    p.add_argument("plan", type=Path, help="plan file (JSON, autoscaler.plan/v1)")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.add_argument("--state-dir", type=Path, help="journal folder (default: the config's)")
    p.add_argument("--readiness", choices=["serial-agent", "qemu-guest-agent"], help="probe")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    try:
        plan = Plan.from_json(Path(args.plan).read_text())
    except ValidationError as exc:  # say which action and field, not just "1 validation error"
        problems = [
            ConfigProblem(
                line=None,
                field=".".join(str(part) for part in e["loc"]) or "plan",
                message=printable(e["msg"]),
            )
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(str(args.plan), problems) from exc
    except (OSError, ValueError) as exc:
        problem = ConfigProblem(line=None, field="plan", message=str(exc).splitlines()[0])
        raise ConfigError(str(args.plan), [problem]) from exc
    fleet = build_fleet(config, load_policy_dir(config.policy_dir), args.readiness)
    state_dir: Path = args.state_dir or config.state_dir
    with open_journal(state_dir, fleet) as journal:
        report = apply_plan(
            plan,
            fleet,
            journal,
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
