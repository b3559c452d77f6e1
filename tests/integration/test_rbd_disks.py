"""VM disks on the lab's Ceph RBD, through the real actuators: a clone is a copy-on-write RBD
clone of the business's template version that boots, an RBD snapshot is taken and dropped, a
live migration moves no disk, and a retire removes the image with its snapshots."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from actuators.base import Fleet
from actuators.rbd_snapshot import CONSISTENCY_KEY, CRASH
from actuators.rbd_store import META_BUSINESS, META_OWNER, RbdStore
from autoscaler.model import (
    CloneFromTemplate,
    LiveMigrate,
    MergeSnapshot,
    RbdStorage,
    Retire,
    SnapshotDisk,
)
from autoscaler.runtime.journal import SqliteJournal
from lab import lab as lab_mod
from lab.ceph import IMAGES_POOL
from lab.lab import Lab
from lab.rbd import VERSION
from tests.integration.actuator_helpers import (
    domain_xml,
    empty_host,
    fleet_of,
    remove_everywhere,
    run_plan,
    where,
)

pytestmark = pytest.mark.lab

WHY = {"business": "web", "reason": "rbd test"}


def on_rbd(fleet: Fleet) -> Fleet:
    """The lab's fleet with business web cloning from its template on RBD (``images/web@v1``,
    pushed by ``lab up``)."""
    web = fleet.businesses["web"]
    template = web.template.model_copy(
        update={"image": "web", "version": VERSION, "storage": RbdStorage(pool=IMAGES_POOL)}
    )
    business = web.model_copy(update={"template": template, "min_instances": 0})
    return dataclasses.replace(fleet, businesses={**fleet.businesses, "web": business})


@pytest.fixture
def rbd_fleet(lab: Lab) -> Fleet:
    return on_rbd(fleet_of(lab))


@pytest.fixture
def store(lab: Lab) -> RbdStore:
    return lab_mod.lab_rbd(lab)


@pytest.fixture
def cleanup(lab: Lab, store: RbdStore) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for vm in names:
        remove_everywhere(lab, vm)
        if store.exists(IMAGES_POOL, vm):
            store.remove(IMAGES_POOL, vm, "web", fleet_of(lab).keys, half_made_clone=True)


def rbd_source(lab: Lab, host: str, vm: str) -> ET.Element | None:
    conn = lab.connect(host)
    try:
        return domain_xml(conn.lookupByName(vm)).find(
            "./devices/disk[@type='network']/source[@protocol='rbd']"
        )
    finally:
        conn.close()


def test_a_clone_on_rbd_boots_from_a_stamped_cow_clone_and_moves_without_its_disk(
    lab: Lab, rbd_fleet: Fleet, store: RbdStore, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, host = "web-rbd-1", empty_host(lab)
    cleanup.append(vm)
    journal = SqliteJournal(tmp_path / "journal.sqlite")

    (clone,) = run_plan(rbd_fleet, journal, [CloneFromTemplate(vm=vm, host=host, **WHY)])
    assert clone.status == "done", clone
    assert where(lab, vm) == {host: "running"}
    source = rbd_source(lab, host, vm)
    assert source is not None and source.get("name") == f"{IMAGES_POOL}/{vm}"
    meta = store.metadata(IMAGES_POOL, vm)
    assert meta is not None and meta[META_BUSINESS] == "web" and META_OWNER in meta
    assert store.owned(IMAGES_POOL, vm, "web", rbd_fleet.keys)

    (snap,) = run_plan(rbd_fleet, journal, [SnapshotDisk(vm=vm, host=host, tag="s1", **WHY)])
    assert snap.status == "done", snap
    (taken,) = [s for s in store.snapshots(IMAGES_POOL, vm) if s.name == "s1"]
    assert taken.timestamp > 0
    # The lab's serial agent cannot freeze file systems: the snapshot says it is crash-consistent.
    assert (store.metadata(IMAGES_POOL, vm) or {})[f"autoscaler.snap.s1.{CONSISTENCY_KEY}"] == CRASH
    (merge,) = run_plan(rbd_fleet, journal, [MergeSnapshot(vm=vm, host=host, tag="s1", **WHY)])
    assert merge.status == "done", merge
    assert [s.name for s in store.snapshots(IMAGES_POOL, vm)] == []

    destination = next(h for h in lab_mod.status(lab).domains if h != host)
    (move,) = run_plan(
        rbd_fleet,
        journal,
        [LiveMigrate(vm=vm, source=host, destination=destination, timeout_s=120, **WHY)],
    )
    assert move.status == "done", move
    assert where(lab, vm) == {destination: "running"}
    moved = rbd_source(lab, destination, vm)
    assert moved is not None and moved.get("name") == f"{IMAGES_POOL}/{vm}"

    (retire,) = run_plan(rbd_fleet, journal, [Retire(vm=vm, host=destination, **WHY)])
    assert retire.status == "done", retire
    assert where(lab, vm) == {}
    assert not store.exists(IMAGES_POOL, vm)
    assert store.exists(IMAGES_POOL, "web")  # the template and its version are untouched
    assert [v.name for v in store.template_versions(IMAGES_POOL, "web")] == [VERSION]
