"""VM disks on the lab's Ceph RBD, through the real actuators: a clone is a copy-on-write RBD
clone of the business's template version that boots, an RBD snapshot is taken and dropped, a
live migration moves no disk, and a retire removes the image with its snapshots."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import rbd
from ruamel.yaml import YAML

from actuators.backup import folder_backups, lineage_of, pool_backups
from actuators.base import Fleet
from actuators.rbd_snapshot import CONSISTENCY_KEY, CRASH
from actuators.rbd_store import META_BUSINESS, META_OWNER, RbdStore
from autoscaler.model import (
    BackupInstance,
    CloneFromTemplate,
    LiveMigrate,
    MergeSnapshot,
    Retire,
    SnapshotDisk,
)
from autoscaler.runtime.journal import SqliteJournal
from lab import ceph
from lab import lab as lab_mod
from lab.ceph import BACKUPS_POOL, IMAGES_POOL
from lab.images import build_qcow2_template, expected_content_checksum
from lab.lab import Lab
from lab.rbd import VERSION, fleet_on_rbd
from tests.integration.actuator_helpers import (
    domain_xml,
    empty_host,
    fleet_of,
    remove_everywhere,
    run_plan,
    where,
)
from tests.integration.test_guest_disk import view_of

pytestmark = pytest.mark.lab

WHY = {"business": "web", "reason": "rbd test"}
ROOT = Path(__file__).resolve().parents[2]


def on_rbd(fleet: Fleet) -> Fleet:
    """The lab's fleet with business web cloning from its template on RBD."""
    return fleet_on_rbd(fleet, "web", min_instances=0)


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
        # The test's backups too (the product never removes a backup with its VM).
        with store.ioctx(BACKUPS_POOL) as ioctx:
            for image in rbd.RBD().list(ioctx):
                if image.startswith(f"{vm}."):
                    with rbd.Image(ioctx, image) as img:
                        for snap in list(img.list_snaps()):
                            img.remove_snap(snap["name"])
                    rbd.RBD().remove(ioctx, image)


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


def backup(vm: str, host: str, backup_id: str, kind: str, where: str) -> BackupInstance:
    facts: dict[str, str | int | float | bool] = {
        "target_kind": kind,
        "target": where,
        "keep": 2,
    }
    return BackupInstance(vm=vm, host=host, backup_id=backup_id, facts=facts, **WHY)


def restore_config(lab: Lab, folder: Path, backup_folder: Path | None = None) -> Path:
    """The lab's controller file with a policy folder where web clones from RBD and keeps its
    backups in the backups pool (the example's own backup section), or in ``backup_folder``."""
    businesses = folder / "businesses"
    businesses.mkdir(parents=True, exist_ok=True)
    policy = businesses / "web.yaml"
    shutil.copy(lab_mod.EXAMPLES / "businesses" / "web.yaml", policy)
    lab_mod.on_rbd(policy)
    # Its own bounds: the tests retire the VMs they make whatever else serves web.
    policy.write_text(policy.read_text().replace("instances: {min: 2,", "instances: {min: 0,"))
    if backup_folder is not None:
        rt = YAML()
        doc = rt.load(policy.read_text())
        doc["backup"]["target"] = {"kind": "folder", "path": str(backup_folder)}
        with policy.open("w") as out:
            rt.dump(doc, out)
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load(lab.controller_file.read_text())
    doc["policy_dir"] = str(businesses)
    doc["state_dir"] = str(folder / "state")
    config = folder / "controller.yaml"
    with config.open("w") as out:
        yaml.dump(doc, out)
    return config


