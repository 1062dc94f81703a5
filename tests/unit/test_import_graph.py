"""No import circle in src/: every module can be read, and imported, after what it imports.

A module's imports inside functions count (they are how circles used to be hidden); imports
under `if TYPE_CHECKING:` do not, as they never run (a helper may name its engine's class in
an annotation). The layer and independence contracts are import-linter's (pyproject.toml)."""

from __future__ import annotations

import grimp


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    edges = {
        module: {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported.startswith("blixard")
        }
        for module in graph.modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return groups


def test_no_import_circle_in_src() -> None:
    graph = grimp.build_graph("blixard", exclude_type_checking_imports=True)
    assert _circles(graph) == []


def test_the_check_sees_a_circle() -> None:
    graph = grimp.ImportGraph()
    for module in ("blixard", "blixard.a", "blixard.b", "blixard.c"):
        graph.add_module(module)
    graph.add_import(importer="blixard.a", imported="blixard.b")
    graph.add_import(importer="blixard.b", imported="blixard.c")
    graph.add_import(importer="blixard.c", imported="blixard.a")
    assert _circles(graph) == [["blixard.a", "blixard.b", "blixard.c"]]
