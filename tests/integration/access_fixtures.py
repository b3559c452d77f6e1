"""Fixtures of the access-layer tests (a pytest plugin module: ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import access
from lab import lab as lab_mod
from lab.haproxy import HaproxyProcess
from lab.lab import Lab
from policies.loader import load_policy_dir
from tests.integration.access_helpers import FIRST_WEB, web_vms


@pytest.fixture(scope="module")
def edge(lab: Lab) -> Iterator[HaproxyProcess]:
    """The lab's HAProxy in front of web (for one test module)."""
    process = access.start(lab.layout, ["web"])
    try:
        yield process
    finally:
        access.stop(lab.layout)


@pytest.fixture
def web_back(lab: Lab) -> Iterator[None]:
    """Leave web as the lab made it: web-1 and web-2 running, no other web VM, no demand."""
    yield
    lab_mod.set_demand(lab, {})
    domains = lab_mod.status(lab).domains
    for host, vms in domains.items():
        for vm in vms:
            if vm.startswith("web-") and vm not in FIRST_WEB:
                lab_mod.remove_vm(lab, vm, host)
    running = web_vms(lab)
    policy = load_policy_dir(Path(lab.state.root) / "businesses")["web"]
    for vm in sorted(FIRST_WEB - running):
        domains = lab_mod.status(lab).domains
        lab_mod.start_vm(lab, policy, vm, min(domains, key=lambda h: len(domains[h])))
