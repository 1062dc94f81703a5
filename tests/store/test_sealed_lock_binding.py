"""A sealed lock payload is bound to its workspace (README, "Encryption at rest"): copied into
another workspace's record on disk it fails to open instead of naming a false holder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from blixard.domain.models import Lock
from blixard.store.crypto import Cipher, DecryptionError
from blixard.store.etcd import EtcdStore
from blixard.store.etcd.batch import put_op
from blixard.store.protocol import Store
from tests.store.conftest import BUILDERS

pytestmark = pytest.mark.anyio

CIPHER = Cipher(b"k" * 32)


async def take_lock(store: Store, workspace: str, who: str) -> None:
    info = {"ID": f"lock-{workspace}", "Who": who, "Operation": "OperationTypeApply"}
    held = await store.put_lock(
        workspace, Lock(f"lock-{workspace}", info, 5.0), expect_revision=None, now=5.0
    )
    assert held is not None


async def copy_sealed_lock(store: Store, tmp_path: Path, source: str, target: str) -> None:
    """Put `source`'s sealed lock payload into `target`'s record, bypassing the store's API
    (as someone with write access to the database file or the etcd keyspace could), then
    let the store read it: etcd reads records on demand, SQLite loads every lock at open."""
    if isinstance(store, EtcdStore):
        records = {}
        for name in (source, target):
            kv = await store._get(store.keys.workspace(name))
            records[name] = orjson.loads(kv.value)
        records[target]["lock"]["info"] = records[source]["lock"]["info"]
        await store._txn([], [put_op(store.keys.workspace(target), orjson.dumps(records[target]))], [])
        return
    await store.close()
    conn = sqlite3.connect(tmp_path / "engine.db")
    try:
        (payload,) = conn.execute(
            "SELECT lock_info FROM workspaces WHERE name = ?", (source,)
        ).fetchone()
        conn.execute("UPDATE workspaces SET lock_info = ? WHERE name = ?", (payload, target))
        conn.commit()
    finally:
        conn.close()
    await store.open()


@pytest.mark.parametrize("engine", sorted(BUILDERS))
async def test_a_sealed_lock_copied_to_another_workspace_fails_to_open(
    engine: str, tmp_path: Path
) -> None:
    store = BUILDERS[engine](tmp_path)(CIPHER)
    await store.open()
    try:
        await take_lock(store, "prod", "mallory-planted")
        await take_lock(store, "dev", "alice")
        before = await store.get_workspace("dev")
        assert before is not None and before.lock is not None
        assert before.lock.info["Who"] == "alice"
        with pytest.raises(DecryptionError, match="failed authentication"):
            await copy_sealed_lock(store, tmp_path, "prod", "dev")
            await store.get_workspace("dev")
        if engine == "etcd":  # still open: the original opens where it belongs
            prod = await store.get_workspace("prod")
            assert prod is not None and prod.lock is not None
            assert prod.lock.info["Who"] == "mallory-planted"
    finally:
        await store.close()
