"""When SQLite cannot write (disk full: SQLITE_FULL), the write answers 503 storage_unavailable
and /health/hiqlite's report says writes are failing until one succeeds again.

The full disk is SQLite's own: `PRAGMA max_page_count` caps the database file, and a write
past it fails with exactly the error a full disk gives (SQLITE_FULL, "database or disk is
full"), through the same code paths, without filling a real disk on a shared machine."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from blixard.domain.errors import StorageUnavailable
from blixard.store.sqlite import SQLiteStore
from tests.store.test_engine_suite import append

pytestmark = pytest.mark.anyio


async def test_disk_full_is_reported_by_health_until_a_write_succeeds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await append(store, "w", 1)
        assert (await store.health())["is_healthy"] is True
        assert store._writer is not None

        def cap(extra_pages: int) -> None:
            def operation(conn: sqlite3.Connection) -> None:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")

            return operation  # type: ignore[return-value]

        await store._writer.submit(cap(0))  # type: ignore[arg-type]
        incompressible = (
            b'{"serial": 2, "lineage": "L", "x": "' + os.urandom(100_000).hex().encode() + b'"}'
        )
        with pytest.raises(StorageUnavailable, match="full"):
            await append(store, "w", 2, incompressible)
        report = await store.health()
        assert report["is_healthy"] is False and report["writes_failing"] is True
        assert "database or disk is full" in report["error"] and "SQLITE_FULL" in report["error"]
        assert (await store.read_version("w", 1)) is not None  # reads still answer
        assert (await store.get_workspace("w")).head.version == 1  # type: ignore[union-attr]

        await store._writer.submit(cap(100_000))  # type: ignore[arg-type]  # space again
        await append(store, "w", 2, incompressible)
        report = await store.health()
        assert report["is_healthy"] is True and "writes_failing" not in report
    finally:
        await store.close()
