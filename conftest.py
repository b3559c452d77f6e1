"""Test-session plugins: the shared fixtures that start the real lab and its components."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.integration.lab_fixtures", "tests.integration.conftest_components"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the whole libvirt lab run last: the lab starts once, and the component
    tests (Ceph, DPDK, OVS, Prometheus) run before its guests and its own Ceph load the two
    cores (a memstore OSD restarted under that load took minutes to serve writes again)."""
    items.sort(key=lambda item: "lab" in getattr(item, "fixturenames", ()))
