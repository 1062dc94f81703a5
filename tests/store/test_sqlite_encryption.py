"""Encryption at rest in the SQLite engine: nothing readable on disk, key checks at open,
offline encryption of an unencrypted store, tampering. (Online rotation next to live writes,
run data included, is in the engine suite: test_encryption_suite.py.)"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from blixard.domain.errors import VersionCorrupt
from blixard.domain.models import Lock
from blixard.store.crypto import Cipher, key_id_of_key
from blixard.store.encryption import EncryptionNotConfigured, EncryptionRefused
from blixard.store.sqlite import SQLiteStore
from tests.store.test_encryption_suite import SECRET
from tests.store.test_encryption_suite import bodies as suite_bodies
from tests.store.test_engine_suite import append

pytestmark = pytest.mark.anyio

K1 = os.urandom(32)
K2 = os.urandom(32)
K3 = os.urandom(32)
WHO_SECRET = "ops-laptop-SECRET-WHO"


def bodies(n: int, workspace: str = "w", seed: int = 1) -> list[bytes]:
    return suite_bodies(n, workspace, seed=seed, resources=300)


#: A state this small is stored as raw zstd literals: in an unencrypted store SECRET shows up
#: verbatim in the file, so the greps below would notice if blobs were not sealed.
TINY = b'{"serial":1,"lineage":"t","pw":"' + SECRET + b'"}'


async def fill(store: SQLiteStore, workspace: str, states: list[bytes]) -> None:
    for serial, body in enumerate(states, start=1):
        await append(store, workspace, serial, body)


async def lock(store: SQLiteStore, workspace: str, who: str = WHO_SECRET) -> None:
    ws = await store.get_workspace(workspace)
    info = {"ID": "lock-1", "Who": who, "Operation": "OperationTypeApply"}
    done = await store.put_lock(
        workspace,
        Lock("lock-1", info, 5.0),
        expect_revision=ws.revision if ws else None,
        now=5.0,
    )
    assert done is not None


async def assert_all_readable(store: SQLiteStore, workspace: str, states: list[bytes]) -> None:
    for number, body in enumerate(states, start=1):
        found = await store.read_version(workspace, number)
        assert found is not None and found[1] == body, number


def files_without(data_dir: Path, *needles: bytes) -> list[str]:
    """Names of the database files checked; fails if any holds a needle."""
    checked = []
    for path in sorted(data_dir.iterdir()):
        if not path.name.startswith("db.sqlite"):
            continue
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"{needle!r} found in {path.name}"
        checked.append(path.name)
    return checked


def encodings(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT DISTINCT encoding FROM versions")}
    finally:
        conn.close()


async def open_store(path: Path, cipher: Cipher | None, **kwargs: bool) -> SQLiteStore:
    store = SQLiteStore(path, cipher=cipher, **kwargs)
    await store.open()
    return store


def all_sealed(path: Path) -> bool:
    conn = sqlite3.connect(path)
    try:
        plain = conn.execute("SELECT count(*) FROM versions WHERE key_id IS NULL").fetchone()[0]
        locks = conn.execute(
            "SELECT count(*) FROM workspaces WHERE lock_info IS NOT NULL "
            "AND substr(lock_info, 1, 4) != X'42584501'"
        ).fetchone()[0]
        return plain == 0 and locks == 0
    finally:
        conn.close()


async def test_unencrypted_store_shows_the_secrets(tmp_path: Path) -> None:
    """The control for the next test: without a key the same greps do find the secrets."""
    path = tmp_path / "db.sqlite"
    store = await open_store(path, None)
    await fill(store, "tiny", [TINY])
    await lock(store, "tiny")
    await store.close()
    content = path.read_bytes()
    assert SECRET in content and WHO_SECRET.encode() in content
    assert not all_sealed(path)


async def test_secrets_never_reach_the_file_or_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    states = bodies(160)
    store = await open_store(path, Cipher(K1))
    try:
        await fill(store, "prod", states)
        await fill(store, "tiny", [TINY])
        await lock(store, "prod")
        # Before any checkpoint could copy it back: the WAL holds every page written so far.
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 0
        assert files_without(tmp_path, SECRET, WHO_SECRET.encode()) == [
            "db.sqlite",
            "db.sqlite-shm",
            "db.sqlite-wal",
            "db.sqlite.lock",
        ]
        await assert_all_readable(store, "prod", states)
        await assert_all_readable(store, "tiny", [TINY])
        stats = await store.stats()
        raw = sum(len(b) for b in states) + len(TINY)
        assert stats["stored_bytes"] < raw * 0.05, (stats["stored_bytes"], raw)
    finally:
        await store.close()
    assert encodings(path) == {"zstd", "zstd-delta"}  # deltas are encrypted too
    assert all_sealed(path)
    # After the clean close the WAL is checkpointed into the file: still nothing readable.
    files_without(tmp_path, SECRET, WHO_SECRET.encode())
    assert path.stat().st_size < sum(len(b) for b in states) * 0.05

    again = await open_store(path, Cipher(K1))
    try:
        await assert_all_readable(again, "prod", states)
        ws = await again.get_workspace("prod")
        assert ws is not None and ws.lock is not None and ws.lock.info["Who"] == WHO_SECRET
    finally:
        await again.close()


async def test_wrong_or_missing_key_refuses_and_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(path, Cipher(K1))
    await fill(store, "w", bodies(3))
    await store.close()

    with pytest.raises(EncryptionRefused) as wrong:
        await open_store(path, Cipher(K2))
    assert str(wrong.value) == (
        "the configured BLIXARD_ENCRYPTION_KEY does not open this database "
        f"(key id {key_id_of_key(K2)}); data is sealed with key ids {key_id_of_key(K1)}"
    )
    with pytest.raises(EncryptionRefused, match=r"is encrypted .* no key is configured"):
        await open_store(path, None)
    with pytest.raises(EncryptionRefused, match=f"also sealed with key ids {key_id_of_key(K1)}"):
        await open_store(path, Cipher(K2, [K3]))
    # Each refusal let go of the file: the right key opens it at once, in this same process.
    store = await open_store(path, Cipher(K1))
    await assert_all_readable(store, "w", bodies(3))
    await store.close()


async def test_key_on_unencrypted_store_with_data_refuses(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(path, None)
    await lock(store, "w")  # a lock payload alone is data too
    await store.close()
    with pytest.raises(EncryptionRefused, match=r"holds unencrypted data .* rotate --data-dir"):
        await open_store(path, Cipher(K1))
    # Nothing changed: it still opens without a key.
    store = await open_store(path, None)
    assert (await store.encryption_status()).encrypted is False
    with pytest.raises(EncryptionNotConfigured):
        await store.rotate_encryption()
    await store.close()


async def test_key_on_empty_unencrypted_store_turns_encryption_on(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(path, None)
    await store.close()
    store = await open_store(path, Cipher(K1))
    await fill(store, "w", bodies(2))
    await store.close()
    with pytest.raises(EncryptionRefused):
        await open_store(path, None)


async def test_offline_encryption_of_an_unencrypted_store(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    states = {"a": bodies(70, "a", seed=2), "b": bodies(9, "b", seed=3), "tiny": [TINY]}
    store = await open_store(path, None)
    for workspace, versions in states.items():
        await fill(store, workspace, versions)
    await lock(store, "a")
    await store.close()
    assert SECRET in path.read_bytes() and WHO_SECRET.encode() in path.read_bytes()

    # Interrupted after one small batch: the store must not be served half encrypted.
    store = await open_store(path, Cipher(K1), adopt_plaintext=True)
    progress = await store.rotate_encryption(max_seconds=0, batch_versions=5)
    assert progress.rotated_versions == 5 and not progress.done
    assert progress.remaining_versions == 75 and progress.remaining_locks == 1
    await store.close()
    with pytest.raises(EncryptionRefused, match=r"only partly encrypted .* rotate --data-dir"):
        await open_store(path, Cipher(K1))

    store = await open_store(path, Cipher(K1), adopt_plaintext=True)
    while not (progress := await store.rotate_encryption(batch_versions=16)).done:
        pass
    await store.close()
    # Freed pages are zeroed (secure_delete): no plaintext is left behind in the file.
    files_without(tmp_path, SECRET, WHO_SECRET.encode())
    assert all_sealed(path)

    store = await open_store(path, Cipher(K1))
    try:
        for workspace, versions in states.items():
            await assert_all_readable(store, workspace, versions)
        status = await store.encryption_status()
        assert status.versions == {key_id_of_key(K1): 80}
        assert status.locks == {key_id_of_key(K1): 1}
        assert not status.rotation_needed
    finally:
        await store.close()


async def test_dropping_the_old_key_before_rotation_finishes_refuses(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(path, Cipher(K1))
    await fill(store, "w", bodies(3))
    await store.close()
    store = await open_store(path, Cipher(K2, [K1]))
    await append(store, "w", 4, bodies(4)[3])  # now both keys seal some data
    await store.close()
    with pytest.raises(EncryptionRefused, match="does not open this database"):
        await open_store(path, Cipher(K2))
    with pytest.raises(EncryptionRefused, match="does not open this database"):
        await open_store(path, Cipher(K1))


async def test_tampered_or_moved_blobs_raise_never_garbage(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await open_store(path, Cipher(K1))
    await fill(store, "a", bodies(2, "a"))
    await fill(store, "b", bodies(2, "b"))
    await store.close()

    conn = sqlite3.connect(path)
    ids = dict(conn.execute("SELECT name, id FROM workspaces").fetchall())
    blob_b = conn.execute(
        "SELECT blob FROM versions WHERE workspace_id = ? AND version = 1", (ids["b"],)
    ).fetchone()[0]
    # Version 1 of "b" copied over version 1 of "a"; version 2 of "b" altered by one bit.
    conn.execute(
        "UPDATE versions SET blob = ? WHERE workspace_id = ? AND version = 1", (blob_b, ids["a"])
    )
    flipped = bytearray(blob_b)
    flipped[40] ^= 1
    conn.execute(
        "UPDATE versions SET blob = ? WHERE workspace_id = ? AND version = 2",
        (bytes(flipped), ids["b"]),
    )
    conn.commit()
    conn.close()

    store = await open_store(path, Cipher(K1))
    try:
        with pytest.raises(VersionCorrupt, match=r"Version 1 of workspace 'a'.*failed auth"):
            await store.read_version("a", 1)
        with pytest.raises(VersionCorrupt, match=r"Version 2 of workspace 'b'.*failed auth"):
            await store.read_version("b", 2)
        found = await store.read_version("b", 1)
        assert found is not None and found[1] == bodies(2, "b")[0]
    finally:
        await store.close()
