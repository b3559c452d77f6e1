"""The RADOS lease on the lab's real Ceph: one holder, renewal, takeover after expiry."""

from __future__ import annotations

import time

import pytest
import rados

from autoscaler.model import DeposedLeader
from autoscaler.runtime.rados_lease import RadosLease
from lab import ceph
from tests.integration.conftest_components import ceph_cluster, eventually, lab_layout

__all__ = ["ceph_cluster", "lab_layout"]


def client(cluster: ceph.CephCluster) -> rados.Rados:
    handle = rados.Rados(
        conffile=str(cluster.conffile),
        conf={
            "keyring": str(cluster.keyring),
            "rados_osd_op_timeout": "5",
            "rados_mon_op_timeout": "5",
        },
    )
    handle.connect(timeout=10)
    return handle


def test_rados_lease_elects_one_holder_and_hands_over_after_expiry(
    ceph_cluster: ceph.CephCluster,
) -> None:
    a_client, b_client = client(ceph_cluster), client(ceph_cluster)
    try:
        a = RadosLease(a_client.open_ioctx(ceph_cluster.pool), "a", 4, obj="lease-test")
        b = RadosLease(b_client.open_ioctx(ceph_cluster.pool), "b", 4, obj="lease-test")
        first = a.try_acquire(time.time())
        assert first is not None
        assert b.try_acquire(time.time()) is None
        assert a.renew(time.time()).generation == first.generation
        # a stops renewing (frozen): b gets the lease once the cluster lets the lock expire
        started = time.monotonic()
        taken = eventually(
            lambda: b.try_acquire(time.time()),
            lambda s: s is not None,
            timeout=30,
            what="b holding the lease",
        )
        assert taken is not None and taken.generation == first.generation + 1
        assert time.monotonic() - started >= 1.0
        with pytest.raises(DeposedLeader):
            a.renew(time.time())
        b.release()
        again = a.try_acquire(time.time())
        assert again is not None and again.generation == first.generation + 2
        a.release()
    finally:
        a_client.shutdown()
        b_client.shutdown()
