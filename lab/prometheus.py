"""The lab's monitoring stack: Prometheus, node-exporter (textfile collector) and Alertmanager.

Where it sits: a lab component. The node and PromQL SLI collectors read this Prometheus; the
temperature feeder writes each rack's sensor through node-exporter's textfile folder; the
controller's own metrics ports and the Ceph mgr module are scraped here; the project's rule files
(burn-rate alerts) are loaded from a folder given to ``start``. Everything binds 127.0.0.1 on the
slot's ports, lives under ``layout.prometheus_dir`` and is stopped by pid file.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lab.layout import (
    PORT_ALERTMANAGER,
    PORT_CEPH_MGR_PROMETHEUS,
    PORT_CONTROLLER_METRICS,
    PORT_CONTROLLER_METRICS_2,
    PORT_NODE_EXPORTER,
    PORT_PROMETHEUS,
    LabLayout,
)
from lab.supervision import (
    ComponentStatus,
    http_ok,
    remove_folder,
    running_pid,
    spawn,
    start_clean,
    stop_all,
    wait_until,
)

COMPONENT = "prometheus"
PROCESSES = ("node-exporter", "alertmanager", "prometheus")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class PrometheusStack:
    """What ``start`` started: where to reach each daemon and where the lab feeds sensors."""

    url: str
    alertmanager_url: str
    node_exporter_url: str
    textfile_dir: Path
    rules_dir: Path | None
    pids: dict[str, int]


def _address(layout: LabLayout, offset: int) -> str:
    return f"{LOOPBACK}:{layout.port(offset)}"


HAPROXY_METRICS_PORT = 8404
"""Where the lab's HAProxy serves its Prometheus exporter (``lab.access.METRICS_PORT``)."""


def _run_dir(layout: LabLayout) -> Path:
    return layout.prometheus_dir / "run"


def scrape_config(
    layout: LabLayout, rules_dir: Path | None, scrape_interval_s: float
) -> dict[str, object]:
    """Prometheus configuration (JSON is valid YAML, so no quoting of paths is needed)."""

    def targets(*offsets: int) -> dict[str, list[str]]:
        return {"targets": [_address(layout, o) for o in offsets]}

    def job(name: str, *offsets: int) -> dict[str, object]:
        return {"job_name": name, "static_configs": [targets(*offsets)]}

    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    config: dict[str, object] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "alerting": {"alertmanagers": [{"static_configs": [targets(PORT_ALERTMANAGER)]}]},
        "scrape_configs": [
            job("prometheus", PORT_PROMETHEUS),
            job("node", PORT_NODE_EXPORTER),
            job("ceph", PORT_CEPH_MGR_PROMETHEUS),
            job("autoscaler", PORT_CONTROLLER_METRICS, PORT_CONTROLLER_METRICS_2),
            # The access layer's HAProxy (in the access namespace, when the lab runs one):
            # its request counters are the request SLI's source.
            {
                "job_name": "haproxy",
                "static_configs": [
                    {"targets": [f"{layout.access_address}:{HAPROXY_METRICS_PORT}"]}
                ],
            },
        ],
    }
    if rules_dir is not None:
        folder = rules_dir.resolve()
        config["rule_files"] = [str(folder / "*.yml"), str(folder / "*.yaml")]
    return config


ALERTMANAGER_CONFIG = {
    "route": {
        "receiver": "lab",
        "group_by": ["alertname"],
        "group_wait": "1s",
        "group_interval": "5s",
        "repeat_interval": "1h",
    },
    "receivers": [{"name": "lab"}],
}


def _wait_http(url: str, what: str, timeout: float) -> None:
    wait_until(lambda: http_ok(url), timeout=timeout, what=what)


def _stack(layout: LabLayout, rules_dir: Path | None, pids: dict[str, int]) -> PrometheusStack:
    return PrometheusStack(
        url=f"http://{_address(layout, PORT_PROMETHEUS)}",
        alertmanager_url=f"http://{_address(layout, PORT_ALERTMANAGER)}",
        node_exporter_url=f"http://{_address(layout, PORT_NODE_EXPORTER)}",
        textfile_dir=layout.node_textfile_dir,
        rules_dir=rules_dir,
        pids=pids,
    )


