"""Rules and dashboards: committed files match the generator, promtool accepts and tests them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from autoscaler.observability.dashboards import all_dashboards, panel_queries
from autoscaler.observability.grafana_files import differences
from autoscaler.observability.rules import business_alerts
from policies.loader import load_policy_dir

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
POLICIES = load_policy_dir(ROOT / "examples" / "businesses")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_committed_grafana_files_are_what_the_generator_writes() -> None:
    assert differences(GRAFANA, POLICIES) == [], "run `autoscaler grafana generate`"


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(GRAFANA / "rules" / "autoscaler.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    backed_up = sum(1 for p in POLICIES.values() if p.backup is not None)
    # recording rules, a page and a ticket per business, the controller's four, the backup
    # failures and an overdue alert per business with backups
    assert f"{7 + 2 * len(POLICIES) + 4 + 1 + backed_up} rules found" in out.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = subprocess.run(
        [PROMTOOL, "test", "rules", "autoscaler.rules.test.yml"],
        cwd=GRAFANA / "tests",
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_each_business_alert_uses_its_own_objective() -> None:
    web = POLICIES["web"]
    stricter = web.model_copy(update={"sla": web.sla.model_copy(update={"objective": 99.99})})
    page, ticket = business_alerts(stricter)
    assert "> 0.00144 " in page["expr"]  # 14.4 x 0.0001
    assert page["for"] == "2m" and ticket["for"] == "1h"
    assert ticket["labels"]["severity"] == "ticket"


@pytest.mark.parametrize("name", sorted(all_dashboards()))
def test_every_dashboard_panel_has_a_prometheus_query(name: str) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / name).read_text())
    queries = panel_queries(dashboard)
    assert queries
    assert all(expr.strip() for _, expr in queries)
    assert all(p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"])
