"""What the backup target holds: per business, when each VM was last backed up.

Where it sits: a part of the Snapshot (``Snapshot.backups``), filled by the collector that lists
the backup targets; read by ``policies.backups`` to decide which VMs are due, and by the
metrics (``autoscaler_backup_last_success_timestamp_seconds``).

Known and unknown are kept apart on purpose. A business with a ``BackupCatalogue`` in the
snapshot was listed: a VM without a record there has no backup at all and is due. A business
without a catalogue was not listed (no collector, or its listing failed): nothing is known, and
no backup is planned for it, so that a broken listing never looks like a fleet without
backups (which would snapshot every VM at once).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autoscaler.model.names import Name
from autoscaler.model.topology import Frozen


class BackupRecord(Frozen):
    """The backups of one VM at its business's target (also of a VM retired since: backups
    outlive their VM)."""

    vm: Name
    last_success_at: float | None = Field(
        default=None, description="when its newest complete backup was taken; None: none"
    )
    count: int = Field(default=0, ge=0, description="complete backups kept at the target")
    last_failure_at: float | None = Field(
        default=None,
        description="when its last backup attempt failed (None: none known); a failure newer"
        " than the last success holds the next attempt back for a while",
    )


class BackupCatalogue(Frozen):
    """One business's backups as listed at ``listed_at``: a VM without a record has none."""

    business: Name
    listed_at: float = Field(description="when the target was listed (seconds since the epoch)")
    records: tuple[BackupRecord, ...] = ()

    @model_validator(mode="after")
    def _one_record_per_vm(self) -> BackupCatalogue:
        seen: set[str] = set()
        for record in self.records:
            if record.vm in seen:
                raise ValueError(f"backup catalogue of {self.business!r}: vm {record.vm!r} twice")
            seen.add(record.vm)
        return self

    def record(self, vm: str) -> BackupRecord | None:
        return next((r for r in self.records if r.vm == vm), None)


# ---- where backups are kept (written by the backup actuator, read by its collector) -------

BACKUP_ID_PATTERN = r"b\d{8}t\d{4}"
"""A backup's id: ``b`` and its schedule slot in UTC (``b20261201t0300``); ids sort by time."""
FAILURES_OBJECT = "autoscaler.backup-failures"
"""In a pool target: the RADOS object whose omap maps a VM to its last failed attempt."""
FAILURES_FILE = "failures.json"
"""In a folder target, per business: ``{vm: last failed attempt}``."""
META_PREFIX = "autoscaler.backup."
"""Image metadata of a backup image in a pool target: ``vm``, ``business``, ``lineage``; and per
backup ``ID.taken_at``, ``ID.consistency``, ``ID.parent`` (the backup it is a diff from)."""
MANIFEST_SUFFIX = ".json"
DIFF_SUFFIX = ".rbd-diff"


BACKUP_IMAGE_KEYS = tuple(f"{META_PREFIX}{k}" for k in ("vm", "business", "lineage"))
BACKUP_KEYS = ("taken_at", "consistency", "parent")


def backup_image_keys(backup_ids: list[str]) -> list[str]:
    """Every metadata key a backup image holding ``backup_ids`` may carry (read by key: the
    metadata listing of python-rbd 16.2 is not to be trusted)."""
    per_backup = [f"{META_PREFIX}{i}.{k}" for i in backup_ids for k in BACKUP_KEYS]
    return [*BACKUP_IMAGE_KEYS, *per_backup]


def backup_image(vm: str, lineage: str) -> str:
    """A VM's backup image (pool target) or folder (folder target): its name and the first
    hex digits of its domain's UUID, so a later VM of the same name never shares a chain."""
    return f"{vm}.{lineage}"
