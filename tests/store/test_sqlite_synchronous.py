"""The README's durability promise on SQLite: a 2xx means fsync'd, i.e. WAL with
synchronous=FULL on the connection that commits (a per-connection setting, so it is read
from the writer itself, not from a new connection that would report its own default)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blixard.store.sqlite import SQLiteStore
from tests.store.test_engine_suite import append

pytestmark = pytest.mark.anyio

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_the_writer_connection_commits_with_synchronous_full(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await append(store, "w", 1)
        assert store._writer is not None

        def pragmas(conn: sqlite3.Connection) -> tuple[int, str]:
            synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
            return synchronous, conn.execute("PRAGMA journal_mode").fetchone()[0]

        assert await store._writer.submit(pragmas) == (FULL, "wal")
    finally:
        await store.close()
