"""``autoscaler rollout BUSINESS``: start, pause, resume, undo and follow a rollout.

Where it sits: an operator's command. It changes only the controls (``Controls.rollouts``, in
the state folder or the shared RADOS state, like ``pause`` and ``drain``): the leading
controller replaces the instances, one at a time (``policies.rollout``), so the rollout goes on
across controller restarts and works while no controller runs. The progress shown is the
fleet's, discovered through libvirt: how many instances run the target version.

- ``rollout BUSINESS --to V``: every instance to version V (clones of the business, scale-outs
  included, are of V from now on);
- ``rollout BUSINESS``: back to the policy's ``template.version`` (the operator's override is
  dropped), for a rollout driven by a changed policy;
- ``--pause`` / ``--resume``: hold or go on (the business's other actions are not held);
- ``--undo``: back to the version before, by the same path;
- ``--watch``: a progress bar until every instance runs the target (or ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoscaler.cli.images import business_policy
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import Controls, Snapshot, check_name
from autoscaler.model.controls import Rollout
from autoscaler.runtime.controls import ControlFile, ControlsEditor
from autoscaler.runtime.discovery import discover
from policies.loader import load_policy_dir
from policies.rollout import out_of_date, target_version
from policies.schema import BusinessPolicy


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("rollout", help="roll a business's instances to a template version")
    p.add_argument("business")
    p.add_argument("--to", metavar="VERSION", help="the version (default: the policy's)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--pause", action="store_true", help="hold the rollout")
    what.add_argument("--resume", action="store_true", help="go on with a held rollout")
    what.add_argument("--undo", action="store_true", help="back to the version before")
    what.add_argument("--status", action="store_true", help="only show where it is")
    p.add_argument("--watch", action="store_true", help="follow it with a progress bar")
    p.add_argument("--timeout", type=float, default=1800.0, help="--watch: give up after (s)")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.set_defaults(func=run_rollout)


def _editor(config: ControllerConfig) -> ControlsEditor:
    """Where the controls are kept: the shared RADOS state, else the state folder."""
    from autoscaler.runtime.runner import ceph_handle
    from autoscaler.runtime.shared_state import open_shared_state

    if config.state.kind != "rados":
        return ControlFile(config.state_dir)
    shared = open_shared_state(config, ceph_handle(config))
    return shared.controls if shared is not None else ControlFile(config.state_dir)


def _changed(
    controls: Controls, policy: BusinessPolicy, args: argparse.Namespace
) -> Controls | str:
    """The controls after the operator's change, or why it cannot be made."""
    name = policy.business
    rollouts = dict(controls.rollouts)
    current = rollouts.get(name)
    now_target = target_version(policy, controls)
    if args.pause or args.resume:
        if current is None:
            return (
                f"{name} has no rollout started with --to to {'pause' if args.pause else 'resume'}"
            )
        rollouts[name] = current.model_copy(update={"paused": bool(args.pause)})
    elif args.undo:
        if current is None or current.previous is None:
            return f"{name}: no rollout to undo"
        back = current.previous
        if back == policy.template.version:
            rollouts.pop(name)
        else:
            rollouts[name] = Rollout(to=back, previous=current.to)
    elif args.to is not None:
        version = check_name(args.to, what="version")
        rollouts[name] = Rollout(to=version, previous=now_target)
    else:
        rollouts.pop(name, None)  # back to the policy's template.version
    return controls.model_copy(update={"rollouts": rollouts})


def _progress(snapshot: Snapshot, business: str, target: str | None) -> tuple[int, int, int]:
    """(instances at the target and ready, instances in all, out of date)."""
    vms = [v for v in snapshot.vms if v.business == business and v.state.value == "running"]
    at = sum(1 for v in vms if v.version == target and v.ready)
    old = sum(1 for v in vms if out_of_date(v, target))
    return at, len(vms), old


def run_rollout(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    business = check_name(args.business, what="business")
    policies = load_policy_dir(config.policy_dir)
    policy = business_policy(config, policies, business)
    if policy is None:
        return 2
    editor = _editor(config)
    if not args.status:
        problem: list[str] = []

        def edit(controls: Controls) -> Controls:
            result = _changed(controls, policy, args)
            if isinstance(result, str):
                problem.append(result)
                return controls
            return result

        controls = editor.update(edit)
        if problem:
            print(problem[0], file=sys.stderr)
            return 1
    else:
        controls = editor.read()
    target = target_version(policy, controls)
    rollout = controls.rollouts.get(business)
    at, total, old = _progress(discover(config, policies), business, target)
    state = "paused" if rollout is not None and rollout.paused else "running"
    if old == 0:
        state = "done"
    print(
        json.dumps(
            {
                "business": business,
                "to": target,
                "previous": rollout.previous if rollout is not None else None,
                "state": state,
                "at_target": at,
                "instances": total,
                "out_of_date": old,
            },
            sort_keys=True,
        )
    )
    if not args.watch or state == "done":
        return 0
    return _watch(config, policies, business, target, args.timeout)


def _watch(
    config: ControllerConfig,
    policies: dict[str, BusinessPolicy],
    business: str,
    target: str | None,
    timeout_s: float,
) -> int:
    deadline = time.monotonic() + timeout_s
    columns = (
        TextColumn(f"{business} -> {target}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("rollout", total=None)
        while time.monotonic() < deadline:
            at, total, old = _progress(discover(config, policies), business, target)
            bar.update(task, completed=at, total=max(total, at))
            if old == 0 and at > 0:
                return 0
            time.sleep(2.0)
    print(f"{business}: rollout to {target} not finished within {timeout_s:g} s", file=sys.stderr)
    return 1
