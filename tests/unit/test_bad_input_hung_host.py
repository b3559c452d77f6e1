"""A host that never answers costs one thread and one socket, however often it is asked.

The hung libvirtd is faked at the process boundary: a TCP socket that listens and never reads,
so libvirt's real client connects and then waits forever for the handshake (as it does against
a SIGSTOPped libvirtd). Closing the socket at the end releases the stuck call. The breaker is
checked on its own with a hand-driven clock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from ruamel.yaml import YAML

from actuators.connections import LibvirtPool, open_connection
from actuators.libvirt_events import ensure_event_loop
from autoscaler.config import load_controller_config
from autoscaler.model import HotAddVcpu, TemporaryError
from autoscaler.model.bounded import BoundedCaller, Breaker, HostBusy
from autoscaler.runtime.actuation import ExecutorActuation
from autoscaler.runtime.lease import FileLease
from collectors.libvirt_vms import LibvirtHostCollector
from policies.loader import load_policy_dir
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
ROOT = Path(__file__).resolve().parents[2]

CYCLES = 8


@pytest.fixture
def silent_libvirtd() -> Iterator[str]:
    """A ``qemu+tcp`` URI whose peer accepts connections and never answers."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    ensure_event_loop()  # the process's one libvirt event thread, before any count
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"qemu+tcp://127.0.0.1:{server.getsockname()[1]}/system"
    finally:
        server.close()


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def test_a_hung_libvirtd_is_called_once_and_then_skipped_as_stale(silent_libvirtd: str) -> None:
    collector = LibvirtHostCollector("h1", lambda: open_connection(silent_libvirtd), timeout_s=0.2)
    threads, socks = threading.active_count(), sockets()
    reasons = []
    for cycle in range(CYCLES):
        seen = collector.collect(float(cycle))
        assert [s.target for s in seen.stale] == ["h1"]
        reasons.append(seen.stale[0].reason)
    assert threading.active_count() - threads <= 1
    assert sockets() - socks <= 1
    assert "no answer within" in reasons[0]
    assert all("previous call still running" in r for r in reasons[1:]), reasons
    record(
        "bad-input",
        "a libvirtd that never answers, collected every cycle",
        injected=f"a qemu+tcp peer that accepts and never answers, collected {CYCLES} times",
        behaviour=f"stale every cycle; called once (then 'previous call still running'); "
        f"+{threading.active_count() - threads} thread, +{sockets() - socks} socket "
        f"(before: +1 of each per cycle)",
        lost="nothing",
    )


def test_a_pool_connect_to_a_hung_host_times_out_and_is_not_retried_while_stuck(
    silent_libvirtd: str,
) -> None:
    pool = LibvirtPool(connect_timeout_s=0.2)
    threads, socks = threading.active_count(), sockets()
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="no answer within"):
        pool.acquire(silent_libvirtd)
    assert time.monotonic() - started < 2.0
    for _ in range(CYCLES):
        with pytest.raises(HostBusy, match="still running"):
            pool.acquire(silent_libvirtd)
    assert threading.active_count() - threads <= 1
    assert sockets() - socks <= 1
    assert list(pool.unreachable()) == [silent_libvirtd]
    pool.close()
    record(
        "bad-input",
        "the actuators' connect to a libvirtd that never answers",
        injected=f"a pool connect to a silent qemu+tcp peer, then {CYCLES} more",
        behaviour="TemporaryError at the 0.2-s connect timeout, then refused at once while the "
        "first connect is stuck; at most one thread and one socket (before: libvirt.open "
        "without end)",
        lost="nothing",
    )


def test_a_pool_error_names_the_host_never_the_uri_credentials(silent_libvirtd: str) -> None:
    uri = silent_libvirtd.replace("127.0.0.1", "ops@127.0.0.1") + "?pkipath=/secret/pki"
    pool = LibvirtPool(connect_timeout_s=0.1)
    with pytest.raises(TemporaryError) as caught:
        pool.acquire(uri)
    assert "127.0.0.1" in str(caught.value)
    assert "ops" not in str(caught.value) and "secret" not in str(caught.value)
    pool.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def failing() -> None:
    raise TemporaryError("refused")


