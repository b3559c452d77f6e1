"""``autoscaler``: the command line.

Where it sits: the front door. Subcommands: ``validate`` and ``schema`` for the files operators
write, ``fleet`` to discover and print the fleet through libvirt (optionally writing the
Snapshot as JSON), ``run`` for the controller, the operator controls, ``simulate``, ``apply``
and ``grafana``. The lab has its own entry point (``python -m lab``), outside the product.
Errors an operator can fix are printed as one clear message and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autoscaler.cli import apply, backups, images, rollout, simulate, state
from autoscaler.model import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from autoscaler.config import ControllerConfig
    from autoscaler.runtime.shared_state import SharedState

PLAN_ID = re.compile(r"plan-[0-9a-f]{12}")


def _images_for(path: Path, explicit: Path | None) -> set[str] | None:
    folder = explicit
    if folder is None:
        guess = path.resolve().parent.parent / "images"
        folder = guess if guess.is_dir() else None
    if folder is None:
        return None
    if not folder.is_dir():
        raise ConfigError(str(folder), [])
    return {p.name for p in folder.iterdir() if p.is_file()}


def cmd_validate(args: argparse.Namespace) -> int:
    from autoscaler.config import load_controller_config
    from policies.loader import load_policy, load_policy_dir
    from policies.yaml_source import read_yaml

    failed = 0
    for path in args.files:
        try:
            data = read_yaml(path)
            kind = data.get("kind") if isinstance(data, dict) else None
            if kind == "Controller":
                config = load_controller_config(path)
                images = (
                    {p.name for p in config.image_dir.iterdir()}
                    if config.image_dir.is_dir()
                    else None
                )
                if images is None:
                    raise ConfigError(
                        str(path),
                        [_problem("image_dir", f"image folder {config.image_dir} does not exist")],
                    )
                load_policy_dir(
                    config.policy_dir,
                    images=images,
                    balancers={b.name for b in config.balancers},
                )
                print(f"{path}: ok (controller; {len(config.inventory.hosts())} hosts)")
                if config.lease.kind == "rados" and config.ownership.key_file is None:
                    print(
                        f"{path}: warning: ownership.key_file is not set: each controller makes"
                        " its own key in its state folder, and after a failover the new leader"
                        " sees every VM as foreign; name one key file shared by all of them",
                        file=sys.stderr,
                    )
                if not config.testing.in_process_fence:
                    print(
                        f"{path}: warning: testing.in_process_fence is off: only the shared"
                        " state's fence at the store stops a deposed leader; for the fault"
                        " tests only, never on a real fleet",
                        file=sys.stderr,
                    )
                if config.testing.fault_hooks:
                    print(
                        f"{path}: warning: testing.fault_hooks is on: AUTOSCALER_CRASH_AT and "
                        "AUTOSCALER_FREEZE_AT can kill or stop this controller mid-action; "
                        "for the fault tests only, never on a real fleet",
                        file=sys.stderr,
                    )
            else:
                images = _images_for(path, args.image_dir)
                policy = load_policy(path, images=images)
                note = "" if images is not None else " (image not checked: no image folder)"
                print(f"{path}: ok (business {policy.business}){note}")
        except ConfigError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
    return 1 if failed else 0


def _problem(field: str, message: str) -> ConfigProblem:
    return ConfigProblem(line=None, field=field, message=message)


def cmd_schema(args: argparse.Namespace) -> int:
    if args.controller:
        from autoscaler.config import ControllerConfig

        schema = ControllerConfig.model_json_schema(by_alias=True)
    else:
        from policies.schema import BusinessPolicy

        schema = BusinessPolicy.model_json_schema(by_alias=True)
    print(json.dumps(schema, indent=2))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from autoscaler.cli.fleet_view import print_fleet
    from autoscaler.config import load_controller_config
    from autoscaler.runtime.discovery import discover
    from policies.loader import load_policy_dir

    config = load_controller_config(args.config)
    policies = load_policy_dir(config.policy_dir)
    snapshot = discover(config, policies)
    if args.snapshot_out:
        args.snapshot_out.write_text(snapshot.to_json())
    if args.json:
        print(snapshot.to_json())
    else:
        print_fleet(snapshot)
    return 0


def cmd_grafana(args: argparse.Namespace) -> int:
    from autoscaler.observability.grafana_files import differences, write
    from policies.loader import load_policy_dir

    policies = load_policy_dir(args.policies)
    if args.check:
        diffs = differences(args.out, policies)
        for rel in diffs:
            print(f"{args.out / rel}: differs from what `autoscaler grafana generate` writes")
        return 1 if diffs else 0
    for path in write(args.out, policies):
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from autoscaler.runtime.runner import run

    return run(args.config, dry_run=args.dry_run, holder=args.holder, listen=args.listen)


def cmd_control(args: argparse.Namespace) -> int:
    from autoscaler.config import load_controller_config
    from autoscaler.model import check_name
    from autoscaler.model.controls import ALL
    from autoscaler.runtime.controls import ControlFile, ControlsEditor

    config = load_controller_config(args.config)
    controls: ControlsEditor = ControlFile(config.state_dir)
    shared = _shared_state(config)
    if shared is not None:
        # Shared by every controller machine: the change holds whichever one leads.
        controls = shared.controls
    target: str | None = getattr(args, "target", None)

    def safe(value: str, what: str) -> str:
        try:
            return check_name(value, what=what)
        except ValueError as exc:
            raise ConfigError("command line", [_problem(what, str(exc))]) from exc

    if args.command in ("pause", "resume"):
        name = ALL if target is None else safe(target, "business")
        if name != ALL and name not in _business_names(config.policy_dir):
            print(f"no business named {name!r} in {config.policy_dir}", file=sys.stderr)
            return 1
        result = controls.pause(name) if args.command == "pause" else controls.resume(name)
    elif args.command in ("cordon", "uncordon", "drain"):
        host = safe(target or "", "host")
        if host not in {h.name for *_, h in config.inventory.hosts()}:
            print(f"no host named {host!r} in the inventory", file=sys.stderr)
            return 1
        result = getattr(controls, args.command)(host)
    else:  # approve
        target = target or ""
        if not PLAN_ID.fullmatch(target):  # never a path into or out of the state folder
            raise ConfigError(
                "command line",
                [_problem("PLAN-ID", f"{target!r} is not a plan id (plan-<12 hex digits>)")],
            )
        if shared is not None:
            if target not in {s.plan.id for s in shared.plans(time.time).list()}:
                print(f"no recommended plan {target!r} in the shared state", file=sys.stderr)
                return 1
        else:
            plan_file = config.state_dir / "plans" / f"{target}.json"
            if not plan_file.exists():
                print(f"no recommended plan {target!r} in {plan_file.parent}", file=sys.stderr)
                return 1
        result = controls.approve(target)
    print(json.dumps(result.model_dump(mode="json"), sort_keys=True))
    return 0


def _shared_state(config: ControllerConfig) -> SharedState | None:
    """The shared state the controller file names (``state: {kind: rados}``), else None."""
    if config.state.kind != "rados":
        return None
    from autoscaler.runtime.runner import ceph_handle
    from autoscaler.runtime.shared_state import open_shared_state

    return open_shared_state(config, ceph_handle(config))


def _business_names(folder: Path) -> set[str]:
    from policies.loader import load_policy_dir

    return set(load_policy_dir(folder))


def cmd_plans(args: argparse.Namespace) -> int:
    from autoscaler.config import load_controller_config
    from autoscaler.model import Plan

    config = load_controller_config(args.config)
    shared = _shared_state(config)
    if shared is not None:
        for stored in shared.plans(time.time).list():
            plan = stored.plan
            print(
                f"{plan.id}  {'done' if stored.taken else 'pending'}  {len(plan.actions)} action(s)"
            )
            for action in plan.actions:
                print(f"    {action.kind:20s} {action.vm:16s} {action.reason}")
        return 0
    folder = config.state_dir / "plans"
    for path in sorted(folder.glob("plan-*.json")) if folder.exists() else []:
        plan = Plan.from_json(path.read_text())
        status = "done" if path.with_suffix(".done").exists() else "pending"
        print(f"{plan.id}  {status}  {len(plan.actions)} action(s)")
        for action in plan.actions:
            print(f"    {action.kind:20s} {action.vm:16s} {action.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoscaler", description="Autoscaling and SLA controller for libvirt/KVM clouds"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check business policy and controller files")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--image-dir", type=Path, help="image folder the templates must be in")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of policy (or controller) files")
    p.add_argument("--controller", action="store_true", help="the controller file's schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("fleet", help="discover the fleet through libvirt and print it")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.add_argument("--json", action="store_true", help="print the Snapshot as JSON")
    p.add_argument("--snapshot-out", type=Path, help="also write the Snapshot JSON here")
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("run", help="run the controller until SIGTERM")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.add_argument("--dry-run", action="store_true", help="decide and export plans, act on nothing")
    p.add_argument("--holder", help="name in the leader lease (default: hostname:pid)")
    p.add_argument("--listen", help="address:port of /metrics and /healthz (default: config)")
    p.set_defaults(func=cmd_run)

    for name, what in (
        ("pause", "stop acting for a business (or all)"),
        ("resume", "act again for a business (or all)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("target", nargs="?", metavar="BUSINESS")
        p.add_argument("--config", type=Path, required=True)
        p.set_defaults(func=cmd_control)
    for name, what in (
        ("cordon", "place nothing new on a host"),
        ("uncordon", "make a host usable again (ends a drain)"),
        ("drain", "cordon a host and live-migrate its VMs away"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("target", metavar="HOST")
        p.add_argument("--config", type=Path, required=True)
        p.set_defaults(func=cmd_control)
    p = sub.add_parser("approve", help="approve a recommended plan")
    p.add_argument("target", metavar="PLAN-ID")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_control)
    p = sub.add_parser("plans", help="list recommended plans and their actions")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_plans)

    p = sub.add_parser("grafana", help="generate Prometheus rules and Grafana dashboards")
    p.add_argument("action", choices=["generate"])
    p.add_argument("--policies", type=Path, default=Path("examples/businesses"))
    p.add_argument("--out", type=Path, default=Path("grafana"))
    p.add_argument("--check", action="store_true", help="fail if the files differ")
    p.set_defaults(func=cmd_grafana)

    simulate.add_parser(sub)
    apply.add_parser(sub)
    state.add_parser(sub)
    images.add_parser(sub)
    backups.add_parser(sub)
    rollout.add_parser(sub)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and run one subcommand: an error the operator can fix is one clear message and
    exit 2, never a traceback."""
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
