"""A request SLI from HAProxy's own metrics: the generated rules record its error ratio from
the source counters and page on a fast burn, checked by ``promtool test rules``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

from autoscaler.observability.rules import rule_file, source_error_ratio
from tests.unit.policies.builders import policy

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
GOOD = 'sum(rate(haproxy_frontend_http_responses_total{proxy="shop",code="2xx"}[$window]))'
TOTAL = 'sum(rate(haproxy_frontend_http_requests_total{proxy="shop"}[$window]))'


def _policies() -> dict[str, object]:
    shop = policy(
        "shop",
        access={"kind": "haproxy", "balancer": "edge"},
        sla={"objective": 99.95, "sli": {"kind": "promql", "good": GOOD, "total": TOTAL}},
    )
    web = policy("web")
    return {"shop": shop, "web": web}


def _dump(data: object, path: Path) -> None:
    yaml = YAML()
    yaml.default_flow_style = False
    with path.open("w") as f:
        yaml.dump(data, f)


# 20 requests a second through the shop frontend. For an hour all are answered 2xx; then one
# in five times out (HAProxy answers 504): a 20% error ratio, 400x the 99.95% budget's rate.
SERIES = [
    {"series": 'haproxy_frontend_http_requests_total{proxy="shop"}', "values": "0+1200x180"},
    {
        "series": 'haproxy_frontend_http_responses_total{proxy="shop",code="2xx"}',
        "values": "0+1200x60 72000+960x120",
    },
    {
        "series": 'haproxy_frontend_http_responses_total{proxy="shop",code="5xx"}',
        "values": "0+0x60 0+240x120",
    },
]


def test_the_request_sli_is_recorded_from_haproxy_and_pages_on_a_fast_burn(
    tmp_path: Path,
) -> None:
    policies = _policies()
    _dump(rule_file(policies), tmp_path / "rules.yml")  # type: ignore[arg-type]
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": SERIES,
                "promql_expr_test": [
                    {
                        "expr": f'{source_error_ratio("5m")}{{business="shop"}}',
                        "eval_time": "30m",
                        "exp_samples": [
                            {
                                "labels": f'{source_error_ratio("5m")}{{business="shop"}}',
                                "value": 0,
                            }
                        ],
                    },
                    {
                        # in percent, rounded: promtool compares floats exactly
                        "expr": f'round(100 * {source_error_ratio("5m")}{{business="shop"}})',
                        "eval_time": "120m",
                        "exp_samples": [{"labels": '{business="shop"}', "value": 20}],
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "58m",
                        "alertname": "AutoscalerErrorBudgetBurn",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "75m",
                        "alertname": "AutoscalerErrorBudgetBurn",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "page",
                                    "business": "shop",
                                    "objective": "99.95%",
                                },
                                "exp_annotations": {
                                    "summary": "shop is burning its 99.95% error budget (page)",
                                    "description": "Error ratio over 1h and 5m above 14.4x, or"
                                    " over 6h and 30m above 6x, the budget's rate.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    _dump(tests, tmp_path / "tests.yml")
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    out = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_a_capacity_sli_business_keeps_the_controller_counters() -> None:
    rules = rule_file(_policies())  # type: ignore[arg-type]
    alerts = {
        r["labels"]["business"]: r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "AutoscalerErrorBudgetBurn" and r["labels"]["severity"] == "page"
    }
    assert "sli_source_error_ratio" in alerts["shop"]
    assert "sli_source_error_ratio" not in alerts["web"]
    sources = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("record", "").startswith("business:autoscaler_sli_source_error_ratio")
    ]
    assert {r["labels"]["business"] for r in sources} == {"shop"}
