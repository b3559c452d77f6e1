"""The reliability record: a pytest plugin that writes each fault or bad-input test's outcome.

Where it sits: imported by the reliability tests (``tests/unit/test_bad_input_*.py`` and
``tests/integration/test_faults_*.py``, which also load the hooks of ``tests.reliability_plugin``
through ``pytest_plugins``). For every test of those modules a file
``build/reliability/<test>.json`` says what was injected, what the controller did, what
was lost (must be nothing) and whether the test passed. A test says what
it found through ``record(...)``; a test that fails before it could say so is still written,
from its docstring, with its failure. ``python -m lab.reliability_report`` turns the
files into RELIABILITY.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "build" / "reliability"
_RECORDS: dict[str, list[dict[str, Any]]] = {}


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "unknown").rsplit(" (", 1)[0]


def record(
    suite: str, name: str, *, injected: str, behaviour: str, lost: str, **details: Any
) -> None:
    """Say what this test injected, what the controller did and what was lost."""
    _RECORDS.setdefault(_current_test(), []).append(
        {
            "suite": suite,
            "name": name,
            "injected": injected,
            "behaviour": behaviour,
            "lost": lost,
            "details": details,
        }
    )
