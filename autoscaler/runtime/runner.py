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

import libvirt

from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.model import ConfigError, ConfigProblem
from autoscaler.observability.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.runtime import logs
from autoscaler.runtime.actuation import ExecutorActuation
from autoscaler.runtime.collection import CollectionStage, build_collectors
from autoscaler.runtime.controller import Controller
from autoscaler.runtime.logs import event
from autoscaler.runtime.rados_lease import RadosLease

log = logging.getLogger("autoscaler.run")


def rados_lease(config: ControllerConfig, holder: str) -> RadosLease:
    """The RADOS lease on the configured Ceph cluster (a ConfigError without Ceph)."""
    import rados

    if config.ceph is None:
        raise ConfigError(
            "controller file",
            [ConfigProblem(line=None, field="lease.kind", message="'rados' needs a ceph section")],
        )
    conf = {"rados_osd_op_timeout": "5", "rados_mon_op_timeout": "5"}
    if config.ceph.keyring:
        conf["keyring"] = config.ceph.keyring
    cluster = rados.Rados(conffile=config.ceph.conf, name=config.ceph.client_name, conf=conf)
    cluster.connect(timeout=int(config.ceph.timeout_s))
    return RadosLease(cluster.open_ioctx(config.ceph.pool), holder, config.lease.duration_s)


def run(config_path: Path, *, dry_run: bool, holder: str | None, listen: str | None) -> int:
    logs.setup()
    # libvirt prints every error to stderr too; we get each as an exception and log it once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    config = load_controller_config(config_path)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    metrics = ControllerMetrics()
    health = HealthState(interval_s=config.intervals.decide_s)
    host, _, port = (listen or config.metrics.listen).rpartition(":")
    server = MetricsServer(metrics, health, host.strip("[]"), int(port))
    collection = CollectionStage(build_collectors(config))
    lease = None
    if config.lease.kind == "rados":
        lease = rados_lease(config, holder)
    controller = Controller(
        config,
        holder=holder,
        metrics=metrics,
        health=health,
        collection=collection,
        actuation=None,
        dry_run=dry_run,
        lease=lease,
    )
    controller.actuation = ExecutorActuation(config, controller.lease, lambda: controller.policies)
    stop = threading.Event()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
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
