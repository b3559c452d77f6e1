"""Scheduled backups: which VMs of a business are due for a backup now, and which to prune.

Where it sits: a step of ``decide()`` after scaling and drains (scaling has priority: a backup
takes only what the plan left). Pure: the Snapshot's backup catalogues
(``autoscaler.model.backups``), the business's ``backup:`` policy and ``now`` are the inputs.

A VM is due when the latest slot of its business's schedule (``at + k * every`` since the
epoch, UTC) is later than its last successful backup; a VM the target holds no backup of is due
at once. A due VM is backed up only when all of these hold, else the reason is said:

- the business's backups were listed in this snapshot: an unknown catalogue (no listing, or a
  failed one) plans nothing, so a broken listing never turns into a backup of every VM;
- that listing is newer than the business's last executed action (an older one may not show
  the backup that action took, and the same slot would be planned again);
- not in the business's maintenance window (nothing disruptive: a backup freezes and snapshots
  the disk and loads the storage);
- the VM is owned, ready, running and measured freshly on a reachable host; it is not being
  retired, migrated, or moved off a host an operator drains, and has no other action in this
  plan;
- its last attempt did not fail within ``RETRY_AFTER_S`` (a failing backup is retried, but
  does not hold the business's other VMs back or fail every cycle);
- the business has more than ``scaling.max_actions_per_hour // 2`` actions left this hour: the
  other half stays for scaling (backups count against the cap like any other action).

At most ``BACKUPS_PER_CYCLE`` backups per business are planned per cycle, the VMs that waited
longest first, so a business of a hundred VMs is backed up one after another, not at once.
Keeping ``keep`` backups is the actuator's work; ``backups_to_prune`` says which to remove.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from autoscaler.model import VM, BackupCatalogue, BackupInstance, Scope, Snapshot, VmState
from policies.scaling import Budget
from policies.schema import Backup, BusinessPolicy, FolderTarget

BACKUPS_PER_CYCLE = 1
"""Backups planned per business per cycle: one VM after another, never the whole business."""
RETRY_AFTER_S = 900.0
"""After a failed attempt, a VM waits this long before the next (the executor has already
retried its temporary errors within the attempt)."""
BACKUP_ID_RE = re.compile(r"b\d{8}t\d{4}")
"""The ids of scheduled backups (``backup_id``): only these are ever pruned."""


def latest_slot(backup: Backup, now: float) -> float:
    """The latest start of the schedule at or before ``now`` (seconds since the epoch)."""
    phase = backup.phase_s
    return phase + math.floor((now - phase) / backup.every) * backup.every


def backup_id(slot: float) -> str:
    """The id of the backup of ``slot``: ``b`` + its UTC date and time (``b20261201t0300``).
    A valid Name (lowercase letters and digits), and ids sort by slot. ``every`` is at least
    an hour, so two slots never share a minute."""
    return "b" + datetime.fromtimestamp(slot, tz=UTC).strftime("%Y%m%dt%H%M")


def backups_to_prune(existing_ids_sorted: Sequence[str], keep: int) -> list[str]:
    """The scheduled backups to remove so that the newest ``keep`` remain, oldest first.

    Ids that are not a schedule's (``BACKUP_ID_RE``: one an operator named) are never pruned
    nor counted. The ids are sorted again (they sort by slot), so a caller's order cannot make
    the newest go."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    scheduled = sorted(i for i in existing_ids_sorted if BACKUP_ID_RE.fullmatch(i))
    return scheduled[:-keep] if len(scheduled) > keep else []


