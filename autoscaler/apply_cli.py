"""``autoscaler apply PLAN.json --config CONTROLLER [--state-dir DIR]``: run a plan file.

Where it sits: the operator's (and the tests') way into the executor; the controller loop calls
the same ``apply_plan``. It opens the SQLite journal in the state folder (stamping each intent
into its domain), reconciles whatever a previous run left unfinished, then runs the plan and
prints one line per action (or JSON). For crash tests, ``AUTOSCALER_CRASH_AT=<kind>:<step>``
(e.g. ``clone_from_template:started``, ``live_migrate:migrating``) makes the process SIGKILL
itself right after that step is journalled: a deterministic crash at a known point;
``AUTOSCALER_FREEZE_AT=<kind>:<step>`` makes it SIGSTOP itself there instead, once (a leader
frozen mid-action, for the takeover tests: they SIGCONT it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libvirt
from pydantic import ValidationError

from actuators.base import Fleet, LabAgentObserver, StepHook
from actuators.domain_xml import GuestBoot
from actuators.executor import ActionResult, ExecutorLimits, execute_plan
from actuators.guest_agent import readiness_probe
from actuators.libvirt_events import ensure_event_loop
from actuators.reconcile import Reconciled, reconcile
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.journal import DomainStamper, SqliteJournal
from autoscaler.model import BaseAction, Business, ConfigError, ConfigProblem, Lease, Plan
from policies.loader import load_policy_dir
from policies.yaml_source import printable

CRASH_ENV = "AUTOSCALER_CRASH_AT"
FREEZE_ENV = "AUTOSCALER_FREEZE_AT"
JOURNAL_FILE = "journal.sqlite"


def crash_hook(spec: str | None = None, freeze: str | None = None) -> StepHook | None:
    """A step hook that SIGKILLs this process at ``<kind>:<step>`` (``spec``, else from the
    environment), or SIGSTOPs it the first time it reaches ``freeze`` (likewise)."""
    target = spec if spec is not None else os.environ.get(CRASH_ENV, "")
    stop_at = freeze if freeze is not None else os.environ.get(FREEZE_ENV, "")
    if not target and not stop_at:
        return None
    frozen = threading.Event()

    def hook(action: BaseAction, step: str) -> None:
        point = f"{getattr(action, 'kind', '')}:{step}"
        if point == target:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif point == stop_at and not frozen.is_set():
            # Once only: resumed, the process must show what it does next, not stop again.
            frozen.set()
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    return hook


def quiet_libvirt() -> None:
    """libvirt prints every error to stderr by default, also the ones we expect and handle
    (a lookup of a domain that is not there); they reach us as exceptions anyway."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def build_fleet(config: ControllerConfig, readiness: str | None = None) -> Fleet:
    """The actuators' handles from the controller file and its policy folder."""
    policies = load_policy_dir(config.policy_dir)
    businesses = {
        name: Business(
            name=name,
            template=p.template.to_template(),
            min_instances=p.instances.min,
            max_instances=p.instances.max,
        )
        for name, p in policies.items()
    }
    lab_guest = config.guest_kernel is not None
    probe = readiness or ("lab-agent" if lab_guest else "qemu-guest-agent")
    return Fleet(
        hosts={h.name: h.uri for *_, h in config.inventory.hosts()},
        businesses=businesses,
        boot=GuestBoot(kernel=config.guest_kernel, initrd=config.guest_initrd),
        domain_type=config.domain_type,
        readiness=readiness_probe(probe),
        observer=LabAgentObserver() if lab_guest else None,
    )


def limits_from(config: ControllerConfig) -> ExecutorLimits:
    e = config.executor
    return ExecutorLimits(
        max_migrations_per_host=e.max_migrations_per_host,
        max_migrations=e.max_migrations,
        max_concurrent=e.max_concurrent_actions,
        action_timeout_s=e.action_timeout_s,
        retries=e.retries,
    )


def open_journal(state_dir: Path, fleet: Fleet) -> SqliteJournal:
    stamper = DomainStamper(dict(fleet.hosts), libvirt.open)
    return SqliteJournal(state_dir / JOURNAL_FILE, stamper=stamper)


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
    on_step: StepHook | None = None,
) -> ApplyReport:
    """Reconcile what a previous run left unfinished, then run ``plan``."""
    ensure_event_loop()
    quiet_libvirt()
    limits = limits or ExecutorLimits()
    reconciled = reconcile(fleet, journal, limits=limits, on_step=on_step)
    results = execute_plan(plan, fleet, journal, lease=lease, limits=limits, on_step=on_step)
    return ApplyReport(reconciled, results)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("apply", help="run a plan file through the executor and journal")
    p.add_argument("plan", type=Path, help="plan file (JSON, autoscaler.plan/v1)")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.add_argument("--state-dir", type=Path, help="journal folder (default: the config's)")
    p.add_argument("--readiness", choices=["lab-agent", "qemu-guest-agent"], help="probe")
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
    fleet = build_fleet(config, args.readiness)
    state_dir: Path = args.state_dir or config.state_dir
    with open_journal(state_dir, fleet) as journal:
        report = apply_plan(plan, fleet, journal, limits=limits_from(config), on_step=crash_hook())
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
    """Stand-alone entry (``python -m autoscaler.apply_cli``) until the CLI wires ``apply``."""
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
