"""Session fixtures that start the lab's real components (a pytest plugin module).

Where it sits: under the integration tests of the collectors. Each fixture starts one real
component through the project's own lab module (``autoscaler.lab.*``) in slot 7 under a private
temporary folder, yields what was started, and stops it at the end of the session, checking
that no process of it is left behind. Test files import the fixtures they use by name.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from autoscaler.lab import ceph, dpdk, ovs, prometheus, temperature
from autoscaler.lab.layout import LabLayout

LAB_SLOT = 7
RACKS = ("r1", "r2")
LAB_HOSTS = ("h0", "h1")
T = TypeVar("T")


def eventually(
    produce: Callable[[], T], accept: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """Poll ``produce`` until ``accept`` holds for its value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f} s still not {what}; last value: {value!r}")
        time.sleep(0.2)


def _stop_and_check(stop: object, status: object, layout: LabLayout) -> None:
    assert callable(stop) and callable(status)
    stop(layout)
    left = status(layout)
    assert not any(left.processes.values()), f"left running after stop: {left}"


def collect_while_hung(pid: int | None, collect: Callable[[], T]) -> tuple[T, float]:
    """Freeze process ``pid`` (SIGSTOP), run ``collect`` and return its value and duration."""
    assert pid is not None, "the process to freeze is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        value = collect()
        return value, time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def lab_layout(tmp_path_factory: pytest.TempPathFactory) -> LabLayout:
    root: Path = tmp_path_factory.mktemp("lab7")
    return LabLayout(slot=LAB_SLOT, root=root)


@pytest.fixture(scope="session")
def prometheus_stack(lab_layout: LabLayout) -> Iterator[prometheus.PrometheusStack]:
    stack = prometheus.start(lab_layout)
    yield stack
    _stop_and_check(prometheus.stop, prometheus.status, lab_layout)


@pytest.fixture(scope="session")
def rack_temperatures(
    lab_layout: LabLayout, prometheus_stack: prometheus.PrometheusStack
) -> Iterator[temperature.TemperatureFeeder]:
    feeder = temperature.start(lab_layout, RACKS)
    yield feeder
    _stop_and_check(temperature.stop, temperature.status, lab_layout)


@pytest.fixture(scope="session")
def ceph_cluster(lab_layout: LabLayout) -> Iterator[ceph.CephCluster]:
    cluster = ceph.start(lab_layout, RACKS)
    yield cluster
    _stop_and_check(ceph.stop, ceph.status, lab_layout)


@pytest.fixture(scope="session")
def testpmd(lab_layout: LabLayout) -> Iterator[dpdk.Testpmd]:
    started = dpdk.start(lab_layout)
    yield started
    _stop_and_check(dpdk.stop, dpdk.status, lab_layout)


@pytest.fixture(scope="session")
def ovs_bonds(lab_layout: LabLayout) -> Iterator[ovs.OvsLab]:
    started = ovs.start(lab_layout, LAB_HOSTS)
    yield started
    _stop_and_check(ovs.stop, ovs.status, lab_layout)