@dataclass(frozen=True)
class DueVm:
    vm: VM
    last_success_at: float | None
    last_failure_at: float | None


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration_text(seconds: float) -> str:
    """``86400`` -> ``1d``, ``5400`` -> ``90m``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _target_text(backup: Backup) -> str:
    target = backup.target
    return f"folder {target.path}" if isinstance(target, FolderTarget) else f"pool {target.pool}"


def due_vms(
    snapshot: Snapshot, business: str, catalogue: BackupCatalogue, slot: float
) -> list[DueVm]:
    """The business's VMs (in any state) whose last success is older than ``slot``, the
    longest waiting first (never backed up before the oldest backup), then by name."""
    due: list[DueVm] = []
    for vm in snapshot.vms_by_business.get(business, []):
        record = catalogue.record(vm.name)
        last = record.last_success_at if record is not None else None
        if last is None or last < slot:
            failed = record.last_failure_at if record is not None else None
            due.append(DueVm(vm, last, failed))
    return sorted(due, key=_waited_longest)


def _waited_longest(due: DueVm) -> tuple[float, str]:
    last = due.last_success_at
    return (-math.inf if last is None else last, due.vm.name)


def _why_not(
    vm: VM,
    snapshot: Snapshot,
    busy: Collection[str],
    draining_hosts: Collection[str],
) -> str | None:
    """Why this due VM cannot be backed up now (None: it can)."""
    host = snapshot.host_by_name[vm.host]
    if not vm.owned:
        return "no ownership stamp"
    if vm.state is not VmState.RUNNING:
        return f"{vm.state.value}"  # migrating, paused, shut off: not now
    if vm.draining:
        return "being retired"
    if not vm.ready:
        return "not ready"
    if vm.name in busy:
        return "another action in this plan"
    if vm.host in draining_hosts:
        return f"its host {vm.host} is drained"
    if not host.reachable or snapshot.is_stale(Scope.HOST, vm.host):
        return f"its host {vm.host} is not observed"
    if snapshot.is_stale(Scope.VM, vm.name):
        return "not observed"
    return None


def plan_backups(
    snapshot: Snapshot,
    policy: BusinessPolicy,
    budget: Budget,
    now: float,
    *,
    busy: Collection[str] = (),
    draining_hosts: Collection[str] = (),
    last_acted_at: float | None = None,
) -> tuple[list[BackupInstance], list[str]]:
    """(backups to take now, why due VMs wait) for one business (see the module's rules).

    ``busy``: VMs with another action in the plan; ``draining_hosts``: hosts an operator
    drains; ``last_acted_at``: when the business's last executed action was done.
    """
    backup = policy.backup
    if backup is None:
        return [], []
    if not policy.template.on_rbd:  # the loader refuses such a file; a built policy may not
        return [], ["backups: the template's disks are not on RBD: nothing to back up"]
    name = policy.business
    catalogue = snapshot.backups_by_business.get(name)
    if catalogue is None:
        return [], [
            "backups: the backup target was not listed in this snapshot (unknown, not 'none'):"
            " no backup planned"
        ]
    slot = latest_slot(backup, now)
    due = due_vms(snapshot, name, catalogue, slot)
    if not due:
        return [], []
    waiting = f"backups: {len(due)} VM(s) due for the slot of {_utc(slot)} wait"
    if policy.in_maintenance(now):
        return [], [f"{waiting}: in a maintenance window"]
    if last_acted_at is not None and catalogue.listed_at < last_acted_at:
        return [], [
            f"{waiting}: the target was listed at {_utc(catalogue.listed_at)}, before the"
            " business's last action: waiting for a newer listing"
        ]
    reserve = policy.scaling.max_actions_per_hour // 2
    actions: list[BackupInstance] = []
    held: list[str] = []
    for item in due:
        vm = item.vm
        failed = item.last_failure_at
        if (
            failed is not None
            and (item.last_success_at is None or failed > item.last_success_at)
            and now - failed < RETRY_AFTER_S
        ):
            retry = duration_text(RETRY_AFTER_S)
            held.append(f"{vm.name}: failed at {_utc(failed)}, tried again {retry} after")
            continue
        why = _why_not(vm, snapshot, busy, draining_hosts)
        if why is not None:
            held.append(f"{vm.name}: {why}")
            continue
        if len(actions) >= BACKUPS_PER_CYCLE:
            held.append(f"{vm.name}: {BACKUPS_PER_CYCLE} backup(s) per cycle")
            continue
        if budget.left <= reserve:
            held.append(
                f"{vm.name}: {max(0, budget.left)} action(s) left this hour, {reserve} kept"
                " for scaling"
            )
            continue
        budget.left -= 1
        actions.append(_backup(policy, backup, vm, item.last_success_at, slot, len(due)))
    if held:
        shown = "; ".join(held[:3]) + (f"; and {len(held) - 3} more" if len(held) > 3 else "")
        return actions, [f"{waiting if not actions else 'backups: more VM(s) wait'}: {shown}"]
    return actions, []


def _backup(
    policy: BusinessPolicy,
    backup: Backup,
    vm: VM,
    last_success_at: float | None,
    slot: float,
    due: int,
) -> BackupInstance:
    last = "never backed up" if last_success_at is None else f"last at {_utc(last_success_at)}"
    target = backup.target
    facts: dict[str, str | int | float | bool] = {
        "slot": slot,
        "slot_utc": _utc(slot),
        "every_s": backup.every,
        "keep": backup.keep,
        "target_kind": target.kind,
        "target": target.path if isinstance(target, FolderTarget) else target.pool,
        "due_vms": due,
    }
    if last_success_at is not None:
        facts["last_backup_at"] = last_success_at
    return BackupInstance(
        business=policy.business,
        vm=vm.name,
        host=vm.host,
        backup_id=backup_id(slot),
        reason=f"{policy.business}: back up {vm.name} to {_target_text(backup)} for the slot of"
        f" {_utc(slot)} ({last}; every {duration_text(backup.every)}, keep {backup.keep})",
        facts=facts,
    )
