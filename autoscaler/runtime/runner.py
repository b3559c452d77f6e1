"""``autoscaler run --config C``: wire the controller's handles together and run until told.

Where it sits: the process entry of the product. It builds the handles (collectors, metrics
registry and server, executor with its journal) and passes them in; nothing is global. SIGTERM
and SIGINT stop cleanly; SIGHUP reloads the policies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import ConfigError, ConfigProblem, TemporaryError
from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.observability.http_server import parse_listen
from autoscaler.runtime import logs
from autoscaler.runtime.actuation import ExecutorActuation
from autoscaler.runtime.collection import (
    CollectionStage,
    access_collector,
    backup_catalogue,
    build_collectors,
    connect_ceph,
    promql_slis,
)
from autoscaler.runtime.controller import Controller
from autoscaler.runtime.logs import event
from autoscaler.runtime.shared_state import open_shared_state
from autoscaler.runtime.wiring import open_lease, quiet_libvirt

log = logging.getLogger("autoscaler.run")


def ceph_handle(config: ControllerConfig) -> Any | None:
    """The one rados handle of this process (collector and lease share it), or None without
    Ceph. A Ceph that does not answer at start only costs the collector, unless the lease is
    kept in RADOS: then the controller cannot lead and says so at once."""
    if config.ceph is None:
        if config.lease.kind == "rados":
            raise ConfigError(
                "controller file",
                [
                    ConfigProblem(
                        line=None, field="lease.kind", message="'rados' needs a ceph section"
                    )
                ],
            )
        return None
    try:
        return connect_ceph(config)
    except TemporaryError as exc:
        if config.lease.kind == "rados":
            raise
        event(log, "ceph unavailable at start", logging.WARNING, error=str(exc))
        return None


def run(config_path: Path, *, dry_run: bool, holder: str | None, listen: str | None) -> int:
    logs.setup()
    quiet_libvirt()
    config = load_controller_config(config_path)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    metrics = ControllerMetrics()
    health = HealthState(interval_s=config.intervals.decide_s)
    host, port = parse_listen(listen or config.metrics.listen)
    server = MetricsServer(metrics, health, host, port)
    cluster = ceph_handle(config)
    collection = CollectionStage(build_collectors(config, ceph=cluster))
    shared = open_shared_state(config, cluster)
    lease = open_lease(config, holder, cluster, shared)
    controller = Controller(
        config,
        holder=holder,
        metrics=metrics,
        health=health,
        collection=collection,
        actuation=None,
        dry_run=dry_run,
        lease=lease,
        shared=shared,
    )
    collection.add(backup_catalogue(config, lambda: controller.policies, cluster))
    if config.balancers:
        collection.add(access_collector(config, lambda: controller.policies))
    slis = promql_slis(config, lambda: controller.policies)
    if slis is not None:
        collection.add(slis)
    controller.actuation = ExecutorActuation(
        config, controller.lease, lambda: controller.policies, shared
    )
    stop = threading.Event()
    controller_pid = os.getpid()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != controller_pid:
            # A child a library forked from us inherits this handler: it is not the controller
            # being stopped, so it ends as the sender meant, without a "stopping" in our log.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        event(log, "stopping", signal=signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=controller.reload_policies, daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    server.start()
    event(log, "serving metrics", listen=f"{host}:{server.port}")
    controller.start()
    # Wake once a second: Python runs a signal's handler only in the main thread, and a SIGTERM
    # the kernel gave to another of our threads does not end a wait that has no timeout (a
    # controller in the lab once ignored the SIGTERM that stopped it for minutes).
    while not stop.wait(1.0):
        pass
    controller.stop()
    server.stop()
    return 0
