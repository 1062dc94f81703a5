"""A version's stored blob replaced by another version's blob of the same workspace decodes
cleanly (same workspace: the same encryption binding, a valid zstd frame), so the SHA-256
recorded at write time is what catches it: VersionCorrupt naming the version, never the
other version's bytes served under its number. Every engine, plain and encrypted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from blixard.domain.errors import VersionCorrupt
from blixard.store.crypto import Cipher
from blixard.store.etcd import EtcdStore
from blixard.store.etcd.batch import put_op
from blixard.store.protocol import Store
from tests.store.conftest import BUILDERS
from tests.store.test_engine_suite import append, state

pytestmark = pytest.mark.anyio


async def put_blob_of(
    store: Store, tmp_path: Path, workspace: str, source: int, target: int
) -> None:
    """Version `target`'s stored blob replaced by version `source`'s (metadata untouched),
    behind the store's back. Closes the store (SQLite's file must be free of its writer)."""
    if isinstance(store, EtcdStore):
        docs = {}
        for number in (source, target):
            docs[number] = orjson.loads((await store._get(store.keys.version(workspace, number))).value)
        docs[target]["inline"] = docs[source]["inline"]
        docs[target]["encoding"] = docs[source]["encoding"]
        docs[target]["base_version"] = docs[source]["base_version"]
        key = store.keys.version(workspace, target)
        await store._txn([], [put_op(key, orjson.dumps(docs[target]))], [])
        await store.close()
    else:
        await store.close()
        conn = sqlite3.connect(tmp_path / "engine.db")
        try:
            rows = {
                number: conn.execute(
                    "SELECT encoding, base_version, blob FROM versions WHERE version = ?", (number,)
                ).fetchone()
                for number in (source, target)
            }
            conn.execute(
                "UPDATE versions SET encoding = ?, base_version = ?, blob = ? WHERE version = ?",
                (*rows[source], target),
            )
            conn.commit()
        finally:
            conn.close()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("engine", sorted(BUILDERS))
async def test_a_blob_moved_to_another_version_is_version_corrupt(
    engine: str, encrypted: bool, tmp_path: Path
) -> None:
    build = BUILDERS[engine](tmp_path)
    cipher = Cipher(b"k" * 32) if encrypted else None
    store = build(cipher)
    await store.open()
    try:
        for serial in (1, 2, 3):
            await append(store, "w", serial, state(serial, salt=f"s{serial}"))
        await put_blob_of(store, tmp_path, "w", 1, 2)
        store = build(cipher)  # a fresh store: nothing cached from the writes
        await store.open()
        with pytest.raises(VersionCorrupt, match=r"Version 2 of workspace 'w'.*SHA-256"):
            await store.read_version("w", 2)
        found = await store.read_version("w", 1)
        assert found is not None and found[1] == state(1, salt="s1")
    finally:
        await store.close()
