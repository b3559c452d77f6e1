"""``autoscaler apply`` killed in the middle of a clone and of a migration, then run again:
the reconciler settles the journal's unfinished intents against libvirt, nothing is lost,
duplicated or orphaned. Deterministic crash points (AUTOSCALER_CRASH_AT) and one real SIGKILL
from outside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from autoscaler.model import (
    Action,
    CloneFromTemplate,
    LiveMigrate,
    Phase,
    Plan,
    Retire,
)
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import CRASH_ENV, JOURNAL_FILE
from lab.lab import Lab
from tests.integration.actuator_helpers import (
    domain_xml,
    empty_host,
    host_in_other_datacenter,
    remove_everywhere,
    where,
)
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import with_fault_hooks

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
WHY = {"business": "web", "reason": "crash test"}


def write_plan(folder: Path, *actions: Action) -> Path:
    plan = Plan.build(list(actions), created_at=time.time())
    path = folder / f"{plan.id}.json"
    path.write_text(plan.to_json())
    return path


def fault_hooks_file(lab: Lab) -> Path:
    """A copy of the lab's controller file, beside it, with ``testing.fault_hooks`` on (the
    crash points of this module are ignored without it)."""
    path = lab.controller_file.with_name("controller-fault-hooks.yaml")
    if not path.exists():
        shutil.copy(lab.controller_file, path)
        with_fault_hooks(path)
    return path


def apply_args(lab: Lab, plan: Path, state: Path, config: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoscaler.cli.apply",
        str(plan),
        "--config",
        str(config or fault_hooks_file(lab)),
        "--state-dir",
        str(state),
    ]


def apply(
    lab: Lab,
    plan: Path,
    state: Path,
    crash_at: str | None = None,
    *,
    config: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``autoscaler apply`` of ``plan`` (with the lab's controller file and fault hooks, or
    ``config``), killed at ``crash_at`` if given."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    args = apply_args(lab, plan, state, config)
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def unfinished(state: Path) -> list[str]:
    with SqliteJournal(state / JOURNAL_FILE) as journal:
        return [f"{e.key}@{e.step}" for e in journal.unfinished()]


def assert_ready_once(lab: Lab, vm: str, host: str) -> None:
    assert where(lab, vm) == {host: "running"}
    conn = lab.connect(host)
    try:
        xml = domain_xml(conn.lookupByName(vm))
        assert xml.findtext("./cputune/quota") == "25000"
        meta = xml.find("./metadata/{https://kvm-autoscaler.dev/ns/vm/1}vm")
        assert meta is not None and meta.get("ready") is not None
    finally:
        conn.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cleanup(lab: Lab) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for vm in names:
        remove_everywhere(lab, vm)


def test_apply_killed_after_starting_a_clone_finishes_it_when_run_again(
    lab: Lab, state: Path, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "tact-crash-1", empty_host(lab)
    cleanup.append(vm)
    plan = write_plan(tmp_path, CloneFromTemplate(vm=vm, host=host, **WHY))
    crashed = apply(lab, plan, state, crash_at="clone_from_template:started")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert unfinished(state) == [f"clone_from_template/{vm}@started"]
    assert where(lab, vm) == {host: "running"}  # started, not yet ready nor marked

    again = apply(lab, plan, state)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"reconciled clone_from_template/{vm}: done" in again.stdout
    assert unfinished(state) == []
    assert_ready_once(lab, vm, host)

    retire = write_plan(tmp_path, Retire(vm=vm, host=host, shutdown_timeout_s=20, **WHY))
    done = apply(lab, retire, state)
    assert done.returncode == 0, done.stdout + done.stderr
    assert where(lab, vm) == {}


def test_apply_killed_before_a_clone_is_defined_is_finished_without_a_duplicate(
    lab: Lab, state: Path, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "tact-crash-2", empty_host(lab)
    cleanup.append(vm)
    plan = write_plan(tmp_path, CloneFromTemplate(vm=vm, host=host, **WHY))
    crashed = apply(lab, plan, state, crash_at="clone_from_template:overlay-created")
    assert crashed.returncode == -signal.SIGKILL
    assert where(lab, vm) == {host: "overlay"}  # an overlay, no domain yet
    again = apply(lab, plan, state)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_ready_once(lab, vm, host)
    migrate = LiveMigrate(
        vm=vm, source=host, destination=host_in_other_datacenter(lab, host), **WHY
    )
    # Now the same VM, killed in the middle of its migration.
    moving = write_plan(tmp_path, migrate)
    crashed = apply(lab, moving, state, crash_at="live_migrate:migrating")
    assert crashed.returncode == -signal.SIGKILL
    assert unfinished(state) == [f"{migrate.key}@migrating"]
    again = apply(lab, moving, state)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"reconciled {migrate.key}" in again.stdout
    assert unfinished(state) == []
    # Exactly one host afterwards, with no definition or overlay left anywhere else.
    assert where(lab, vm) == {migrate.destination: "running"}
    with SqliteJournal(state / JOURNAL_FILE) as journal:
        entry = journal.get(migrate.key)
        assert entry is not None and entry.phase is Phase.DONE


def test_a_real_sigkill_from_outside_during_a_clone_is_reconciled(
    lab: Lab, state: Path, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "tact-crash-3", empty_host(lab)
    cleanup.append(vm)
    plan = write_plan(tmp_path, CloneFromTemplate(vm=vm, host=host, **WHY))
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    proc = subprocess.Popen(apply_args(lab, plan, state), cwd=ROOT, env=env)
    conn = lab.connect(host)
    try:
        # Kill it while it waits for the guest to become ready: watched on the clone's own host
        # through one connection (a poll of every host takes longer than the guest's boot).
        def started() -> bool:
            try:
                return bool(conn.lookupByName(vm).isActive())
            except libvirt.libvirtError:
                return False

        wait_for(started, bool, timeout=60, what="started")
        assert proc.poll() is None, "apply ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        conn.close()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert [u.split("@")[0] for u in unfinished(state)] == [f"clone_from_template/{vm}"]
    again = apply(lab, plan, state)
    assert again.returncode == 0, again.stdout + again.stderr
    assert unfinished(state) == []
    assert_ready_once(lab, vm, host)