def test_the_breaker_opens_after_consecutive_failures_and_doubles_its_backoff() -> None:
    """A host that keeps failing.

    Expect: open after 2 failures for 2 s, then 4 s, then the 5-s cap.
    """
    clock = Clock()
    caller: BoundedCaller[None] = BoundedCaller(
        "h1", Breaker(threshold=2, base_s=2.0, max_s=5.0, clock=clock)
    )
    opened_for = []
    for _ in range(4):
        while True:
            try:
                caller.call(failing, 1.0)
            except HostBusy:
                break
            except TemporaryError:
                continue
        opened_for.append(caller.breaker.open_until - clock.now)
        clock.now = caller.breaker.open_until  # the backoff ends: one trial call
    assert opened_for == [2.0, 4.0, 5.0, 5.0]


def test_one_success_closes_the_breaker() -> None:
    clock = Clock()
    caller: BoundedCaller[str] = BoundedCaller("h1", Breaker(threshold=1, clock=clock))
    with pytest.raises(TemporaryError):
        caller.call(failing, 1.0)  # type: ignore[arg-type]
    with pytest.raises(HostBusy, match="circuit open"):
        caller.call(lambda: "up", 1.0)
    clock.now = caller.breaker.open_until
    assert caller.call(lambda: "up", 1.0) == "up"
    assert caller.breaker.refusal() is None and caller.breaker.opens == 0


def test_a_host_answering_after_its_deadline_is_called_again_at_once() -> None:
    """A host whose call answers after its deadline (a hang that ends).

    Expect: refused while the call is stuck; called again as soon as it answered.
    """
    release = threading.Event()
    caller: BoundedCaller[str] = BoundedCaller("h1")
    with pytest.raises(TemporaryError, match="no answer within"):
        caller.call(lambda: "late" if release.wait(5) else "never", 0.05)
    with pytest.raises(HostBusy):
        caller.call(lambda: "again", 0.05)
    release.set()
    deadline = time.monotonic() + 2
    while caller.busy_for() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert caller.call(lambda: "again", 1.0) == "again"


def test_reconciling_leaves_an_entry_of_a_hung_host_for_later_at_once_and_names_the_host(
    silent_libvirtd: str, tmp_path: Path
) -> None:
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load((ROOT / "examples" / "controller.yaml").read_text())
    host = doc["inventory"]["regions"][0]["datacenters"][0]["racks"][0]["hosts"][0]
    host["uri"] = silent_libvirtd
    doc.update(
        policy_dir=str(ROOT / "examples" / "businesses"),
        image_dir=str(ROOT / "examples" / "images"),
        state_dir=str(tmp_path / "state"),
    )
    (tmp_path / "controller.yaml").write_text(json.dumps(doc))
    config = load_controller_config(tmp_path / "controller.yaml")
    policies = load_policy_dir(ROOT / "examples" / "businesses")
    lease = FileLease(tmp_path / "lease", "test", 30.0)
    assert lease.try_acquire(time.time()) is not None  # reconciliation is fenced: lead first
    actuation = ExecutorActuation(config, lease, lambda: policies)
    actuation.pool.connect_timeout_s = 0.3
    action = HotAddVcpu(business="web", vm="web-1", host=host["name"], vcpus=2, reason="load")
    # journalling stamps the domain on its host: that connect is the one left hanging
    actuation.journal.record_intent("plan-0123456789ab", action, time.time())
    started = time.monotonic()
    actuation.reconcile()
    took_s = time.monotonic() - started
    waiting = actuation.waiting()
    unfinished = [e.key for e in actuation.journal.unfinished()]
    actuation.close()
    assert took_s < 0.5, took_s  # before: libvirt.open without end, the cycle with it
    assert unfinished == [action.key]  # nothing done on a host that cannot answer
    assert "previous call still running" in waiting[host["name"]]
    assert "127.0.0.1" in waiting[host["name"]]
    record(
        "bad-input",
        "reconciliation with a host that never answers",
        injected="an unfinished hot-add journalled for a host whose libvirtd never answers",
        behaviour=f"reconcile returned in {took_s:.2f} s leaving the entry unfinished for a later "
        "pass; waiting() (/healthz waiting_for_hosts) names the host",
        lost="nothing: the entry kept",
    )
