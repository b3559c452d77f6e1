"""The shared state on the lab's real Ceph: fenced by the cluster, shared by every machine.

Two clients stand for two controller machines: each has its own cluster handle and only the
pool in common. Each test works in a namespace of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rados
from ruamel.yaml import YAML

from autoscaler.model import (
    CloneFromTemplate,
    ConfigError,
    ControllerRecord,
    LedgerRecord,
    Phase,
    Plan,
)
from autoscaler.runtime.controls import ControlFile
from autoscaler.runtime.history import BUSY_CORES, HistoryStore, SeriesKind
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.memory_file import MemoryFile
from autoscaler.runtime.rados_controls import RadosControls
from autoscaler.runtime.rados_history import SharedHistory, warm_from_shared
from autoscaler.runtime.rados_journal import RadosJournal
from autoscaler.runtime.rados_lease import RadosLease
from autoscaler.runtime.rados_memory import RadosMemory
from autoscaler.runtime.rados_plans import RadosPlans
from autoscaler.runtime.rados_state import FencedObject, StoreFenced
from lab import ceph
from tests.integration.conftest_components import ceph_cluster, eventually, lab_layout
from tests.integration.test_rados_lease import client

__all__ = ["ceph_cluster", "lab_layout"]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_machines(ceph_cluster: ceph.CephCluster) -> Iterator[tuple[Any, Any]]:
    """An I/O context for each of two machines, in a namespace of this test's own."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    a, b = client(ceph_cluster), client(ceph_cluster)
    try:
        ios = []
        for handle in (a, b):
            ioctx = handle.open_ioctx(ceph_cluster.pool)
            ioctx.set_namespace(namespace)
            ios.append(ioctx)
        yield ios[0], ios[1]
    finally:
        a.shutdown()
        b.shutdown()


def _clone(vm: str, generation: int) -> CloneFromTemplate:
    return CloneFromTemplate(
        business="web", vm=vm, host="h1", reason="test", lease_generation=generation
    )


def test_a_deposed_leaders_write_is_refused_by_the_cluster_and_leaves_no_trace(
    two_machines: tuple[Any, Any],
) -> None:
    io_a, io_b = two_machines
    old = FencedObject(io_a, writer=lambda: 4)
    new = FencedObject(io_b, writer=lambda: 5)
    old.claim(4)
    old.write({"k/one": b"1"})
    new.claim(5)
    assert new.fence() == 5
    with pytest.raises(StoreFenced, match="generation 5 has claimed it"):
        old.write({"k/two": b"2"}, remove=["k/one"])
    # Neither half of the refused op happened.
    assert new.read(["k/one", "k/two"]) == {"k/one": b"1"}
    new.write({"k/two": b"2"})
    assert old.read(["k/two"]) == {"k/two": b"2"}
    # A claim never takes the fence back.
    with pytest.raises(StoreFenced):
        old.claim(4)
    # The comparison is numeric, not by the digits' count: 10 is above 9.
    FencedObject(io_b, writer=lambda: 10).claim(10)
    with pytest.raises(StoreFenced):
        FencedObject(io_a, writer=lambda: 9).write({"k/three": b"3"})


def test_the_journal_written_on_one_machine_is_read_and_settled_on_the_other(
    two_machines: tuple[Any, Any],
) -> None:
    io_a, io_b = two_machines
    first = RadosJournal(FencedObject(io_a, writer=lambda: 1))
    first.store.claim(1)
    first.record_intent("plan-aaaaaaaaaaaa", _clone("web-1", 1), 100.0)
    first.record_step(_clone("web-1", 1).key, "overlay-created", 101.0)
    first.record_intent("plan-aaaaaaaaaaaa", _clone("web-2", 1), 102.0)
    first.record_outcome(_clone("web-2", 1).key, Phase.DONE, 103.0, "ready")

    second = RadosJournal(FencedObject(io_b, writer=lambda: 2))
    second.store.claim(2)
    left = second.unfinished()
    assert [(e.action.vm, e.step, e.phase) for e in left] == [
        ("web-1", "overlay-created", Phase.INTENT)
    ]
    assert second.max_generation() == 1
    # The new leader settles it; the old one can no longer touch it.
    second.record_outcome(left[0].key, Phase.COMPENSATED, 110.0, "undone")
    with pytest.raises(StoreFenced):
        first.record_step(left[0].key, "defined", 111.0)
    assert second.unfinished() == []
    entry = second.get(left[0].key)
    assert (
        entry is not None and entry.phase is Phase.COMPENSATED and entry.step == "overlay-created"
    )
    assert [e.action.vm for e in second.history(10)] == ["web-2", "web-1"]
    assert second.vms_seen() == {"web-1", "web-2"}
    # A key that runs again gets a new row; get() gives the newest.
    second.record_intent("plan-bbbbbbbbbbbb", _clone("web-1", 2), 120.0)
    again = second.get(_clone("web-1", 2).key)
    assert (
        again is not None and again.phase is Phase.INTENT and again.plan_id == "plan-bbbbbbbbbbbb"
    )
    assert len(second.history(10)) == 3


