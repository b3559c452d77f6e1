"""No import cycles among the product's modules, read from grimp's import graph.

import-linter (``lint-imports`` in ``make test``) checks the layer contracts of pyproject.toml
but has no package-wide cycle check; this test reads the same graph. A cycle means two modules
that cannot be understood (or tested) one without the other.
"""

from __future__ import annotations

import grimp
import pytest

PRODUCT = ("autoscaler", "collectors", "policies", "actuators")


def import_cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative, so a deep chain of imports cannot hit the recursion limit.
        work: list[tuple[str, list[str]]] = []

        def enter(module: str) -> None:
            nonlocal counter
            index[module] = low[module] = counter
            counter += 1
            stack.append(module)
            on_stack.add(module)
            targets = sorted(graph.find_modules_directly_imported_by(module) & modules)
            work.append((module, targets))

        enter(start)
        while work:
            module, targets = work[-1]
            if targets:
                target = targets.pop()
                if target not in index:
                    enter(target)
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PRODUCT, cache_dir=None)


def test_the_product_has_no_import_cycles(graph: grimp.ImportGraph) -> None:
    modules = {m for m in graph.modules if m.split(".")[0] in PRODUCT}
    assert import_cycles(graph, modules) == []


def test_the_cycle_check_finds_a_cycle_it_is_shown() -> None:
    cyclic = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        cyclic.add_module(name)
    cyclic.add_import(importer="a.x", imported="a.y")
    cyclic.add_import(importer="a.y", imported="a.x")
    cyclic.add_import(importer="a.z", imported="a.x")
    assert import_cycles(cyclic, {"a.x", "a.y", "a.z"}) == [["a.x", "a.y"]]
