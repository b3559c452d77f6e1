"""The controller SIGKILLed in the middle of a clone it decided itself, then restarted.

Where it sits: the reliability suite on the real lab (issue 7). Unlike
``test_actuators_crash`` (which kills ``autoscaler apply`` running a hand-written plan), here the
unattended controller (``autoscaler run``, auto mode) decides a scale-out under real guest load
and is killed at the deterministic crash point ``clone_from_template:started``
(``AUTOSCALER_CRASH_AT``: it SIGKILLs itself right after the step is journalled). Restarted, it
must take the lease, reconcile the journal, and leave every VM on exactly one host, no overlay
without its domain, no domain without its overlay, and a journal that tells what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actuators.volumes import list_overlays
from autoscaler.apply_cli import CRASH_ENV, JOURNAL_FILE
from autoscaler.journal import SqliteJournal
from autoscaler.lab import lab as lab_mod
from autoscaler.lab.lab import Lab
from autoscaler.lab.layout import PORT_CONTROLLER_METRICS
from autoscaler.model import Phase
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file, healthz, restore_lab, stop
from tests.integration.test_faults_hosts import events, placements
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]
ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = {p.name for p in (ROOT / "examples" / "images").iterdir()}


def run_controller(
    config: Path, port: int, log: Path, crash_at: str | None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "autoscaler.cli", "run", "--config", str(config)),
            *("--listen", f"127.0.0.1:{port}", "--holder", "crash"),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )


def orphans(lab: Lab) -> dict[str, tuple[list[str], list[str]]]:
    """Per host: (overlays without a domain, our domains without an overlay)."""
    out = {}
    for record_ in lab.state.hosts:
        conn = lab.connect(record_.name)
        try:
            overlays = set(list_overlays(conn, TEMPLATES))
            domains = {d.name() for d in conn.listAllDomains(0)}
        finally:
            conn.close()
        if overlays ^ domains:
            out[record_.name] = (sorted(overlays - domains), sorted(domains - overlays))
    return out


@pytest.mark.timeout(420)
def test_the_controller_killed_during_a_clone_reconciles_on_restart_and_loses_nothing(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """The controller SIGKILLed right after journalling a clone's start (its own scale-out).

    Expect: restarted, it reconciles; the VM exists once, no orphaned overlay or definition,
    the journal shows the clone started then finished.
    """
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    assert orphans(lab) == {}
    before = placements(lab)
    first = run_controller(config, port, log, crash_at="clone_from_template:started")
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="lead"
        )
        lab_mod.set_demand(lab, {"web": {"cores": 0.42}})
        wait_for(first.poll, lambda code: code is not None, timeout=240, what="the crash point")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
        left = [(e.key, e.step) for e in journal.unfinished()]
    # The scale-out may clone more than one VM at once: the crash point catches the first to
    # reach "started"; the others are caught wherever they were.
    assert left and all(k.startswith("clone_from_template/") for k, _ in left), left
    crashed = [k for k, step in left if step == "started"]
    assert crashed, left
    key = crashed[0]
    vm = key.split("/", 1)[1]
    interrupted = [k.split("/", 1)[1] for k, _ in left]
    lab_mod.set_demand(lab, {"web": {"cores": 0.05}})  # no new scale-out after the restart

    restarted_at = time.time()
    second = run_controller(config, port, log, crash_at=None)
    try:
        wait_for(
            lambda: [e for e in events(log) if float(str(e.get("at", 0))) >= restarted_at],
            lambda evs: any(e.get("event") == "reconciled the journal" for e in evs),
            timeout=240,
            what="the restarted controller reconciling",
        )
        assert healthz(port).get("healthy") is True
    finally:
        code = stop(second)
    assert code == 0, log.read_text()[-2000:]
    with SqliteJournal(tmp_path / "state" / JOURNAL_FILE) as journal:
        assert journal.unfinished() == []
        entry = journal.get(key)
        history = [(e.key, e.phase.value, e.step) for e in journal.history()]
    assert entry is not None and entry.phase is Phase.DONE, history
    after = placements(lab)
    for clone in interrupted:  # every interrupted clone finished or cleaned, never twice
        assert len(after.get(clone, [])) <= 1, after
    assert len(after.get(vm, [])) == 1, after  # the clone exists, exactly once
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    assert orphans(lab) == {}
    reconciled = [e for e in events(log) if e.get("event") == "reconciled" and e.get("key") == key]
    assert reconciled and reconciled[0].get("outcome") == "done", reconciled
    record(
        "fault",
        "controller SIGKILLed during a clone",
        injected=f"AUTOSCALER_CRASH_AT=clone_from_template:started: the controller killed itself "
        f"while cloning {vm} for a scale-out it decided",
        behaviour=f"restarted, took the lease and reconciled {key}: "
        f"{reconciled[0].get('detail')}; journal entry {entry.phase.value}",
        lost="nothing: the clone on exactly one host, no orphaned overlay or definition",
    )