def test_controls_changed_from_two_machines_at_once_lose_nothing(
    two_machines: tuple[Any, Any],
) -> None:
    io_a, io_b = two_machines
    machines = [RadosControls(io_a), RadosControls(io_b)]
    errors: list[BaseException] = []

    def cordon_many(i: int) -> None:
        try:
            for n in range(8):
                machines[i].cordon(f"host-{i}-{n}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=cordon_many, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    expected = {f"host-{i}-{n}" for i in (0, 1) for n in range(8)}
    assert machines[0].read().cordoned == expected
    machines[1].pause("web")
    machines[0].drain("host-0-0")
    seen = machines[1].read()
    assert seen.paused == {"web"} and seen.draining == {"host-0-0"}


def test_the_memory_record_carries_over_and_a_newer_one_is_refused(
    two_machines: tuple[Any, Any],
) -> None:
    io_a, io_b = two_machines
    leader = FencedObject(io_a, writer=lambda: 3)
    leader.claim(3)
    record = ControllerRecord(
        schema_version=1,
        saved_at=50.0,
        recent_actions={"web": (10.0, 20.0)},
        last_scale_up={"web": 20.0},
        ledgers={"web": LedgerRecord(ends_s=(60.0,), good=(59.0,), total=(60.0,))},
    )
    RadosMemory(leader, time.time).save(record)
    assert RadosMemory(FencedObject(io_b, writer=lambda: None), time.time).load() == record
    newer = record.model_dump(mode="json")
    newer["schema_version"] = 99
    leader.write({"memory": json.dumps(newer).encode()})
    with pytest.raises(ConfigError, match="schema_version"):
        RadosMemory(FencedObject(io_b, writer=lambda: None), time.time).load()


def test_a_new_lease_holder_claims_the_state_so_the_old_holders_writes_are_refused(
    ceph_cluster: ceph.CephCluster, two_machines: tuple[Any, Any]
) -> None:
    io_a, io_b = two_machines
    lease_obj = f"lease-{uuid.uuid4().hex[:8]}"
    state_a = FencedObject(io_a, writer=lambda: None)
    state_b = FencedObject(io_b, writer=lambda: None)
    a = RadosLease(io_a, "a", 3, obj=lease_obj, floor=state_a.fence, on_acquire=state_a.claim)
    b = RadosLease(io_b, "b", 3, obj=lease_obj, floor=state_b.fence, on_acquire=state_b.claim)
    state_a.writer, state_b.writer = a.last_generation, b.last_generation
    held = a.try_acquire(time.time())
    assert held is not None and state_a.fence() == held.generation
    journal_a = RadosJournal(state_a)
    journal_a.record_intent("plan-cccccccccccc", _clone("web-9", held.generation), 1.0)
    # a stops renewing (frozen); b takes over once the cluster lets the lock expire.
    taken = eventually(
        lambda: b.try_acquire(time.time()),
        lambda s: s is not None,
        timeout=30,
        what="b holding the lease",
    )
    assert taken is not None and taken.generation == held.generation + 1
    assert state_b.fence() == taken.generation
    # a wakes up and, whatever it believes, the cluster refuses its next journal write.
    with pytest.raises(StoreFenced):
        journal_a.record_step(_clone("web-9", held.generation).key, "defined", 2.0)
    assert RadosJournal(state_b).get(_clone("web-9", 1).key) is not None
    b.release()


def test_the_documented_least_capabilities_are_enough_and_fence_the_user_to_its_namespace(
    ceph_cluster: ceph.CephCluster, tmp_path: Path
) -> None:
    """docs/shared-state.md: mon 'allow r', osd 'allow rwx pool=P namespace=N'."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    entity = f"client.as-{uuid.uuid4().hex[:6]}"
    admin = client(ceph_cluster)
    try:
        cmd = {
            "prefix": "auth get-or-create",
            "entity": entity,
            "caps": [
                "mon",
                "allow r",
                "osd",
                f"allow rwx pool={ceph_cluster.pool} namespace={namespace}",
            ],
            "format": "plain",
        }
        code, out, err = admin.mon_command(json.dumps(cmd), b"", timeout=10)
        assert code == 0, err
        keyring = tmp_path / "keyring"
        keyring.write_bytes(out)
        user = rados.Rados(
            name=entity,
            conffile=str(ceph_cluster.conffile),
            conf={"keyring": str(keyring), "rados_osd_op_timeout": "5"},
        )
        user.connect(timeout=10)
        try:
            ioctx = user.open_ioctx(ceph_cluster.pool)
            ioctx.set_namespace(namespace)
            state = FencedObject(ioctx, writer=lambda: None)
            lease = RadosLease(
                ioctx, "a", 3, obj="lease", floor=state.fence, on_acquire=state.claim
            )
            state.writer = lease.last_generation
            held = lease.try_acquire(time.time())
            assert held is not None and state.fence() == held.generation
            RadosJournal(state).record_intent(
                "plan-dddddddddddd", _clone("web-3", held.generation), 1.0
            )
            RadosControls(ioctx).pause("web")
            lease.release()
            ioctx.set_namespace("another")
            with pytest.raises((rados.PermissionError, rados.PermissionDeniedError)):
                ioctx.write_full("x", b"x")
        finally:
            user.shutdown()
    finally:
        admin.mon_command(json.dumps({"prefix": "auth rm", "entity": entity}), b"", timeout=10)
        admin.shutdown()


def _controller_file(cluster: ceph.CephCluster, folder: Path, namespace: str) -> Path:
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load((ROOT / "examples" / "controller.yaml").read_text())
    doc.update(
        {
            "policy_dir": str(ROOT / "examples" / "businesses"),
            "image_dir": str(ROOT / "examples" / "images"),
            "state_dir": str(folder / "state"),
            "ceph": {
                "conf": str(cluster.conffile),
                "keyring": str(cluster.keyring),
                "pool": cluster.pool,
            },
            "lease": {"kind": "rados", "duration_s": 3},
            "state": {"kind": "rados", "namespace": namespace},
        }
    )
    path = folder / "controller.yaml"
    with path.open("w") as out:
        yaml.dump(doc, out)
    return path


def _migrate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "autoscaler.cli",
            "state",
            "migrate",
            "--to",
            "rados",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_state_migrate_moves_a_state_folder_into_the_pool_once(
    ceph_cluster: ceph.CephCluster, tmp_path: Path, two_machines: tuple[Any, Any]
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    config = _controller_file(ceph_cluster, tmp_path, namespace)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with SqliteJournal(state / "journal.sqlite") as local:
        local.record_intent("plan-eeeeeeeeeeee", _clone("web-5", 7), 10.0)
        local.record_outcome(_clone("web-5", 7).key, Phase.DONE, 11.0, "ready")
        local.record_intent("plan-eeeeeeeeeeee", _clone("web-6", 7), 12.0)
        local.record_step(_clone("web-6", 7).key, "defined", 13.0)
    ControlFile(state).cordon("n1-r01-h01")
    record = ControllerRecord(schema_version=1, saved_at=14.0, last_scale_down={"web": 9.0})
    MemoryFile(state / "memory.json").save(record)

    done = _migrate(config)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["moved"] == {"journal": 2, "controls": True, "memory": True}
    assert report["generation"] > 7

    io = two_machines[0]
    io.set_namespace(namespace)
    reader = FencedObject(io, writer=lambda: None)
    journal = RadosJournal(reader)
    assert [(e.action.vm, e.phase, e.step) for e in journal.unfinished()] == [
        ("web-6", Phase.INTENT, "defined")
    ]
    assert [e.action.vm for e in journal.history(10)] == ["web-6", "web-5"]
    assert RadosControls(io).read().cordoned == {"n1-r01-h01"}
    assert RadosMemory(reader, time.time).load() == record
    assert reader.fence() == report["generation"]

    again = _migrate(config)
    assert again.returncode == 1 and "already holds 2 journal entries" in again.stderr


def test_a_plan_exported_on_one_machine_is_listed_approved_and_taken_once_from_another(
    two_machines: tuple[Any, Any],
) -> None:
    io_a, io_b = two_machines
    clock = [1000.0]
    leader_a = FencedObject(io_a, writer=lambda: 1)
    leader_a.claim(1)
    plans_a = RadosPlans(leader_a, lambda: clock[0])
    plan = Plan.build([_clone("web-7", 1)], created_at=clock[0])
    where = plans_a.export(plan)
    # The same recommendation a cycle later is not written again.
    clock[0] += 10
    assert plans_a.export(Plan.build([_clone("web-7", 1)], created_at=clock[0])) == where
    reader = RadosPlans(FencedObject(io_b, writer=lambda: None), lambda: clock[0])
    assert [(s.plan.id, s.taken) for s in reader.list()] == [(plan.id, False)]
    # Another machine leads now: it takes the approved plan once; the old leader cannot.
    leader_b = FencedObject(io_b, writer=lambda: 2)
    leader_b.claim(2)
    plans_b = RadosPlans(leader_b, lambda: clock[0])
    with pytest.raises(StoreFenced):
        plans_a.take_approved(frozenset({plan.id}))
    assert [p.id for p in plans_b.take_approved(frozenset({plan.id, "not-a-plan"}))] == [plan.id]
    assert plans_b.take_approved(frozenset({plan.id})) == []
    assert [s.taken for s in reader.list()] == [True]


def test_a_new_machine_copies_the_demand_history_it_lacks_from_the_pool(
    two_machines: tuple[Any, Any], tmp_path: Path
) -> None:
    io_a, io_b = two_machines
    now = 1_700_000_040.0  # on a minute
    day = 86_400.0
    leader = HistoryStore(tmp_path / "a.sqlite")
    newcomer = HistoryStore(tmp_path / "b.sqlite")
    try:
        # The leader's two days of busy cores, one a minute; the pool keeps one day of them.
        points = [(now - day * 2 + 60.0 * i, 1.0 + (i % 60) / 60) for i in range(2 * 1440)]
        leader.record(SeriesKind.BUSINESS, "web", BUSY_CORES, points)
        shared = SharedHistory(io_a, keep_s=day)
        stored = leader.busy_cores("web")
        shared.publish("web", zip(stored.index.asi8 / 1e9, stored.to_numpy(), strict=True), now)
        # The newcomer measured the last minutes itself: those it keeps as they are.
        newcomer.record(SeriesKind.BUSINESS, "web", BUSY_CORES, [(now - 60.0, 9.0)])
        copied = warm_from_shared(newcomer, SharedHistory(io_b, keep_s=day), {"web": day}, now)
        got = newcomer.busy_cores("web", start=now - day)
        assert copied == {"web": 1439}
        assert len(got) == 1440 and got.iloc[-1] == 9.0
        expected = leader.busy_cores("web", start=now - day, end=now - 60.0)
        assert got.iloc[:-1].to_numpy().tolist() == expected.to_numpy().tolist()
        # Again: nothing more to copy.
        assert warm_from_shared(newcomer, SharedHistory(io_b, keep_s=day), {"web": day}, now) == {
            "web": 0
        }
        # A business the pool never saw: nothing, no error.
        assert warm_from_shared(newcomer, SharedHistory(io_b, keep_s=day), {"db": day}, now) == {
            "db": 0
        }
    finally:
        leader.close()
        newcomer.close()
