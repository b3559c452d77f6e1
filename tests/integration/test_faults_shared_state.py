"""Two controller machines whose only shared things are Ceph and Prometheus
(``state: {kind: rados}``), on the real lab: the store itself refuses a deposed leader.

Where it sits: the reliability suite on the real lab (issue 13). Two real ``autoscaler run``
processes, each with a controller file and a state folder of its own, share the lab's Ceph
pool (the RADOS lease and the shared state, in a namespace of this test) and the fleet key. The
leader is frozen (SIGSTOP) right after it journalled the intent of a clone, past its lease,
while the other takes over; it runs with its in-process fence switched off
(``testing.in_process_fence: false``), so when it resumes only the cluster can stop it. Its
next journal write must be refused by RADOS, and the clone must never be made by it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rados
from ruamel.yaml import YAML

from autoscaler.runtime.rados_journal import RadosJournal
from autoscaler.runtime.rados_memory import RadosMemory
from autoscaler.runtime.rados_state import FencedObject
from autoscaler.runtime.wiring import CRASH_ENV, FREEZE_ENV
from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS, PORT_CONTROLLER_METRICS_2
from tests.integration.lab_fixtures import events, wait_for
from tests.integration.test_controller import (
    DECIDE_S,
    LEASE_S,
    controller_file,
    done_actions,
    guest_after_migration,
    restore_lab,
    start,
    stop,
)
from tests.integration.test_faults_controller import (
    RolePoller,
    assert_nothing_lost,
    health,
    process_state,
)
from tests.integration.test_faults_crash import orphans
from tests.integration.test_faults_hosts import metrics, placements
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]  # the fixture, imported to be used by name


def machine_file(lab: Lab, folder: Path, namespace: str, **testing: bool) -> Path:
    """One machine's controller file: its own state folder, the shared lease and state."""
    path = controller_file(lab, folder)
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load(path.read_text())
    doc["lease"] = {"kind": "rados", "duration_s": LEASE_S}
    doc["state"] = {"kind": "rados", "namespace": namespace}
    doc["testing"] = {"fault_hooks": True, **testing}
    with open(path, "w") as out:
        yaml.dump(doc, out)
    return path


