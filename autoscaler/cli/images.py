"""``autoscaler images push | list``: a business's template versions on RBD.

Where it sits: an operator's command, run when a business gets a new image. ``push BUSINESS
FILE`` imports FILE (qcow2 or raw, anything ``qemu-img`` reads) into the business's template
image in the pool its policy names (``template.storage: {kind: rbd, pool}``), then makes and
protects the version snapshot that clones are made from, and prints the version; the policy's
``template.version`` then chooses it. A version is never overwritten. ``list BUSINESS`` shows
the versions. The operator never needs the ``rbd`` CLI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from actuators.template_import import raw_copy, write_raw
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import PermanentError, RbdStorage, TemporaryError, check_name
from autoscaler.runtime.wiring import rbd_store
from policies.loader import load_policy_dir
from policies.schema import BusinessPolicy

VERSION_RE = re.compile(r"\Av(\d+)\Z")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("images", help="template versions of a business on RBD")
    p.add_argument("action", choices=["push", "list"])
    p.add_argument("business")
    p.add_argument("file", nargs="?", type=Path, help="push: the template image (qcow2 or raw)")
    p.add_argument("--version", help="push: the version's name (default: the next vN)")
    p.add_argument("--config", type=Path, required=True, help="controller file (with ceph)")
    p.set_defaults(func=run_images)


def next_version(existing: list[str]) -> str:
    """``v1`` for the first version, else one above the highest ``vN``."""
    numbers = [int(m.group(1)) for v in existing if (m := VERSION_RE.match(v))]
    return f"v{max(numbers, default=0) + 1}"


def business_policy(
    config: ControllerConfig, policies: Mapping[str, BusinessPolicy], business: str
) -> BusinessPolicy | None:
    """The policy of ``business``, or None (said on stderr) when the policy folder has none."""
    policy = policies.get(business)
    if policy is None:
        print(f"no policy for business {business!r} in {config.policy_dir}", file=sys.stderr)
    return policy


def run_images(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    business = check_name(args.business, what="business")
    policies = load_policy_dir(config.policy_dir)
    policy = business_policy(config, policies, business)
    if policy is None:
        return 2
    storage = policy.template.storage
    if not isinstance(storage, RbdStorage):
        print(
            f"{business}: template.storage is local; set {{kind: rbd, pool: POOL}} to keep its"
            " template on RBD",
            file=sys.stderr,
        )
        return 2
    store = rbd_store(config)
    if store is None:
        print(f"{args.config}: no ceph section: RBD cannot be reached", file=sys.stderr)
        return 2
    template = policy.template.image
    try:
        versions = store.template_versions(storage.pool, template)
        if args.action == "list":
            for v in versions:
                mark = " (the policy's)" if v.name == policy.template.version else ""
                print(f"{storage.pool}/{template}@{v.name}{mark}")
            return 0
        if args.file is None:
            print("push needs the template FILE", file=sys.stderr)
            return 2
        version = check_name(args.version or next_version([v.name for v in versions]), what="v")
        with tempfile.TemporaryDirectory(prefix="autoscaler-push-") as tmp:
            raw, size = raw_copy(args.file, Path(tmp))
            store.push_template(storage.pool, template, version, size, write_raw(raw))
    except (PermanentError, TemporaryError, ValueError, subprocess.SubprocessError) as exc:
        print(f"images {args.action} {business}: {exc}", file=sys.stderr)
        return 1
    print(f"{storage.pool}/{template}@{version}")
    if policy.template.version != version:
        print(f"set template.version: {version} in {business}'s policy to clone from it")
    return 0
