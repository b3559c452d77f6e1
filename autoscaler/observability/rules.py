"""Prometheus recording and alerting rules, generated from the business policy files.

Where it sits: beside the exporter. ``autoscaler grafana generate`` writes
``grafana/rules/autoscaler.rules.yml`` from the policies (as Sloth does): recording rules for the
SLI error ratio over every window the SRE workbook's multi-window multi-burn-rate alerts need,
computed from the controller's SLI counters (and, for a business whose SLI is a windowed PromQL
pair such as a request SLI from HAProxy, from those source metrics themselves); one page and one
ticket alert per business with
its own objective; the controller-down, stale-cycle, stale-collector and freeze alerts; and the
backup alerts (failing backups, and per business with a ``backup:`` policy, an overdue VM). The
rules are checked by ``promtool check rules`` and unit-tested by ``promtool test rules`` in
``make test``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies.backups import RETRY_AFTER_S, duration_text
from policies.schema import BusinessPolicy, PromqlSli

WINDOW = "$window"
"""In a PromQL SLI's pair, where the window goes (``collectors.promql_sli`` reads the same)."""

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


def source_error_ratio(window: str) -> str:
    return f"business:autoscaler_sli_source_error_ratio:rate{window}"


def from_source(policy: BusinessPolicy) -> bool:
    """A PromQL SLI whose pair takes ``$window``: its error ratio is recorded from the source
    metrics themselves (a request SLI from the load balancer's own counters), so its alerts
    fire even when no controller runs."""
    sli = policy.sla.sli
    return isinstance(sli, PromqlSli) and WINDOW in sli.good and WINDOW in sli.total


def source_recording_rules(policies: Mapping[str, BusinessPolicy]) -> list[dict[str, Any]]:
    """Per business with a windowed PromQL SLI, its error ratio over every window, computed
    from the policy's own ``good``/``total`` pair (each summed, so labels cannot unmatch)."""
    out: list[dict[str, Any]] = []
    for name, policy in sorted(policies.items()):
        sli = policy.sla.sli
        if not from_source(policy) or not isinstance(sli, PromqlSli):
            continue
        for w in WINDOWS:
            good = sli.good.replace(WINDOW, w)
            total = sli.total.replace(WINDOW, w)
            out.append(
                {
                    "record": source_error_ratio(w),
                    "expr": f"1 - (sum({good}) / (sum({total}) > 0))",
                    "labels": {"business": name},
                }
            )
    return out


def _burn(
    business: str,
    pairs: tuple[tuple[str, str, float], ...],
    allowed: float,
    ratio: Callable[[str], str] = error_ratio,
) -> str:
    parts = []
    for long_w, short_w, factor in pairs:
        threshold = f"{factor * allowed:.10g}"
        parts.append(
            f'({ratio(long_w)}{{business="{business}"}} > {threshold}'
            f' and {ratio(short_w)}{{business="{business}"}} > {threshold})'
        )
    return "\n or ".join(parts)


def business_alerts(policy: BusinessPolicy) -> list[dict[str, Any]]:
    business = policy.business
    allowed = 1 - policy.sla.objective / 100
    objective = f"{policy.sla.objective:g}%"
    ratio = source_error_ratio if from_source(policy) else error_ratio
    return [
        {
            "alert": "AutoscalerErrorBudgetBurn",
            "expr": _burn(business, pairs, allowed, ratio),
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


BACKUP_FAILURES_WINDOW = "6h"
BACKUP_FAILURES_MORE_THAN = 2
"""Three failed backups in six hours: a failed backup is tried again (``policies.backups``
waits ``RETRY_AFTER_S`` after a failure), so one or two are a blip a retry mends; three is a
target or a VM that keeps failing."""


def backup_alerts(policies: Mapping[str, BusinessPolicy]) -> list[dict[str, Any]]:
    """``AutoscalerBackupFailing`` (any business) and one ``AutoscalerBackupOverdue`` per
    business with a ``backup:`` policy (its own ``every``)."""
    failing: dict[str, Any] = {
        "alert": "AutoscalerBackupFailing",
        "expr": (
            "sum by (business) (increase(autoscaler_backup_failures_total"
            f"[{BACKUP_FAILURES_WINDOW}])) > {BACKUP_FAILURES_MORE_THAN}"
        ),
        "for": "1m",
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "Backups of {{ $labels.business }} keep failing",
            "description": f"More than {BACKUP_FAILURES_MORE_THAN} backups of the business"
            f" failed in the last {BACKUP_FAILURES_WINDOW}. Each failed backup is tried again"
            f" {duration_text(RETRY_AFTER_S)} later, so one or two failures are mended by a"
            " retry; this many are a backup target or a VM that keeps failing. The"
            " controller's log has the reason (events 'action' of kind backup).",
        },
    }
    overdue = []
    for name, policy in sorted(policies.items()):
        if policy.backup is None:
            continue
        every = policy.backup.every
        overdue.append(
            {
                "alert": "AutoscalerBackupOverdue",
                # max by (business, vm): every controller (leader and standbys) exports it.
                "expr": (
                    "time() - max by (business, vm) ("
                    f'autoscaler_backup_last_success_timestamp_seconds{{business="{name}"}})'
                    f" > {2 * every:g}"
                ),
                "for": "10m",
                "labels": {"severity": "ticket", "business": name},
                "annotations": {
                    "summary": "{{ $labels.vm }} of " + name + " has no backup newer than"
                    f" twice its schedule ({duration_text(2 * every)})",
                    "description": f"{name} is backed up every {duration_text(every)}: a VM whose"
                    " newest backup is older than twice that missed a whole slot (one late"
                    " backup, queued behind the others of its business, stays below it). Look"
                    " for failures (AutoscalerBackupFailing), a maintenance window or an hourly"
                    " cap that leaves no room (the plan's reasons say which), or a VM that is not"
                    " running. A VM never backed up has no series here; an unlisted backup"
                    " target shows as a stale collector.",
                },
            }
        )
    return [failing, *overdue]


def rule_file(
    policies: Mapping[str, BusinessPolicy], decide_interval_s: float = 10
) -> dict[str, Any]:
    sources = source_recording_rules(policies)
    return {
        "groups": [
            {"name": "autoscaler-sli", "interval": "30s", "rules": recording_rules()},
            *(
                [{"name": "autoscaler-sli-sources", "interval": "30s", "rules": sources}]
                if sources
                else []
            ),
            {
                "name": "autoscaler-slo-alerts",
                "rules": [a for _, p in sorted(policies.items()) for a in business_alerts(p)],
            },
            {"name": "autoscaler-controller", "rules": controller_alerts(decide_interval_s)},
            {"name": "autoscaler-backups", "rules": backup_alerts(policies)},
        ]
    }
