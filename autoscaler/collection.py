"""The collection stage: build every configured collector and run them all in parallel.

Where it sits: the controller's collect job. Collectors are built from the controller file
(one libvirt collector per host; node metrics when Prometheus is configured; Ceph when a Ceph
conf is given; DPDK, links and bonds per host where the inventory names them). Each cycle runs
them in parallel, each under its own deadline and through ``guarded`` so one failing source
becomes stale scopes, never an exception in the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import libvirt

from autoscaler.config import ControllerConfig
from autoscaler.logs import event
from autoscaler.model import Scope
from collectors.base import Collection, Collector, LastGood, guarded
from collectors.libvirt_vms import LibvirtHostCollector

log = logging.getLogger("autoscaler.collection")


def _opener(uri: str) -> Callable[[], libvirt.virConnect]:
    return lambda: libvirt.open(uri)


def build_collectors(config: ControllerConfig, timeout_s: float = 5.0) -> list[Collector]:
    collectors: list[Collector] = [
        LibvirtHostCollector(h.name, _opener(h.uri), timeout_s=timeout_s)
        for *_, h in config.inventory.hosts()
    ]
    if config.prometheus is not None:
        from prometheus_api_client import PrometheusConnect

        from collectors.node import NodeCollector

        prometheus = PrometheusConnect(url=config.prometheus.url, disable_ssl=True)
        hosts = {h.name: h.name for *_, h in config.inventory.hosts()}
        racks = [k.name for *_, k in config.inventory.racks() if k.temperature_sensor]
        collectors.append(
            NodeCollector(prometheus, hosts, racks, timeout_s=config.prometheus.timeout_s)
        )
    if config.ceph is not None:
        try:
            import rados

            from collectors.ceph import CephCollector

            conf = {
                "rados_osd_op_timeout": "5",
                "rados_mon_op_timeout": "5",
                "client_mount_timeout": "5",
            }
            if config.ceph.keyring:
                conf["keyring"] = config.ceph.keyring
            cluster = rados.Rados(
                conffile=config.ceph.conf, name=config.ceph.client_name, conf=conf
            )
            cluster.connect(timeout=int(config.ceph.timeout_s))
            collectors.append(CephCollector(cluster, timeout_s=config.ceph.timeout_s))
        except Exception as exc:  # a missing Ceph must not stop the controller
            event(log, "ceph collector unavailable", logging.WARNING, error=str(exc))
    return collectors


class CollectionStage:
    """Runs every collector each cycle; remembers the latest Collection of each."""

    def __init__(self, collectors: list[Collector], deadline_s: float = 10.0) -> None:
        self.collectors = collectors
        self.deadline_s = deadline_s
        self._last_good = {c.name: LastGood() for c in collectors}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(collectors))))
        self.latest: dict[str, Collection] = {}

    def run(self, now: float) -> list[Collection]:
        futures = {
            self._pool.submit(guarded, c, now, self._last_good[c.name]): c for c in self.collectors
        }
        done, pending = wait(futures, timeout=self.deadline_s)
        for future in done:
            collector = futures[future]
            self.latest[collector.name] = future.result()
        for future in pending:  # a collector past the stage deadline: stale this cycle
            collector = futures[future]
            stale = self._last_good[collector.name].stale(
                collector.scope, collector.target, collector.name, "collection deadline passed"
            )
            self.latest[collector.name] = Collection(source=collector.name, stale=(stale,))
        return list(self.latest.values())

    def stale_scopes(self) -> list[tuple[str, Scope, str]]:
        return [(s.source, s.scope, s.target) for c in self.latest.values() for s in c.stale]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
