"""Test-session plugins: the shared fixtures that start the real lab and its components."""

from __future__ import annotations

pytest_plugins = ["tests.integration.lab_fixtures", "tests.integration.conftest_components"]
