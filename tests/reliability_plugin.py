"""The pytest half of the reliability record (see ``tests.reliability``).

Where it sits: registered by ``pytest_plugins = ["tests.reliability_plugin"]`` in the fault,
bad-input and safety test modules; after each of their tests it writes
``build/reliability/<test>.json`` with what ``tests.reliability.record`` gathered (or, in its
absence, the test's docstring) and the outcome. Fault and bad-input modules are known by their
names, every test a row; any other module says its suite with ``RELIABILITY_SUITE`` (the
safety tests), and its rows are what its tests record, plus any test that failed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator
from typing import Any

import pytest

from tests.reliability import _RECORDS, OUT


def _suite_of(item: pytest.Item) -> tuple[str | None, bool]:
    """The test's suite, and whether its module declared it (``RELIABILITY_SUITE``) rather than
    being known by its name."""
    declared = getattr(getattr(item, "module", None), "RELIABILITY_SUITE", None)
    if isinstance(declared, str):
        return declared, True
    module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if module.startswith("test_bad_input_"):
        return "bad-input", False
    if module.startswith("test_faults_"):
        return "fault", False
    return None, False


def _from_docstring(item: pytest.Item, suite: str) -> dict[str, Any]:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    lines = [line.strip() for line in doc.strip().splitlines()]
    injected = lines[0].rstrip(".") if lines and lines[0] else item.name
    expect = next((ln[len("Expect:") :].strip() for ln in lines if ln.startswith("Expect:")), "")
    return {
        "suite": suite,
        "name": item.name.replace("test_", "", 1).replace("_", " "),
        "injected": injected,
        "behaviour": expect.rstrip(".") or "as the test asserts",
        "lost": "nothing",
        "details": {},
    }


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("/")[-1])[:180]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    suite, declared = _suite_of(item)
    if suite is None:
        return
    failed_setup = report.when == "setup" and report.outcome != "passed"
    if report.when != "call" and not failed_setup:
        return
    result = "passed" if report.outcome == "passed" else report.outcome
    entries = _RECORDS.pop(item.nodeid, [])
    if not entries and result == "passed" and declared:
        return  # a declared module's rows are what its tests record; a failure always shows
    entries = entries or [_from_docstring(item, suite)]
    for entry in entries:
        entry["outcome"] = result
        entry["test"] = item.nodeid
        entry["duration_s"] = round(report.duration, 2)
        entry["at"] = round(time.time())
        if result != "passed":
            entry["lost"] = "unknown: the test failed"
            entry["failure"] = str(report.longreprtext).strip().splitlines()[-1:][0:1]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{_slug(item.nodeid)}.json").write_text(json.dumps(entries, indent=1) + "\n")
