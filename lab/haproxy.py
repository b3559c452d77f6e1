"""The lab's access layer: one HAProxy, one frontend and one backend per business.

Where it sits: a lab component (the product never imports it). It writes an ``haproxy.cfg``
for a set of businesses, starts HAProxy as a plain foreground process (``-db``) recorded by pid
file under ``root/run``, optionally inside a network namespace (``ip netns exec NS``), waits
until the runtime API answers and stops it again. The controller's ``actuators.haproxy``
registers the servers through the admin socket this config opens; the backends hold no server
of their own, so after ``restart`` (the runtime state is not persistent) they are empty until
the controller registers its servers again. HAProxy's Prometheus exporter answers on
``metrics_address:metrics_port/metrics`` for the request SLI.

Why the config is as it is:

* ``balance roundrobin``: a dynamic algorithm (static ones refuse ``add server``).
* ``option httpchk GET /health``: the check request. ``add server`` does not inherit
  ``default-server`` in 2.6, so the check's timing comes with each ``add`` (see
  ``actuators.haproxy``); the ``default-server`` line is kept for any server of the file.
* A retire loses no request in flight: it drains the server (no new requests, running ones go
  on), waits for its sessions to end, then deletes it, and HAProxy never cuts a running session
  on a state change (no ``on-marked-down shutdown-sessions``). ``retries`` with ``option
  redispatch`` covers a server that goes away under HAProxy anyway: a request whose connection
  fails is sent to another server instead of failing.
* ``timeout server`` is the business's request timeout: a request a saturated guest does not
  answer within it counts as failed (a 504), which is what the request SLI counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actuators.haproxy import HaproxyRuntime
from autoscaler.model.access import LoadBalancerUnavailable
from lab.supervision import running_pid, spawn, stop_process, wait_until

PROCESS = "haproxy"
HAPROXY = "haproxy"


@dataclass(frozen=True)
class Frontend:
    """One business: its frontend listens on ``address:port``, its backend has its name."""

    business: str
    address: str
    port: int


@dataclass(frozen=True)
class HaproxyConfig:
    """What the lab's HAProxy serves. Addresses are IPs in the namespace HAProxy runs in."""

    frontends: Sequence[Frontend]
    socket_path: Path
    metrics_address: str
    metrics_port: int
    health_path: str = "/health"
    timeout_server_s: float = 5.0
    timeout_connect_s: float = 1.0
    check_inter_s: float = 1.0
    rise: int = 2
    fall: int = 2
    retries: int = 3
    nbthread: int = 1  # the lab's machines are small; one thread keeps HAProxy light
    extra_global: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [f.business for f in self.frontends]
        if len(set(names)) != len(names):
            raise ValueError(f"a business appears twice: {names}")
        for f in self.frontends:
            ipaddress.ip_address(f.address)
        ipaddress.ip_address(self.metrics_address)

    @property
    def check_options(self) -> tuple[str, ...]:
        """The server keywords ``HaproxyRuntime.add`` should pass for this config."""
        return (
            "check",
            "inter",
            f"{round(self.check_inter_s * 1000)}ms",
            "fall",
            str(self.fall),
            "rise",
            str(self.rise),
        )


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def render(config: HaproxyConfig) -> str:
    """The haproxy.cfg text for ``config``."""
    lines = [
        "global",
        f"  stats socket {config.socket_path} mode 600 level admin expose-fd listeners",
        f"  nbthread {config.nbthread}",
        *(f"  {line}" for line in config.extra_global),
        "",
        "defaults",
        "  mode http",
        f"  timeout connect {_ms(config.timeout_connect_s)}",
        "  timeout client 30s",
        f"  timeout server {_ms(config.timeout_server_s)}",
        f"  timeout queue {_ms(config.timeout_server_s)}",
        f"  retries {config.retries}",
        "  option redispatch",
        "",
        "frontend metrics",
        f"  bind {config.metrics_address}:{config.metrics_port}",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  http-request return status 404",
        "",
    ]
    for f in config.frontends:
        lines += [
            f"frontend {f.business}",
            f"  bind {f.address}:{f.port}",
            f"  default_backend {f.business}",
            "",
            f"backend {f.business}",
            "  balance roundrobin",
            f"  option httpchk GET {config.health_path}",
            f"  default-server {' '.join(config.check_options)}",
            "",
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class HaproxyProcess:
    """A running lab HAProxy: its pid, files and a runtime client for its admin socket."""

    pid: int
    root: Path
    config_path: Path
    config: HaproxyConfig
    netns: str | None

    def runtime(self, *, name: str = "lab", timeout: float = 2.0) -> HaproxyRuntime:
        return HaproxyRuntime(
            name, self.config.socket_path, timeout=timeout, check_options=self.config.check_options
        )


def _run_dir(root: Path) -> Path:
    return root / "run"


def _answers(config: HaproxyConfig) -> bool:
    try:
        HaproxyRuntime("lab", config.socket_path, timeout=1.0).command("show info")
    except LoadBalancerUnavailable:
        return False
    return True


def start(
    config: HaproxyConfig, root: Path, *, netns: str | None = None, timeout: float = 10.0
) -> HaproxyProcess:
    """Write the config under ``root``, start HAProxy (in ``netns`` if given), wait for its API.

    Whatever HAProxy this ``root`` had running is stopped first. If it does not answer within
    ``timeout`` it is stopped again and ``TimeoutError`` names its log.
    """
    stop(root)
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "haproxy.cfg"
    config_path.write_text(render(config))
    config.socket_path.parent.mkdir(parents=True, exist_ok=True)
    config.socket_path.unlink(missing_ok=True)  # an old socket would answer nothing
    argv = [HAPROXY, "-f", str(config_path), "-db"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]  # ip execs HAProxy: the pid stays its own
    log = root / "haproxy.log"
    pid = spawn(_run_dir(root), PROCESS, argv, log=log)
    try:
        wait_until(
            lambda: running_pid(_run_dir(root), PROCESS) is None or _answers(config),
            timeout=timeout,
            what=f"HAProxy's runtime API at {config.socket_path}",
        )
        if running_pid(_run_dir(root), PROCESS) is None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"HAProxy exited at start; {log}:\n{tail}")
    except BaseException:
        stop(root)
        raise
    return HaproxyProcess(pid=pid, root=root, config_path=config_path, config=config, netns=netns)


def stop(root: Path, *, timeout: float = 10.0) -> bool:
    """Stop the HAProxy started under ``root`` (by its pid file). True if one was running.

    SIGTERM is HAProxy's hard stop: the sessions it carries end with it, which is what a
    balancer failure looks like to the clients.
    """
    return stop_process(_run_dir(root), PROCESS, timeout=timeout)


def restart(process: HaproxyProcess, *, timeout: float = 10.0) -> HaproxyProcess:
    """Stop and start again with the same config: its backends are empty again."""
    return start(process.config, process.root, netns=process.netns, timeout=timeout)


def running(root: Path) -> int | None:
    """The pid of the HAProxy started under ``root`` if it still runs."""
    return running_pid(_run_dir(root), PROCESS)