def _started_with(layout: LabLayout) -> dict[str, object]:
    try:
        loaded = json.loads((layout.prometheus_dir / "started.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def start(
    layout: LabLayout,
    rules_dir: Path | None = None,
    *,
    scrape_interval_s: float = 1.0,
    timeout: float = 30.0,
) -> PrometheusStack:
    """Start (or keep, if already running with the same arguments) the monitoring stack."""
    wanted: dict[str, object] = {
        "rules_dir": str(rules_dir) if rules_dir else None,
        "scrape": scrape_interval_s,
    }
    current = status(layout)
    if current.running and _started_with(layout) == wanted:
        return _stack(layout, rules_dir, {k: v for k, v in current.processes.items() if v})
    return start_clean(
        layout, stop, lambda: _start_fresh(layout, rules_dir, wanted, scrape_interval_s, timeout)
    )


def _start_fresh(
    layout: LabLayout,
    rules_dir: Path | None,
    wanted: dict[str, object],
    scrape_interval_s: float,
    timeout: float,
) -> PrometheusStack:
    base = layout.prometheus_dir
    run_dir = _run_dir(layout)
    for folder in (run_dir, base / "data", base / "amdata", layout.node_textfile_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (base / "started.json").write_text(json.dumps(wanted))
    (base / "prometheus.yml").write_text(
        json.dumps(scrape_config(layout, rules_dir, scrape_interval_s), indent=1)
    )
    (base / "alertmanager.yml").write_text(json.dumps(ALERTMANAGER_CONFIG, indent=1))
    stack = _stack(layout, rules_dir, {})
    pids: dict[str, int] = {}
    pids["node-exporter"] = spawn(
        run_dir,
        "node-exporter",
        [
            "prometheus-node-exporter",
            f"--web.listen-address={_address(layout, PORT_NODE_EXPORTER)}",
            f"--collector.textfile.directory={layout.node_textfile_dir}",
            "--no-collector.systemd",
            "--no-collector.hwmon",  # the lab's sensors come from the textfile feed
        ],
        log=base / "node-exporter.log",
    )
    pids["alertmanager"] = spawn(
        run_dir,
        "alertmanager",
        [
            "prometheus-alertmanager",
            f"--config.file={base / 'alertmanager.yml'}",
            f"--storage.path={base / 'amdata'}",
            f"--web.listen-address={_address(layout, PORT_ALERTMANAGER)}",
            "--cluster.listen-address=",  # a single lab instance: no gossip port at all
        ],
        log=base / "alertmanager.log",
    )
    pids["prometheus"] = spawn(
        run_dir,
        "prometheus",
        [
            "prometheus",
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address={_address(layout, PORT_PROMETHEUS)}",
            "--storage.tsdb.retention.time=2d",
            "--web.enable-lifecycle",
        ],
        log=base / "prometheus.log",
    )
    for name, url in (
        ("node-exporter", f"{stack.node_exporter_url}/metrics"),
        ("alertmanager", f"{stack.alertmanager_url}/-/ready"),
        ("prometheus", f"{stack.url}/-/ready"),
    ):
        _wait_http(url, f"{name} at {url}", timeout)
    return _stack(layout, rules_dir, pids)


def reload(layout: LabLayout) -> None:
    """Ask Prometheus to re-read its configuration and rule files."""
    url = f"http://{_address(layout, PORT_PROMETHEUS)}/-/reload"
    request = urllib.request.Request(url, method="POST")  # noqa: S310 (loopback URL we built)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        if response.status != 200:
            raise RuntimeError(f"prometheus reload answered {response.status}")


def stop(layout: LabLayout) -> None:
    """Stop every daemon of the stack and remove its folder (data, configs, textfile feed)."""
    stop_all(_run_dir(layout))
    remove_folder(layout.prometheus_dir)


def status(layout: LabLayout) -> ComponentStatus:
    run_dir = _run_dir(layout)
    return ComponentStatus(
        component=COMPONENT,
        processes={name: running_pid(run_dir, name) for name in PROCESSES},
        details={"url": f"http://{_address(layout, PORT_PROMETHEUS)}"},
    )
