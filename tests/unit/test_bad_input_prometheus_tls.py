"""Prometheus over https is queried with its certificate verified (a CA file for a private CA).

Before: the controller built its Prometheus client with ``disable_ssl=True``, so anyone on the
path could answer its queries. A real TLS server in this process (a certificate made with the
``openssl`` command) answering one PromQL query.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from autoscaler.model import TemporaryError
from collectors.prometheus_query import connect, instant_query
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
ANSWER = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [{"metric": {"instance": "h1"}, "value": [1.0, "0.25"]}],
    },
}


class Prometheus(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def https_prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(url, the CA file that signs its certificate): a self-signed one for 127.0.0.1."""
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = HTTPServer(("127.0.0.1", 0), Prometheus)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_prometheus_with_an_unknown_certificate_is_refused(
    https_prometheus: tuple[str, Path],
) -> None:
    url, _ = https_prometheus
    with pytest.raises(TemporaryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        instant_query(connect(url), "up", 1.0, 2.0)
    record(
        "bad-input",
        "Prometheus with a certificate no CA of ours signed",
        injected="an https Prometheus answering with a self-signed certificate, no ca_file",
        behaviour="the query refused (certificate verify failed): a stale scope, no data used",
        lost="nothing",
    )


def test_an_https_prometheus_signed_by_the_ca_file_is_queried(
    https_prometheus: tuple[str, Path],
) -> None:
    url, ca = https_prometheus
    values = instant_query(connect(url, ca_file=str(ca)), "up", 1.0, 2.0)
    assert [(v.labels["instance"], v.value) for v in values] == [("h1", 0.25)]
