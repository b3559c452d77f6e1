"""The controller SIGKILLed in the middle of a clone it decided itself, then restarted.

Where it sits: the reliability suite on the real lab (issue 7). Unlike
``test_actuators_crash`` (which kills ``autoscaler apply`` running a hand-written plan), here the
unattended controller (``autoscaler run``, auto mode) decides a scale-out under real guest load
and is killed at the deterministic crash point ``clone_from_template:started``
(``AUTOSCALER_CRASH_AT``: it SIGKILLs itself right after the step is journalled). Restarted, it
must take the lease, reconcile the journal, and leave every VM on exactly one host, no overlay
without its domain, no domain without its overlay, and a journal that tells what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from autoscaler.model import HotAddVcpu, Phase
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import CRASH_ENV, JOURNAL_FILE
from lab import ceph
from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from policies.loader import load_policy_dir
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import (
    controller_file,
    guest_after_migration,
    healthz,
    restore_lab,
    stop,
    tune_web,
    with_fault_hooks,
)
from tests.integration.test_faults_ceph import (
    cluster,
    hosts_of,
    rack_of,
    restart_osds,
    wait_off_rack,
)
from tests.integration.test_faults_hosts import events, metrics, orphans, placements
from tests.integration.test_faults_libvirtd import (
    MIGRATION_MIB_S,
    evacuation_under_way,
    final_entry,
    finished,
    with_executor,
)
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["orphans", "restore_lab"]  # orphans: for the other fault tests
ROOT = Path(__file__).resolve().parents[2]


def run_controller(
    config: Path, port: int, log: Path, crash_at: str | None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "autoscaler.cli", "run", "--config", str(config)),
            *("--listen", f"127.0.0.1:{port}", "--holder", "crash"),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )


def reconciling(log: Path, since: float) -> Callable[[], bool]:
    """Whether the controller logging to ``log`` reconciled its journal after ``since``."""

    def seen() -> bool:
        return any(
            e.get("event") == "reconciled the journal" and float(str(e.get("at", 0))) >= since
            for e in events(log)
        )

    return seen


def healthy_within_a_cycle(port: int) -> None:
    """/healthz healthy, allowing the cycle that follows a reconciliation to finish (it waits
    for a view of the fleet collected after the settling)."""
    wait_for(lambda: healthz(port), lambda h: h.get("healthy") is True, timeout=15, what="healthy")


def restart_and_reconcile(config: Path, port: int, log: Path) -> None:
    """Start the controller again, wait until it has reconciled, and stop it cleanly."""
    restarted_at = time.time()
    second = run_controller(config, port, log, crash_at=None)
    try:
        wait_for(
            reconciling(log, restarted_at), bool, timeout=240, what="the controller reconciling"
        )
        healthy_within_a_cycle(port)
    finally:
        code = stop(second)
    assert code == 0, log.read_text()[-2000:]


@pytest.mark.timeout(420)
def test_the_controller_killed_during_a_clone_reconciles_on_restart_and_loses_nothing(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """The controller SIGKILLed right after journalling a clone's start (its own scale-out).

    Expect: restarted, it reconciles; the VM exists once, no orphaned overlay or definition,
    the journal shows the clone started then finished.
    """
    config = with_fault_hooks(controller_file(lab, tmp_path))
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    assert orphans(lab) == {}
    before = placements(lab)
    first = run_controller(config, port, log, crash_at="clone_from_template:started")
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="lead"
        )
        lab_mod.set_demand(lab, {"web": {"cores": 0.42}})
        wait_for(first.poll, lambda code: code is not None, timeout=240, what="the crash point")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
        left = [(e.key, e.step) for e in journal.unfinished()]
    # The scale-out may clone more than one VM at once: the crash point catches the first to
    # reach "started"; the others are caught wherever they were.
    assert left and all(k.startswith("clone_from_template/") for k, _ in left), left
    crashed = [k for k, step in left if step == "started"]
    assert crashed, left
    key = crashed[0]
    vm = key.split("/", 1)[1]
    interrupted = [k.split("/", 1)[1] for k, _ in left]
    lab_mod.set_demand(lab, {"web": {"cores": 0.05}})  # no new scale-out after the restart

    restart_and_reconcile(config, port, log)
    with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
        assert journal.unfinished() == []
        entry = journal.get(key)
        history = [(e.key, e.phase.value, e.step) for e in journal.history()]
    assert entry is not None and entry.phase is Phase.DONE, history
    after = placements(lab)
    for clone in interrupted:  # every interrupted clone finished or cleaned, never twice
        assert len(after.get(clone, [])) <= 1, after
    assert len(after.get(vm, [])) == 1, after  # the clone exists, exactly once
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    assert orphans(lab) == {}
    reconciled = [e for e in events(log) if e.get("event") == "reconciled" and e.get("key") == key]
    assert reconciled and reconciled[0].get("outcome") == "done", reconciled
    record(
        "fault",
        "controller SIGKILLed during a clone",
        injected=f"AUTOSCALER_CRASH_AT=clone_from_template:started: the controller killed itself "
        f"while cloning {vm} for a scale-out it decided",
        behaviour=f"restarted, took the lease and reconciled {key}: "
        f"{reconciled[0].get('detail')}; journal entry {entry.phase.value}",
        lost="nothing: the clone on exactly one host, no orphaned overlay or definition",
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["crash-point", "sigkill"])
def test_the_controller_killed_during_a_migration_reconciles_on_restart_and_loses_nothing(
    lab: Lab, tmp_path: Path, restore_lab: set[str], how: str
) -> None:
    """The controller killed while it live-migrates web-1 off a rack whose Ceph OSDs are down:
    at the crash point ``live_migrate:migrating``, or by a SIGKILL from outside once the
    journal says ``migrating``.

    Expect: restarted, it reconciles; web-1 runs on exactly one host, off the failing rack; no
    orphaned overlay or definition; the journal shows the migration settled.
    """
    # The crash point needs no time window: only the kill from outside gets a capped stream
    # (a long migration on TCG is what sometimes leaves the guest hung; see MIGRATION_MIB_S).
    cap = MIGRATION_MIB_S if how == "sigkill" else 0
    config = with_fault_hooks(
        with_executor(controller_file(lab, tmp_path), migration_bandwidth_mib_s=cap)
    )
    state = tmp_path / "state"
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    assert orphans(lab) == {}
    before = placements(lab)
    source = hosts_of(lab, "web-1")[0]
    rack = rack_of(lab, source)
    osds = cluster(lab).osds_by_rack[rack]
    first = run_controller(
        config, port, log, crash_at="live_migrate:migrating" if how == "crash-point" else None
    )
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="lead"
        )
        try:
            entry = evacuation_under_way(lab, state, osds)
            if how == "sigkill":
                first.send_signal(signal.SIGKILL)
            wait_for(first.poll, lambda code: code is not None, timeout=30, what="the kill")
            assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
            assert not finished(final_entry(state, entry.key))

            restarted_at = time.time()
            second = run_controller(config, port, log, crash_at=None)
            try:
                wait_for(
                    reconciling(log, restarted_at),
                    bool,
                    timeout=240,
                    what="the restarted controller reconciling",
                )
                wait_off_rack(lab, "web-1", rack)
                settled_after = time.time() - restarted_at
                healthy_within_a_cycle(port)
                restart_osds(lab, osds, port, rack)
            finally:
                code = stop(second)
            assert code == 0, log.read_text()[-2000:]
        finally:
            for osd in osds:  # already running again unless the test failed on the way
                ceph.start_osd(lab.layout, osd)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    with SqliteJournal(state / JOURNAL_FILE) as journal:
        assert journal.unfinished() == []
        settled = journal.get(entry.key)
    assert settled is not None and finished(settled)
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    assert orphans(lab) == {}
    reconciled = [
        e for e in events(log) if e.get("event") == "reconciled" and e.get("key") == entry.key
    ]
    assert reconciled, "the restarted controller did not settle the interrupted migration"
    record(
        "fault",
        "controller SIGKILLed during a migration"
        + (" (crash point)" if how == "crash-point" else " (from outside)"),
        injected=(
            "AUTOSCALER_CRASH_AT=live_migrate:migrating: the controller killed itself"
            if how == "crash-point"
            else "SIGKILL of the controller from outside"
        )
        + f" while web-1 was live-migrated off rack {rack} (its Ceph OSDs down"
        + (f", stream capped at {cap} MiB/s)" if cap else ")"),
        behaviour=f"restarted, reconciled {entry.key}: {reconciled[0].get('outcome')} "
        f"({str(reconciled[0].get('detail'))[:120]}); journal entry {settled.phase.value}; "
        f"web-1 on {after['web-1'][0]} {settled_after:.1f} s after the restart",
        lost=guest_after_migration(lab, "web-1", log, restore_lab),
    )


def live_vcpus(lab: Lab, host: str, vm: str) -> int:
    conn = lab.connect(host)
    try:
        return int(conn.lookupByName(vm).vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE))
    finally:
        conn.close()


@pytest.mark.timeout(480)
# hot_add_vcpu was once left out: after a crash at ``vcpus-set`` the lab guest (TCG, at full
# load, held at its 0.25 quota) did not always report the new CPU online within the
# verification window. Verification now lifts the quota while the guest onlines the CPU (the
# online boost of actuators.hotadd: 0.4 s instead of 2.3 s at full load on the lab's guest).
@pytest.mark.parametrize("kind", ["hot_add_vcpu", "retire"])
def test_the_controller_killed_during_a_hot_add_or_a_retire_settles_it_on_restart(
    lab: Lab, tmp_path: Path, restore_lab: None, kind: str
) -> None:
    """The controller SIGKILLed at the crash point ``hot_add_vcpu:vcpus-set`` (a hot-add under
    load) or ``retire:stopped`` (a scale-in, the guest already shut down).

    Expect: restarted, it reconciles: the hot-added VM runs once with its new vCPUs, or the
    retired VM is gone from every host with its overlay; nothing else lost or duplicated.
    """
    config = with_fault_hooks(controller_file(lab, tmp_path))
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    state = tmp_path / "state"
    if kind == "hot_add_vcpu":
        tune_web(tmp_path, vertical={"enabled": True, "vcpu_step": 1})
        crash_at, demand, settle_demand = "hot_add_vcpu:vcpus-set", 0.6, 0.05
    else:  # a third web VM at low load: a scale-in retires one, without a long stabilisation
        tune_web(
            tmp_path, scale_down_stabilisation_s=5, cooldowns={"scale_up_s": 0, "scale_down_s": 0}
        )
        policies = load_policy_dir(tmp_path / "businesses")
        domains = lab_mod.status(lab).domains
        lab_mod.start_vm(lab, policies["web"], "web-3", min(domains, key=lambda h: len(domains[h])))
        crash_at, demand, settle_demand = "retire:stopped", 0.02, 0.02
    lab_mod.set_demand(lab, {"web": {"cores": demand}})
    before = placements(lab)
    first = run_controller(config, port, log, crash_at=crash_at)
    try:
        try:
            wait_for(first.poll, lambda code: code is not None, timeout=300, what="the crash point")
        except pytest.fail.Exception as exc:  # say what the controller saw instead
            seen = [ln for ln in metrics(port).splitlines() if ln.startswith("autoscaler_business")]
            pytest.fail(f"{exc}; the controller saw {seen}; load {lab_mod.load_status(lab)}")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    with SqliteJournal(state / JOURNAL_FILE) as journal:
        left = [e for e in journal.unfinished() if e.action.kind == kind]
    assert left, "the crash point was reached but no entry is unfinished"
    entry = left[0]
    lab_mod.set_demand(lab, {"web": {"cores": settle_demand}})

    restart_and_reconcile(config, port, log)
    with SqliteJournal(state / JOURNAL_FILE) as journal:
        settled = journal.get(entry.key)
    assert settled is not None and settled.phase is Phase.DONE, settled
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert orphans(lab) == {}
    vm = entry.action.vm
    if isinstance(entry.action, HotAddVcpu):
        assert after.get(vm) == [entry.action.host], after
        assert live_vcpus(lab, entry.action.host, vm) == entry.action.vcpus
        outcome = f"{vm} runs once on {entry.action.host} with {entry.action.vcpus} vCPUs"
        lab_mod.remove_vm(lab, vm, entry.action.host)  # restore_lab makes it anew, 1 vCPU
    else:
        assert vm not in after, after
        assert set(before) - {vm} <= set(after)
        outcome = f"{vm} gone from every host with its overlay; the others untouched"
    reconciled = [
        e for e in events(log) if e.get("event") == "reconciled" and e.get("key") == entry.key
    ]
    assert reconciled, "the restarted controller did not settle the interrupted action"
    why = "load above saturation" if kind == "hot_add_vcpu" else "a scale-in at low load"
    record(
        "fault",
        f"controller SIGKILLed during a {'hot-add' if kind == 'hot_add_vcpu' else 'retire'}",
        injected=f"AUTOSCALER_CRASH_AT={crash_at}: the controller killed itself in the middle "
        f"of {entry.key} it decided ({why})",
        behaviour=f"restarted, reconciled {entry.key}: {reconciled[0].get('outcome')}; journal "
        f"entry {settled.phase.value}; {outcome}",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
    )
