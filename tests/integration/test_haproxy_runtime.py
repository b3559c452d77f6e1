"""HAProxy's runtime API behind ``LoadBalancer``, against a real HAProxy and busybox httpd servers.

Everything runs on loopback and is started and stopped here (no lab fixture): one HAProxy from
``lab.haproxy`` with a ``web`` frontend, busybox httpd servers as its backend's servers, each
with a ``health`` file (absent: its check fails), a CGI ``hello`` and a CGI ``slow`` (1 s) that
append to the server's ``hits`` file (the server's own evidence of every request it got), and
the lab's traffic generator counting every request through the frontend.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from actuators.haproxy import HaproxyRuntime, ServerInUse, UnknownBackend
from autoscaler.model.access import (
    LoadBalancer,
    LoadBalancerUnavailable,
    ServerAdmin,
    ServerHealth,
    ServerState,
)
from lab import haproxy, traffic
from lab.supervision import create_netns, remove_resources, wait_until

LOOPBACK = "127.0.0.1"
BACKEND = "web"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IP = shutil.which("ip") or "/usr/sbin/ip"

_CGI = """#!/bin/sh
echo "$REQUEST_URI" >> {hits}
{sleep}
printf 'Content-Type: text/plain\\r\\n\\r\\nvm={name}\\n'
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Web:
    """A busybox httpd playing one VM of the business."""

    name: str
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def make(cls, name: str, folder: Path, *, healthy: bool = True) -> Web:
        root = folder / name
        (root / "cgi-bin").mkdir(parents=True)
        hits = root.parent / f"{name}.hits"
        for script, sleep in (("hello", ""), ("slow", "sleep 1")):
            path = root / "cgi-bin" / script
            path.write_text(_CGI.format(hits=hits, sleep=sleep, name=name))
            path.chmod(0o755)
        web = cls(name=name, root=root, port=_free_port())
        if healthy:
            web.healthy()
        return web

    def healthy(self) -> None:
        (self.root / "health").write_text("ok\n")

    def start(self) -> Web:
        self.process = subprocess.Popen(
            [BUSYBOX, "httpd", "-f", "-p", f"{LOOPBACK}:{self.port}", "-h", str(self.root)]
        )
        wait_until(lambda: _connects(self.port), timeout=5, what=f"httpd {self.name}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)

    def hits(self) -> list[str]:
        path = self.root.parent / f"{self.name}.hits"
        return path.read_text().split() if path.exists() else []


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


@dataclass
class Lab:
    process: haproxy.HaproxyProcess
    lb: HaproxyRuntime
    url: str
    folder: Path
    webs: list[Web]

    def web(self, name: str, *, healthy: bool = True, start: bool = True) -> Web:
        web = Web.make(name, self.folder, healthy=healthy)
        self.webs.append(web)
        return web.start() if start else web

    def server(self, name: str) -> ServerState | None:
        return next((s for s in self.lb.servers(BACKEND) if s.name == name), None)

    def wait_server(self, name: str, test: Callable[[ServerState], bool], what: str) -> None:
        def holds() -> bool:
            state = self.server(name)
            return state is not None and test(state)

        wait_until(holds, timeout=10, what=f"{name} {what}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    # A short folder: the admin socket's path must fit a unix socket address (108 bytes).
    folder = Path(tempfile.mkdtemp(prefix="lbt-", dir="/tmp"))
    frontend_port = _free_port()
    config = haproxy.HaproxyConfig(
        frontends=[haproxy.Frontend(BACKEND, LOOPBACK, frontend_port)],
        socket_path=folder / "admin.sock",
        metrics_address=LOOPBACK,
        metrics_port=_free_port(),
        check_inter_s=0.3,
        rise=2,
        fall=2,
    )
    process = haproxy.start(config, folder / "haproxy")
    webs: list[Web] = []
    try:
        yield Lab(
            process=process,
            lb=process.runtime(timeout=2.0),
            url=f"http://{LOOPBACK}:{frontend_port}",
            folder=folder,
            webs=webs,
        )
    finally:
        haproxy.stop(folder / "haproxy")
        for web in webs:
            web.stop()
        shutil.rmtree(folder, ignore_errors=True)


class Traffic:
    """The traffic generator in a thread, until ``finish``."""

    def __init__(self, url: str, *, rate: float = 20) -> None:
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.future: Future[traffic.Summary] = self.pool.submit(
            traffic.run,
            url,
            rate=rate,
            duration_s=30,
            max_requests=2000,
            timeout_s=5,
            stop=self.stop,
        )

    def finish(self) -> traffic.Summary:
        self.stop.set()
        try:
            return self.future.result(timeout=15)
        finally:
            self.pool.shutdown()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read().decode().strip()


def test_haproxy_runtime_is_a_load_balancer(lab: Lab) -> None:
    assert isinstance(lab.lb, LoadBalancer)


def test_an_added_server_gets_no_request_until_its_health_check_passes(lab: Lab) -> None:
    a = lab.web("a")
    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)
    lab.wait_server("a", lambda s: s.health is ServerHealth.UP, "up")
    b = lab.web("b", healthy=False)  # runs, but its /health says 404: not ready

    lab.lb.add(BACKEND, "b", LOOPBACK, b.port)
    # DOWN at once, before any check ran: HAProxy would have it UP on leaving maintenance.
    added = lab.server("b")
    assert added is not None
    assert (added.admin, added.health, added.serving) == (
        ServerAdmin.READY,
        ServerHealth.DOWN,
        False,
    )

    load = Traffic(f"{lab.url}/cgi-bin/hello")
    time.sleep(2.0)  # several checks (every 0.3 s) fail meanwhile
    assert lab.server("b") == added
    assert b.hits() == []

    b.healthy()
    lab.wait_server("b", lambda s: s.health is ServerHealth.UP, "up once /health answers")
    wait_until(lambda: len(b.hits()) >= 3, timeout=5, what="b to get requests")
    summary = load.finish()
    assert summary.failures == 0, summary.errors
    assert summary.answers.keys() == {"vm=a", "vm=b"}
    assert summary.ok == summary.sent > 20


def test_drain_lets_requests_in_flight_finish_sends_nothing_new_then_remove(lab: Lab) -> None:
    webs = {name: lab.web(name) for name in ("a", "b")}
    for name, web in webs.items():
        lab.lb.add(BACKEND, name, LOOPBACK, web.port)
    for name in webs:
        lab.wait_server(name, lambda s: s.health is ServerHealth.UP, "up")
    load = Traffic(f"{lab.url}/cgi-bin/hello")
    time.sleep(0.5)
    with ThreadPoolExecutor(max_workers=6) as pool:
        # Round robin spreads six slow requests over both servers: b holds some of them.
        slow = [pool.submit(_get, f"{lab.url}/cgi-bin/slow") for _ in range(6)]
        lab.wait_server("b", lambda s: s.sessions >= 1, "to hold a slow request")
        lab.lb.drain(BACKEND, "b")
        drained = lab.server("b")
        assert drained is not None
        assert drained.admin is ServerAdmin.DRAIN and drained.sessions >= 1
        answers = [f.result(timeout=10) for f in slow]
    assert answers.count((200, "vm=b")) >= 1
    assert {status for status, _ in answers} == {200}

    lab.wait_server("b", lambda s: s.sessions == 0, "sessions to end")
    seen = len(webs["b"].hits())
    time.sleep(1.0)  # 20 requests a second keep arriving
    assert len(webs["b"].hits()) == seen, "a draining server got a new request"

    lab.lb.remove(BACKEND, "b")
    assert [s.name for s in lab.lb.servers(BACKEND)] == ["a"]
    lab.lb.remove(BACKEND, "b")  # idempotent
    time.sleep(0.5)
    summary = load.finish()
    assert summary.failures == 0, summary.errors
    assert summary.ok == summary.sent > 20


def test_remove_refuses_while_a_session_is_open_and_that_request_still_completes(
    lab: Lab,
) -> None:
    a = lab.web("a")
    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)
    lab.wait_server("a", lambda s: s.health is ServerHealth.UP, "up")
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(_get, f"{lab.url}/cgi-bin/slow")
        lab.wait_server("a", lambda s: s.sessions == 1, "to hold the slow request")
        with pytest.raises(ServerInUse, match="still has connections"):
            lab.lb.remove(BACKEND, "a")
        assert slow.result(timeout=10) == (200, "vm=a")
    lab.wait_server("a", lambda s: s.sessions == 0, "sessions to end")
    lab.lb.remove(BACKEND, "a")  # run again, as the retire would: now it goes
    assert lab.lb.servers(BACKEND) == ()


