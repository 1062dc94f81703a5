"""What is particular to the SQLite engine: durability settings, file lock, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from blixard.store.sqlite.store import MIGRATIONS, SQLiteStore, StoreInUse
from tests.store.test_engine_suite import append, state

pytestmark = pytest.mark.anyio


async def test_second_process_on_same_file_is_refused(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "db.sqlite")
    await first.open()
    try:
        with pytest.raises(StoreInUse, match="already served"):
            await SQLiteStore(tmp_path / "db.sqlite").open()
    finally:
        await first.close()
    second = SQLiteStore(tmp_path / "db.sqlite")
    await second.open()  # free again once the first closed
    await second.close()


async def test_wal_and_full_sync_and_migrations_recorded(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await append(store, "w", 1)
    await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert applied == [version for version, _ in MIGRATIONS]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # Re-opening applies nothing twice.
    again = SQLiteStore(path)
    await again.open()
    await again.close()


async def test_queued_writes_share_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        assert store._writer is not None
        before = store._writer.commits
        names = [f"w{i}" for i in range(64)]
        await asyncio.gather(*(append(store, name, 1, state(1, salt=name)) for name in names))
        commits = store._writer.commits - before
        assert commits < len(names), "concurrent writes should be group-committed"
        for name in names:
            found = await store.read_head(name)
            assert found is not None and found[1] == state(1, salt=name)
    finally:
        await store.close()


async def test_a_failing_operation_does_not_sink_its_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO workspaces(name) VALUES ('x')")  # violates NOT NULL

        results = await asyncio.gather(
            append(store, "ok1", 1),
            store._write(broken),
            append(store, "ok2", 1),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert [w.name for w in await store.list_workspaces()] == ["ok1", "ok2"]
    finally:
        await store.close()
