"""keyspace.py is the one place an etcd key is spelled: no other module of the etcd engine
holds a string that starts like a key family (`ws/`, `meta/import`, ...). A new kind of key
gets its family there first. Docstrings and comments may still name keys."""

from __future__ import annotations

import ast
from pathlib import Path

from blixard.store.etcd import keyspace

ETCD = Path(keyspace.__file__).parent


def _families() -> list[str]:
    return [
        value
        for name, value in vars(keyspace).items()
        if name.isupper() and isinstance(value, str) and "/" in value
    ]


def _docstrings(tree: ast.Module) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def key_literals(source: str, families: list[str]) -> list[str]:
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(node.value.startswith(family) for family in families)
    ]


def test_only_keyspace_spells_etcd_keys() -> None:
    families = _families()
    assert "ws/" in families and "meta/import" in families
    found = {
        path.name: literals
        for path in sorted(ETCD.glob("*.py"))
        if path.name != "keyspace.py" and (literals := key_literals(path.read_text(), families))
    }
    assert found == {}


def test_the_check_sees_a_key_literal() -> None:
    source = '"""Docs may say ws/<name>."""\nkey = store.keys.key("ws/", name)\n'
    assert key_literals(source, _families()) == ["line 2: 'ws/'"]
