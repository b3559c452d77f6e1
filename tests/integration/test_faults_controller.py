"""Faults of the controller itself, in ``auto`` mode on the real lab: two controllers started at
once, the leader frozen while the other takes over, and the state folder's disk full.

Where it sits: the reliability suite on the real lab (issue 7). Real ``autoscaler run``
processes (the web-only policy and short intervals of ``test_controller``) share one controller
file, so one ``FileLease`` in one state folder. Two started at the same instant must elect one
leader, and only it acts. A leader frozen (SIGSTOP, at a deterministic point: right after it
journalled the intent of a clone it decided, ``AUTOSCALER_FREEZE_AT``) is replaced by the
standby; resumed, it must find itself deposed and do nothing of what it decided under its old
lease generation. A state folder whose disk fills up (a small tmpfs) must not crash the
controller, must be reported, and no VM may be created or retired without its journal entry;
once space is back, it acts again. Afterwards every VM exists exactly once, nothing the lab had
is lost, and no overlay or definition is orphaned.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from autoscaler.model import Phase
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import FREEZE_ENV, JOURNAL_FILE
from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS, PORT_CONTROLLER_METRICS_2
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import (
    DECIDE_S,
    LEASE_S,
    controller_file,
    done_actions,
    restore_lab,
    start,
    stop,
    web_vms,
    with_fault_hooks,
)
from tests.integration.test_faults_crash import orphans
from tests.integration.test_faults_hosts import events, metrics, placements
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]  # the fixture, imported to be used by name
OBSERVE_S = 30.0
MOUNT = shutil.which("mount") or "/usr/bin/mount"
UMOUNT = shutil.which("umount") or "/usr/bin/umount"


def health(port: int) -> dict[str, object]:
    """/healthz's body, also when it answers 503 (unhealthy); {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except (OSError, ValueError):
        return {}


