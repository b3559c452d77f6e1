"""The Ceph collector on the lab's real cluster: healthy, an OSD down, a rack down, a hung mon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import rados

from autoscaler.model import Collection, Scope, SignalName
from collectors.ceph import CephCollector, connect
from lab import ceph
from lab.layout import LabLayout
from lab.supervision import running_pid
from tests.integration import conftest_components as components

lab_layout = components.lab_layout
ceph_cluster = components.ceph_cluster


@pytest.fixture()
def rados_client(ceph_cluster: ceph.CephCluster) -> Iterator[Any]:
    """A client of this test's own: one that lived through another test's OSD restarts may
    keep timing out on writes the cluster takes (see ``_restart``)."""
    client = connect(ceph_cluster.conffile, ceph_cluster.keyring, timeout_s=3.0)
    yield client
    client.shutdown()


def _value(collection: Collection, metric: str, target: str, **labels: str) -> float | None:
    wanted = {"target": target, **labels}
    for sample in collection.samples:
        if sample.metric == metric and all(sample.label(k) == v for k, v in wanted.items()):
            return sample.value
    return None


def _rack_counts(collection: Collection, rack: str) -> tuple[float | None, float | None]:
    return (
        _value(collection, SignalName.CEPH_OSDS_UP, rack),
        _value(collection, SignalName.CEPH_OSDS_TOTAL, rack),
    )


def _checks(collection: Collection) -> set[str]:
    return {str(s.label("check")) for s in collection.samples if s.metric == "ceph_health_check"}


def _all_up(collection: Collection) -> bool:
    """Every OSD up and every PG active+clean (so client I/O does not wait for peering)."""
    return (
        not collection.stale
        and all(_rack_counts(collection, rack) == (2, 2) for rack in components.RACKS)
        and _value(collection, "ceph_pgs_active_clean", "ceph")
        == _value(collection, "ceph_pgs_total", "ceph")
    )


def _write(ioctx: Any, key: str, data: bytes) -> bool:
    try:
        ioctx.write_full(key, data)
    except rados.TimedOut:
        return False
    return True


def _cluster_view(client: Any) -> str:
    """What the mon says about OSDs and PGs, for a failure message."""
    parts = []
    for prefix in ("osd stat", "pg stat", "health"):
        ret, out, err = client.mon_command(
            json.dumps({"prefix": prefix, "detail": "detail"}), b"", timeout=5
        )
        parts.append(f"{prefix}: {out.decode(errors='replace').strip() or err} (ret {ret})")
    return "; ".join(parts)


def _write_eventually(
    client: Any, cluster: ceph.CephCluster, key: str, data: bytes, *, timeout: float
) -> None:
    """Write ``key``, retrying while PGs peer; a write still stuck fails with the mon's view.

    A client whose writes stay stuck while the cluster reports every PG clean would be a
    client-side fault, so the last attempt goes through a fresh connection and the message says
    which of the two it was.
    """
    ioctx = client.open_ioctx(cluster.pool)
    try:
        deadline = time.monotonic() + timeout
        while not _write(ioctx, key, data):
            if time.monotonic() > deadline:
                break
        else:
            return
    finally:
        ioctx.close()
    view = _cluster_view(client)
    fresh = connect(cluster.conffile, cluster.keyring, timeout_s=10.0)
    try:
        fresh_ioctx = fresh.open_ioctx(cluster.pool)
        landed = _write(fresh_ioctx, key, data)
        fresh_ioctx.close()
    finally:
        fresh.shutdown()
    pytest.fail(
        f"after {timeout:.0f} s a write of {key!r} still timed out; through a fresh client it "
        f"{'landed' if landed else 'timed out too'}; {view}"
    )


def _restart(
    layout: LabLayout,
    collector: CephCollector,
    cluster: ceph.CephCluster,
    osds: tuple[int, ...],
) -> None:
    """Start ``osds`` again and wait until the cluster is clean and takes writes again.

    The writes go through a new client. The test's own client, which read through the stop
    with a 3-s op timeout, was seen (2 runs of 4) to time out on every write for a minute after
    the restart while a new client's write landed at once: a librados handle's state, not the
    cluster's (a long-lived writer must reconnect; noted for the RADOS state store).
    """
    for osd in osds:
        ceph.start_osd(layout, osd)
    components.eventually(
        lambda: collector.collect(time.time()), _all_up, timeout=60, what="every OSD up, PGs clean"
    )
    fresh = connect(cluster.conffile, cluster.keyring, timeout_s=3.0)
    try:
        _write_eventually(fresh, cluster, "probe", b"written after a restart", timeout=60)
    finally:
        fresh.shutdown()


def test_a_healthy_cluster_maps_every_osd_to_its_crush_rack(
    ceph_cluster: ceph.CephCluster, rados_client: Any
) -> None:
    collector = CephCollector(rados_client, timeout_s=3.0)
    seen = components.eventually(  # the mgr's PG digest may lag the cluster start by a second
        lambda: collector.collect(time.time()), _all_up, timeout=30, what="all up, PGs clean"
    )
    assert _value(seen, "ceph_health_status", "ceph") == 0.0
    for rack, osds in ceph_cluster.osds_by_rack.items():
        assert _rack_counts(seen, rack) == (2, 2)
        for osd in osds:
            assert _value(seen, "ceph_osd_up", rack, osd=f"osd.{osd}") == 1.0
            assert _value(seen, "ceph_osd_in", rack, osd=f"osd.{osd}") == 1.0
            assert _value(seen, "ceph_osd_commit_latency_ms", rack, osd=f"osd.{osd}") is not None
    assert _value(seen, SignalName.CEPH_OSDS_TOTAL, "ceph") == 4
    # Each pool is a scope of its own (its name the target); percent_used a ratio 0-1.
    assert _value(seen, "ceph_pool_max_avail_bytes", ceph_cluster.pool, scope="pool") > 0  # type: ignore[operator]
    assert 0 <= _value(seen, "ceph_pool_percent_used", ceph_cluster.pool, scope="pool") < 1  # type: ignore[operator]
    # The state pool, the images pool and the backups pool: 8 PGs each.
    assert _value(seen, "ceph_pgs_total", "ceph") == 24
    assert _value(seen, SignalName.CEPH_PGS_INACTIVE, "ceph") == 0


def test_one_osd_stopped_reads_as_one_of_two_up_in_its_rack_and_osd_down(
    lab_layout: LabLayout, ceph_cluster: ceph.CephCluster, rados_client: Any
) -> None:
    collector = CephCollector(rados_client, timeout_s=3.0)
    victim = ceph_cluster.osds_by_rack["r1"][0]
    ceph.stop_osd(lab_layout, victim)
    try:
        seen = components.eventually(
            lambda: collector.collect(time.time()),
            lambda c: _rack_counts(c, "r1") == (1, 2) and "OSD_DOWN" in _checks(c),
            timeout=30,
            what="r1 at 1 of 2 OSDs with OSD_DOWN",
        )
        assert _rack_counts(seen, "r2") == (2, 2)
        assert _value(seen, "ceph_osd_up", "r1", osd=f"osd.{victim}") == 0.0
        assert _value(seen, "ceph_osd_commit_latency_ms", "r1", osd=f"osd.{victim}") is None
        assert _value(seen, "ceph_health_status", "ceph") == 1.0
    finally:
        _restart(lab_layout, collector, ceph_cluster, (victim,))


def test_a_whole_rack_stopped_reads_as_zero_of_two_while_data_stays_readable(
    lab_layout: LabLayout, ceph_cluster: ceph.CephCluster, rados_client: Any
) -> None:
    collector = CephCollector(rados_client, timeout_s=3.0)
    _write_eventually(
        rados_client, ceph_cluster, "survivor", b"kept across a rack failure", timeout=90
    )
    ioctx = rados_client.open_ioctx(ceph_cluster.pool)
    rack = ceph_cluster.osds_by_rack["r2"]
    for osd in rack:
        ceph.stop_osd(lab_layout, osd)
    try:
        seen = components.eventually(
            lambda: collector.collect(time.time()),
            lambda c: _rack_counts(c, "r2") == (0, 2),
            timeout=30,
            what="r2 at 0 of 2 OSDs",
        )
        assert _rack_counts(seen, "r1") == (2, 2)
        assert _checks(seen) & {"OSD_RACK_DOWN", "OSD_DOWN"}
        assert ioctx.read("survivor") == b"kept across a rack failure"
    finally:
        ioctx.close()
        _restart(lab_layout, collector, ceph_cluster, rack)


def test_a_hung_mon_costs_one_timeout_and_marks_the_cluster_and_its_racks_stale(
    lab_layout: LabLayout, ceph_cluster: ceph.CephCluster, rados_client: Any
) -> None:
    collector = CephCollector(rados_client, timeout_s=2.0)
    good = collector.collect(time.time())
    assert not good.stale
    good_at = good.samples[0].timestamp
    hung, took = components.collect_while_hung(
        running_pid(lab_layout.ceph_dir / "run", "mon.a"), lambda: collector.collect(time.time())
    )
    assert took < 2.5
    assert not hung.samples, "nothing may be reported while the mon does not answer"
    assert {(s.scope, s.target) for s in hung.stale if s.scope is not Scope.POOL} == {
        (Scope.CLUSTER, "ceph"),
        (Scope.RACK, "r1"),
        (Scope.RACK, "r2"),
    }
    assert (Scope.POOL, ceph_cluster.pool) in {(s.scope, s.target) for s in hung.stale}
    assert all(s.last_good == good_at for s in hung.stale)
    components.eventually(
        lambda: collector.collect(time.time()), _all_up, timeout=30, what="the mon answering again"
    )
