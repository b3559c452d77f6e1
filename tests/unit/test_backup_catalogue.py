"""The backup catalogue as the snapshot holds it, and the backup action's target facts.

Where it sits: between the backup catalogue collector's samples and ``policies.backups`` (a
business the collector could not list must have no catalogue: unknown, never "no backups"),
and at the start of the backup actuator (a target it cannot trust is a permanent error)."""

from __future__ import annotations

import pytest

from actuators.backup import BackupTarget, is_backup_id
from autoscaler.cli.images import next_version
from autoscaler.model import BackupInstance, PermanentError, Sample
from autoscaler.runtime.snapshot_builder import backup_catalogues
from policies.backups import backup_id


def sample(metric: str, value: float, **labels: str) -> Sample:
    return Sample(metric, value, 1000.0, tuple(labels.items()))


def test_a_listed_business_gets_a_catalogue_with_one_record_per_vm() -> None:
    (web,) = backup_catalogues(
        [
            sample("backup_catalogue_listed", 1, business="web"),
            sample("backup_count", 2, business="web", vm="web-1"),
            sample("backup_last_success_timestamp", 900.0, business="web", vm="web-1"),
            sample("backup_count", 0, business="web", vm="web-2"),
            sample("backup_last_failure_timestamp", 950.0, business="web", vm="web-2"),
        ]
    )
    assert web.business == "web" and web.listed_at == 1000.0
    one, two = web.record("web-1"), web.record("web-2")
    assert one is not None and (one.count, one.last_success_at) == (2, 900.0)
    assert two is not None and (two.last_success_at, two.last_failure_at) == (None, 950.0)


def test_a_business_that_was_not_listed_has_no_catalogue_even_with_records() -> None:
    # Figures without the "listed" mark (a listing that failed midway) are not a catalogue.
    assert backup_catalogues([sample("backup_count", 3, business="api", vm="api-1")]) == ()


def test_a_record_with_an_unsafe_vm_name_is_dropped_not_fatal() -> None:
    (web,) = backup_catalogues(
        [
            sample("backup_catalogue_listed", 1, business="web"),
            sample("backup_count", 1, business="web", vm="../etc"),
        ]
    )
    assert web.records == ()


def test_backup_ids_are_the_schedule_slot_and_sort_by_time() -> None:
    first, second = backup_id(1_796_094_000.0), backup_id(1_796_097_600.0)
    assert is_backup_id(first) and is_backup_id(second) and first < second
    assert not is_backup_id("s1") and not is_backup_id("v1")


def action(**facts: str | int) -> BackupInstance:
    return BackupInstance(
        business="web", vm="web-1", host="h1", backup_id="b20261201t0300", reason="t", facts=facts
    )


def test_the_backup_target_comes_from_the_action_facts() -> None:
    assert BackupTarget.of(action(target_kind="pool", target="backups", keep=7)) == BackupTarget(
        "pool", "backups", 7
    )
    folder = BackupTarget.of(action(target_kind="folder", target="/mnt/backup", keep=2))
    assert (folder.kind, folder.where) == ("folder", "/mnt/backup")


@pytest.mark.parametrize(
    "facts",
    [
        {"target_kind": "pool", "target": "backups"},  # no keep
        {"target_kind": "pool", "target": "Bad Pool", "keep": 1},
        {"target_kind": "folder", "target": "relative/path", "keep": 1},
        {"target_kind": "folder", "target": "/mnt/../etc", "keep": 1},
        {"target_kind": "tape", "target": "x", "keep": 1},
    ],
)
def test_a_backup_target_that_cannot_be_trusted_is_a_permanent_error(
    facts: dict[str, str | int],
) -> None:
    with pytest.raises((PermanentError, ValueError)):
        BackupTarget.of(action(**facts))


def test_template_versions_count_up_from_v1() -> None:
    assert next_version([]) == "v1"
    assert next_version(["v1", "v3", "hotfix"]) == "v4"
