"""Test-session plugins: the shared fixtures that start the real lab and its components."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.integration.lab_fixtures", "tests.integration.conftest_components"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the whole libvirt lab run last: the lab starts once, and the component
    tests (Ceph, DPDK, OVS, Prometheus) run before its guests and its own Ceph load the two
    cores (a memstore OSD restarted under that load took minutes to serve writes again)."""
    items.sort(key=_order)


def _order(item: pytest.Item) -> tuple[bool, int]:
    """Among the lab's tests, those that expect it as it was made run first, then the fault
    tests, and last those that kill a host's libvirtd (the hardest on what comes after)."""
    uses_lab = "lab" in getattr(item, "fixturenames", ())
    if "test_faults_libvirtd" in item.nodeid:
        return uses_lab, 2
    return uses_lab, 1 if "test_faults_" in item.nodeid else 0
