"""The layering of DESIGN.md, read from the imports of every module.

collectors, policies and actuators use only the shared vocabulary of ``autoscaler`` (and
collectors.base / their own package); the vocabulary imports nothing else of the project;
policies do no fleet I/O (no libvirt, rados, sockets, HTTP, subprocess or clock).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("autoscaler", "collectors", "policies", "actuators")
NO_FLEET_IO = (
    "libvirt",
    "libvirt_qemu",
    "rados",
    "socket",
    "subprocess",
    "requests",
    "urllib",
    "http",
    "prometheus_api_client",
    "pyroute2",
    "time",
    "asyncio",
    "threading",
    "random",
)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    return {m for m in imports_of(path) if m.split(".")[0] in PROJECT}


@pytest.mark.parametrize("path", modules("autoscaler/model"), ids=lambda p: p.name)
def test_vocabulary_imports_nothing_else_of_the_project(path: Path) -> None:
    outside = {m for m in project_imports(path) if not m.startswith("autoscaler.model")}
    assert not outside, f"{path} imports {outside}"


@pytest.mark.parametrize(
    "path",
    [p for pkg in ("collectors", "policies", "actuators") for p in modules(pkg)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_stages_import_only_the_vocabulary_and_themselves(path: Path) -> None:
    own = path.relative_to(ROOT).parts[0]
    allowed = ("autoscaler.model", own)
    outside = {
        m
        for m in project_imports(path)
        if not any(m == a or m.startswith(a + ".") for a in allowed)
    }
    assert not outside, f"{path} imports {outside}"


@pytest.mark.parametrize("path", modules("policies"), ids=lambda p: str(p.relative_to(ROOT)))
def test_policies_do_no_fleet_io(path: Path) -> None:
    banned = {m for m in imports_of(path) if m.split(".")[0] in NO_FLEET_IO}
    assert not banned, f"{path} imports {banned}"


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import libvirt\nfrom lab import lab\n")
    assert imports_of(bad) == {"libvirt", "lab"}
