"""The controller's own metrics and health endpoint.

Where it sits: the last stage of the flow ("reports"). The cycle counts into a
``ControllerMetrics`` (an explicit prometheus-client registry, never the global one) as it decides
and acts; the fleet's gauges are read at scrape time from the controller's last snapshot and
Decision (``watch``, ``autoscaler.observability.fleet_metrics``). ``MetricsServer`` serves
``/metrics`` and ``/healthz`` on loopback by default, with a deadline per request and a cap on
connections (``http_server``). ``/healthz`` fails once the last successful
cycle is older than three intervals, or while a problem is reported (the state folder cannot be
written); it also shows a fleet-wide freeze and a refused stale snapshot. A standby is healthy
and says so, and a leader whose lease ran out unrenewed answers as a standby.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from autoscaler.observability.fleet_metrics import FleetCollector, FleetView
from autoscaler.observability.http_server import BoundedHTTPServer, DeadlineHandler

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ControllerMetrics:
    """Every metric the controller exports, on its own registry: counters and histograms the
    cycle updates, and (once ``watch`` is called) the fleet's gauges read at scrape time."""

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
        self.sli_good = Counter(
            "autoscaler_sli_good_events",
            "Good SLI intervals per business.",
            ["business"],
            registry=r,
        )
        self.sli_total = Counter(
            "autoscaler_sli_events", "SLI intervals per business.", ["business"], registry=r
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
        self.backup_failures = Counter(
            "autoscaler_backup_failures",
            "Scheduled backups (actions of kind backup) that failed, per business; each"
            " business with a backup policy starts at 0 so that its first failure counts.",
            ["business"],
            registry=r,
        )
        self.plans = Counter("autoscaler_plans", "Plans decided, by mode.", ["mode"], registry=r)
        self.approvals_refused = Counter(
            "autoscaler_approvals_refused",
            "Approved plans refused at execution (edited, expired, replayed, or made stale).",
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
        self.state_write_errors = Counter(
            "autoscaler_state_write_errors",
            "Failed writes of the controller's own state (lease, history), e.g. a full disk.",
            ["store"],
            registry=r,
        )
        self.clone_refused = Gauge(
            "autoscaler_clone_refused",
            "1 while a business on RBD wants a clone its storage cannot take (its pool near"
            " full, PGs inactive, or Ceph's health unknown); the reason is logged.",
            ["business"],
            registry=r,
        )
        self.rollout_instances = Gauge(
            "autoscaler_rollout_instances",
            "Running instances of a business by where they are in its rollout: at_target (the"
            " template version it is rolled to, or the policy's) or out_of_date.",
            ["business", "state"],
            registry=r,
        )
        self.rollout_paused = Gauge(
            "autoscaler_rollout_paused",
            "1 while an operator holds the business's rollout (autoscaler rollout --pause).",
            ["business"],
            registry=r,
        )
        self.access_stale = Gauge(
            "autoscaler_access_stale",
            "1 while the load balancer in front of a business does not answer: its view is"
            " stale, nothing is retired and its new clones wait to be registered.",
            ["business", "balancer"],
            registry=r,
        )
        self.access_changes = Counter(
            "autoscaler_access_changes",
            "Servers registered in or removed from a business's backend by the access sync,"
            " by change (register, deregister) and result (done, failed).",
            ["business", "change", "result"],
            registry=r,
        )
        self.freeze = Gauge(
            "autoscaler_freeze",
            "1 while retires and live migrations are frozen fleet-wide (a demand collapse"
            " across businesses or every VM at 0 CPU: a broken metrics source).",
            registry=r,
        )
        self.actions_held = Counter(
            "autoscaler_actions_held",
            "Actions held back by the fleet-wide cap on actions per minute.",
            registry=r,
        )
        self.stale_snapshot = Gauge(
            "autoscaler_stale_snapshot",
            "1 while the cycle refuses to decide on a snapshot older than its limit.",
            registry=r,
        )
        self.stale_snapshot_refusals = Counter(
            "autoscaler_stale_snapshot_refusals",
            "Cycles that refused to decide on a snapshot older than its limit.",
            registry=r,
        )

    def watch(self, view: Callable[[], FleetView]) -> None:
        """Serve the fleet's gauges from ``view()``, called at every scrape."""
        self.registry.register(FleetCollector(view))


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
    freeze: str | None = None
    """Why retires and migrations are frozen fleet-wide (shown, not a failure by itself)."""
    stale_snapshot: str | None = None
    """Why the last cycle refused its snapshot (no decision: the cycle ages until fresh)."""
    waiting_for: dict[str, str] = field(default_factory=dict)
    """Host -> why the leader's hands wait for it (stuck in reconciliation, a connect without
    answer). Reported, not unhealthy by itself: the other hosts' businesses go on."""

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
            "freeze": self.freeze,
            "stale_snapshot": self.stale_snapshot,
            "waiting_for_hosts": dict(self.waiting_for),
        }


class MetricsServer:
    """/metrics and /healthz on a ``BoundedHTTPServer``: each request answered or dropped
    within ``deadline_s``, at most ``max_connections`` at once."""

    def __init__(
        self,
        metrics: ControllerMetrics,
        health: HealthState,
        host: str,
        port: int,
        clock: Callable[[], float] = time.time,
        *,
        deadline_s: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        registry = metrics.registry

        class Handler(DeadlineHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok, info = health.check(clock())
                    body = json.dumps(info).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.answer(status, ctype, body)

        Handler.deadline_s = deadline_s
        self._server = BoundedHTTPServer((host, port), Handler, max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
