"""The crash and freeze hooks work only behind the controller file's ``testing.fault_hooks``.

Before: ``AUTOSCALER_CRASH_AT`` in a production controller's environment made it SIGKILL
itself in the middle of an action. The hook is built but never called here (calling it would
kill the test run); ``validate`` is the real CLI entry point.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from autoscaler.cli.main import main
from autoscaler.config import load_controller_config
from autoscaler.runtime.wiring import CRASH_ENV, crash_hook
from tests.reliability import record
from tests.unit.test_wiring import controller_file

pytest_plugins = ["tests.reliability_plugin"]


def test_a_crash_point_in_the_environment_is_ignored_without_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CRASH_ENV, "clone_from_template:started")
    config = load_controller_config(controller_file(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert crash_hook(config.testing.fault_hooks) is None
    assert "testing.fault_hooks" in caplog.text
    assert crash_hook(True) is not None
    record(
        "bad-input",
        "a crash point set in a production controller's environment",
        injected=f"{CRASH_ENV}=clone_from_template:started, testing.fault_hooks not set",
        behaviour="no hook installed; a warning names the missing setting",
        lost="nothing",
    )


def test_validate_warns_about_fault_hooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = controller_file(tmp_path)
    assert main(["validate", str(plain)]) == 0
    assert "fault_hooks" not in capsys.readouterr().err
    hooked = controller_file(tmp_path, testing={"fault_hooks": True})
    assert main(["validate", str(hooked)]) == 0
    assert "warning: testing.fault_hooks is on" in capsys.readouterr().err
