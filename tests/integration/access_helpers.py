"""Helpers of the access-layer tests on the lab: HAProxy in front of web, the controller's
file with web behind it, the backend as HAProxy reports it, and the lab put back after."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ruamel.yaml import YAML

from autoscaler.model.access import ServerHealth, ServerState
from lab import access
from lab import lab as lab_mod
from lab.haproxy import HaproxyProcess
from lab.lab import Lab

REQUEST_SLI = {
    "kind": "promql",
    "good": 'sum(rate(haproxy_frontend_http_responses_total{proxy="web",code="2xx"}[$window]))',
    "total": 'sum(rate(haproxy_frontend_http_requests_total{proxy="web"}[$window]))',
}
"""web's request SLI: the share of its requests HAProxy answered 2xx (a request a saturated
guest does not answer within the backend timeout is a 504)."""
FIRST_WEB = {"web-1", "web-2"}


def serve_web(lab: Lab, config: Path, *, request_sli: bool = False) -> Path:
    """``config`` (a test controller file) with the lab's balancer and web behind it (and
    judged by its request SLI when ``request_sli``)."""
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load(config.read_text())
    web_file = Path(doc["policy_dir"]) / "web.yaml"
    web = yaml.load(web_file.read_text())
    web["access"] = {"kind": "haproxy", "balancer": access.BALANCER, "drain_timeout": "20s"}
    if request_sli:
        web["sla"]["sli"] = REQUEST_SLI
    with open(web_file, "w") as out:
        yaml.dump(web, out)
    doc["balancers"] = [
        {"name": access.BALANCER, "kind": "haproxy", "socket": str(access.socket_path(lab.layout))}
    ]
    with open(config, "w") as out:
        yaml.dump(doc, out)
    return config


def servers(edge: HaproxyProcess) -> dict[str, ServerState]:
    return {s.name: s for s in edge.runtime().servers("web")}


def up_servers(edge: HaproxyProcess) -> set[str]:
    return {n for n, s in servers(edge).items() if s.health is ServerHealth.UP}


def sessions_served(edge: HaproxyProcess, server: str) -> int:
    """How many sessions HAProxy has ever sent ``server`` (``stot`` of ``show stat``)."""
    text = edge.runtime().command("show stat")
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return next(
        (int(r["stot"] or 0) for r in rows if r["pxname"] == "web" and r["svname"] == server), 0
    )


def web_vms(lab: Lab) -> set[str]:
    return {d for ds in lab_mod.status(lab).domains.values() for d in ds if d.startswith("web-")}
