"""Ceph's pool fullness and inactive PGs travel from the Ceph collector to the Snapshot as
Signals (pool scope, cluster scope), and become unknown when the mon stops answering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoscaler.config import ControllerConfig
from autoscaler.model import Collection, Sample, Scope, SignalName, Snapshot
from autoscaler.runtime.snapshot_builder import build_snapshot
from collectors.ceph import CephCollector
from policies.storage import StorageSettings, clone_block
from tests.unit.policies.builders import policy

ROOT = Path(__file__).resolve().parents[2]

REPLIES: dict[str, Any] = {
    "status": {
        "pgmap": {
            "num_pgs": 32,
            "pgs_by_state": [
                {"state_name": "active+clean", "count": 27},
                {"state_name": "active+undersized+degraded", "count": 2},
                {"state_name": "peering", "count": 2},
                {"state_name": "stale+active+clean", "count": 1},
            ],
        }
    },
    "health": {"status": "HEALTH_WARN", "checks": {}},
    "df": {
        "stats": {"total_bytes": 1000, "total_used_raw_bytes": 900},
        "pools": [
            {
                "name": "images",
                "stats": {"stored": 9, "objects": 3, "percent_used": 0.91, "max_avail": 10},
            },
            {
                "name": "backups",
                "stats": {"stored": 1, "objects": 1, "percent_used": 0.1, "max_avail": 90},
            },
        ],
    },
    "osd perf": {"osdstats": {"osd_perf_infos": []}},
    "osd tree": {
        "nodes": [
            {"id": -2, "name": "r1", "type": "rack", "children": [0]},
            {"id": 0, "name": "osd.0", "type": "osd", "status": "up", "reweight": 1},
        ]
    },
}


class FakeRados:
    """A stand-in for the rados handle: the replies above, or an error once ``down``."""

    def __init__(self) -> None:
        self.down = False

    def mon_command(self, command: str, _inbuf: bytes, timeout: int = 0) -> tuple[int, bytes, str]:
        if self.down:
            return -110, b"", "timed out"
        return 0, json.dumps(REPLIES[json.loads(command)["prefix"]]).encode(), ""


def _config() -> ControllerConfig:
    host = {"name": "kvm-1", "uri": "qemu+tls://kvm-1/system", "cpus": 8, "memory_mib": 16384}
    return ControllerConfig.model_validate(
        {
            "apiVersion": "autoscaler/v1",
            "kind": "Controller",
            "policy_dir": str(ROOT / "examples" / "businesses"),
            "image_dir": str(ROOT / "examples" / "images"),
            "state_dir": "state",
            "inventory": {
                "regions": [
                    {
                        "name": "north",
                        "datacenters": [{"name": "n1", "racks": [{"name": "r1", "hosts": [host]}]}],
                    }
                ]
            },
        }
    )


def _snapshot(*collections: Collection, now: float) -> Snapshot:
    return build_snapshot(_config(), {}, collections, now)


def _value(snapshot: Snapshot, scope: Scope, target: str, name: str) -> float | None:
    found = [s.value for s in snapshot.signals_for(scope, target) if s.name == name]
    return found[0] if found else None


def test_pool_fullness_and_inactive_pgs_become_signals_of_the_pool_and_the_cluster() -> None:
    seen = CephCollector(FakeRados()).collect(100.0)
    snapshot = _snapshot(seen, now=100.0)
    # percent_used stays the ratio 0-1 Ceph's JSON gives, under the pool's own scope.
    assert _value(snapshot, Scope.POOL, "images", SignalName.CEPH_POOL_PERCENT_USED) == 0.91
    assert _value(snapshot, Scope.POOL, "backups", SignalName.CEPH_POOL_PERCENT_USED) == 0.1
    assert _value(snapshot, Scope.POOL, "images", "ceph_pool_max_avail_bytes") == 10
    # 32 PGs, 29 serving I/O: the peering ones and the stale one are inactive.
    assert _value(snapshot, Scope.CLUSTER, "ceph", SignalName.CEPH_PGS_INACTIVE) == 3
    # Per-OSD samples carry more labels than scope and target: details, not Signals.
    assert not [s for s in snapshot.signals if s.name == "ceph_osd_up"]


def test_only_samples_labelled_exactly_scope_and_target_become_signals() -> None:
    about_pool = (("scope", "pool"), ("target", "images"))
    samples = (
        Sample("ceph_pool_percent_used", 0.5, 100.0, about_pool),
        Sample("ceph_pool_objects", 7, 100.0, (*about_pool, ("class", "ssd"))),
        Sample("ceph_pool_stored_bytes", 7, 100.0, (("scope", "tank"), ("target", "images"))),
    )
    snapshot = _snapshot(Collection("ceph", samples), now=100.0)
    assert [(s.scope, s.target, s.name, s.value) for s in snapshot.signals] == [
        (Scope.POOL, "images", "ceph_pool_percent_used", 0.5)
    ]


def test_a_mon_that_stops_answering_leaves_the_pools_stale_and_an_rbd_clone_refused() -> None:
    rados = FakeRados()
    collector = CephCollector(rados, timeout_s=1.0)
    collector.collect(100.0)
    rados.down = True
    snapshot = _snapshot(collector.collect(110.0), now=110.0)
    assert {(s.scope, s.target) for s in snapshot.stale} == {
        (Scope.CLUSTER, "ceph"),
        (Scope.RACK, "r1"),
        (Scope.POOL, "backups"),
        (Scope.POOL, "images"),
    }
    assert all(s.last_good == 100.0 for s in snapshot.stale)
    assert not snapshot.signals
    web = policy(
        "web",
        template={
            "image": "web",
            "storage": {"kind": "rbd", "pool": "images"},
            "version": "v1",
            "vcpus": {"now": 1, "max": 2},
            "memory_mib": {"now": 256, "max": 512},
        },
    )
    why = clone_block(snapshot, web, StorageSettings(), 110.0)
    assert why is not None and why.startswith("no clone of web: Ceph health unknown (pool images")
    assert clone_block(snapshot, policy("web"), StorageSettings(), 110.0) is None  # local
