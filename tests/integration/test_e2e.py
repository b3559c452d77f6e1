"""End to end on the lab: the controller scraped by the real Prometheus, every dashboard query
answered, and a business driven out of its SLA paging through the real Alertmanager."""

from __future__ import annotations

import json
import signal
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from autoscaler.observability.dashboards import all_dashboards, panel_queries
from lab import lab as lab_mod
from lab.lab import Lab
from lab.layout import PORT_ALERTMANAGER, PORT_CONTROLLER_METRICS, PORT_PROMETHEUS
from policies.loader import load_policy_dir
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import (
    SATURATING_CORES,
    controller_file,
    done_actions,
    healthz,
    restore_lab,
    start,
)

pytestmark = pytest.mark.lab
__all__ = ["restore_lab"]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def prom_query(lab: Lab, expr: str) -> list[object]:
    base = f"http://127.0.0.1:{lab.layout.port(PORT_PROMETHEUS)}/api/v1/query?"
    answer = get_json(base + urllib.parse.urlencode({"query": expr}))
    assert isinstance(answer, dict) and answer["status"] == "success", answer
    result = answer["data"]["result"]
    return result if isinstance(result, list) else [result]


def page_alerts(lab: Lab, business: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{lab.layout.port(PORT_ALERTMANAGER)}/api/v2/alerts"
    alerts = get_json(url)
    assert isinstance(alerts, list)
    return [
        a
        for a in alerts
        if a["labels"].get("alertname") == "AutoscalerErrorBudgetBurn"
        and a["labels"].get("business") == business
        and a["labels"].get("severity") == "page"
    ]


def with_api_in_recommend_mode(lab: Lab, config: Path) -> None:
    yaml = YAML(typ="safe", pure=True)
    api = yaml.load((Path(lab.state.root) / "businesses" / "api.yaml").read_text())
    api["mode"] = "recommend"
    folder = Path(yaml.load(config.read_text())["policy_dir"])
    with open(folder / "api.yaml", "w") as out:
        yaml.dump(api, out)


def test_prometheus_scrapes_the_controller_dashboards_answer_and_a_breach_pages(
    lab: Lab, tmp_path: Path, restore_lab: None
) -> None:
    config = controller_file(lab, tmp_path)
    with_api_in_recommend_mode(lab, config)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    process = start(config, port, "e2e", tmp_path / "controller.log")
    try:
        wait_for(
            lambda: healthz(port),
            lambda h: h.get("role") == "leader",
            timeout=30,
            what="the controller leading",
        )
        # web can scale out (auto); api is only recommended to, and its demand exceeds what
        # its two instances can carry: its SLI goes bad and its error budget burns.
        lab_mod.set_demand(lab, {"web": {"cores": SATURATING_CORES}, "api": {"cores": 0.6}})
        wait_for(
            lambda: prom_query(lab, 'up{job="autoscaler"} == 1'),
            bool,
            timeout=60,
            what="Prometheus scraping the controller",
        )
        wait_for(
            lambda: done_actions(port),
            lambda n: n >= 1,
            timeout=150,
            what="the controller acting for web",
        )
        alerts = wait_for(
            lambda: page_alerts(lab, "api"),
            bool,
            timeout=360,
            what="api's page alert in Alertmanager",
        )
        assert alerts[0]["status"]["state"] == "active"

        empty = []
        # Backup series exist only for businesses with backups (on RBD); the lab's run local.
        # Access-layer series (HAProxy's, the request SLI's, the balancer's staleness) only for
        # businesses behind a load balancer; the session lab's have none.
        lab_policies = load_policy_dir(Path(lab.state.root) / "businesses").values()
        backed_up = any(p.backup for p in lab_policies)
        served = any(p.access for p in lab_policies)
        access_series = ("haproxy_", "sli_source_error_ratio", "autoscaler_access_")
        for name, dashboard in all_dashboards().items():
            for title, expr in panel_queries(dashboard):
                if "autoscaler_backup_" in expr and not backed_up:
                    continue
                if any(s in expr for s in access_series) and not served:
                    continue
                if not prom_query(lab, expr):
                    empty.append(f"{name}: {title}: {expr}")
        assert empty == [], "panels without data:\n" + "\n".join(empty)
    finally:
        # The lab is left as the session made it by ``restore_lab`` (a scale-in may have
        # retired one of the first VMs).
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