def started_as(
    role: str,
    config: Path,
    port: int,
    name: str,
    log: Path,
    monkeypatch: pytest.MonkeyPatch | None = None,
    env: tuple[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``autoscaler run`` as ``name`` (with ``env`` set for it alone), once /healthz says it is
    ``role``."""
    if env is not None and monkeypatch is not None:
        monkeypatch.setenv(*env)
    process = start(config, port, name, log)
    if env is not None and monkeypatch is not None:
        monkeypatch.delenv(env[0])
    wait_for(
        lambda: health(port).get("role"),
        lambda r: r == role,
        timeout=60,
        what=f"{name} {'leading' if role == 'leader' else 'on ' + role}",
    )
    return process


@pytest.fixture
def shared_journal(lab: Lab) -> Iterator[tuple[str, Any]]:
    """A namespace for this test, and an I/O context in it (the test's own client)."""
    assert lab.parts is not None and lab.parts.ceph is not None, "the lab runs without Ceph"
    cluster = lab.parts.ceph
    handle = rados.Rados(
        conffile=str(cluster.conffile),
        conf={"keyring": str(cluster.keyring), "rados_osd_op_timeout": "5"},
    )
    handle.connect(timeout=10)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    try:
        ioctx = handle.open_ioctx(cluster.pool)
        ioctx.set_namespace(namespace)
        yield namespace, ioctx
    finally:
        handle.shutdown()


@pytest.mark.timeout(480)
def test_a_deposed_leaders_journal_write_is_refused_by_rados_and_nothing_follows(
    lab: Lab,
    tmp_path: Path,
    restore_lab: None,
    monkeypatch: pytest.MonkeyPatch,
    shared_journal: tuple[str, Any],
) -> None:
    """The leader, without its in-process fence, SIGSTOPped right after journalling the intent
    of a clone; resumed once the other machine leads.

    Expect: the other leads within 2 x lease + decide seconds and settles the clone from the
    shared journal; resumed, the old leader's next journal write is refused by the cluster
    (StoreFenced), it makes no VM, and steps down; every VM once, nothing orphaned.
    """
    namespace, ioctx = shared_journal
    configs = {
        "a": machine_file(lab, tmp_path / "a", namespace, in_process_fence=False),
        "b": machine_file(lab, tmp_path / "b", namespace),
    }
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    logs = {n: tmp_path / f"{n}.log" for n in ports}
    reader = RadosJournal(FencedObject(ioctx, writer=lambda: None))
    assert orphans(lab) == {}
    before = placements(lab)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    frozen = False
    try:
        procs["a"] = started_as(
            "leader",
            configs["a"],
            ports["a"],
            "a",
            logs["a"],
            monkeypatch,
            (FREEZE_ENV, "clone_from_template:intent"),
        )
        procs["b"] = started_as("standby", configs["b"], ports["b"], "b", logs["b"])
        lab_mod.set_demand(lab, {"web": {"cores": 0.42}})  # a decides a clone, and freezes
        pid = procs["a"].pid
        wait_for(
            lambda: process_state(pid),
            lambda s: s in ("T", "gone"),
            timeout=200,
            what="a frozen at its freeze point",
        )
        assert process_state(pid) == "T", logs["a"].read_text()[-2000:]
        frozen, frozen_at = True, time.monotonic()
        left = [(e.key, e.step, e.action.lease_generation) for e in reader.unfinished()]
        frozen_clones = [k for k, step, _ in left if step == "intent"]
        assert frozen_clones, left
        old_generation = left[0][2]
        wait_for(
            lambda: health(ports["b"]).get("role"),
            lambda r: r == "leader",
            timeout=2 * LEASE_S + DECIDE_S + 15,
            what="b taking over",
        )
        takeover_s = time.monotonic() - frozen_at
        fence = reader.store.fence()
        assert old_generation is not None and fence > old_generation
        b_led_at = time.time()
        with RolePoller(ports) as poller:
            resumed_at = time.time()
            os.kill(pid, signal.SIGCONT)
            frozen = False
            refused = wait_for(
                lambda: [
                    e
                    for e in events(logs["a"])
                    if e.get("event") == "action" and float(str(e.get("at", 0))) >= resumed_at
                ],
                lambda evs: len(evs) >= 1,
                timeout=LEASE_S + DECIDE_S + 30,
                what="a's frozen action ending after it resumed",
            )
            wait_for(
                lambda: [e for e in events(logs["b"]) if float(str(e.get("at", 0))) >= b_led_at],
                lambda evs: any(e.get("event") == "reconciled the journal" for e in evs),
                timeout=240,
                what="b reconciling the shared journal",
            )
            time.sleep(3 * DECIDE_S)
            assert health(ports["b"]).get("role") == "leader"
            assert health(ports["a"]).get("role") == "standby"
            a_done = done_actions(ports["a"])
        assert poller.split_brains() == []
        assert all(p.poll() is None for p in procs.values())
    finally:
        if frozen:
            os.kill(procs["a"].pid, signal.SIGCONT)
        for name in ("a", "b"):
            if name in procs and procs[name].poll() is None:
                stop(procs[name])
    for name, process in procs.items():
        assert process.returncode == 0, logs[name].read_text()[-2000:]
    # The in-process fence was off: what stopped a is the cluster's refusal of its write.
    assert all(e["result"] == "failed" for e in refused), refused
    assert any("StoreFenced" in str(e.get("reason")) for e in refused), refused
    assert a_done == 0, a_done
    created_by_a = [
        e
        for e in events(logs["a"])
        if e.get("event") == "action"
        and e.get("result") == "done"
        and float(str(e.get("at", 0))) >= resumed_at
    ]
    assert created_by_a == []
    assert reader.unfinished() == []
    settled = {k: reader.get(k) for k in frozen_clones}
    assert all(e is not None and e.phase.finished for e in settled.values()), settled
    assert_nothing_lost(lab, before)
    outcome = ", ".join(f"{k} {e.phase.value}" for k, e in settled.items() if e is not None)
    record(
        "fault",
        "deposed leader refused by RADOS",
        injected="two controllers sharing only Ceph (RADOS lease and state) and Prometheus; the"
        " leader, its in-process fence switched off, SIGSTOPped right after journalling the"
        f" intent of a clone under generation {old_generation}, SIGCONT once the other led",
        behaviour=f"the other led {takeover_s:.1f} s after the freeze (bound"
        f" {2 * LEASE_S + DECIDE_S:.0f} s), claimed the state at generation {fence} and"
        f" settled the clone from the shared journal ({outcome}); resumed, the old leader's"
        " next journal write was refused by the OSD (StoreFenced) and it made nothing",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        takeover_s=round(takeover_s, 1),
    )


def one_clone_a_plan(folder: Path) -> None:
    """web clones one instance per plan, one action at a time: a crash at the second clone
    finds the first done and remembered (its time in the saved memory)."""
    yaml = YAML(typ="safe", pure=True)
    web_file = folder / "businesses" / "web.yaml"
    web = yaml.load(web_file.read_text())
    web["scaling"].setdefault("horizontal", {})["max_step_up"] = 1
    with open(web_file, "w") as out:
        yaml.dump(web, out)
    config = folder / "controller.yaml"
    doc = yaml.load(config.read_text())
    doc.setdefault("executor", {})["max_concurrent_actions"] = 1
    with open(config, "w") as out:
        yaml.dump(doc, out)


def settle(read: Callable[[], float], quiet_s: float, timeout: float = 120.0) -> float:
    """``read()`` once it gives the same value ``quiet_s`` apart."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now == last:
            return now
        last = now
    pytest.fail(f"still changing after {timeout:.0f} s: {last}")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def paused_metric(port: int) -> float:
    return metric_value(port, 'autoscaler_business_paused{business="web"}')


def metric_value(port: int, series: str) -> float:
    for line in metrics(port).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


@pytest.mark.timeout(600)
def test_the_leader_killed_mid_clone_is_settled_by_the_other_with_its_caps_and_controls(
    lab: Lab,
    tmp_path: Path,
    restore_lab: None,
    monkeypatch: pytest.MonkeyPatch,
    shared_journal: tuple[str, Any],
) -> None:
    """The leader SIGKILLed in the middle of its second clone (``started``); a cordon was set
    through its machine before, a pause is set through it (dead) after.

    Expect: the other machine leads within 2 x lease + decide seconds, settles the clone from
    the shared journal (the VM exactly once, or not at all with no leftover), carries the first
    clone's time in its action cap, places nothing on the cordoned host and, paused through
    the dead machine's file, acts on nothing more.
    """
    namespace, ioctx = shared_journal
    configs = {n: machine_file(lab, tmp_path / n, namespace) for n in ("a", "b")}
    for name in configs:
        one_clone_a_plan(tmp_path / name)
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    logs = {n: tmp_path / f"{n}.log" for n in ports}
    reader = FencedObject(ioctx, writer=lambda: None)
    journal = RadosJournal(reader)
    cordoned = lab.state.hosts[0].name
    assert cli(configs["a"], "cordon", cordoned).returncode == 0  # through machine a
    assert orphans(lab) == {}
    before = placements(lab)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = started_as(
            "leader",
            configs["a"],
            ports["a"],
            "a",
            logs["a"],
            monkeypatch,
            (CRASH_ENV, "clone_from_template:started@2"),
        )
        # a's SLA ledger is in the pool before b exists: b cannot have measured these.
        first_ledger = wait_for(
            lambda: RadosMemory(reader, time.time).load(),
            lambda r: r is not None and bool(r.ledgers.get("web", None)),
            timeout=60,
            what="a's ledger saved in the pool",
        )
        assert first_ledger is not None
        a_alone_until = first_ledger.ledgers["web"].ends_s[-1]
        procs["b"] = started_as("standby", configs["b"], ports["b"], "b", logs["b"])
        lab_mod.set_demand(lab, {"web": {"cores": 0.6}})  # two clones, one a plan
        wait_for(procs["a"].poll, lambda rc: rc is not None, timeout=300, what="a killed")
        killed_at, killed_wall = time.monotonic(), time.time()
        assert procs["a"].returncode == -signal.SIGKILL, logs["a"].read_text()[-2000:]
        left = [e.key for e in journal.unfinished()]
        assert left, "a was killed with nothing unfinished in the shared journal"
        wait_for(
            lambda: health(ports["b"]).get("role"),
            lambda r: r == "leader",
            timeout=2 * LEASE_S + DECIDE_S + 15,
            what="b taking over",
        )
        takeover_s = time.monotonic() - killed_at
        wait_for(
            lambda: journal.unfinished(),
            lambda rows: rows == [],
            timeout=240,
            what="b settling what a left",
        )
        settled = {k: journal.get(k) for k in left}
        # The caps: a's first clone, remembered by a and saved in the pool, is now b's.
        record_ = RadosMemory(reader, time.time).load()
        assert record_ is not None
        earlier = [t for t in record_.recent_actions.get("web", ()) if t < killed_wall - 1]
        assert earlier, record_.recent_actions
        # And the ledger: the intervals a measured before b started are b's now. b saves its
        # memory after each interval; wait for one saved after the takeover.
        taken_over_wall = time.time()
        saved = wait_for(
            lambda: RadosMemory(reader, time.time).load(),
            lambda r: r is not None and r.saved_at >= taken_over_wall,
            timeout=30,
            what="b saving its memory",
        )
        assert saved is not None
        carried = [t for t in saved.ledgers["web"].ends_s if t <= a_alone_until]
        assert carried, (a_alone_until, saved.ledgers["web"].ends_s[:5])
        wait_for(
            lambda: cli(configs["a"], "pause", "web").returncode,
            lambda rc: rc == 0,
            timeout=30,
            what="a pause through the dead machine's controller file",
        )
        wait_for(
            lambda: paused_metric(ports["b"]),
            lambda v: v == 1.0,
            timeout=5 * DECIDE_S + 10,
            what="b seeing the pause",
        )
        # An action already running when the pause was read ends first.
        paused_done = settle(lambda: done_actions(ports["b"]), 2 * DECIDE_S + 10)
        paused_vms = set(placements(lab))
        lab_mod.set_demand(lab, {"web": {"cores": 1.2}})
        time.sleep(6 * DECIDE_S)
        assert done_actions(ports["b"]) == paused_done
        assert set(placements(lab)) == paused_vms
        assert health(ports["b"]).get("role") == "leader"
    finally:
        for name in ("a", "b"):
            if name in procs and procs[name].poll() is None:
                stop(procs[name])
    assert procs["b"].returncode == 0, logs["b"].read_text()[-2000:]
    after = placements(lab)
    new_vms = {vm: hosts for vm, hosts in after.items() if vm not in before}
    assert all(cordoned not in hosts for hosts in new_vms.values()), (cordoned, new_vms)
    assert all(e is not None and e.phase.finished for e in settled.values()), settled
    assert_nothing_lost(lab, before)
    outcome = ", ".join(f"{k} {e.phase.value}" for k, e in settled.items() if e is not None)
    record(
        "fault",
        "leader killed mid-clone, the other machine takes over (shared state)",
        injected="two controllers sharing only Ceph and Prometheus; the leader SIGKILLed at its"
        " second clone's 'started' step (AUTOSCALER_CRASH_AT ...@2); a cordon set through its"
        " machine before, a pause through it after its death",
        behaviour=f"the other machine led {takeover_s:.1f} s after the kill (bound"
        f" {2 * LEASE_S + DECIDE_S:.0f} s), settled the shared journal ({outcome}), carried the"
        f" first clone's time in its hourly cap ({len(earlier)} earlier action(s)) and the"
        f" {len(carried)} SLA interval(s) a measured before b started, placed"
        f" nothing on the cordoned {cordoned}, and once paused did nothing more under 2x load",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        takeover_s=round(takeover_s, 1),
    )


@pytest.mark.timeout(480)
def test_the_pool_made_unwritable_stops_acting_says_why_and_recovers(
    lab: Lab, tmp_path: Path, restore_lab: None, shared_journal: tuple[str, Any]
) -> None:
    """``ceph osd set pause``: the OSDs take no client I/O (Pacific pauses reads and writes
    together) while the controller leads with its state in the pool; then ``unset``.

    Expect: it stops leading and acting, /healthz is unhealthy and names the store that cannot
    be written, no VM appears or goes under load meanwhile; once writes are back it leads again
    by itself and acts on the load.
    """
    namespace, _ioctx = shared_journal
    assert lab.parts is not None and lab.parts.ceph is not None
    config = machine_file(lab, tmp_path / "a", namespace)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "a.log"
    admin = rados.Rados(
        conffile=str(lab.parts.ceph.conffile),
        conf={"keyring": str(lab.parts.ceph.keyring), "rados_mon_op_timeout": "10"},
    )
    admin.connect(timeout=10)

    def flag(action: str) -> None:
        cmd = {"prefix": f"osd {action}", "key": "pause"}
        code, _out, err = admin.mon_command(json.dumps(cmd), b"", timeout=10)
        assert code == 0, err

    assert orphans(lab) == {}
    before = placements(lab)
    process: subprocess.Popen[bytes] | None = None
    paused = False
    try:
        process = started_as("leader", config, port, "a", log)
        settle(lambda: done_actions(port), 2 * DECIDE_S + 5)
        flag("set")
        paused, paused_at = True, time.monotonic()
        during = wait_for(
            lambda: health(port),
            lambda h: h.get("role") == "standby" and bool(h.get("problem")),
            timeout=2 * LEASE_S + 30,
            what="a stepping down and saying why",
        )
        stopped_s = time.monotonic() - paused_at
        acted = done_actions(port)
        vms = set(placements(lab))
        lab_mod.set_demand(lab, {"web": {"cores": 0.6}})  # it would scale out now
        time.sleep(8 * DECIDE_S)
        assert done_actions(port) == acted
        assert set(placements(lab)) == vms
        assert health(port).get("healthy") is False
        flag("unset")
        paused, resumed_at = False, time.monotonic()
        wait_for(
            lambda: health(port),
            lambda h: h.get("role") == "leader" and h.get("problem") is None,
            timeout=2 * LEASE_S + 60,
            what="a leading again once the pool takes writes",
        )
        recovered_s = time.monotonic() - resumed_at
        wait_for(
            lambda: done_actions(port),
            lambda n: n > acted,
            timeout=200,
            what="a acting on the load",
        )
    finally:
        if paused:
            flag("unset")
        if process is not None and process.poll() is None:
            stop(process)
        admin.shutdown()
    assert process is not None and process.returncode == 0, log.read_text()[-2000:]
    assert_nothing_lost(lab, before)
    problem = str(during.get("problem"))
    record(
        "fault",
        "the state pool made unwritable (shared state)",
        injected="`ceph osd set pause` (the OSDs take no client I/O: no write to the pool) while"
        " the controller leads with state: rados, then web load to scale out; `unset` after",
        behaviour=f"it stopped leading {stopped_s:.1f} s after the flag, /healthz unhealthy"
        f" with '{problem[:160]}', no action and no VM change under load for"
        f" {8 * DECIDE_S:.0f} s; led again {recovered_s:.1f} s after writes came back and"
        " acted on the load",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        stopped_s=round(stopped_s, 1),
        recovered_s=round(recovered_s, 1),
    )


@pytest.mark.timeout(600)
def test_the_leader_killed_mid_migration_is_settled_and_the_drain_finished_by_the_other(
    lab: Lab,
    tmp_path: Path,
    restore_lab: set[str],
    monkeypatch: pytest.MonkeyPatch,
    shared_journal: tuple[str, Any],
) -> None:
    """An operator drains web-1's host through machine a; a, leading, is SIGKILLed at its
    migration's ``migrating`` step (``AUTOSCALER_CRASH_AT``).

    Expect: b leads within 2 x lease + decide seconds, settles the migration from the shared
    journal, and finishes the drain a's machine was given: web-1 on exactly one host, off the
    drained one; nothing orphaned.
    """
    namespace, ioctx = shared_journal
    configs = {n: machine_file(lab, tmp_path / n, namespace) for n in ("a", "b")}
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    logs = {n: tmp_path / f"{n}.log" for n in ports}
    journal = RadosJournal(FencedObject(ioctx, writer=lambda: None))
    assert orphans(lab) == {}
    before = placements(lab)
    source = before["web-1"][0]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = started_as(
            "leader",
            configs["a"],
            ports["a"],
            "a",
            logs["a"],
            monkeypatch,
            (CRASH_ENV, "live_migrate:migrating"),
        )
        procs["b"] = started_as("standby", configs["b"], ports["b"], "b", logs["b"])
        assert cli(configs["a"], "drain", source).returncode == 0
        wait_for(procs["a"].poll, lambda rc: rc is not None, timeout=240, what="a killed")
        killed_at = time.monotonic()
        assert procs["a"].returncode == -signal.SIGKILL, logs["a"].read_text()[-2000:]
        left = [e.key for e in journal.unfinished() if e.action.kind == "live_migrate"]
        assert left, "a was killed with no migration unfinished in the shared journal"
        wait_for(
            lambda: health(ports["b"]).get("role"),
            lambda r: r == "leader",
            timeout=2 * LEASE_S + DECIDE_S + 15,
            what="b taking over",
        )
        takeover_s = time.monotonic() - killed_at
        wait_for(
            lambda: placements(lab).get("web-1", []),
            lambda hosts: len(hosts) == 1 and hosts[0] != source,
            timeout=240,
            what="web-1 off the drained host, on one host",
        )
        wait_for(journal.unfinished, lambda rows: rows == [], timeout=120, what="all settled")
        settled = {k: journal.get(k) for k in left}
        assert health(ports["b"]).get("role") == "leader"
    finally:
        for name in ("a", "b"):
            if name in procs and procs[name].poll() is None:
                stop(procs[name])
    assert procs["b"].returncode == 0, logs["b"].read_text()[-2000:]
    assert all(e is not None and e.phase.finished for e in settled.values()), settled
    reconciled = [e for e in events(logs["b"]) if e.get("event") == "reconciled"]
    assert {str(e.get("key")) for e in reconciled} >= set(left), reconciled
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    assert orphans(lab) == {}
    outcome = ", ".join(f"{k} {e.phase.value}" for k, e in settled.items() if e is not None)
    record(
        "fault",
        "leader killed mid-migration, the other machine takes over (shared state)",
        injected="two controllers sharing only Ceph and Prometheus; `autoscaler drain` of"
        f" web-1's host {source} through machine a, which was SIGKILLed at its migration's"
        " 'migrating' step (AUTOSCALER_CRASH_AT)",
        behaviour=f"the other machine led {takeover_s:.1f} s after the kill (bound"
        f" {2 * LEASE_S + DECIDE_S:.0f} s), settled the migration from the shared journal"
        f" ({outcome}) and finished the drain: web-1 on {after['web-1'][0]}",
        lost=guest_after_migration(lab, "web-1", logs["b"], restore_lab),
        takeover_s=round(takeover_s, 1),
    )