def test_servers_reports_address_admin_health_and_sessions(lab: Lab) -> None:
    a = lab.web("a")
    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)
    lab.lb.add(BACKEND, "c", "127.0.0.2", _free_port())  # nothing listens there
    lab.wait_server("a", lambda s: s.health is ServerHealth.UP, "up")
    c = lab.server("c")
    assert c is not None and (c.address, c.admin, c.health) == (
        "127.0.0.2",
        ServerAdmin.READY,
        ServerHealth.DOWN,
    )

    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = [pool.submit(_get, f"{lab.url}/cgi-bin/slow") for _ in range(2)]
        lab.wait_server("a", lambda s: s.sessions == 2, "to hold two slow requests")
        lab.lb.drain(BACKEND, "a")
        assert lab.server("a") == ServerState(
            name="a",
            address=LOOPBACK,
            port=a.port,
            admin=ServerAdmin.DRAIN,
            health=ServerHealth.UP,
            sessions=2,
        )
        assert [f.result(timeout=10)[0] for f in slow] == [200, 200]

    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)  # registered again: takes requests again
    assert lab.server("a").admin is ServerAdmin.READY  # type: ignore[union-attr]

    # Registered again at a new address (a VM's address changed): moved, not duplicated.
    lab.lb.add(BACKEND, "c", LOOPBACK, a.port)
    lab.wait_server("c", lambda s: s.health is ServerHealth.UP, "up at its new address")
    assert (lab.server("c").address, lab.server("c").port) == (LOOPBACK, a.port)  # type: ignore[union-attr]

    lab.lb.command(f"set server {BACKEND}/c state maint")
    c = lab.server("c")
    assert c is not None and (c.admin, c.health) == (ServerAdmin.MAINT, ServerHealth.UNCHECKED)
    lab.lb.add(BACKEND, "c", LOOPBACK, a.port)  # out of maintenance, DOWN until checked
    assert lab.server("c").health is ServerHealth.DOWN  # type: ignore[union-attr]
    lab.wait_server("c", lambda s: s.health is ServerHealth.UP, "up again")

    with pytest.raises(UnknownBackend):
        lab.lb.servers("nope")
    with pytest.raises(UnknownBackend):
        lab.lb.add("nope", "a", LOOPBACK, a.port)
    lab.lb.drain(BACKEND, "ghost")  # not there: nothing to drain
    lab.lb.remove(BACKEND, "ghost")


