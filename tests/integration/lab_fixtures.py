"""The real libvirt lab, started once per test session (a pytest plugin module).

Where it sits: under every integration test that needs libvirt hosts and guests. The lab gets
its own folder and the first free slot, so it never collides with a demo or a working session,
and is taken down at the end of the session.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab import lab as lab_mod
from lab.lab import Lab
from lab.spec import LabSpec

T = TypeVar("T")
REUSE_ENV = "AUTOSCALER_TEST_LAB"
"""A lab root: the tests use that lab (already up) instead of starting their own."""


def wait_for(
    produce: Callable[[], T], accept: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """Poll until ``accept(produce())``; fail naming ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f} s still not {what}; last value: {value!r}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reuse = os.environ.get(REUSE_ENV)
    if reuse:  # the inner loop of one test file: a lab left up, neither started nor removed
        found = lab_mod.open_lab(Path(reuse))
        if found is None:
            pytest.fail(f"{REUSE_ENV}={reuse}: no lab there")
        yield found
        return
    root = tmp_path_factory.mktemp("lab")
    try:
        yield lab_mod.up(root, LabSpec())
    finally:
        lab_mod.down(root)


def events(log: Path) -> list[dict[str, Any]]:
    """The controller's JSON log events in ``log`` (lines that are not JSON are skipped)."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else ():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
