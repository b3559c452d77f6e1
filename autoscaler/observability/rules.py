"""Prometheus recording and alerting rules, generated from the business policy files.

Where it sits: beside the exporter. ``autoscaler grafana generate`` writes
``grafana/rules/autoscaler.rules.yml`` from the policies (as Sloth does): recording rules for the
SLI error ratio over every window the SRE workbook's multi-window multi-burn-rate alerts need,
computed from the controller's SLI counters; one page and one ticket alert per business with
its own objective; and the controller-down, stale-cycle, stale-collector and freeze alerts. The
rules are checked by ``promtool check rules`` and unit-tested by ``promtool test rules`` in
``make test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.schema import BusinessPolicy

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
Pair = tuple[str, str, float]  # (long window, short window, burn-rate factor)
# The SRE workbook's multi-window multi-burn-rate alerts (ch. 5), with their `for:` durations.
ALERTS: tuple[tuple[tuple[Pair, ...], str, str, str], ...] = (
    (
        (("1h", "5m", 14.4), ("6h", "30m", 6.0)),
        "2m",
        "page",
        "Error ratio over 1h and 5m above 14.4x, or over 6h and 30m above 6x, the budget's rate.",
    ),
    ((("3d", "6h", 1.0),), "1h", "ticket", "Error ratio over 3d and 6h above the budget's rate."),
)


def error_ratio(window: str) -> str:
    return f"business:autoscaler_sli_error_ratio:rate{window}"


def recording_rules() -> list[dict[str, str]]:
    return [
        {
            "record": error_ratio(w),
            "expr": (
                f"1 - (sum by (business) (rate(autoscaler_sli_good_events_total[{w}]))"
                f" / sum by (business) (rate(autoscaler_sli_events_total[{w}]) > 0))"
            ),
        }
        for w in WINDOWS
    ]


def _burn(business: str, pairs: tuple[tuple[str, str, float], ...], allowed: float) -> str:
    parts = []
    for long_w, short_w, factor in pairs:
        threshold = f"{factor * allowed:.10g}"
        parts.append(
            f'({error_ratio(long_w)}{{business="{business}"}} > {threshold}'
            f' and {error_ratio(short_w)}{{business="{business}"}} > {threshold})'
        )
    return "\n or ".join(parts)


def business_alerts(policy: BusinessPolicy) -> list[dict[str, Any]]:
    business = policy.business
    allowed = 1 - policy.sla.objective / 100
    objective = f"{policy.sla.objective:g}%"
    return [
        {
            "alert": "AutoscalerErrorBudgetBurn",
            "expr": _burn(business, pairs, allowed),
            "for": wait,
            "labels": {"severity": severity, "business": business, "objective": objective},
            "annotations": {
                "summary": f"{business} is burning its {objective} error budget ({severity})",
                "description": description,
            },
        }
        for pairs, wait, severity, description in ALERTS
    ]


def controller_alerts(decide_interval_s: float = 10) -> list[dict[str, Any]]:
    stale_after = int(3 * decide_interval_s)
    return [
        {
            "alert": "AutoscalerControllerDown",
            "expr": 'up{job="autoscaler"} == 0 or absent(up{job="autoscaler"})',
            "for": "1m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "No autoscaler controller is being scraped"},
        },
        {
            "alert": "AutoscalerCycleStale",
            "expr": (
                "max(autoscaler_leader) == 1 and"
                f" time() - max(autoscaler_last_successful_cycle_timestamp_seconds) > {stale_after}"
            ),
            "for": "1m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "The leading controller has not finished a cycle lately"},
        },
        {
            "alert": "AutoscalerCollectorStale",
            "expr": "max by (source, scope, target) (autoscaler_collector_stale) == 1",
            "for": "2m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "{{ $labels.source }} cannot observe {{ $labels.scope }}"
                " {{ $labels.target }}",
                "description": "The controller takes no retire or migration there meanwhile.",
            },
        },
        {
            "alert": "AutoscalerFreeze",
            "expr": "max(autoscaler_freeze) == 1",
            "for": "1m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Retires and live migrations are frozen fleet-wide",
                "description": "Many businesses' demand collapsed at once or every VM reads 0"
                " CPU: check the metrics pipeline (/healthz says why).",
            },
        },
    ]


def rule_file(
    policies: Mapping[str, BusinessPolicy], decide_interval_s: float = 10
) -> dict[str, Any]:
    return {
        "groups": [
            {"name": "autoscaler-sli", "interval": "30s", "rules": recording_rules()},
            {
                "name": "autoscaler-slo-alerts",
                "rules": [a for _, p in sorted(policies.items()) for a in business_alerts(p)],
            },
            {"name": "autoscaler-controller", "rules": controller_alerts(decide_interval_s)},
        ]
    }
