"""The controller's own metrics and health endpoint.

Where it sits: the last stage of the flow ("reports"). The controller updates a
``ControllerMetrics`` (an explicit prometheus-client registry, never the global one) as it
collects, decides and acts; ``MetricsServer`` serves ``/metrics`` and ``/healthz`` on loopback by
default. ``/healthz`` fails once the last successful cycle is older than three intervals, or
while a problem is reported (the state folder cannot be written); a standby is healthy and says
so, and a leader whose lease ran out unrenewed answers as a standby.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ControllerMetrics:
    """Every metric the controller exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cycle_seconds = Histogram(
            "autoscaler_cycle_duration_seconds",
            "Duration of one controller cycle.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "autoscaler_stage_duration_seconds",
            "Duration of one stage of a cycle.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "autoscaler_last_successful_cycle_timestamp_seconds",
            "When the last cycle finished without error.",
            registry=r,
        )
        self.instances = Gauge(
            "autoscaler_business_instances",
            "Ready instances per business.",
            ["business"],
            registry=r,
        )
        self.instances_wanted = Gauge(
            "autoscaler_business_instances_wanted",
            "Instances the last plan aims for.",
            ["business"],
            registry=r,
        )
        self.demand = Gauge(
            "autoscaler_business_demand_cores",
            "Measured demand (busy cores) per business.",
            ["business"],
            registry=r,
        )
        self.forecast = Gauge(
            "autoscaler_business_forecast_cores",
            "Forecast demand quantile at the provisioning lead time.",
            ["business"],
            registry=r,
        )
        self.capacity = Gauge(
            "autoscaler_business_capacity_cores",
            "Capacity of the ready instances.",
            ["business"],
            registry=r,
        )
        self.sli_good = Counter(
            "autoscaler_sli_good_events",
            "Good SLI intervals per business.",
            ["business"],
            registry=r,
        )
        self.sli_total = Counter(
            "autoscaler_sli_events", "SLI intervals per business.", ["business"], registry=r
        )
        self.budget_left = Gauge(
            "autoscaler_error_budget_remaining_ratio",
            "Share of the error budget left in the SLA window.",
            ["business"],
            registry=r,
        )
        self.objective = Gauge(
            "autoscaler_sla_objective_ratio",
            "The business's SLA objective.",
            ["business"],
            registry=r,
        )
        self.actions = Counter(
            "autoscaler_actions", "Actions by kind and result.", ["kind", "result"], registry=r
        )
        self.action_seconds = Histogram(
            "autoscaler_action_duration_seconds",
            "Duration of an action.",
            ["kind"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )
        self.plans = Counter("autoscaler_plans", "Plans decided, by mode.", ["mode"], registry=r)
        self.rack_health = Gauge(
            "autoscaler_rack_health_score",
            "Rack health score (0 healthy .. 1 failing).",
            ["rack"],
            registry=r,
        )
        self.rack_state = Gauge(
            "autoscaler_rack_state",
            "1 for the rack's current health state.",
            ["rack", "state"],
            registry=r,
        )
        self.stale = Gauge(
            "autoscaler_collector_stale",
            "1 while a source cannot observe a scope.",
            ["source", "scope", "target"],
            registry=r,
        )
        self.collector_last_success = Gauge(
            "autoscaler_collector_last_success_timestamp_seconds",
            "When a collector last returned without being stale.",
            ["source"],
            registry=r,
        )
        self.leader = Gauge(
            "autoscaler_leader", "1 while this controller holds the lease.", registry=r
        )
        self.lease_generation = Gauge(
            "autoscaler_lease_generation",
            "Generation of the lease this controller saw.",
            registry=r,
        )
        self.policy_reload_errors = Counter(
            "autoscaler_policy_reload_errors",
            "Policy reloads rejected (last good set kept).",
            registry=r,
        )
        self.signal = Gauge(
            "autoscaler_signal_value",
            "Health signals of the last snapshot (rack temperature, OSDs up, DPDK drops...).",
            ["scope", "target", "name"],
            registry=r,
        )
        self.state_write_errors = Counter(
            "autoscaler_state_write_errors",
            "Failed writes of the controller's own state (lease, history), e.g. a full disk.",
            ["store"],
            registry=r,
        )
        self.paused = Gauge(
            "autoscaler_business_paused",
            "1 while the business is paused by an operator.",
            ["business"],
            registry=r,
        )


@dataclass
class HealthState:
    """What /healthz reports; updated by the controller."""

    interval_s: float
    role: str = "starting"
    last_success: float | None = None
    started: float = 0.0
    lease_expires_at: float | None = None
    """While leading: when the lease runs out unless renewed."""
    problem: str | None = None
    """What keeps the controller from working (e.g. its state folder cannot be written)."""
    busy_since: float | None = None
    """While the leader executes a plan or settles its journal: since when. A cycle waits
    for it, and that is progress, not a hang, until ``busy_limit_s`` (the executor's own
    bound on a plan) has passed."""
    busy_limit_s: float = 0.0

    def check(self, now: float) -> tuple[bool, dict[str, object]]:
        reference = self.last_success if self.last_success is not None else self.started
        age = now - reference
        busy_s = None if self.busy_since is None else now - self.busy_since
        role = self.role
        if role == "leader" and self.lease_expires_at is not None and now >= self.lease_expires_at:
            # Not renewed in time (this process was frozen, or is stuck): whatever the role
            # said, it does not lead now; never let two controllers both answer "leader".
            role = "standby"
        busy = busy_s is not None and busy_s <= self.busy_limit_s
        healthy = self.problem is None and (role == "standby" or age <= 3 * self.interval_s or busy)
        return healthy, {
            "healthy": healthy,
            "role": role,
            "last_successful_cycle_age_s": round(age, 3),
            "max_age_s": 3 * self.interval_s,
            "acting_for_s": None if busy_s is None else round(busy_s, 3),
            "problem": self.problem,
        }


class MetricsServer:
    """/metrics and /healthz on a ThreadingHTTPServer of the standard library."""

    def __init__(
        self,
        metrics: ControllerMetrics,
        health: HealthState,
        host: str,
        port: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that connects and says nothing does not hold a thread

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok, info = health.check(clock())
                    body = json.dumps(info).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