def restore(config: Path, vm: str, backup_id: str, host: str, *extra: str) -> None:
    args = ["restore", vm, "--backup", backup_id, "--host", host, "--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", *args, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def assert_rbd_imports(lab: Lab, store: RbdStore, diff: Path, source: tuple[str, str, str]) -> None:
    """Ceph's own ``rbd import-diff`` reads our diff file into an image equal to the source."""
    cluster = ceph.described(lab.layout)
    assert cluster is not None
    pool, image, snap = source
    copy = f"{image}-compat"
    base = ["rbd", "-c", str(cluster.conffile), "-k", str(cluster.keyring)]
    with store.ioctx(pool) as ioctx, rbd.Image(ioctx, image, snapshot=snap, read_only=True) as src:
        size = src.size()
        subprocess.run([*base, "create", "--size", f"{size}B", f"{pool}/{copy}"], check=True)
        try:
            subprocess.run([*base, "import-diff", str(diff), f"{pool}/{copy}"], check=True)
            with rbd.Image(ioctx, copy, read_only=True) as dst:
                for offset in range(0, size, 8 << 20):
                    length = min(8 << 20, size - offset)
                    assert dst.read(offset, length) == src.read(offset, length), offset
        finally:
            with rbd.Image(ioctx, copy) as dst:
                for s in list(dst.list_snaps()):
                    dst.remove_snap(s["name"])
            rbd.RBD().remove(ioctx, copy)


def test_backups_of_a_vm_on_rbd_are_incremental_pruned_and_restore_as_a_guest_with_its_data(
    lab: Lab, rbd_fleet: Fleet, store: RbdStore, tmp_path: Path, cleanup: list[str]
) -> None:
    vm, restored = "web-rbd-b", "web-rbd-f"
    host = empty_host(lab)
    cleanup.extend([vm, restored])
    journal = SqliteJournal(tmp_path / "journal.sqlite")
    (clone,) = run_plan(rbd_fleet, journal, [CloneFromTemplate(vm=vm, host=host, **WHY)])
    assert clone.status == "done", clone
    first = view_of(lab, host, vm, lambda v: v.ready, 30)
    assert (first.mounted, first.boots) == (True, 1), first
    lab_mod.fill_disk(lab, "web", host, vm, 8)

    ids = ["b20261201t0300", "b20261201t0400", "b20261201t0500"]
    (full,) = run_plan(rbd_fleet, journal, [backup(vm, host, ids[0], "pool", BACKUPS_POOL)])
    assert full.status == "done", full
    assert full.figures["backup_incremental"] == 0 and full.figures["backup_mib"] >= 8
    lab_mod.fill_disk(lab, "web", host, vm, 16)
    (incremental,) = run_plan(rbd_fleet, journal, [backup(vm, host, ids[1], "pool", BACKUPS_POOL)])
    assert incremental.status == "done", incremental
    # Only what changed since the first backup crossed: the new fill, not the template.
    assert incremental.figures["backup_incremental"] == 1
    assert incremental.figures["backup_mib"] < full.figures["backup_mib"] + 16
    (third,) = run_plan(rbd_fleet, journal, [backup(vm, host, ids[2], "pool", BACKUPS_POOL)])
    assert third.status == "done", third
    conn = lab.connect(host)
    try:
        lineage = lineage_of(conn.lookupByName(vm))
    finally:
        conn.close()

    def held() -> list[str]:
        return [
            b.backup_id
            for b in pool_backups(store, BACKUPS_POOL, "web")
            if (b.vm, b.lineage) == (vm, lineage)
        ]

    assert held() == ids[1:]  # keep: 2
    # The source keeps only the newest backup snapshot, the base of the next copy.
    assert [s.name for s in store.snapshots(IMAGES_POOL, vm)] == [ids[2]]
    folder = tmp_path / "backup-folder"
    (to_folder,) = run_plan(
        rbd_fleet, journal, [backup(vm, host, "b20261201t0600", "folder", str(folder))]
    )
    assert to_folder.status == "done", to_folder
    (in_folder,) = folder_backups(folder, "web")
    assert Path(in_folder.location).read_bytes().startswith(b"rbd diff v1\n")
    assert_rbd_imports(lab, store, Path(in_folder.location), (IMAGES_POOL, vm, "b20261201t0600"))

    # The VM is lost; its backups are not.
    (retire,) = run_plan(rbd_fleet, journal, [Retire(vm=vm, host=host, **WHY)])
    assert retire.status == "done", retire
    assert not store.exists(IMAGES_POOL, vm)
    assert held() == ids[1:]

    config = restore_config(lab, tmp_path / "restore")
    restore(config, vm, ids[1], host)
    again = view_of(lab, host, vm, lambda v: v.ready, 120)
    # What it had written before that backup, and its boot record: a second boot, same disk.
    assert (again.mounted, again.data_mib, again.boots) == (True, 16, 2), again
    assert again.content == first.content == expected_content_checksum("web")
    other = next(h for h in lab_mod.status(lab).domains if h != host)
    restore(
        restore_config(lab, tmp_path / "r2", folder), vm, "b20261201t0600", other, "--as", restored
    )
    from_folder = view_of(lab, other, restored, lambda v: v.ready, 120)
    assert (from_folder.mounted, from_folder.content) == (True, first.content), from_folder
    assert store.owned(IMAGES_POOL, restored, "web", rbd_fleet.keys)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_images_push_makes_the_next_version_of_a_template_and_never_overwrites_one(
    lab: Lab, store: RbdStore, tmp_path: Path
) -> None:
    config = restore_config(lab, tmp_path / "config")
    template = build_qcow2_template("web", "v2", tmp_path / "built")
    pushed = cli("images", "push", "web", str(template), "--config", str(config))
    try:
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert f"{IMAGES_POOL}/web@v2" in pushed.stdout
        assert "set template.version: v2" in pushed.stdout
        listed = cli("images", "list", "web", "--config", str(config))
        assert listed.returncode == 0, listed.stderr
        assert f"{IMAGES_POOL}/web@v1 (the policy's)" in listed.stdout
        assert f"{IMAGES_POOL}/web@v2" in listed.stdout
        again = cli(
            "images", "push", "web", str(template), "--version", "v2", "--config", str(config)
        )
        assert again.returncode == 1 and "immutable" in again.stderr, again.stderr
        # The new version holds the business's content: a clone of it would mount it.
        with (
            store.ioctx(IMAGES_POOL) as ioctx,
            rbd.Image(ioctx, "web", snapshot="v2", read_only=True) as img,
        ):
            assert img.size() >= 64 << 20
            assert img.read(1024 + 56, 2) == b"\x53\xef"  # the ext4 superblock's magic
    finally:
        if any(v.name == "v2" for v in store.template_versions(IMAGES_POOL, "web")):
            store.remove_snapshot(IMAGES_POOL, "web", "v2")
