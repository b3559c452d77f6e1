"""Discover the fleet through libvirt and build a Snapshot (``autoscaler fleet``).

Where it sits: a one-shot version of the controller's collection stage: one libvirt collector
per inventory host, run in parallel, twice (a short interval apart, so utilisation can be
computed from CPU-time deltas), and the access layer's backends once, then turned into a
Snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import libvirt

from autoscaler.config import ControllerConfig
from autoscaler.model import Collection, Snapshot
from autoscaler.runtime.collection import access_collector, libvirt_collectors
from autoscaler.runtime.snapshot_builder import build_snapshot
from collectors.libvirt_vms import LibvirtHostCollector
from policies.schema import BusinessPolicy


def collect_all(collectors: list[LibvirtHostCollector], now: float) -> list[Collection]:
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(collectors)))) as pool:
        return list(pool.map(lambda c: c.collect(now), collectors))


def discover(
    config: ControllerConfig,
    policies: Mapping[str, BusinessPolicy],
    *,
    sample_interval_s: float = 2.0,
    timeout_s: float = 5.0,
) -> Snapshot:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    collectors = libvirt_collectors(config, timeout_s)
    collect_all(collectors, time.time())
    time.sleep(sample_interval_s)
    now = time.time()
    collections = collect_all(collectors, now)
    if config.balancers:  # the access layer's backends too, as the controller sees them
        collections.append(access_collector(config, lambda: policies).collect(now))
    return build_snapshot(config, policies, collections, now)
