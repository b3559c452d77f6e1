"""A host's libvirtd hung (SIGSTOPped) for three minutes under a controller in auto mode.

Where it sits: the reliability suite on the real lab (issue 12, bounded resources). Before,
every collection of a hung host started a new thread and a new libvirt connection that never
returned (about 80 minutes to 1,024 file descriptors). Now a host whose call has not returned is
not called again: the controller's thread and descriptor counts (``/proc/PID/status`` Threads,
``/proc/PID/fd``) stay flat while the host is stale, the other hosts stay fresh, decide keeps
running, nothing is retired or migrated on the stale host, and the host is fresh again soon after
SIGCONT. The shorter hang of ``test_faults_hosts`` is a subset of this test.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_CONTROLLER_METRICS
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file, healthz, restore_lab, start, stop
from tests.integration.test_faults_hosts import (
    libvirtd_pid,
    metrics,
    nothing_disrupted,
    placements,
    stale_sources,
)
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]
HUNG_S = 180.0
WINDOW_S = 15.0
# What the hang may hold: the collector's call and the hands' connect to the host (at most one
# each), each a thread and 2 fds (a libvirt open stuck in its handshake, measured: its socket
# and one end of the client's wake-up pipe). Before, each collection (every 2 s) added a thread
# and a connection: about 90 of each in three minutes.
STUCK_CALLS = 2
FDS_PER_CALL = 2
# The scheduler's job pool (APScheduler's default, 10 threads) starts its idle workers on
# demand: jobs that overlap while a host hangs may start a few more, once. Threads only.
SCHEDULER_POOL = 10


@dataclass(frozen=True)
class Counts:
    """Threads and fds of a process over a window, sampled twice a second. Each collect round
    runs short-lived calls (a thread, a netlink or telemetry socket each): the floor is the
    steady count, the peak includes a round in flight."""

    threads: tuple[int, int]  # (floor, peak)
    fds: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.threads[0]}-{self.threads[1]}/{self.fds[0]}-{self.fds[1]}"


def counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^Threads:\s+(\d+)", status, re.M)
    assert found is not None
    return int(found.group(1)), len(os.listdir(f"/proc/{pid}/fd"))


def window(pid: int, seconds: float) -> Counts:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(counts(pid))
        time.sleep(0.5)
    threads = [t for t, _ in seen]
    fds = [f for _, f in seen]
    return Counts((min(threads), max(threads)), (min(fds), max(fds)))


def decides(port: int) -> float:
    """How many decide stages the controller has run (its own histogram count)."""
    for line in metrics(port).splitlines():
        if line.startswith('autoscaler_stage_duration_seconds_count{stage="decide"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.timeout(480)
def test_a_libvirtd_hung_for_three_minutes_leaves_threads_and_fds_flat(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    """SIGSTOP of the libvirtd of the host running web-1 for 3 minutes, then SIGCONT.

    Expect: threads and fds of the controller flat while hung (the floor of each 15-s window at
    most 2 calls' worth above before, plus the scheduler's idle workers); healthy; the
    hung host stale, the others fresh; decide keeps running; no retire or migration; fresh
    again after SIGCONT, back to the counts of before.
    """
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    host = next(h for h, doms in lab_mod.status(lab).domains.items() if "web-1" in doms)
    others = [r.name for r in lab.state.hosts if r.name != host]
    before_vms = placements(lab)
    process = start(config, port, "faults-hung-libvirtd", log)
    samples: list[Counts] = []
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="leading"
        )
        wait_for(
            lambda: stale_sources(port, host),
            lambda s: f"libvirt:{host}" not in s and metrics(port) != "",
            timeout=30,
            what=f"{host} seen fresh before the fault",
        )
        before = window(process.pid, 20.0)
        pid = libvirtd_pid(lab, host)
        os.kill(pid, signal.SIGSTOP)
        hung_at = time.time()
        try:
            wait_for(
                lambda: stale_sources(port, host),
                lambda s: f"libvirt:{host}" in s,
                timeout=40,
                what=f"{host} marked stale",
            )
            stale_after = time.time() - hung_at
            decided_at_stale = decides(port)
            while time.time() - hung_at < HUNG_S:
                samples.append(window(process.pid, WINDOW_S))
                last = samples[-1]
                grown = (last.threads[0] - before.threads[0], last.fds[0] - before.fds[0])
                assert grown[0] <= SCHEDULER_POOL + STUCK_CALLS, (before, samples)
                assert grown[1] <= STUCK_CALLS * FDS_PER_CALL, (before, samples)
                assert healthz(port).get("healthy") is True
                fresh_others = [o for o in others if f"libvirt:{o}" not in stale_sources(port, o)]
                assert fresh_others == others, f"other hosts stale while {host} hung"
                assert f"libvirt:{host}" in stale_sources(port, host)
            decided_while_hung = decides(port) - decided_at_stale
            assert decided_while_hung >= HUNG_S / 10, decided_while_hung
            waiting = healthz(port).get("waiting_for_hosts")
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.time()
        wait_for(
            lambda: stale_sources(port, host),
            lambda s: f"libvirt:{host}" not in s,
            timeout=60,
            what=f"{host} fresh again after SIGCONT",
        )
        recovered_after = time.time() - resumed_at
        after = window(process.pid, 20.0)
        assert healthz(port).get("healthy") is True
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    # released: what the hang held is given back (the scheduler's idle workers stay)
    assert after.threads[0] <= max(c.threads[0] for c in samples), (samples, after)
    assert after.fds[0] <= before.fds[0] + 1, (before, after)
    nothing_disrupted(lab, log, hung_at, resumed_at, before_vms)
    record(
        "fault",
        "libvirtd hung for three minutes",
        injected=f"SIGSTOP of {host}'s libvirtd (it runs web-1) for {HUNG_S:.0f} s, then SIGCONT",
        behaviour=f"healthy throughout; {host} stale after {stale_after:.1f} s, the other "
        f"{len(others)} hosts fresh at every sample; {decided_while_hung:.0f} decide cycles "
        f"while hung; the controller's threads/fds (floor-peak over {WINDOW_S:.0f}-s windows "
        f"sampled every 0.5 s) {before} before, {[str(c) for c in samples]} while hung, "
        f"{after} after; "
        f"/healthz waiting_for_hosts {waiting}; no retire or migration; fresh "
        f"{recovered_after:.1f} s after SIGCONT",
        lost="nothing: every VM on exactly one host, all the lab's VMs still there",
        threads_before=list(before.threads),
        fds_before=list(before.fds),
        threads_hung=[list(c.threads) for c in samples],
        fds_hung=[list(c.fds) for c in samples],
        threads_after=list(after.threads),
        fds_after=list(after.fds),
        stale_after_s=round(stale_after, 1),
        recovered_after_s=round(recovered_after, 1),
    )
