"""store.bootstrap builds every store from settings, and opening one fails with a StoreError."""

from __future__ import annotations

from pathlib import Path

import pytest

from blixard.config import DB_FILE_NAME, Settings
from blixard.store.bootstrap import build_store
from blixard.store.errors import StoreCorrupt, StoreError, StoreInUse
from blixard.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def test_a_data_dir_holds_one_database_file(tmp_path: Path) -> None:
    store = build_store(Settings.load({"data_dir": tmp_path}))
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / DB_FILE_NAME


def test_engine_options_of_sqlite_are_refused_for_etcd() -> None:
    settings = Settings.load({"storage_url": "etcd://127.0.0.1:2379/blixard"})
    with pytest.raises(ValueError, match="sqlite engine only"):
        build_store(settings, serving=False, readers=1)


async def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / DB_FILE_NAME).write_bytes(b"this is not an SQLite database, not at all" * 100)
    store = build_store(Settings.load({"data_dir": tmp_path}), serving=False)
    with pytest.raises(StoreCorrupt, match=DB_FILE_NAME) as raised:
        await store.open()
    assert isinstance(raised.value, StoreError)
    # The failed open released the file: a second attempt fails the same way, not "in use".
    with pytest.raises(StoreCorrupt):
        await store.open()


async def test_a_served_file_is_in_use(tmp_path: Path) -> None:
    settings = Settings.load({"data_dir": tmp_path})
    first = build_store(settings)
    await first.open()
    try:
        second = build_store(settings, serving=False)
        with pytest.raises(StoreInUse) as raised:
            await second.open()
        assert isinstance(raised.value, StoreError)
    finally:
        await first.close()
