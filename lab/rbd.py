"""The lab's businesses on RBD: their templates pushed into the lab Ceph's ``images`` pool.

Where it sits: called by ``lab up`` once Ceph runs. Every business's template is pushed as the
RBD image named after the business, version ``v1``, exactly as ``autoscaler images push`` does
(same store, same writer), so the controller's clones on RBD find it. ``rbd_template`` is what
a lab policy says to clone from it; a lab started with ``storage: rbd`` writes it into the
policies it copies, and its first VMs boot from RBD clones.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actuators.base import Fleet
from actuators.rbd_store import RbdStore
from actuators.template_import import raw_copy, write_raw
from autoscaler.model import RbdStorage
from collectors.ceph import connect
from lab.ceph import BACKUPS_POOL, IMAGES_POOL, CephCluster

VERSION = "v1"


def store(cluster: CephCluster) -> RbdStore:
    return RbdStore(lambda: connect(cluster.conffile, cluster.keyring, timeout_s=10))


def push_templates(rbd: RbdStore, templates: Mapping[str, Path]) -> None:
    """business -> template file: each pushed as ``images/BUSINESS@v1`` unless it is there."""
    for business, source in sorted(templates.items()):
        if any(v.name == VERSION for v in rbd.template_versions(IMAGES_POOL, business)):
            continue
        with tempfile.TemporaryDirectory(prefix="lab-push-") as tmp:
            raw, size = raw_copy(source, Path(tmp))
            rbd.push_template(IMAGES_POOL, business, VERSION, size, write_raw(raw))


def push_version(rbd: RbdStore, business: str, version: str) -> None:
    """``images/BUSINESS@version`` with the content the template has now (unless it is there):
    a new version to roll out to on a lab (the demo's rollout), nothing written. A version's
    own content, if any, comes from its config drive, not from the image."""
    versions = rbd.template_versions(IMAGES_POOL, business)
    if not versions:
        raise RuntimeError(f"{IMAGES_POOL}/{business} has no version to start from")
    if any(v.name == version for v in versions):
        return
    rbd.push_template(IMAGES_POOL, business, version, 0, lambda _image: None)


def fleet_on_rbd(fleet: Fleet, business: str, *, min_instances: int | None = None) -> Fleet:
    """``fleet`` with ``business`` cloning from its template on RBD (``images/BUSINESS@v1``,
    pushed by ``lab up``); ``min_instances`` to lower its floor (tests and benchmarks retire
    what they make whatever else serves it)."""
    current = fleet.businesses[business]
    template = current.template.model_copy(
        update={"image": business, "version": VERSION, "storage": RbdStorage(pool=IMAGES_POOL)}
    )
    update: dict[str, Any] = {"template": template}
    if min_instances is not None:
        update["min_instances"] = min_instances
    changed = current.model_copy(update=update)
    return dataclasses.replace(fleet, businesses={**fleet.businesses, business: changed})


def daily_backups() -> dict[str, Any]:
    """The backup section of a lab policy on RBD: daily at 03:00 UTC into the backups pool."""
    return {
        "every": "1d",
        "keep": 7,
        "at": "03:00",
        "target": {"kind": "pool", "pool": BACKUPS_POOL},
    }


def rbd_template(business: str) -> dict[str, Any]:
    """The template fields a lab policy carries to clone from ``images/BUSINESS@v1``."""
    return {"image": business, "storage": {"kind": "rbd", "pool": IMAGES_POOL}, "version": VERSION}
