"""Faults in the other sources while the controller runs in ``auto`` mode: Prometheus stopped,
the DPDK process killed.

Where it sits: the reliability suite on the real lab (issue 7), beside ``test_faults_hosts``.
The controller must keep running, mark what the dead source covered as stale (never zero), take
no retire or migration meanwhile, and see the source again once it is back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import dpdk, prometheus
from lab.lab import PROJECT_ROOT, Lab
from lab.layout import PORT_CONTROLLER_METRICS
from tests.integration.lab_fixtures import wait_for
from tests.integration.test_controller import controller_file, healthz, restore_lab, start, stop
from tests.integration.test_faults_hosts import disruptive_between, metrics, placements
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
__all__ = ["restore_lab"]


def stale_from(port: int, source: str) -> set[str]:
    """Targets the source ``source`` marks stale right now."""
    found = set()
    for line in metrics(port).splitlines():
        if line.startswith("autoscaler_collector_stale{") and line.endswith(" 1.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("source") == source:
                found.add(f"{labels.get('scope')}:{labels.get('target')}")
    return found


def _faults(lab: Lab) -> dict[str, tuple[str, Callable[[], None], Callable[[], None]]]:
    layout = lab.layout
    return {
        "prometheus-stopped": (
            "node",
            lambda: prometheus.stop(layout),
            lambda: prometheus.start(layout, PROJECT_ROOT / "grafana" / "rules"),
        ),
        "dpdk-killed": ("dpdk", lambda: dpdk.kill(layout), lambda: dpdk.start(layout) and None),
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["prometheus-stopped", "dpdk-killed"])
def test_a_dead_source_is_stale_never_zero_never_acted_on_and_recovered(
    lab: Lab, tmp_path: Path, restore_lab: None, fault: str
) -> None:
    """Prometheus stopped, or dpdk-testpmd SIGKILLed, under a controller in auto mode.

    Expect: healthy throughout, the source's scopes stale, no retire or migration, recovered.
    """
    source, inject, clear = _faults(lab)[fault]
    config = controller_file(lab, tmp_path)
    port = lab.layout.port(PORT_CONTROLLER_METRICS)
    log = tmp_path / "controller.log"
    before = placements(lab)
    process = start(config, port, f"faults-{fault}", log)
    try:
        wait_for(
            lambda: healthz(port), lambda h: h.get("role") == "leader", timeout=30, what="leading"
        )
        wait_for(
            lambda: stale_from(port, source),
            lambda s: not s and metrics(port) != "",
            timeout=30,
            what=f"{source} fresh before the fault",
        )
        injected_at = time.time()
        inject()
        try:
            seen = wait_for(
                lambda: stale_from(port, source), bool, timeout=40, what=f"{source} marked stale"
            )
            stale_after = time.time() - injected_at
            time.sleep(8)  # several decide cycles without the source
            assert healthz(port).get("healthy") is True
            assert process.poll() is None
        finally:
            clear()
        cleared_at = time.time()
        wait_for(
            lambda: stale_from(port, source),
            lambda s: not s,
            timeout=60,
            what=f"{source} fresh again",
        )
        recovered_after = time.time() - cleared_at
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-2000:]
    acted = disruptive_between(log, injected_at, cleared_at)
    assert acted == [], f"retire or migration while {source} was dead: {acted}"
    after = placements(lab)
    assert all(len(hosts) == 1 for hosts in after.values()), after
    assert set(before) <= set(after)
    record(
        "fault",
        fault.replace("-", " "),
        injected="Prometheus (and node-exporter, Alertmanager) stopped"
        if fault == "prometheus-stopped"
        else "dpdk-testpmd SIGKILLed",
        behaviour=f"healthy throughout; {sorted(seen)} stale after {stale_after:.1f} s; no "
        f"retire or migration; fresh {recovered_after:.1f} s after the source came back",
        lost="nothing: every VM on exactly one host, all the lab's VMs still there",
    )