def test_unavailable_when_haproxy_is_gone_and_a_restart_needs_registering_again(
    lab: Lab,
) -> None:
    a = lab.web("a")
    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)
    lab.wait_server("a", lambda s: s.health is ServerHealth.UP, "up")

    haproxy.stop(lab.process.root)
    with pytest.raises(LoadBalancerUnavailable, match="refused|no socket"):
        lab.lb.servers(BACKEND)
    lab.process.config.socket_path.unlink(missing_ok=True)
    with pytest.raises(LoadBalancerUnavailable, match="no socket"):
        lab.lb.add(BACKEND, "a", LOOPBACK, a.port)

    process = haproxy.restart(lab.process)
    assert lab.lb.servers(BACKEND) == ()  # the runtime API's servers are gone
    lab.lb.add(BACKEND, "a", LOOPBACK, a.port)
    lab.wait_server("a", lambda s: s.health is ServerHealth.UP, "up after registering again")
    assert _get(f"{lab.url}/cgi-bin/hello") == (200, "vm=a")
    assert process.pid != lab.process.pid


def test_unavailable_on_a_socket_that_never_answers_or_answers_nonsense() -> None:
    folder = Path(tempfile.mkdtemp(prefix="lbt-", dir="/tmp"))
    try:
        path = folder / "mute.sock"
        mute = socket.socket(socket.AF_UNIX)
        mute.bind(str(path))
        mute.listen(4)  # accepts (in the kernel) and never answers
        lb = HaproxyRuntime("mute", path, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(LoadBalancerUnavailable, match="no whole answer within 0.5 s"):
            lb.servers(BACKEND)
        assert time.monotonic() - started < 1.5
        mute.close()

        path = folder / "babble.sock"
        babble = socket.socket(socket.AF_UNIX)
        babble.bind(str(path))
        babble.listen(4)

        def answer_nonsense() -> None:
            conn, _ = babble.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"hello there\n")

        thread = threading.Thread(target=answer_nonsense, daemon=True)
        thread.start()
        with pytest.raises(LoadBalancerUnavailable, match="no header line"):
            HaproxyRuntime("babble", path, timeout=2).servers(BACKEND)
        thread.join(timeout=5)
        babble.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_prometheus_exporter_answers(lab: Lab) -> None:
    config = lab.process.config
    status, body = _get(f"http://{config.metrics_address}:{config.metrics_port}/metrics")
    assert status == 200
    assert 'haproxy_backend_status{proxy="web"' in body or "haproxy_process_" in body


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of this test alone (its loopback up), removed afterwards."""
    name = f"lbt-{os.getpid()}"
    ledger = Path(tempfile.mkdtemp(prefix="lbt-ns-", dir="/tmp"))
    try:
        create_netns(ledger, name)
        yield name
    finally:
        remove_resources(ledger)
        shutil.rmtree(ledger, ignore_errors=True)


def test_haproxy_and_the_traffic_generator_run_inside_a_network_namespace(netns: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lbt-", dir="/tmp"))
    web = Web.make("a", folder)
    web.port = 8081  # the namespace's own loopback: every port is free
    in_netns = [IP, "netns", "exec", netns]
    httpd = subprocess.Popen(
        [*in_netns, BUSYBOX, "httpd", "-f", "-p", f"{LOOPBACK}:8081", "-h", str(web.root)]
    )
    config = haproxy.HaproxyConfig(
        frontends=[haproxy.Frontend(BACKEND, LOOPBACK, 8080)],
        socket_path=folder / "admin.sock",
        metrics_address=LOOPBACK,
        metrics_port=9101,
        check_inter_s=0.3,
    )
    try:
        process = haproxy.start(config, folder / "haproxy", netns=netns)
        # The admin socket is a file: the controller reaches it from outside the namespace.
        lb = process.runtime()
        lb.add(BACKEND, "a", LOOPBACK, 8081)
        wait_until(
            lambda: lb.servers(BACKEND)[0].health is ServerHealth.UP, timeout=10, what="a up"
        )
        url = f"http://{LOOPBACK}:8080/cgi-bin/hello"
        command = [*in_netns, sys.executable, "-m", "lab.traffic", "--rate", "20"]
        done = subprocess.run(
            [*command, "--url", url, "--duration", "2", "--max-requests", "30", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["sent"], summary["ok"], summary["failures"]) == (30, 30, 0)
        assert summary["answers"] == {"vm=a": 30}
        refused = subprocess.run(
            [
                *command,
                "--url",
                "http://192.0.2.1/",
                "--duration",
                "1",
                "--max-requests",
                "1",
                "--allow-subnet",
                "10.99.0.0/24",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )
        assert refused.returncode == 2
        assert "the lab's traffic stays in the lab" in refused.stderr
    finally:
        haproxy.stop(folder / "haproxy")
        httpd.terminate()
        httpd.wait(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_that_vanishes_before_its_check_notices_loses_no_request(lab: Lab) -> None:
    """``retries`` with ``option redispatch``: a refused connection goes to another server."""
    webs = {name: lab.web(name) for name in ("a", "b")}
    for name, web in webs.items():
        lab.lb.add(BACKEND, name, LOOPBACK, web.port)
    for name in webs:
        lab.wait_server(name, lambda s: s.health is ServerHealth.UP, "up")
    load = Traffic(f"{lab.url}/cgi-bin/hello")
    time.sleep(0.5)
    webs["b"].stop()  # requests it holds finish (httpd's children); new connections are refused
    lab.wait_server("b", lambda s: s.health is ServerHealth.DOWN, "down (fall 2)")
    time.sleep(0.3)
    summary = load.finish()
    assert summary.failures == 0, summary.errors
    assert summary.answers.get("vm=a", 0) > summary.answers.get("vm=b", 0) > 0


def test_start_reports_a_haproxy_that_exits_with_its_log() -> None:
    folder = Path(tempfile.mkdtemp(prefix="lbt-", dir="/tmp"))
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        config = haproxy.HaproxyConfig(
            frontends=[haproxy.Frontend(BACKEND, LOOPBACK, int(taken.getsockname()[1]))],
            socket_path=folder / "admin.sock",
            metrics_address=LOOPBACK,
            metrics_port=_free_port(),
        )
        try:
            with pytest.raises(RuntimeError, match="HAProxy exited at start"):
                haproxy.start(config, folder / "haproxy", timeout=10)
            assert haproxy.running(folder / "haproxy") is None
        finally:
            haproxy.stop(folder / "haproxy")
            shutil.rmtree(folder, ignore_errors=True)
