"""Session fixtures that start the lab's real components (a pytest plugin module).

Where it sits: under the integration tests of the collectors. Each fixture starts one real
component through the project's own lab module (``lab.*``) in slot 7 under a private
temporary folder, yields what was started, and stops it at the end of the session, checking
that no process of it is left behind. Test files import the fixtures they use by name; each
component is started once per session however many files import its fixture.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import ClassVar, TypeVar, cast

import pytest

from lab import ceph, dpdk, ovs, prometheus, temperature
from lab.layout import LabLayout
from lab.supervision import ComponentStatus

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


class _Shared:
    """What the session has started, shared by every copy of the fixtures.

    A test file imports these fixtures by name, which makes pytest register a copy of each
    in that file: without this registry each file's copy would start its own component on the
    same ports. The first copy to run starts the component and stops it at the end of the
    session (checking nothing of it is left running); the other copies reuse it.
    """

    layout: LabLayout | None = None
    started: ClassVar[dict[str, object]] = {}


def _component(
    name: str,
    start: Callable[[], T],
    stop: Callable[[LabLayout], None],
    status: Callable[[LabLayout], ComponentStatus],
    layout: LabLayout,
) -> Iterator[T]:
    if name in _Shared.started:
        yield cast(T, _Shared.started[name])
        return
    value = start()
    _Shared.started[name] = value
    try:
        yield value
    finally:
        del _Shared.started[name]
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
    if _Shared.layout is None:
        _Shared.layout = LabLayout(slot=LAB_SLOT, root=tmp_path_factory.mktemp("lab7"))
    return _Shared.layout


@pytest.fixture(scope="session")
def prometheus_stack(lab_layout: LabLayout) -> Iterator[prometheus.PrometheusStack]:
    yield from _component(
        "prometheus",
        lambda: prometheus.start(lab_layout),
        prometheus.stop,
        prometheus.status,
        lab_layout,
    )


@pytest.fixture(scope="session")
def rack_temperatures(
    lab_layout: LabLayout, prometheus_stack: prometheus.PrometheusStack
) -> Iterator[temperature.TemperatureFeeder]:
    yield from _component(
        "temperature",
        lambda: temperature.start(lab_layout, RACKS),
        temperature.stop,
        temperature.status,
        lab_layout,
    )


@pytest.fixture(scope="session")
def ceph_cluster(lab_layout: LabLayout) -> Iterator[ceph.CephCluster]:
    yield from _component(
        "ceph", lambda: ceph.start(lab_layout, RACKS), ceph.stop, ceph.status, lab_layout
    )


@pytest.fixture(scope="session")
def testpmd(lab_layout: LabLayout) -> Iterator[dpdk.Testpmd]:
    yield from _component(
        "dpdk", lambda: dpdk.start(lab_layout), dpdk.stop, dpdk.status, lab_layout
    )


@pytest.fixture(scope="session")
def ovs_bonds(lab_layout: LabLayout) -> Iterator[ovs.OvsLab]:
    yield from _component(
        "ovs", lambda: ovs.start(lab_layout, LAB_HOSTS), ovs.stop, ovs.status, lab_layout
    )
