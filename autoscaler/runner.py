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

import libvirt

from autoscaler import logs
from autoscaler.actuation import ExecutorActuation
from autoscaler.collection import CollectionStage, build_collectors
from autoscaler.config import ControllerConfig, load_controller_config
from autoscaler.controller import Controller
from autoscaler.exporter import ControllerMetrics, HealthState, MetricsServer
from autoscaler.logs import event
from autoscaler.model import ConfigError, ConfigProblem
from autoscaler.rados_lease import RadosLease

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


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
RELOAD_SIGNAL = signal.SIGHUP


def sender(pid: int) -> str:
    """``pid`` and its command line, to say in the log who asked us to stop."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return f"{pid} ({' '.join(a.decode(errors='replace') for a in argv if a)[:200]})"


def run(config_path: Path, *, dry_run: bool, holder: str | None, listen: str | None) -> int:
    # Blocked before any thread exists (librados, libvirt's event loop and the scheduler start
    # theirs below), so every thread inherits the mask and only the main thread takes these
    # signals, through sigwaitinfo, which also says which process sent them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, RELOAD_SIGNAL})
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
    server.start()
    event(log, "serving metrics", listen=f"{host}:{server.port}")
    controller.start()
    while True:
        received = signal.sigwaitinfo({*STOP_SIGNALS, RELOAD_SIGNAL})
        if received.si_signo == RELOAD_SIGNAL:
            threading.Thread(target=controller.reload_policies, daemon=True).start()
            continue
        name = signal.Signals(received.si_signo).name
        event(log, "stopping", signal=name, sender=sender(received.si_pid))
        break
    controller.stop()
    server.stop()
    return 0
