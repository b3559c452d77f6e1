"""``python -m lab``: the lab's own command line, outside the product.

Where it sits: the entry point of the test lab (never shipped in the wheel, never imported by
the product). ``up``/``status``/``down``/``demand`` run a lab of real libvirt hosts in network
namespaces; ``demo`` runs the closed loop on one: a hot-add, a rollout, a scale-out, a rack fault.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from autoscaler.cli.main import dispatch


def cmd_lab(args: argparse.Namespace) -> int:
    from lab import lab
    from lab.spec import load_lab_spec

    root: Path = args.root
    if args.command == "up":
        components = [c for c in lab.COMPONENTS if c not in set(args.without)]
        opened = lab.up(
            root,
            load_lab_spec(args.spec),
            slot=args.slot,
            start_vms=not args.no_vms,
            components=components,
        )
        print(f"lab up: slot {opened.layout.slot}, {len(opened.state.hosts)} hosts")
        print(f"controller file: {opened.controller_file}")
        return 0
    if args.command == "down":
        lab.down(root, purge=args.purge)
        print("lab down: nothing of it remains")
        return 0
    if args.command == "demand":
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


def cmd_demo(args: argparse.Namespace) -> int:
    from lab import demo

    return demo.run(
        args.root,
        keep=args.keep,
        load_s=args.load_s,
        fault_s=args.fault_s,
        vertical_s=args.vertical_s,
        scale_s=args.scale_s,
        rollout_s=args.rollout_s,
        storage=args.storage,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description="the local test lab")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (
        ("up", "start the lab (idempotent) and write its controller file"),
        ("status", "which lab hosts answer, and their domains"),
        ("down", "take the lab down; nothing of it remains"),
        ("demand", "set each business's demand (cores)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--root", type=Path, default=Path(".lab/default"), help="the lab's folder")
        p.set_defaults(func=cmd_lab)
        if name == "up":
            p.add_argument("--slot", type=int, help="claim this slot (default: first free one)")
            p.add_argument("--spec", type=Path, help="lab layout file (default: the seed's)")
            p.add_argument("--no-vms", action="store_true", help="do not start the first VMs")
            p.add_argument(
                "--without",
                nargs="*",
                default=[],
                choices=["prometheus", "temperature", "ceph", "dpdk", "ovs"],
                help="leave these lab parts out",
            )
        if name == "down":
            p.add_argument("--purge", action="store_true", help="also remove the guest cache")
        if name == "demand":
            p.add_argument("--set", nargs="*", default=[], metavar="BUSINESS=CORES")

    p = sub.add_parser(
        "demo", help="the closed loop on the lab: hot-add, clones, a rack fault, a rollout"
    )
    p.add_argument("--root", type=Path, default=Path(".lab/demo"))
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--load-s", type=float, default=150, help="seconds of replayed load")
    p.add_argument("--fault-s", type=float, default=150, help="seconds allowed to evacuate")
    p.add_argument(
        "--vertical-s", type=float, default=90, help="seconds allowed for the vCPU hot-add phase"
    )
    p.add_argument(
        "--scale-s", type=float, default=150, help="seconds allowed for web's scale-out phase"
    )
    p.add_argument(
        "--rollout-s", type=float, default=300, help="seconds allowed for web's rollout to v2"
    )
    p.add_argument(
        "--storage",
        choices=["local", "rbd"],
        default="local",
        help="VM disks as local qcow2 overlays, or RBD clones on the lab's Ceph",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
