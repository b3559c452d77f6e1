"""Grafana dashboards, generated from code and committed under ``grafana/dashboards``.

Built with Grafana's own typed builders (grafana-foundation-sdk, pinned for Grafana 11.6), so a
panel, query or variable that Grafana's schema does not know fails here, not in Grafana.
Where it sits: beside the rules generator; ``autoscaler grafana generate`` writes the JSON and
``make test`` fails when the committed files differ from what this module generates. Every panel
queries Prometheus (datasource uid ``prometheus``, provisioned by ``grafana/provisioning``); the
end-to-end test runs every panel's query against the lab's real Prometheus.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="prometheus")
Query = tuple[str, str]  # (PromQL expression, legend)


def _panel(
    pid: int,
    title: str,
    exprs: list[Query],
    *,
    kind: Literal["timeseries", "stat"] = "timeseries",
    unit: str = "short",
) -> timeseries.Panel | stat.Panel:
    panel = timeseries.Panel() if kind == "timeseries" else stat.Panel()
    panel.id(pid).title(title).datasource(DATASOURCE).unit(unit)
    for i, (expr, legend) in enumerate(exprs):
        panel.with_target(
            prometheus.Dataquery()
            .ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE)
            .expr(expr)
            .legend_format(legend)
        )
    return panel


def _dashboard(
    uid: str,
    title: str,
    panels: list[timeseries.Panel | stat.Panel],
    variables: list[dashboard.QueryVariable] | None = None,
) -> dict[str, Any]:
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["autoscaler"])
        .timezone("utc")
        .readonly()
        .refresh("10s")
        .time("now-1h", "now")
    )
    for variable in variables or []:
        board.with_variable(variable)
    for i, panel in enumerate(panels):  # two panels a row, in order
        board.with_panel(panel.grid_pos(model.GridPos(h=8, w=12, x=(i % 2) * 12, y=(i // 2) * 8)))
    # Plain JSON from here on: the files under grafana/ and the e2e test read dictionaries.
    built: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return built


def _business_variable() -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("business")
        .datasource(DATASOURCE)
        .query("label_values(autoscaler_business_instances, business)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .current(model.VariableOption(text="All", value="$__all"))
    )


B = 'business=~"$business"'


def fleet() -> dict[str, Any]:
    return _dashboard(
        "autoscaler-fleet",
        "Autoscaler / Fleet",
        [
            _panel(
                1,
                "Ready instances per business",
                [(f"autoscaler_business_instances{{{B}}}", "{{business}}")],
            ),
            _panel(
                2,
                "Instances wanted by the last plan",
                [(f"autoscaler_business_instances_wanted{{{B}}}", "{{business}}")],
            ),
            _panel(
                3,
                "Demand, forecast and capacity (cores)",
                [
                    (f"autoscaler_business_demand_cores{{{B}}}", "demand {{business}}"),
                    (f"autoscaler_business_forecast_cores{{{B}}}", "forecast {{business}}"),
                    (f"autoscaler_business_capacity_cores{{{B}}}", "capacity {{business}}"),
                ],
            ),
            _panel(
                4,
                "Actions by kind and result (per 5m)",
                [
                    (
                        "sum by (kind, result) (increase(autoscaler_actions_total[5m]))",
                        "{{kind}} {{result}}",
                    )
                ],
            ),
        ],
        [_business_variable()],
    )


def business_sla() -> dict[str, Any]:
    return _dashboard(
        "autoscaler-sla",
        "Autoscaler / Business SLA and error budget",
        [
            _panel(
                1,
                "Error budget left",
                [
                    (f"autoscaler_error_budget_remaining_ratio{{{B}}}", "{{business}}"),
                ],
                unit="percentunit",
            ),
            _panel(
                2,
                "SLA objective",
                [(f"autoscaler_sla_objective_ratio{{{B}}}", "{{business}}")],
                kind="stat",
                unit="percentunit",
            ),
            _panel(
                3,
                "SLI error ratio, 5m and 1h",
                [
                    (f"business:autoscaler_sli_error_ratio:rate5m{{{B}}}", "5m {{business}}"),
                    (f"business:autoscaler_sli_error_ratio:rate1h{{{B}}}", "1h {{business}}"),
                ],
                unit="percentunit",
            ),
            _panel(
                4,
                "Burn rate over 1h (x the budget's rate)",
                [
                    (
                        f"business:autoscaler_sli_error_ratio:rate1h{{{B}}}"
                        f" / on (business) (1 - autoscaler_sla_objective_ratio{{{B}}})",
                        "{{business}}",
                    ),
                ],
            ),
            _panel(
                5,
                "Good SLI intervals (per 5m)",
                [
                    (
                        "sum by (business) (increase("
                        f"autoscaler_sli_good_events_total{{{B}}}[5m]))",
                        "{{business}}",
                    ),
                ],
            ),
            _panel(
                6,
                "Firing budget alerts",
                [
                    (
                        "count by (business, severity) (ALERTS{"
                        'alertname="AutoscalerErrorBudgetBurn", alertstate="firing"}) or vector(0)',
                        "{{business}} {{severity}}",
                    ),
                ],
            ),
            _panel(
                7,
                "Request SLI from the access layer: error ratio, 5m and 1h",
                [
                    (
                        f"business:autoscaler_sli_source_error_ratio:rate5m{{{B}}}",
                        "5m {{business}}",
                    ),
                    (
                        f"business:autoscaler_sli_source_error_ratio:rate1h{{{B}}}",
                        "1h {{business}}",
                    ),
                ],
                unit="percentunit",
            ),
            _panel(
                8,
                "Requests through the access layer, by answer (per second)",
                [
                    (
                        "sum by (proxy, code) (rate(haproxy_frontend_http_responses_total"
                        '{proxy=~"$business"}[1m]))',
                        "{{proxy}} {{code}}",
                    ),
                ],
                unit="reqps",
            ),
            _panel(
                9,
                "Access layer stale (its balancer does not answer)",
                [(f"autoscaler_access_stale{{{B}}}", "{{business}} {{balancer}}")],
            ),
        ],
        [_business_variable()],
    )


def racks() -> dict[str, Any]:
    return _dashboard(
        "autoscaler-racks",
        "Autoscaler / Racks and hardware health",
        [
            _panel(
                1,
                "Rack health score (0 healthy, 1 failing)",
                [("autoscaler_rack_health_score", "{{rack}}")],
            ),
            _panel(
                2,
                "Rack temperature (°C)",
                [
                    (
                        'autoscaler_signal_value{scope="rack", name="temperature_celsius"}',
                        "{{target}}",
                    ),
                ],
                unit="celsius",
            ),
            _panel(
                3,
                "Hardware temperature seen by node-exporter (°C)",
                [("node_hwmon_temp_celsius", "{{chip}} {{sensor}}")],
                unit="celsius",
            ),
            _panel(
                4,
                "Node CPU busy",
                [
                    (
                        '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))',
                        "{{instance}}",
                    ),
                ],
                unit="percentunit",
            ),
        ],
    )


def ceph_dpdk_links() -> dict[str, Any]:
    return _dashboard(
        "autoscaler-ceph-dpdk-links",
        "Autoscaler / Ceph, DPDK and links",
        [
            _panel(
                1,
                "Ceph OSDs up per rack",
                [
                    ('autoscaler_signal_value{scope="rack", name="ceph_osds_up"}', "up {{target}}"),
                    (
                        'autoscaler_signal_value{scope="rack", name="ceph_osds_total"}',
                        "total {{target}}",
                    ),
                ],
            ),
            _panel(
                2,
                "Ceph health (mgr: 0 ok, 1 warn, 2 error)",
                [("ceph_health_status", "health")],
                kind="stat",
            ),
            _panel(
                3,
                "DPDK drops and errors per second",
                [
                    (
                        'autoscaler_signal_value{name=~"dpdk_rx_(drop|error)_rate"}',
                        "{{name}} {{target}}",
                    ),
                ],
            ),
            _panel(
                4,
                "Bond redundancy lost and links down",
                [
                    (
                        'autoscaler_signal_value{name=~"bond_redundancy_lost|link_down"}',
                        "{{name}} {{target}}",
                    ),
                ],
            ),
        ],
    )


def controller() -> dict[str, Any]:
    return _dashboard(
        "autoscaler-controller",
        "Autoscaler / The controller",
        [
            _panel(
                1,
                "Cycle duration p95 (s)",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) (rate("
                        "autoscaler_cycle_duration_seconds_bucket[5m])))",
                        "p95",
                    ),
                ],
                unit="s",
            ),
            _panel(
                2,
                "Stage duration p95 (s)",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, stage) (rate("
                        "autoscaler_stage_duration_seconds_bucket[5m])))",
                        "{{stage}}",
                    ),
                ],
                unit="s",
            ),
            _panel(
                3,
                "Leader and lease generation",
                [
                    ("autoscaler_leader", "leader {{instance}}"),
                    ("autoscaler_lease_generation", "generation {{instance}}"),
                ],
            ),
            _panel(
                4,
                "Seconds since the last successful cycle",
                [
                    ("time() - autoscaler_last_successful_cycle_timestamp_seconds", "{{instance}}"),
                ],
                unit="s",
            ),
            _panel(
                5,
                "Stale collector scopes",
                [
                    ("count(autoscaler_collector_stale == 1) or vector(0)", "stale scopes"),
                ],
            ),
            _panel(
                6,
                "Action latency p95 by kind (s)",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, kind) (rate("
                        "autoscaler_action_duration_seconds_bucket[15m])))",
                        "{{kind}}",
                    ),
                ],
                unit="s",
            ),
            _panel(
                7,
                "Age of each VM's last backup (s)",
                [
                    (
                        "time() - max by (business, vm)"
                        " (autoscaler_backup_last_success_timestamp_seconds)",
                        "{{business}} {{vm}}",
                    ),
                ],
                unit="s",
            ),
            _panel(
                8,
                "Failed backups per business (per 6h)",
                [
                    (
                        "sum by (business) (increase(autoscaler_backup_failures_total[6h]))",
                        "{{business}}",
                    ),
                ],
            ),
        ],
    )


def all_dashboards() -> dict[str, dict[str, Any]]:
    return {
        "fleet.json": fleet(),
        "business-sla.json": business_sla(),
        "racks.json": racks(),
        "ceph-dpdk-links.json": ceph_dpdk_links(),
        "controller.json": controller(),
    }


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every panel query, with ``$business`` matching all."""
    return [
        (panel["title"], target["expr"].replace('=~"$business"', '=~".+"'))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
