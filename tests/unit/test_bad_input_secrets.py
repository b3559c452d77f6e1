"""Secrets stay out of logs and metrics; the metrics port gives nothing away and cannot be held.

Where it sits: the security review of issue 7 (docs/SECURITY.md), as tests. A real
``autoscaler run`` process is started with a controller file whose libvirt URI is a TLS one
with a user and a PKI path, whose Ceph section names a keyring, and whose Prometheus URL has a
user and password; none of them answers. Its log lines and ``/metrics`` must never contain the
keyring path, the PKI path, the user or the password. The metrics port serves only GETs of
``/metrics`` and ``/healthz``, and a client that connects and says nothing is dropped.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_api_client import PrometheusConnect

from collectors.base import LastGood, guarded
from collectors.node import NodeCollector
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("secret-keyring-9d2c", "secret-pki-7f3a", "operator-5a1", "pw-5e1b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(folder: Path) -> Path:
    (folder / "ceph.conf").write_text("[global]\nmon_host = 127.0.0.1:1\n")
    path = folder / "controller.yaml"
    path.write_text(
        f"""\
apiVersion: autoscaler/v1
kind: Controller
policy_dir: {ROOT / "examples/businesses"}
image_dir: {ROOT / "examples/images"}
state_dir: {folder / "state"}
inventory:
  regions:
    - name: north
      datacenters:
        - name: n1
          racks:
            - name: r1
              hosts:
                - name: kvm-1
                  uri: "qemu+tls://operator-5a1@127.0.0.1:1/system?pkipath=/run/secret-pki-7f3a"
                  cpus: 8
                  memory_mib: 16384
prometheus: {{url: "http://scrape:pw-5e1b@127.0.0.1:1", timeout_s: 1}}
ceph: {{conf: {folder / "ceph.conf"}, keyring: /run/secret-keyring-9d2c, timeout_s: 1}}
intervals: {{collect_s: 1, decide_s: 1, ledger_s: 1, refit_s: 600}}
"""
    )
    return path


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_keyrings_tls_uris_and_passwords_never_reach_logs_or_metrics(tmp_path: Path) -> None:
    """A controller whose libvirt TLS URI, Ceph keyring and Prometheus URL carry secrets, none of
    them reachable.

    Expect: it runs, every source stale; no secret in any log line, /metrics or /healthz.
    """
    port = _free_port()
    log = tmp_path / "controller.log"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "autoscaler.cli", "run", "--config", str(_config(tmp_path))),
            *("--listen", f"127.0.0.1:{port}", "--holder", "sec"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.3)
                continue
            if 'autoscaler_collector_stale{scope="host",source="libvirt:kvm-1"' in metrics:
                break
            time.sleep(0.3)
        assert 'scope="host",source="libvirt:kvm-1",target="kvm-1"} 1.0' in metrics, metrics[-800:]
        assert 'source="node"' in metrics  # Prometheus unreachable: its scopes stale too
        _, health = _get(f"http://127.0.0.1:{port}/healthz")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "ceph collector unavailable" in text  # the Ceph error itself is logged ...
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) >= 5
    for secret in SECRETS:  # ... but no secret, in any line, metric or health answer
        assert secret not in text, f"{secret} in the log"
        assert secret not in metrics, f"{secret} in /metrics"
        assert secret not in health, f"{secret} in /healthz"
    record(
        "bad-input",
        "secrets in the controller file",
        injected="TLS libvirt URI with user and PKI path, Ceph keyring, Prometheus user:password",
        behaviour=f"controller ran with every source stale; {len(lines)} log lines and /metrics "
        "free of all four secrets",
        lost="nothing",
    )


def test_a_prometheus_password_never_reaches_a_stale_reason() -> None:
    """A Prometheus URL with user:password that does not answer.

    Expect: the stale reasons (shown by `autoscaler fleet --json`) name the URL without them.
    """
    client = PrometheusConnect(url="http://scrape:pw-5e1b@127.0.0.1:1", disable_ssl=True)
    seen = guarded(NodeCollector(client, {"h1": "n1:9100"}, timeout_s=1.0), 1.0, LastGood())
    reasons = " ".join(s.reason for s in seen.stale)
    assert seen.stale and "127.0.0.1" in reasons
    assert "pw-5e1b" not in reasons and "scrape" not in reasons


def test_the_metrics_port_serves_only_its_two_reads_and_drops_silent_clients(
    tmp_path: Path,
) -> None:
    """An attacker on the metrics port: other paths, other methods, a silent connection.

    Expect: 404/501 for anything but GET /metrics and /healthz; a silent client dropped within
    the handler timeout; the endpoint still serves afterwards.
    """
    from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer

    server = MetricsServer(ControllerMetrics(), HealthState(interval_s=1.0), "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(f"{base}/../../etc/passwd")[0] == 404
        assert _get(f"{base}/state/lease")[0] == 404
        request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(request, timeout=3)
            raise AssertionError("POST accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 501
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.settimeout(30)
        started = time.monotonic()
        assert silent.recv(1) == b""  # the server hangs up on a client that says nothing
        held = time.monotonic() - started
        silent.close()
        assert held < 25
        status, body = _get(f"{base}/metrics")
        assert status == 200 and re.search(r"autoscaler_leader", body)
    finally:
        server.stop()
