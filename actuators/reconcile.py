"""Reconciliation on start: finish or undo what a crashed run left half-done.

Where it sits: called by the controller (and ``autoscaler apply``) before it executes anything,
and again between cycles while an entry waits for a host that could not be reached to settle it
(its step ``compensation-pending``: the entry stays unfinished until the host answers).
For every unfinished journal intent it reads the truth from libvirt and settles it: a half-made
clone is finished (or, when it cannot be, removed), an interrupted migration ends with the VM on
exactly one host, a retirement is carried through, a hot-add or snapshot is resumed (each of
these steps is idempotent). Then it sweeps the VMs the journal knows for leftovers: an overlay
with no domain on its host, an inactive definition on one host while the VM runs on another.

Reconciliation is fenced like execution: the reconciler holds the lease, each entry it takes
over is restamped with its generation (journalled, so the journal's highest generation keeps
growing), and the fence is checked before every side effect, the sweep's deletions included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import libvirt

from actuators.base import ActionContext, Fleet, StepHook, find_domain
from actuators.clone import CloneActuator
from actuators.config_drive import delete_drive_volume
from actuators.executor import DEFAULT_LIMITS, PENDING_STEP, ExecutorLimits, Registry, run_action
from actuators.migrate import settle
from actuators.snapshot import delete_snapshot_files
from actuators.volumes import delete_overlay, overlay_exists
from autoscaler.model import (
    AutoscalerError,
    CloneFromTemplate,
    DeposedLeader,
    Journal,
    JournalEntry,
    Lease,
    LiveMigrate,
    Phase,
    TemporaryError,
)


@dataclass(frozen=True)
class Reconciled:
    key: str
    outcome: str  # done | compensated | failed
    detail: str


def reconcile(
    fleet: Fleet,
    journal: Journal,
    *,
    lease: Lease,
    vms: Iterable[str] = (),
    limits: ExecutorLimits = DEFAULT_LIMITS,
    registry: Registry | None = None,
    on_step: StepHook | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Reconciled]:
    """Settle every unfinished intent, then sweep ``vms`` (plus those intents' VMs) for
    leftovers. Returns what was done, per journal key and per swept VM."""
    held = lease.held()
    if held is None:
        raise DeposedLeader("reconcile: this process does not hold the lease; refusing to act")
    out: list[Reconciled] = []
    swept = set(vms)
    for entry in journal.unfinished():
        swept.add(entry.action.vm)
        # Taken over under our generation: the old one no longer passes the fence.
        action = entry.action.model_copy(update={"lease_generation": held.generation})
        ours = entry.model_copy(update={"action": action})
        out.append(_settle_entry(ours, fleet, journal, lease, limits, registry, on_step, clock))
    for vm in sorted(swept):
        lease.fence(held.generation, f"sweep/{vm}")
        detail = sweep_vm(fleet, vm)
        if detail:
            out.append(Reconciled(key=f"sweep/{vm}", outcome="done", detail=detail))
    return out


def _settle_entry(
    entry: JournalEntry,
    fleet: Fleet,
    journal: Journal,
    lease: Lease,
    limits: ExecutorLimits,
    registry: Registry | None,
    on_step: StepHook | None,
    clock: Callable[[], float],
) -> Reconciled:
    action = entry.action
    ctx = ActionContext(fleet=fleet, deadline=time.monotonic() + limits.action_timeout_s)
    if isinstance(action, LiveMigrate):
        try:
            lease.fence(action.lease_generation, action.key)
            moved, detail = settle(
                ctx, action, job_wait_s=min(action.timeout_s, limits.action_timeout_s)
            )
        except DeposedLeader as exc:  # the entry is the new leader's now
            return Reconciled(action.key, "pending", str(exc))
        except TemporaryError as exc:  # a host down: settled by a later reconciliation
            journal.record_step(action.key, PENDING_STEP, clock())
            return Reconciled(action.key, "pending", str(exc))
        except AutoscalerError as exc:
            journal.record_outcome(action.key, Phase.FAILED, clock(), f"reconcile: {exc}")
            return Reconciled(action.key, "failed", str(exc))
        phase = Phase.DONE if moved else Phase.COMPENSATED
        journal.record_outcome(action.key, phase, clock(), f"reconciled: {detail}")
        return Reconciled(action.key, phase.value, detail)
    result = run_action(
        entry.plan_id,
        action,
        fleet,
        journal,
        lease=lease,
        limits=limits,
        registry=registry,
        on_step=on_step,
        clock=clock,
    )
    if result.status == "done":
        return Reconciled(action.key, "done", f"finished: {result.reason}")
    if "DeposedLeader" in result.reason:
        return Reconciled(action.key, "pending", result.reason)
    if isinstance(action, CloneFromTemplate) and not _finished(journal, action.key):
        # Could not be finished before its precondition even held: clean it up anyway.
        try:
            lease.fence(action.lease_generation, action.key)
            undone = CloneActuator().compensate(action, ctx)
        except DeposedLeader as exc:
            return Reconciled(action.key, "pending", str(exc))
        except TemporaryError as exc:  # its host down: settled by a later reconciliation
            journal.record_step(action.key, PENDING_STEP, clock())
            return Reconciled(action.key, "pending", str(exc))
        except AutoscalerError as exc:
            journal.record_outcome(action.key, Phase.FAILED, clock(), f"reconcile: {exc}")
            return Reconciled(action.key, "failed", str(exc))
        journal.record_outcome(action.key, Phase.COMPENSATED, clock(), f"reconciled: {undone}")
        return Reconciled(action.key, "compensated", undone)
    entry_now = journal.get(action.key)
    outcome = entry_now.phase.value if entry_now is not None else "failed"
    return Reconciled(action.key, outcome, result.reason)


def _finished(journal: Journal, key: str) -> bool:
    entry = journal.get(key)
    return entry is not None and entry.phase.finished


def sweep_vm(fleet: Fleet, vm: str) -> str:
    """Remove ``vm``'s leftovers: overlays, config drives and snapshot files on hosts where it
    is not defined, inactive definitions where it runs elsewhere. Unreachable hosts are left
    for next time."""
    states: dict[str, str | None] = {}
    for host in fleet.hosts:
        try:
            with fleet.connection(host) as conn:
                dom = find_domain(conn, vm)
                states[host] = None if dom is None else ("active" if dom.isActive() else "defined")
        except TemporaryError:
            continue
    runs_somewhere = any(s == "active" for s in states.values())
    done: list[str] = []
    for host, found in states.items():
        state = found
        with fleet.connection(host) as conn:
            if state == "defined" and runs_somewhere:
                dom = find_domain(conn, vm)
                if dom is not None and not dom.isActive():
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                        done.append(f"stale definition undefined on {host}")
                    state = None
            if state is None:
                if overlay_exists(conn, vm) and delete_overlay(conn, vm):
                    done.append(f"orphan overlay deleted on {host}")
                if delete_drive_volume(conn, vm):
                    done.append(f"orphan config drive deleted on {host}")
                removed = delete_snapshot_files(conn, vm)
                if removed:
                    done.append(f"{removed} orphan snapshot file(s) deleted on {host}")
    return "; ".join(done)
