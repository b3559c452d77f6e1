"""``autoscaler``: the command line.

Where it sits: the front door. Subcommands: ``validate`` and ``schema`` for the files operators
write, ``fleet`` to discover and print the fleet through libvirt (optionally writing the
Snapshot as JSON), ``lab`` to run the local lab, and the later stages' commands as they land.
Errors an operator can fix are printed as one clear message and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from autoscaler.model import ConfigError, ConfigProblem


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
                load_policy_dir(config.policy_dir, images=images)
                print(f"{path}: ok (controller; {len(config.inventory.hosts())} hosts)")
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
    from autoscaler.config import load_controller_config
    from autoscaler.discovery import discover
    from autoscaler.fleet_view import print_fleet
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


def cmd_lab(args: argparse.Namespace) -> int:
    from autoscaler.lab import lab
    from autoscaler.lab.spec import load_lab_spec

    root: Path = args.root
    if args.lab_command == "up":
        opened = lab.up(root, load_lab_spec(args.spec), slot=args.slot, start_vms=not args.no_vms)
        print(f"lab up: slot {opened.layout.slot}, {len(opened.state.hosts)} hosts")
        print(f"controller file: {opened.controller_file}")
        return 0
    if args.lab_command == "down":
        lab.down(root, purge=args.purge)
        print("lab down: nothing of it remains")
        return 0
    if args.lab_command == "demand":
        existing = lab.open_lab(root)
        if existing is None:
            print(f"no lab at {root}", file=sys.stderr)
            return 1
        demand: dict[str, dict[str, object]] = {}
        for item in args.set:
            business, _, cores = item.partition("=")
            demand[business] = {"cores": float(cores)}
        lab.set_demand(existing, demand)
        return 0
    existing = lab.open_lab(root)
    if existing is None:
        print(f"no lab at {root}")
        return 1
    st = lab.status(existing)
    print(f"lab slot {st.slot} at {root}")
    for host, answered in st.hosts.items():
        doms = ", ".join(st.domains.get(host, [])) or "-"
        print(f"  {host:12s} {'answers' if answered else 'DOES NOT ANSWER'}  {doms}")
    return 0 if all(st.hosts.values()) else 1


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

    p = sub.add_parser("lab", help="the local lab of real libvirt hosts")
    p.add_argument("lab_command", choices=["up", "status", "down", "demand"])
    p.add_argument("--root", type=Path, default=Path(".lab/default"), help="the lab's folder")
    p.add_argument("--slot", type=int, help="claim this slot (default: the first free one)")
    p.add_argument("--spec", type=Path, help="lab layout file (default: the seed's layout)")
    p.add_argument("--no-vms", action="store_true", help="do not start the first VMs")
    p.add_argument("--purge", action="store_true", help="down: also remove the guest cache")
    p.add_argument("--set", nargs="*", default=[], metavar="BUSINESS=CORES", help="demand")
    p.set_defaults(func=cmd_lab)

    if importlib.util.find_spec("autoscaler.simulate_cli") is not None:
        importlib.import_module("autoscaler.simulate_cli").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
