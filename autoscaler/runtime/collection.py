"""The collection stage: build every configured collector and run them all in parallel.

Where it sits: the controller's collect job. Collectors are built from the controller file
(one libvirt collector per host; node metrics when Prometheus is configured; Ceph when a Ceph
conf is given; DPDK, links and bonds per host where the inventory names them). Each cycle runs
them in parallel, each under its own deadline and through ``guarded`` so one failing source
becomes stale scopes, never an exception in the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import libvirt

from actuators.connections import open_connection
from autoscaler.config import ControllerConfig
from autoscaler.model import AccessTarget, Collection, Collector, Scope
from autoscaler.runtime.fleet_key import load_fleet_keys
from autoscaler.runtime.logs import event
from collectors.base import LastGood, guarded
from collectors.libvirt_vms import DomainStatsParser, LibvirtHostCollector
from policies.schema import BusinessPolicy, PromqlSli

log = logging.getLogger("autoscaler.collection")


def _opener(uri: str) -> Callable[[], libvirt.virConnect]:
    return lambda: open_connection(uri)


def libvirt_collectors(
    config: ControllerConfig, timeout_s: float = 5.0
) -> list[LibvirtHostCollector]:
    """One libvirt collector per inventory host; each tells which VMs carry a valid
    ownership stamp of the fleet key."""
    keys = load_fleet_keys(config.key_file, create=config.ownership.key_file is None)
    return [
        LibvirtHostCollector(
            h.name,
            _opener(h.uri),
            timeout_s=timeout_s,
            parser=DomainStatsParser(keys=keys),
        )
        for *_, h in config.inventory.hosts()
    ]


def connect_ceph(config: ControllerConfig) -> Any:
    """The process's one rados handle, with the controller file's timeouts (for the Ceph
    collector and the RADOS lease alike); a TemporaryError when the cluster does not answer."""
    from collectors.ceph import connect

    if config.ceph is None:
        raise ValueError("the controller file has no ceph section")
    return connect(
        Path(config.ceph.conf),
        Path(config.ceph.keyring) if config.ceph.keyring else None,
        timeout_s=config.ceph.timeout_s,
        name=config.ceph.client_name,
    )


def backup_targets(policies: Mapping[str, BusinessPolicy]) -> dict[str, tuple[str, str]]:
    """business -> (target kind, pool or folder) of every policy with scheduled backups."""
    out: dict[str, tuple[str, str]] = {}
    for name, policy in policies.items():
        if policy.backup is None:
            continue
        target = policy.backup.target
        out[name] = (target.kind, target.pool if target.kind == "pool" else target.path)
    return out


def backup_catalogue(
    config: ControllerConfig,
    policies: Callable[[], Mapping[str, BusinessPolicy]],
    ceph: Any | None,
) -> Collector:
    """The collector of the backup targets the policies in force name."""
    from collectors.backups import BackupCatalogueCollector

    handle: list[Any] = [ceph] if ceph is not None else []

    def cluster() -> Any:
        if not handle:
            handle.append(connect_ceph(config))
        return handle[0]

    return BackupCatalogueCollector(targets=lambda: backup_targets(policies()), cluster=cluster)


def access_targets(policies: Mapping[str, BusinessPolicy]) -> dict[str, AccessTarget]:
    """business -> where it is served, for every policy with an access layer."""
    return {
        name: policy.access.target(name)
        for name, policy in policies.items()
        if policy.access is not None
    }


def access_collector(
    config: ControllerConfig, policies: Callable[[], Mapping[str, BusinessPolicy]]
) -> Collector:
    """The collector of the backends the policies in force are served through."""
    from autoscaler.runtime.balancers import balancers_of
    from collectors.access import AccessCollector

    return AccessCollector(
        balancers=balancers_of(config), targets=lambda: access_targets(policies())
    )


SLI_WINDOWS = ("1m", "5m", "1h")
"""The windows a PromQL SLI is read over; the first is what each SLA interval records, so it
is short: an error ratio over five minutes would keep counting a recovered business bad."""


class PromqlSlis:
    """The PromQL SLI of every business whose policy in force has one, as one collector.

    The policies can be reloaded: each business's collector is made again when its pair
    changes, and dropped with its policy."""

    name = "promql_sli"
    scope = Scope.BUSINESS
    target = "*"

    def __init__(
        self,
        prometheus: Any,
        policies: Callable[[], Mapping[str, BusinessPolicy]],
        timeout_s: float,
    ) -> None:
        self.prometheus = prometheus
        self.policies = policies
        self.timeout_s = timeout_s
        self._each: dict[str, tuple[tuple[str, str], Collector]] = {}

    def _collectors(self) -> list[Collector]:
        from collectors.promql_sli import PromqlSliCollector

        wanted: dict[str, tuple[str, str]] = {}
        for name, policy in self.policies().items():
            sli = policy.sla.sli
            if isinstance(sli, PromqlSli):
                wanted[name] = (sli.good, sli.total)
        for name in set(self._each) - set(wanted):
            del self._each[name]
        for name, pair in wanted.items():
            if name not in self._each or self._each[name][0] != pair:
                collector = PromqlSliCollector(
                    self.prometheus, name, *pair, windows=SLI_WINDOWS, timeout_s=self.timeout_s
                )
                self._each[name] = (pair, collector)
        return [c for _, c in self._each.values()]

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        parts = [c.collect(now) for c in self._collectors()]
        return Collection(
            source=self.name,
            samples=tuple(s for c in parts for s in c.samples),
            stale=tuple(s for c in parts for s in c.stale),
            duration_s=time.monotonic() - started,
            errors=tuple(e for c in parts for e in c.errors),
        )


def promql_slis(
    config: ControllerConfig, policies: Callable[[], Mapping[str, BusinessPolicy]]
) -> Collector | None:
    """The collector of the PromQL SLIs the policies in force name (None without Prometheus)."""
    if config.prometheus is None:
        return None
    from collectors.prometheus_query import connect

    prometheus = connect(config.prometheus.url, ca_file=config.prometheus.ca_file)
    return PromqlSlis(prometheus, policies, config.prometheus.timeout_s)


def build_collectors(
    config: ControllerConfig, timeout_s: float = 5.0, *, ceph: Any | None = None
) -> list[Collector]:
    """Every collector the controller file asks for. ``ceph``: the process's rados handle
    (``connect_ceph``); without one, one is connected here if the file has a ceph section."""
    collectors: list[Collector] = list(libvirt_collectors(config, timeout_s))
    hosts = [h for *_, h in config.inventory.hosts()]
    if config.prometheus is not None:
        from collectors.node import NodeCollector
        from collectors.prometheus_query import connect

        prometheus = connect(config.prometheus.url, ca_file=config.prometheus.ca_file)
        instances = {h.name: h.node_exporter for h in hosts if h.node_exporter}
        racks = [k.name for *_, k in config.inventory.racks() if k.temperature_sensor]
        collectors.append(
            NodeCollector(prometheus, instances, racks, timeout_s=config.prometheus.timeout_s)
        )
    if config.ceph is not None:
        try:
            from collectors.ceph import CephCollector

            cluster = ceph if ceph is not None else connect_ceph(config)
            collectors.append(CephCollector(cluster, timeout_s=config.ceph.timeout_s))
        except Exception as exc:  # a Ceph down at start must not stop the controller
            event(log, "ceph collector unavailable", logging.WARNING, error=str(exc))
    from collectors.dpdk import DpdkTelemetryCollector
    from collectors.links import LinksCollector

    for h in hosts:
        if h.dpdk_socket:
            collectors.append(DpdkTelemetryCollector(h.name, Path(h.dpdk_socket)))
        if h.uplinks:
            collectors.append(LinksCollector(h.name, h.uplinks, netns=h.netns))
    bonds = {h.name: h.ovs_bond for h in hosts if h.ovs_bond}
    if config.ovs is not None and bonds:
        from collectors.ovs_bond import OvsBondCollector

        collectors.append(
            OvsBondCollector(Path(config.ovs.control), bonds, timeout_s=config.ovs.timeout_s)
        )
    return collectors


def _key(collector: Collector) -> str:
    return f"{collector.name}/{collector.target}"


class CollectionStage:
    """Runs every collector each cycle; remembers the latest Collection of each."""

    def __init__(self, collectors: list[Collector], deadline_s: float = 10.0) -> None:
        self.collectors = collectors
        self.deadline_s = deadline_s
        # Several collectors of one kind (links, dpdk) differ by target: key by both.
        self._last_good = {_key(c): LastGood() for c in collectors}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(collectors))))
        self.latest: dict[str, Collection] = {}

    def run(self, now: float) -> list[Collection]:
        futures = {
            self._pool.submit(guarded, c, now, self._last_good[_key(c)]): c for c in self.collectors
        }
        done, pending = wait(futures, timeout=self.deadline_s)
        for future in done:
            collector = futures[future]
            self.latest[_key(collector)] = future.result()
        for future in pending:  # a collector past the stage deadline: stale this cycle
            collector = futures[future]
            stale = self._last_good[_key(collector)].stale(
                collector.scope, collector.target, collector.name, "collection deadline passed"
            )
            self.latest[_key(collector)] = Collection(source=collector.name, stale=(stale,))
        return list(self.latest.values())

    def add(self, collector: Collector) -> None:
        """A collector that needs what exists only once the controller does (its policies)."""
        self.collectors.append(collector)
        self._last_good[_key(collector)] = LastGood()

    def stale_scopes(self) -> list[tuple[str, Scope, str]]:
        return [(s.source, s.scope, s.target) for c in self.latest.values() for s in c.stale]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
