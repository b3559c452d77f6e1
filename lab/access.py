"""The lab's access layer: HAProxy in the access namespace, in front of the businesses it names.

Where it sits: started by ``lab up`` for the businesses of ``LabSpec.access`` (none by
default), after the guest network and before the controller file is written. HAProxy runs in
the access namespace (``LabLayout.access_netns``), which has a leg on the guests' segment (it
reaches every guest at the address DHCP gave it) and one on the lab bridge: each business's
frontend and the Prometheus exporter listen on that second address, so Prometheus (in the
root namespace) scrapes the request metrics and the traffic generator, run inside the access
namespace, sends to the frontend without ever leaving the lab. The controller drives it
through the admin socket (a file: any namespace reaches it), as the controller file's balancer
``edge``; the lab's policy of each such business gets an ``access`` section naming it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from lab import haproxy
from lab.haproxy import Frontend, HaproxyConfig, HaproxyProcess
from lab.layout import LabLayout
from lab.prometheus import HAPROXY_METRICS_PORT
from policies.loader import load_policy
from policies.schema import BusinessPolicy

BALANCER = "edge"
METRICS_PORT = HAPROXY_METRICS_PORT
FRONTEND_PORT = 8000
"""The first business's frontend port; the others follow in the order given."""
DRAIN_TIMEOUT = "20s"


def haproxy_dir(layout: LabLayout) -> Path:
    return layout.root / "haproxy"


def socket_path(layout: LabLayout) -> Path:
    return haproxy_dir(layout) / "admin.sock"


def config_for(layout: LabLayout, businesses: Sequence[str]) -> HaproxyConfig:
    address = str(layout.access_address)
    return HaproxyConfig(
        frontends=[
            Frontend(business=b, address=address, port=FRONTEND_PORT + i)
            for i, b in enumerate(sorted(businesses))
        ],
        socket_path=socket_path(layout),
        metrics_address=address,
        metrics_port=METRICS_PORT,
    )


def start(layout: LabLayout, businesses: Sequence[str]) -> HaproxyProcess:
    """HAProxy for ``businesses`` in the access namespace (restarted if one runs)."""
    return haproxy.start(
        config_for(layout, businesses), haproxy_dir(layout), netns=layout.access_netns
    )


def stop(layout: LabLayout) -> bool:
    return haproxy.stop(haproxy_dir(layout))


def running(layout: LabLayout) -> bool:
    return haproxy.running(haproxy_dir(layout)) is not None


def served(layout: LabLayout) -> list[str]:
    """The businesses the running HAProxy's config has a frontend for (none if not running)."""
    config = haproxy_dir(layout) / "haproxy.cfg"
    if not running(layout) or not config.exists():
        return []
    return sorted(
        line.split()[1]
        for line in config.read_text().splitlines()
        if line.startswith("frontend ") and line.split()[1] != "metrics"
    )


def frontend_url(layout: LabLayout, business: str, path: str = "/cgi-bin/work") -> str:
    """Where the traffic generator sends a business's requests (inside the access namespace)."""
    businesses = served(layout) or [business]
    port = FRONTEND_PORT + sorted(businesses).index(business)
    return f"http://{layout.access_address}:{port}{path}"


def metrics_target(layout: LabLayout) -> str:
    return f"{layout.access_address}:{METRICS_PORT}"


def controller_balancers(layout: LabLayout) -> list[dict[str, Any]]:
    """The controller file's ``balancers`` section for the lab's HAProxy (empty if none)."""
    if not running(layout):
        return []
    return [{"name": BALANCER, "kind": "haproxy", "socket": str(socket_path(layout))}]


def with_access(policy_file: Path, *, drain_timeout: str = DRAIN_TIMEOUT) -> BusinessPolicy:
    """Rewrite a lab policy file so its business is served through the lab's HAProxy."""
    yaml = YAML()
    doc = yaml.load(policy_file.read_text())
    doc.setdefault(
        "access", {"kind": "haproxy", "balancer": BALANCER, "drain_timeout": drain_timeout}
    )
    out = io.StringIO()
    yaml.dump(doc, out)
    policy_file.write_text(out.getvalue())
    return load_policy(policy_file)


def traffic(
    layout: LabLayout,
    business: str,
    *,
    rate: float,
    duration_s: float,
    status_file: Path | None = None,
    timeout_s: float = 6.0,
    path: str = "/cgi-bin/work",
) -> subprocess.Popen[str]:
    """Start the lab's traffic generator inside the access namespace, sending to the
    business's frontend only (bounded in rate, count and time; it stops by itself). Its JSON
    summary is on the process's stdout when it ends."""
    argv = [
        "ip",
        "netns",
        "exec",
        layout.access_netns,
        sys.executable,
        "-m",
        "lab.traffic",
        "--url",
        frontend_url(layout, business, path),
        "--rate",
        f"{rate:g}",
        "--duration",
        f"{duration_s:g}",
        "--max-requests",
        str(int(rate * duration_s) + 1),
        "--timeout",
        f"{timeout_s:g}",
        "--allow-subnet",
        str(layout.subnet),
        "--json",
    ]
    if status_file is not None:
        argv += ["--status-file", str(status_file)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def summary(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """Wait for a traffic generator to end (a SIGTERM ends it early, cleanly); its JSON
    summary (it exits 1 when a request failed: the summary says which; any other failure is
    an error)."""
    out, err = process.communicate(timeout=timeout_s)
    if process.returncode not in (0, 1) or not out.strip():
        raise RuntimeError(f"traffic generator failed ({process.returncode}): {err[-1500:]}")
    result: dict[str, Any] = json.loads(out)
    return result
