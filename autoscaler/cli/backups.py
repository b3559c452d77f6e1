"""``autoscaler backups BUSINESS`` and ``autoscaler restore VM --backup ID [--as NEW]``.

Where it sits: operators' commands beside ``apply``. ``backups`` lists what the business's
backup target holds (the same layout the backup actuator writes and its collector reads).
``restore`` brings one backup back as a new VM, never over an existing one: the backup is
written into a new RBD image in the business's template pool, stamped as the new VM's, then the
clone actuator defines and starts it on the host given (or the first host of the inventory
that answers), through the executor and the journal, as the holder of the lease, exactly like
``autoscaler apply``. A restore interrupted midway is finished by running it again.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actuators.backup import find_backup, folder_backups, pool_backups, restore_image
from actuators.base import Fleet, find_domain
from autoscaler.cli.apply import _common, run_as_holder
from autoscaler.config import load_controller_config
from autoscaler.model import (
    CloneFromTemplate,
    ConfigError,
    ConfigProblem,
    Plan,
    RbdStorage,
    TemporaryError,
    check_name,
)
from autoscaler.runtime.collection import backup_targets
from autoscaler.runtime.wiring import rbd_store
from policies.loader import load_policy_dir


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("backups", help="list a business's backups")
    p.add_argument("business")
    p.add_argument("--config", type=Path, required=True, help="controller file")
    p.set_defaults(func=run_list)
    p = subparsers.add_parser("restore", help="bring a backup back as a new VM")
    p.add_argument("vm", help="the VM the backup was taken of")
    p.add_argument("--backup", required=True, help="the backup's id (autoscaler backups)")
    p.add_argument("--as", dest="new_name", help="the new VM's name (default: the VM's own)")
    p.add_argument("--business", help="the VM's business (default: found from the backups)")
    p.add_argument("--host", help="where the new VM runs (default: the first that answers)")
    _common(p)
    p.set_defaults(func=run_restore)


def _problem(field: str, message: str) -> ConfigError:
    return ConfigError("restore", [ConfigProblem(line=None, field=field, message=message)])


def run_list(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    business = check_name(args.business, what="business")
    targets = backup_targets(load_policy_dir(config.policy_dir))
    if business not in targets:
        print(f"{business} has no backup section in its policy", file=sys.stderr)
        return 2
    kind, where = targets[business]
    store = rbd_store(config)
    if kind == "pool" and store is None:
        print(f"{args.config}: no ceph section: the pool cannot be read", file=sys.stderr)
        return 2
    found = (
        pool_backups(store, where, business)
        if kind == "pool" and store is not None
        else folder_backups(Path(where), business)
    )
    table = Table(title=f"backups of {business} ({kind} {where})")
    for column in ("vm", "backup", "taken (UTC)", "consistency", "where"):
        table.add_column(column)
    for b in found:
        taken = datetime.fromtimestamp(b.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(b.vm, b.backup_id, taken, b.consistency, b.location)
    Console().print(table)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    policies = load_policy_dir(config.policy_dir)
    vm = check_name(args.vm, what="vm")
    new_vm = check_name(args.new_name or vm, what="new vm name")
    store = rbd_store(config)
    if store is None:
        raise _problem("ceph", "restore needs the controller file's ceph section")
    targets = backup_targets(policies)
    candidates = [args.business] if args.business else sorted(targets)
    for business in candidates:
        if business not in targets:
            raise _problem("business", f"{business} has no backup section in its policy")
        backup = find_backup(store, targets[business], business, vm, args.backup)
        if backup is not None:
            break
    else:
        raise _problem("backup", f"no backup {args.backup} of {vm} at any business's target")
    storage = policies[business].template.storage
    if not isinstance(storage, RbdStorage):
        raise _problem("business", f"{business}'s template is not on RBD: nowhere to restore to")

    def plan_for(fleet: Fleet) -> Plan:
        host = args.host or _first_answering(fleet)
        for other in fleet.hosts:
            try:
                with fleet.connection(other) as conn:
                    if find_domain(conn, new_vm) is not None:
                        raise _problem(
                            "as", f"{new_vm} exists on {other}: restore never overwrites"
                        )
            except TemporaryError:
                continue
        keys = fleet.keys
        if keys is None:
            raise _problem("ownership", "no fleet key: the restored VM could not be proven ours")
        created = f"{time.time():.3f}"
        restore_image(
            store,
            backup,
            targets[business][0],
            storage.pool,
            new_vm,
            created,
            keys.stamp(new_vm, business, created),
        )
        action = CloneFromTemplate(
            business=business,
            vm=new_vm,
            host=host,
            reason=f"restore of {vm}'s backup {args.backup} ({backup.consistency}) as {new_vm}",
            facts={"backup": backup.location, "consistency": backup.consistency},
        )
        return Plan.build([action], created_at=time.time())

    return run_as_holder(args, plan_for)


def _first_answering(fleet: Fleet) -> str:
    for host in fleet.hosts:
        try:
            with fleet.connection(host):
                return host
        except TemporaryError:
            continue
    raise _problem("host", "no host of the inventory answers")
