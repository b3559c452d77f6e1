"""The backup catalogue: what each business's backup target holds, per VM.

Where it sits: a collector, first stage of the flow. For every business whose policy has a
``backup`` section it lists the target the backup actuator writes (``autoscaler.model.backups``
says the layout): in a pool, the backup images (their metadata names VM and business; each
backup is a snapshot) and the failures object; in a folder, the manifests (written last, so one
means a complete backup) and ``failures.json``. It reports per business that the target was
listed and per VM its newest backup, their count and its last failed attempt; the snapshot
builder turns those into ``Snapshot.backups``. A target that cannot be listed makes its
business stale: its catalogue is then unknown and no backup is planned for it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rados
import rbd

from autoscaler.model import Collection, Sample, Scope, Stale
from autoscaler.model.backups import (
    BACKUP_ID_PATTERN,
    FAILURES_FILE,
    FAILURES_OBJECT,
    MANIFEST_SUFFIX,
    META_PREFIX,
    backup_image_keys,
)

_BACKUP_ID = re.compile(rf"\A{BACKUP_ID_PATTERN}\Z")
LISTED = "backup_catalogue_listed"
LAST_SUCCESS = "backup_last_success_timestamp"
COUNT = "backup_count"
LAST_FAILURE = "backup_last_failure_timestamp"
MAX_FAILURES_READ = 10_000


def _read_metadata(image: Any, keys: list[str]) -> dict[str, str]:
    # Value by key: python-rbd 16.2's metadata_list loses keys and mispairs values.
    out: dict[str, str] = {}
    for key in keys:
        try:
            out[key] = str(image.metadata_get(key))
        except (KeyError, rbd.ObjectNotFound):
            continue
    return out


@dataclass
class _Seen:
    last: float | None = None
    count: int = 0
    failed: float | None = None


def _samples(business: str, listed_at: float, seen: dict[str, _Seen]) -> list[Sample]:
    out = [Sample(LISTED, 1.0, listed_at, (("business", business),))]
    for vm, s in sorted(seen.items()):
        labels = (("business", business), ("vm", vm))
        out.append(Sample(COUNT, float(s.count), listed_at, labels))
        if s.last is not None:
            out.append(Sample(LAST_SUCCESS, s.last, listed_at, labels))
        if s.failed is not None:
            out.append(Sample(LAST_FAILURE, s.failed, listed_at, labels))
    return out


@dataclass
class BackupCatalogueCollector:
    """``targets()``: business -> ("pool", POOL) or ("folder", PATH), from the policies now in
    force; ``cluster()``: the process's rados handle (called only for pool targets)."""

    targets: Callable[[], Mapping[str, tuple[str, str]]]
    cluster: Callable[[], Any]
    name: str = "backups"
    scope: Scope = Scope.BUSINESS
    target: str = "backups"
    every_s: float = 60.0
    """How often a target is listed again (a listing opens every backup image; backups are
    hours apart). In between, the last listing is reported with the time it was made, so a
    backup taken since is not planned again on an older listing (``policies.backups``)."""
    _listed: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, dict[str, _Seen]] = field(default_factory=dict)

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        samples: list[Sample] = []
        stale: list[Stale] = []
        errors: list[str] = []
        for business, (kind, where) in sorted(self.targets().items()):
            listed = self._listed.get(business)
            if listed is not None and now - listed < self.every_s and business in self._seen:
                samples.extend(_samples(business, listed, self._seen[business]))
                continue
            try:
                seen = (
                    self._pool(where, business) if kind == "pool" else self._folder(where, business)
                )
            except (OSError, rados.Error, rbd.Error, ValueError) as exc:
                reason = f"backup target {kind} {where} unreadable: {exc}"
                stale.append(
                    Stale(
                        scope=Scope.BUSINESS,
                        target=business,
                        source=self.name,
                        last_good=self._listed.get(business),
                        reason=reason,
                    )
                )
                errors.append(reason)
                continue
            self._listed[business], self._seen[business] = now, seen
            samples.extend(_samples(business, now, seen))
        return Collection(
            source=self.name,
            samples=tuple(samples),
            stale=tuple(stale),
            duration_s=time.monotonic() - started,
            errors=tuple(errors),
        )

    def _pool(self, pool: str, business: str) -> dict[str, _Seen]:
        seen: dict[str, _Seen] = {}
        ioctx = self.cluster().open_ioctx(pool)
        try:
            for name in rbd.RBD().list(ioctx):
                try:
                    with rbd.Image(ioctx, name, read_only=True) as img:
                        sids = [str(s["name"]) for s in img.list_snaps()]
                        meta = _read_metadata(img, backup_image_keys(sids))
                        if meta.get(META_PREFIX + "business") != business:
                            continue
                        vm = meta.get(META_PREFIX + "vm", "")
                        entry = seen.setdefault(vm, _Seen())
                        for sid in sids:
                            if _BACKUP_ID.match(sid):
                                taken = float(meta.get(f"{META_PREFIX}{sid}.taken_at", "0"))
                                entry.count += 1
                                entry.last = max(entry.last or 0.0, taken)
                except rbd.ImageNotFound:
                    continue  # removed while we listed
            with rados.ReadOpCtx() as op:
                items, _ = ioctx.get_omap_vals(op, "", "", MAX_FAILURES_READ)
                try:
                    ioctx.operate_read_op(op, FAILURES_OBJECT)
                    failures = {str(k): float(v.decode()) for k, v in items}
                except rados.ObjectNotFound:
                    failures = {}
            for vm, when in failures.items():
                seen.setdefault(vm, _Seen()).failed = when
        finally:
            ioctx.close()
        return seen

    def _folder(self, root: str, business: str) -> dict[str, _Seen]:
        seen: dict[str, _Seen] = {}
        folder = Path(root) / business
        if not Path(root).is_dir():
            raise OSError(f"{root} is not a folder (not mounted?)")
        if not folder.is_dir():
            return seen
        for manifest in folder.glob(f"*/b*{MANIFEST_SUFFIX}"):
            try:
                data = json.loads(manifest.read_text())
                vm, taken = str(data["vm"]), float(data["taken_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            entry = seen.setdefault(vm, _Seen())
            entry.count += 1
            entry.last = max(entry.last or 0.0, taken)
        failures_file = folder / FAILURES_FILE
        if failures_file.exists():
            failures = json.loads(failures_file.read_text())
            if isinstance(failures, dict):
                for vm, when in failures.items():
                    seen.setdefault(str(vm), _Seen()).failed = float(when)
        return seen
