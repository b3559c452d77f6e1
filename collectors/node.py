"""Node metrics (CPU, memory, temperature) of hosts and racks, read from Prometheus.

Where it sits: a collector, first stage of the flow. It asks Prometheus (prometheus-api-client)
for node-exporter's figures at ``now`` and returns per-host CPU utilisation, CPU count and
memory, per-host hardware temperature, and per-rack temperature from sensors whose chip is named
``rack_<rack>`` (the lab's feed, or a rack sensor exported that way). A host or rack with no
data is stale, never zero; Prometheus failing or timing out makes every scope it covers stale.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_api_client import PrometheusConnect

from autoscaler.model import Collection, Sample, Scope, SignalName, Stale, TemporaryError
from autoscaler.model.bounded import BoundedCaller
from autoscaler.model.names import check_name
from collectors.base import LastGood
from collectors.common import all_stale, scoped
from collectors.prometheus_query import InstantValue, instant_query, redacted

RACK_CHIP_PREFIX = "rack_"


class NodeCollector:
    """Per-host and per-rack node figures from one Prometheus.

    One ``collect`` takes at most ``timeout_s`` whatever the client's own retries do.

    ``hosts`` maps each inventory host to the ``instance`` label of its node-exporter (several
    lab hosts may share one exporter); ``racks`` are the racks whose temperature is expected.
    """

    name = "node"
    scope = Scope.CLUSTER

    def __init__(
        self,
        prometheus: PrometheusConnect,
        hosts: Mapping[str, str],
        racks: Sequence[str] = (),
        *,
        target: str = "prometheus",
        timeout_s: float = 5.0,
        rate_window: str = "30s",
    ) -> None:
        self.prometheus = prometheus
        self.hosts = {check_name(h, what="host"): inst for h, inst in hosts.items()}
        self.racks = tuple(check_name(r, what="rack") for r in racks)
        self.target = target
        self.timeout_s = timeout_s
        self._calls: BoundedCaller[Any] = BoundedCaller(f"prometheus at {redacted(prometheus.url)}")
        self.rate_window = rate_window
        self.last_good = LastGood()

    def _scopes(self) -> list[tuple[Scope, str]]:
        return [
            (self.scope, self.target),
            *((Scope.HOST, h) for h in self.hosts),
            *((Scope.RACK, r) for r in self.racks),
        ]

    def _query(self, query: str, now: float) -> list[InstantValue]:
        return instant_query(self.prometheus, query, now, self.timeout_s)

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        try:
            per_instance, temperatures = self._calls.call(
                lambda: (self._per_instance(now), self._query("node_hwmon_temp_celsius", now)),
                self.timeout_s,
            )
        except TemporaryError as exc:
            reason = str(exc)
            return all_stale(self.name, self._scopes(), self.last_good, reason, started)
        samples: list[Sample] = []
        stale: list[Stale] = []
        for host, instance in self.hosts.items():
            figures = per_instance.get(instance)
            if not figures:
                stale.append(self._stale(Scope.HOST, host, f"no node metrics for {instance}"))
                continue
            self.last_good.ok(Scope.HOST, host, now)
            samples += [scoped(m, v, now, Scope.HOST, host) for m, v in sorted(figures.items())]
        samples += self._host_temperatures(temperatures, now)
        rack_readings = {
            t.labels.get("chip", "")[len(RACK_CHIP_PREFIX) :]: t.value
            for t in temperatures
            if t.labels.get("chip", "").startswith(RACK_CHIP_PREFIX)
        }
        for rack in self.racks:
            if rack not in rack_readings:
                stale.append(self._stale(Scope.RACK, rack, f"no temperature sensor rack_{rack}"))
                continue
            self.last_good.ok(Scope.RACK, rack, now)
            samples.append(
                scoped(SignalName.TEMPERATURE_CELSIUS, rack_readings[rack], now, Scope.RACK, rack)
            )
        return Collection(
            source=self.name,
            samples=tuple(samples),
            stale=tuple(stale),
            duration_s=time.monotonic() - started,
        )

    def _stale(self, scope: Scope, target: str, reason: str) -> Stale:
        return self.last_good.stale(scope, target, self.name, reason)

    def _per_instance(self, now: float) -> dict[str, dict[str, float]]:
        window = self.rate_window
        queries = {
            "host_cpu_utilisation": (
                f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{window}]))'
            ),
            "host_cpus": 'count by (instance) (node_cpu_seconds_total{mode="idle"})',
            "host_memory_total_bytes": "node_memory_MemTotal_bytes",
            "host_memory_available_bytes": "node_memory_MemAvailable_bytes",
        }
        figures: dict[str, dict[str, float]] = {}
        for metric, query in queries.items():
            for item in self._query(query, now):
                instance = item.labels.get("instance")
                if instance is not None:
                    figures.setdefault(instance, {})[metric] = item.value
        # an instance counts only if every figure is there: a half-scraped host is not reported
        return {i: f for i, f in figures.items() if len(f) == len(queries)}

    def _host_temperatures(self, temperatures: list[InstantValue], now: float) -> list[Sample]:
        hottest: dict[str, float] = {}
        for reading in temperatures:
            if reading.labels.get("chip", "").startswith(RACK_CHIP_PREFIX):
                continue
            instance = reading.labels.get("instance", "")
            hottest[instance] = max(reading.value, hottest.get(instance, reading.value))
        return [
            scoped(SignalName.TEMPERATURE_CELSIUS, hottest[instance], now, Scope.HOST, host)
            for host, instance in self.hosts.items()
            if instance in hottest
        ]
