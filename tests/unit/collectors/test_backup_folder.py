"""The backup catalogue collector on a folder target (real files in a temporary folder): a
manifest is a complete backup, an export without one is not, failures are read, a target that
cannot be read makes its business stale, and a listing is reused for ``every_s``."""

from __future__ import annotations

import json
from pathlib import Path

from autoscaler.runtime.snapshot_builder import backup_catalogues
from collectors.backups import BackupCatalogueCollector


def collector(root: Path, every_s: float = 60.0) -> BackupCatalogueCollector:
    def no_cluster() -> None:
        raise AssertionError("a folder target needs no Ceph")

    return BackupCatalogueCollector(
        targets=lambda: {"web": ("folder", str(root))}, cluster=no_cluster, every_s=every_s
    )


def backup(root: Path, vm: str, backup_id: str, taken_at: float, *, complete: bool = True) -> None:
    folder = root / "web" / f"{vm}.0a1b2c3d"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{backup_id}.rbd-diff").write_bytes(b"rbd diff v1\n")
    if complete:
        manifest = {"vm": vm, "business": "web", "lineage": "0a1b2c3d", "id": backup_id,
                    "taken_at": taken_at, "consistency": "crash-consistent"}  # fmt: skip
        (folder / f"{backup_id}.json").write_text(json.dumps(manifest))


def test_complete_backups_and_failures_make_the_catalogue(tmp_path: Path) -> None:
    backup(tmp_path, "web-1", "b20261201t0300", 100.0)
    backup(tmp_path, "web-1", "b20261202t0300", 200.0)
    backup(tmp_path, "web-2", "b20261202t0300", 300.0, complete=False)
    (tmp_path / "web" / "failures.json").write_text(json.dumps({"web-2": 250.0}))
    seen = collector(tmp_path).collect(1000.0)
    assert seen.stale == ()
    (web,) = backup_catalogues(seen.samples)
    one, two = web.record("web-1"), web.record("web-2")
    assert one is not None and (one.count, one.last_success_at) == (2, 200.0)
    # An export without its manifest is not a backup; the failure is known.
    assert two is not None and (two.count, two.last_success_at, two.last_failure_at) == (
        0,
        None,
        250.0,
    )


def test_a_business_with_nothing_at_the_target_yet_is_listed_and_empty(tmp_path: Path) -> None:
    (web,) = backup_catalogues(collector(tmp_path).collect(1000.0).samples)
    assert web.records == ()


def test_a_target_that_is_not_there_makes_its_business_stale(tmp_path: Path) -> None:
    seen = collector(tmp_path / "not-mounted").collect(1000.0)
    assert [(s.scope.value, s.target) for s in seen.stale] == [("business", "web")]
    assert backup_catalogues(seen.samples) == ()


def test_a_listing_is_reused_with_its_own_time_until_every_s_has_passed(tmp_path: Path) -> None:
    listing = collector(tmp_path, every_s=60.0)
    listing.collect(1000.0)
    backup(tmp_path, "web-1", "b20261201t0300", 1010.0)
    (again,) = backup_catalogues(listing.collect(1030.0).samples)
    assert (again.listed_at, again.records) == (1000.0, ())  # the older listing, said as such
    (later,) = backup_catalogues(listing.collect(1061.0).samples)
    assert later.listed_at == 1061.0 and later.record("web-1") is not None
