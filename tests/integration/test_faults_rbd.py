"""Faults around VM disks on the lab's Ceph RBD (issue 14): the controller's executor killed in
the middle of a clone, an OSD down while a clone is made, and the images pool taking no writes.
Each test says what was injected, what happened and what was lost (RELIABILITY.md).

Where it sits: the reliability suite on the real lab, beside ``test_faults_ceph``; the clone is
the real clone actuator on RBD (``autoscaler apply`` for the crash, the executor in-process for
the others).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actuators.base import Fleet
from actuators.rbd_store import RbdStore
from autoscaler.model import CloneFromTemplate, Retire
from autoscaler.runtime.journal import SqliteJournal
from lab import ceph
from lab import lab as lab_mod
from lab.ceph import IMAGES_POOL
from lab.images import expected_content_checksum
from lab.lab import Lab
from tests.integration.actuator_helpers import empty_host, fleet_of, run_plan, where
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_actuators_crash import apply, unfinished, write_plan
from tests.integration.test_controller import with_fault_hooks
from tests.integration.test_guest_disk import view_of
from tests.integration.test_rbd_disks import on_rbd, restore_config
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]

WHY = {"business": "web", "reason": "rbd fault test"}


@pytest.fixture
def store(lab: Lab) -> RbdStore:
    return lab_mod.lab_rbd(lab)


@pytest.fixture
def rbd_fleet(lab: Lab) -> Fleet:
    return on_rbd(fleet_of(lab))


@pytest.fixture
def cleanup(lab: Lab, store: RbdStore) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    keys = fleet_of(lab).keys
    for vm in names:
        for host in where(lab, vm):
            lab_mod.remove_vm(lab, vm, host)
        if store.exists(IMAGES_POOL, vm):
            store.remove(IMAGES_POOL, vm, "web", keys, half_made_clone=True)


def images_named(store: RbdStore, vm: str) -> list[str]:
    return [i for i in store.images(IMAGES_POOL) if i == vm]


def test_apply_killed_between_the_rbd_clone_and_its_domain_finishes_with_one_image(
    lab: Lab, store: RbdStore, tmp_path: Path, cleanup: list[str]
) -> None:
    """The executor SIGKILLed right after the VM's RBD clone was made, before its domain was
    defined: run again, the reconciler finishes the clone on that same image."""
    vm, host = "trbd-crash-1", empty_host(lab)
    cleanup.append(vm)
    config = with_fault_hooks(restore_config(lab, tmp_path / "config"))
    state = tmp_path / "state"
    plan = write_plan(tmp_path, CloneFromTemplate(vm=vm, host=host, **WHY))
    crashed = apply(lab, plan, state, crash_at="clone_from_template:image-created", config=config)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    assert unfinished(state) == [f"clone_from_template/{vm}@image-created"]
    assert where(lab, vm) == {} and images_named(store, vm) == [vm]  # an image, no domain yet

    again = apply(lab, plan, state, config=config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"reconciled clone_from_template/{vm}" in again.stdout
    assert unfinished(state) == []
    assert where(lab, vm) == {host: "running"}
    assert images_named(store, vm) == [vm]
    assert store.owned(IMAGES_POOL, vm, "web", fleet_of(lab).keys)
    ready = view_of(lab, host, vm, lambda v: v.ready, 120)
    assert ready.mounted and ready.content == expected_content_checksum("web")

    retire = write_plan(tmp_path, Retire(vm=vm, host=host, shutdown_timeout_s=20, **WHY))
    done = apply(lab, retire, state, config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert where(lab, vm) == {} and images_named(store, vm) == []
    record(
        "fault",
        "the controller killed mid-clone on RBD",
        injected="AUTOSCALER_CRASH_AT=clone_from_template:image-created: the executor killed"
        " itself right after the VM's RBD clone was made, before its domain was defined",
        behaviour="run again, the reconciler resumed the clone on the same stamped image: one"
        " domain running and ready, its disk mounted; the retire afterwards removed the image",
        lost="nothing: one image and one domain, no orphaned RBD image",
    )


def test_an_osd_down_during_a_clone_on_rbd_leaves_it_degraded_but_done(
    lab: Lab, rbd_fleet: Fleet, store: RbdStore, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "trbd-osd-1", empty_host(lab)
    cleanup.append(vm)
    cluster = ceph.described(lab.layout)
    assert cluster is not None
    osd = next(iter(cluster.osds_by_rack.values()))[0]
    ceph.stop_osd(lab.layout, osd)
    try:
        started = time.monotonic()
        journal = SqliteJournal(tmp_path / "journal.sqlite")
        (clone,) = run_plan(rbd_fleet, journal, [CloneFromTemplate(vm=vm, host=host, **WHY)])
        took = time.monotonic() - started
        assert clone.status == "done", clone
        ready = view_of(lab, host, vm, lambda v: v.ready, 60)
        assert ready.mounted and ready.content == expected_content_checksum("web"), ready
    finally:
        ceph.start_osd(lab.layout, osd)
    status = wait_for(
        lambda: ceph_health(lab),
        lambda h: h == "HEALTH_OK",
        timeout=120,
        what="HEALTH_OK after the OSD came back",
    )
    record(
        "fault",
        "an OSD down during a clone on RBD",
        injected=f"osd.{osd} stopped (SIGTERM) before the clone started, restarted after it",
        behaviour=f"the clone was done in {took:.1f} s on the degraded pool; the guest mounted"
        f" its disk and read its template's content; the cluster was {status} again after the"
        " OSD came back",
        lost="nothing",
        clone_s=round(took, 1),
    )


def ceph_health(lab: Lab) -> str:
    store = lab_mod.lab_rbd(lab)
    ret, out, _ = store.cluster.mon_command(
        json.dumps({"prefix": "health", "format": "json"}), b"", timeout=10
    )
    return str(json.loads(out)["status"]) if ret == 0 else f"error {ret}"


def test_a_clone_into_an_images_pool_that_takes_no_writes_fails_cleanly(
    lab: Lab, rbd_fleet: Fleet, store: RbdStore, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "trbd-full-1", empty_host(lab)
    cleanup.append(vm)
    quota = {"prefix": "osd pool set-quota", "pool": IMAGES_POOL, "field": "max_objects"}
    command = json.dumps({**quota, "val": "1"})
    ret, _, err = store.cluster.mon_command(command, b"", timeout=10)
    assert ret == 0, err
    try:
        wait_for(
            lambda: ceph_health(lab),
            lambda h: h != "HEALTH_OK",
            timeout=30,
            what="the pool flagged over its quota",
        )
        journal = SqliteJournal(tmp_path / "journal.sqlite")
        (clone,) = run_plan(rbd_fleet, journal, [CloneFromTemplate(vm=vm, host=host, **WHY)])
    finally:
        ret, _, err = store.cluster.mon_command(json.dumps({**quota, "val": "0"}), b"", timeout=10)
        assert ret == 0, err
    assert clone.status == "failed", clone
    assert "takes no writes" in clone.reason, clone.reason
    assert where(lab, vm) == {} and images_named(store, vm) == []
    entry = journal.get(f"clone_from_template/{vm}")
    assert entry is not None and "takes no writes" in (entry.detail or ""), entry
    record(
        "fault",
        "the images pool takes no writes",
        injected=f"the {IMAGES_POOL} pool's quota set to 1 object (Ceph blocks every write to"
        " it), then a clone on RBD",
        behaviour=f"the clone failed after {clone.attempts} attempt(s), each bounded by the"
        f" client timeout, with the reason journalled: {clone.reason[:160]}",
        lost="nothing: no domain and no RBD image left behind",
    )