def metric_total(port: int, name: str) -> float:
    """The sum of every series of ``name`` on the controller's /metrics."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics(port).splitlines()
        if line.startswith((name + "{", name + " "))
    )


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` in /proc (``T`` while stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


class RolePoller:
    """Polls every controller's /healthz from a thread and keeps every round of answers."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self.ports = dict(ports)
        self.rounds: list[tuple[float, dict[str, object]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            roles = {n: health(p).get("role") for n, p in self.ports.items()}
            self.rounds.append((time.monotonic(), roles))
            self._stop.wait(0.2)

    def observed_s(self) -> float:
        return self.rounds[-1][0] - self.rounds[0][0] if self.rounds else 0.0

    def latest(self) -> dict[str, object]:
        return dict(self.rounds[-1][1]) if self.rounds else {}

    def split_brains(self) -> list[dict[str, object]]:
        """Rounds in which more than one controller said it leads."""
        return [r for _, r in self.rounds if sum(v == "leader" for v in r.values()) > 1]

    def leaders(self) -> set[str]:
        return {n for _, r in self.rounds for n, v in r.items() if v == "leader"}

    def __enter__(self) -> RolePoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def unjournalled(state_dir: Path, before: set[str], after: set[str]) -> list[str]:
    """VMs that appeared or disappeared without a finished clone or retire in the journal."""
    missing = []
    with SqliteJournal(state_dir / JOURNAL_FILE) as journal:
        for vm in sorted(after - before):
            entry = journal.get(f"clone_from_template/{vm}")
            if entry is None or entry.phase is not Phase.DONE:
                missing.append(f"{vm} created: {entry}")
        for vm in sorted(before - after):
            entry = journal.get(f"retire/{vm}")
            if entry is None or entry.phase is not Phase.DONE:
                missing.append(f"{vm} retired: {entry}")
    return missing


def assert_nothing_lost(lab: Lab, before: Mapping[str, list[str]]) -> None:
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after), (before, after)  # nothing the lab had was lost
    assert orphans(lab) == {}


@pytest.mark.timeout(420)
def test_two_controllers_started_at_once_elect_one_leader_and_only_it_acts(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """Two controllers started at the same instant on one controller file (one FileLease).

    Expect: at every poll at most one says it leads, exactly one leads throughout, only it acts
    under load; every VM on exactly one host, nothing lost, nothing orphaned.
    """
    config = controller_file(lab, tmp_path)
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    assert orphans(lab) == {}
    before = placements(lab)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    standby = "b"
    try:
        with RolePoller(ports) as poller:
            procs = {n: start(config, p, n, tmp_path / f"{n}.log") for n, p in ports.items()}
            started = time.monotonic()
            roles = wait_for(
                poller.latest,
                lambda r: sorted(str(v) for v in r.values()) == ["leader", "standby"],
                timeout=30,
                what="one leader and one standby",
            )
            elected_s = time.monotonic() - started
            leader = next(n for n, r in roles.items() if r == "leader")
            standby = next(n for n in ports if n != leader)
            lab_mod.set_demand(lab, {"web": {"cores": 0.42}})  # the leader must scale out
            wait_for(
                lambda: done_actions(ports[leader]),
                lambda n: n >= 1,
                timeout=200,
                what="the leader acting",
            )
            # Both watched for at least OBSERVE_S in all, however soon the leader acted.
            wait_for(
                poller.observed_s,
                lambda s: s >= OBSERVE_S,
                timeout=OBSERVE_S + 10,
                what=f"both watched for {OBSERVE_S:.0f} s",
            )
            leader_done = done_actions(ports[leader])
            standby_done = done_actions(ports[standby])
            assert all(p.poll() is None for p in procs.values())
        observed_s = poller.observed_s()
        answered = [r for _, r in poller.rounds if all(v is not None for v in r.values())]
        assert poller.split_brains() == [], poller.split_brains()[:5]
        assert poller.leaders() == {leader}, poller.leaders()
        assert standby_done == 0  # only the leader acts
        assert observed_s >= OBSERVE_S and len(answered) >= OBSERVE_S  # really watched
    finally:
        for name in sorted(procs, key=lambda n: n != standby):  # the standby first
            if procs[name].poll() is None:
                stop(procs[name])
    for name, process in procs.items():
        assert process.returncode == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    standby_actions = [e for e in events(tmp_path / f"{standby}.log") if e.get("event") == "action"]
    assert standby_actions == [], standby_actions
    assert unjournalled(tmp_path / "state", set(before), set(placements(lab))) == []
    assert_nothing_lost(lab, before)
    record(
        "fault",
        "two controllers started at once",
        injected="two `autoscaler run` started at the same instant on one controller file "
        "(one FileLease in one state folder), then web load to scale out",
        behaviour=f"{leader} led after {elected_s:.1f} s, {standby} stayed standby; "
        f"{len(poller.rounds)} polls of both /healthz over {observed_s:.0f} s, never two "
        f"leaders; the leader did {leader_done:.0f} action(s), the standby none",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        elected_s=round(elected_s, 1),
        polls=len(poller.rounds),
        leader_actions=leader_done,
    )


@pytest.mark.timeout(480)
def test_the_frozen_leader_is_replaced_and_resumed_acts_on_nothing_it_decided(
    lab: Lab, tmp_path: Path, restore_lab: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader SIGSTOPped right after journalling the intent of a clone it decided; resumed
    (SIGCONT) once the standby has taken over.

    Expect: the standby leads within 2 x lease + decide seconds and settles the clone; resumed,
    the old leader finds itself deposed, executes nothing decided under its old generation and
    steps down; every VM once, nothing orphaned.
    """
    config = with_fault_hooks(controller_file(lab, tmp_path))
    ports = {
        "a": lab.layout.port(PORT_CONTROLLER_METRICS),
        "b": lab.layout.port(PORT_CONTROLLER_METRICS_2),
    }
    logs = {n: tmp_path / f"{n}.log" for n in ports}
    assert orphans(lab) == {}
    before = placements(lab)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    frozen = False
    try:
        # "a" starts first and leads; only it carries the freeze point (in its environment).
        monkeypatch.setenv(FREEZE_ENV, "clone_from_template:intent")
        procs["a"] = start(config, ports["a"], "a", logs["a"])
        monkeypatch.delenv(FREEZE_ENV)
        wait_for(
            lambda: health(ports["a"]).get("role"),
            lambda r: r == "leader",
            timeout=30,
            what="a leading",
        )
        procs["b"] = start(config, ports["b"], "b", logs["b"])
        wait_for(
            lambda: health(ports["b"]).get("role"),
            lambda r: r == "standby",
            timeout=30,
            what="b on standby",
        )
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
        with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
            left = [(e.key, e.step, e.action.lease_generation) for e in journal.unfinished()]
        frozen_clones = [k for k, step, _ in left if step == "intent"]
        assert frozen_clones, left
        old_generation = left[0][2]
        wait_for(
            lambda: health(ports["b"]).get("role"),
            lambda r: r == "leader",
            timeout=2 * LEASE_S + DECIDE_S + 10,
            what="b taking over",
        )
        takeover_s = time.monotonic() - frozen_at
        assert takeover_s <= 2 * LEASE_S + DECIDE_S
        b_led_at = time.time()
        with RolePoller(ports) as poller:
            resumed_at = time.time()  # before: it may act the instant it runs again
            os.kill(pid, signal.SIGCONT)
            frozen = False
            wait_for(
                lambda: health(ports["a"]).get("role"),
                lambda r: r == "standby",
                timeout=LEASE_S + DECIDE_S,
                what="a answering as a standby after it resumed",
            )
            # b settles what a left (the frozen clone) and goes on leading; a stays standby.
            wait_for(
                lambda: [e for e in events(logs["b"]) if float(str(e.get("at", 0))) >= b_led_at],
                lambda evs: any(e.get("event") == "reconciled the journal" for e in evs),
                timeout=240,
                what="b reconciling the journal",
            )
            time.sleep(3 * DECIDE_S)  # a few more cycles of both, watched
            assert health(ports["b"]).get("role") == "leader"
            assert health(ports["a"]).get("role") == "standby"
            a_done = done_actions(ports["a"])
        assert poller.leaders() == {"b"}, poller.rounds[:10]  # a never claimed to lead again
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
    after_resume = [e for e in events(logs["a"]) if float(str(e.get("at", 0))) >= resumed_at]
    a_acted = [e for e in after_resume if e.get("event") == "action" and e["result"] == "done"]
    assert a_acted == [], a_acted  # nothing decided under the old generation was executed
    assert a_done == 0, a_done
    refused = [e for e in after_resume if e.get("event") == "action"]
    assert refused and all("DeposedLeader" in str(e.get("reason")) for e in refused), refused
    stepped_down = [e for e in after_resume if e.get("event") in ("deposed", "lost the lease")]
    assert stepped_down, sorted({str(e.get("event")) for e in after_resume})
    stepped_down_s = float(str(stepped_down[0]["at"])) - resumed_at
    with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
        assert journal.unfinished() == []
        settled = {k: journal.get(k) for k in frozen_clones}
    assert all(e is not None and e.phase.finished for e in settled.values()), settled
    reconciled = [e for e in events(logs["b"]) if e.get("event") == "reconciled"]
    assert {str(e.get("key")) for e in reconciled} >= set(frozen_clones), reconciled
    assert unjournalled(tmp_path / "state", set(before), set(placements(lab))) == []
    assert_nothing_lost(lab, before)
    outcome = ", ".join(f"{k} {e.phase.value}" for k, e in settled.items() if e is not None)
    record(
        "fault",
        "leader frozen while the standby takes over",
        injected="the leader SIGSTOPped itself right after journalling the intent of a clone it "
        f"decided under lease generation {old_generation} (AUTOSCALER_FREEZE_AT), "
        "SIGCONT once the standby led",
        behaviour=f"the standby led {takeover_s:.1f} s after the freeze (bound "
        f"{2 * LEASE_S + DECIDE_S:.0f} s) and reconciled ({outcome}); resumed, the old leader "
        f"logged '{stepped_down[0]['event']}' after {stepped_down_s:.1f} s, refused "
        f"{len(refused)} action(s) of its old generation and executed none; never two leaders "
        "at any poll",
        lost="nothing: every VM on exactly one host, no orphaned overlay or definition",
        takeover_s=round(takeover_s, 1),
        stepped_down_s=round(stepped_down_s, 1),
        refused=len(refused),
    )


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([MOUNT, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        if subprocess.run([UMOUNT, str(folder)], check=False).returncode != 0:
            subprocess.run([UMOUNT, "-l", str(folder)], check=False)


def full_disk(text: str) -> bool:
    """Whether ``text`` names a full disk (the OS's words, or SQLite's)."""
    return "No space left" in text or "disk is full" in text


def fill(path: Path) -> int:
    """Write ``path`` until the file system says ENOSPC; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += out.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


@pytest.mark.timeout(480)
def test_the_state_folder_full_stops_acting_is_reported_and_recovers(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """The state folder's disk (a 16 MiB tmpfs) filled up to ENOSPC under a controller in auto
    mode, then load that asks for a scale-out; the filler removed after a while.

    Expect: the controller keeps running, /healthz unhealthy and a state-write error counted and
    logged, no VM created or retired without its journal entry; space back, it leads and acts
    again; every VM once, nothing orphaned.
    """
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    state = tmp_path / "state"
    assert orphans(lab) == {}
    before = placements(lab)
    with small_tmpfs(state, "16m"):
        process = start(config, port, "full", log)
        try:
            wait_for(
                lambda: health(port),
                lambda h: h.get("role") == "leader" and h.get("healthy") is True,
                timeout=30,
                what="leading and healthy",
            )
            filler = state / "filler"
            filled_at = time.time()
            written = fill(filler)
            reported = wait_for(
                lambda: health(port),
                lambda h: h.get("healthy") is False,
                timeout=4 * DECIDE_S,
                what="the controller reporting the full disk",
            )
            reported_s = time.time() - filled_at
            errors = metric_total(port, "autoscaler_state_write_errors_total")
            assert errors >= 1
            assert full_disk(str(reported.get("problem"))), reported
            lab_mod.set_demand(lab, {"web": {"cores": 0.42}})  # asks for a scale-out
            vms_full = web_vms(lab)
            time.sleep(6 * DECIDE_S)  # several cycles with the disk full, watched below
            assert process.poll() is None, log.read_text()[-2000:]
            during = health(port)
            assert during.get("healthy") is False, during
            assert web_vms(lab) == vms_full  # nothing created or retired while it cannot journal
            filler.unlink()
            freed_at = time.time()
            wait_for(
                lambda: health(port),
                lambda h: h.get("role") == "leader" and h.get("problem") is None,
                timeout=2 * LEASE_S + DECIDE_S,
                what="leading again, no problem reported, once space is back",
            )
            recovered_s = time.time() - freed_at
            grown = wait_for(
                lambda: web_vms(lab),
                lambda vms: len(vms) > len(vms_full),
                timeout=200,
                what="the scale-out done once space is back",
            )
            wait_for(lambda: done_actions(port), lambda n: n >= 1, timeout=60, what="counted")
            # A cycle that clones lasts as long as the clone: healthy once it has ended.
            wait_for(
                lambda: health(port),
                lambda h: h.get("healthy") is True,
                timeout=60,
                what="healthy again",
            )
            acted_s = time.time() - freed_at
        finally:
            code = stop(process)
        assert code == 0, log.read_text()[-2000:]
        everything = events(log)
        acted = [e for e in everything if e.get("event") == "action"]
        during_full = [e for e in acted if filled_at <= float(str(e.get("at", 0))) < freed_at]
        assert [e for e in during_full if e.get("result") == "done"] == [], during_full
        with SqliteJournal(state / JOURNAL_FILE) as journal:
            unjournalled_done = [
                e for e in acted if e["result"] == "done" and journal.get(str(e["key"])) is None
            ]
            assert journal.unfinished() == []
        assert unjournalled_done == []
        assert unjournalled(state, set(before), set(placements(lab))) == []
        logged = [
            e
            for e in everything
            if filled_at <= float(str(e.get("at", 0))) < freed_at and full_disk(json.dumps(e))
        ]
        assert logged, "the full disk was not logged"
    assert_nothing_lost(lab, before)
    record(
        "fault",
        "state folder disk full",
        injected=f"the state folder on a 16 MiB tmpfs filled to ENOSPC ({written >> 20} MiB "
        "written), then web load asking for a scale-out, the filler removed after "
        f"{freed_at - filled_at:.0f} s",
        behaviour=f"kept running; /healthz unhealthy {reported_s:.1f} s after the disk filled "
        f"({reported.get('problem')}); {errors:.0f} state write error(s) counted, "
        f"{len(logged)} logged; no action while full; leading again, no problem reported, "
        f"{recovered_s:.1f} s after space was back; scaled out to {len(grown)} web VMs "
        f"{acted_s:.0f} s after",
        lost="nothing: every VM created or retired has its journal entry, every VM on exactly "
        "one host, no orphaned overlay or definition",
        reported_s=round(reported_s, 1),
        recovered_s=round(recovered_s, 1),
        state_write_errors=errors,
    )
