"""Encryption status and online rotation, the same on every engine: counts per key id, every
value (versions inline and chunked, lock payloads, run documents, files and logs) re-sealed
under the new key and read back byte-exact, writes made during the rotation kept, nothing under
the old key or in plaintext left in the stored bytes, then the old key retired."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest

from blixard.domain.models import Lock
from blixard.domain.runs import Run, RunStatus
from blixard.store.crypto import Cipher, key_id_of_blob, key_id_of_key
from blixard.store.encryption import PLAINTEXT, EncryptionNotConfigured, EncryptionRefused
from blixard.store.etcd.keyspace import prefix_end, unb64
from blixard.store.etcd.store import EtcdStore, _BodyCache
from blixard.store.protocol import Store
from blixard.store.sqlite import SQLiteStore
from tests.store.conftest import etcd_builder, sqlite_builder
from tests.store.test_engine_suite import new_version, resources_state

pytestmark = pytest.mark.anyio

K1, K2 = os.urandom(32), os.urandom(32)
OLD, NEW = key_id_of_key(K1), key_id_of_key(K2)
SECRET = b"hunter2-db-password-7f3a"
WHO = "ops-laptop-SECRET-WHO"
#: Stored as raw zstd literals: without encryption SECRET is readable in the stored bytes.
TINY = b'{"serial":1,"lineage":"t","pw":"' + SECRET + b'"}'
#: Incompressible and above the etcd engine's 512 KiB inline limit: stored in chunks there.
BIG = os.urandom(1_300_000)


def bodies(
    n: int, workspace: str = "w", *, seed: int | None = None, resources: int = 200
) -> list[bytes]:
    """Similar successive states (one resource changes per version: deltas) holding SECRET;
    the same for the same workspace (or seed)."""
    rng = random.Random(workspace if seed is None else seed)
    state = [
        {"name": f"r{i}", "id": rng.randbytes(8).hex(), "password": SECRET.decode()}
        for i in range(resources)
    ]
    out = []
    for serial in range(1, n + 1):
        state[rng.randrange(len(state))]["id"] = rng.randbytes(8).hex()
        document = {"serial": serial, "lineage": workspace, "resources": state}
        out.append(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return out


@dataclass
class Engine:
    """Builds stores on one underlying data set, and reads that data set's raw bytes."""

    name: str
    build: Callable[[Cipher | None], Store]
    #: Every stored payload as the engine holds it (etcd: inline and lock blobs un-base64'd).
    raw: Callable[[Store], Awaitable[list[bytes]]]
    #: Key id (or PLAINTEXT) of every sealable payload in the raw data.
    sealed_with: Callable[[Store], Awaitable[Counter[str]]]


def _sqlite_engine(tmp_path: Path) -> Engine:
    path = tmp_path / "engine.db"

    async def raw(store: Store) -> list[bytes]:
        return [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("engine.db")]

    async def sealed_with(store: Store) -> Counter[str]:
        conn = sqlite3.connect(path)
        try:
            payloads = [
                row[0]
                for sql in (
                    "SELECT blob FROM versions",
                    "SELECT lock_info FROM workspaces WHERE lock_info IS NOT NULL",
                    "SELECT document FROM runs",
                    "SELECT data FROM run_blobs",
                    "SELECT data FROM run_logs",
                )
                for row in conn.execute(sql)
            ]
        finally:
            conn.close()
        return Counter(key_id_of_blob(p) or PLAINTEXT for p in payloads)

    return Engine("sqlite", sqlite_builder(tmp_path), raw, sealed_with)


async def _etcd_values(store: Store) -> AsyncIterator[tuple[str, bytes, int]]:
    """(key after the prefix, payload, lease) of every key under the store's prefix."""
    assert isinstance(store, EtcdStore)
    async for kv in store._scan(store.keys.root, prefix_end(store.keys.root), page=16):
        key = bytes(kv.key)[len(store.keys.root) :].decode()
        value = bytes(kv.value)
        if key.startswith(("ver/", "runblob/")):
            doc = orjson.loads(value)
            value = unb64(doc["inline"]) if "inline" in doc else b""
        elif key.startswith("ws/"):
            lock = orjson.loads(value)["lock"]
            value = unb64(lock["info"]) if lock else b""
        elif not key.startswith(("runs/", "runlog/", "blob/", "chunks/")):
            continue  # not sealed: schema, canaries, keys, audit, run revisions
        if value:
            yield key, value, int(kv.lease)


def _etcd_engine(tmp_path: Path) -> Engine:
    async def raw(store: Store) -> list[bytes]:
        values = [value async for _, value, _ in _etcd_values(store)]
        # Version metadata too: the lock holder's `Who` in it is sealed.
        assert isinstance(store, EtcdStore)
        ver = store.keys.key("ver/")
        async for kv in store._scan(ver, prefix_end(ver)):
            values.append(orjson.dumps(orjson.loads(kv.value)["meta"]))
        return values

    async def sealed_with(store: Store) -> Counter[str]:
        found: Counter[str] = Counter()
        async for key, value, lease in _etcd_values(store):
            if lease:
                # Old chunks of a re-sealed value, kept briefly for readers in flight.
                assert key.startswith(("blob/", "chunks/")), key
                ttl = await store._client.lease.time_to_live(lease)
                assert 0 < ttl.TTL <= 30, ttl
                continue
            if key.startswith(("blob/", "chunks/")) and not key.endswith("/00000"):
                continue  # only a value's first chunk starts with the envelope
            found[key_id_of_blob(value) or PLAINTEXT] += 1
        return found

    return Engine("etcd", etcd_builder(tmp_path), raw, sealed_with)


@pytest.fixture(params=["sqlite", "etcd"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    return {"sqlite": _sqlite_engine, "etcd": _etcd_engine}[request.param](tmp_path)


@pytest.fixture
async def opened(engine: Engine) -> AsyncIterator[Callable[[Cipher | None], Awaitable[Store]]]:
    """Opens stores on the engine's data; whatever is still open is closed at the end."""
    stores: list[Store] = []

    async def open_with(cipher: Cipher | None) -> Store:
        store = engine.build(cipher)
        await store.open()
        stores.append(store)
        return store

    yield open_with
    for store in stores:
        await store.close()


async def put_lock(store: Store, workspace: str, lock_id: str) -> None:
    """Compare-and-set on a fresh read until it holds, as the domain does."""
    info = {"ID": lock_id, "Who": WHO, "Operation": "OperationTypeApply"}
    for _ in range(50):
        ws = await store.get_workspace(workspace)
        revision = ws.revision if ws else None
        lock = Lock(lock_id, info, 5.0)
        if await store.put_lock(workspace, lock, expect_revision=revision, now=5.0):
            return
    raise AssertionError("the lock never got written")


async def put_version(store: Store, workspace: str, serial: int, body: bytes) -> None:
    for _ in range(50):
        ws = await store.get_workspace(workspace)
        revision = ws.revision if ws else None
        version = replace(new_version(body, serial), lock_who=WHO)
        if await store.append_version(workspace, body, version, expect_revision=revision):
            return
    raise AssertionError("the version never got written")


HISTORY = {"a": bodies(30, "a"), "b": bodies(12, "b"), "tiny": [TINY], "big": [BIG]}
RUN = Run("run-1", "a", RunStatus.queued, 1.0, variables={"pw": SECRET.decode()})


async def fill(store: Store) -> None:
    for workspace, states in HISTORY.items():
        for serial, body in enumerate(states, start=1):
            await put_version(store, workspace, serial, body)
    await put_lock(store, "a", "lock-1")
    await store.create_run(RUN)
    await store.put_run_blob("run-1", "plan", b"plan " + SECRET)
    await store.put_run_blob("run-1", "config", BIG)
    await store.append_run_log("run-1", b"log 1 " + SECRET)
    await store.append_run_log("run-1", b"log 2 " + SECRET)


async def assert_everything_reads_back(store: Store, history: dict[str, list[bytes]]) -> None:
    """Every version byte-exact, and the lock and run data (their first contents at least)."""
    if isinstance(store, EtcdStore):
        store._bodies = _BodyCache(store._bodies.max_bytes)  # read them from etcd again
    for workspace, states in history.items():
        for number, body in enumerate(states, start=1):
            found = await store.read_version(workspace, number)
            assert found is not None and found[1] == body, (workspace, number)
            assert found[0].lock_who == WHO
        listed = await store.list_versions(workspace, limit=1000)
        assert len(listed) >= len(states) and {meta.lock_who for meta in listed} == {WHO}
    ws = await store.get_workspace("a")
    assert ws is not None and ws.lock is not None and ws.lock.info["Who"] == WHO
    run = await store.get_run("run-1")
    assert run is not None and run.variables == {"pw": SECRET.decode()}
    assert await store.get_run_blob("run-1", "plan") == b"plan " + SECRET
    assert await store.get_run_blob("run-1", "config") == BIG
    assert (await store.read_run_log("run-1")).startswith(b"log 1 " + SECRET + b"log 2 ")


async def rotate_until_done(store: Store, **step: float) -> tuple[int, int, list[str]]:
    versions = locks = 0
    retired: list[str] = []
    while True:
        progress = await store.rotate_encryption(**step)
        versions += progress.rotated_versions
        locks += progress.rotated_locks
        retired += progress.retired_key_ids
        if progress.done:
            return versions, locks, retired


async def test_status_and_raw_bytes_of_an_unencrypted_store(
    engine: Engine, opened: Callable[[Cipher | None], Awaitable[Store]]
) -> None:
    """The control for the checks below: without a key the secrets are in the raw bytes."""
    store = await opened(None)
    await fill(store)
    status = await store.encryption_status()
    assert not status.encrypted and status.current_key_id is None
    assert status.versions == {PLAINTEXT: 44} and status.locks == {PLAINTEXT: 1}
    assert status.key_ids_in_use == [] and not status.rotation_needed
    with pytest.raises(EncryptionNotConfigured):
        await store.rotate_encryption()
    raw = await engine.raw(store)
    assert any(SECRET in value for value in raw) and any(WHO.encode() in value for value in raw)
    assert set(await engine.sealed_with(store)) == {PLAINTEXT}


async def test_rotation_reseals_everything_and_retires_the_old_key(
    engine: Engine, opened: Callable[[Cipher | None], Awaitable[Store]]
) -> None:
    store = await opened(Cipher(K1))
    await fill(store)
    await store.close()

    store = await opened(Cipher(K2, [K1]))
    status = await store.encryption_status()
    assert status.encrypted and status.current_key_id == NEW
    assert status.versions == {OLD: 44} and status.locks == {OLD: 1}
    assert status.key_ids_in_use == sorted([OLD, NEW]) and status.rotation_needed
    assert status.removable_key_ids == []

    first = await store.rotate_encryption(max_seconds=0, batch_versions=7)
    assert first.rotated_versions == 7 and not first.done
    assert (first.remaining_versions, first.remaining_locks, first.total_versions) == (37, 1, 44)
    versions, locks, retired = await rotate_until_done(store, max_seconds=0, batch_versions=7)
    assert versions == 37
    assert locks == 6  # the lock payload, the run document, 2 run files, 2 log chunks
    assert retired == [OLD]

    status = await store.encryption_status()
    assert status.versions == {NEW: 44} and status.locks == {NEW: 1}
    assert status.key_ids_in_use == [NEW] and status.removable_key_ids == [OLD]
    assert not status.rotation_needed
    assert set(await engine.sealed_with(store)) == {NEW}
    assert not any(SECRET in v or WHO.encode() in v for v in await engine.raw(store))
    await assert_everything_reads_back(store, HISTORY)
    again = await store.rotate_encryption()
    assert again.done and (again.rotated_versions, again.rotated_locks) == (0, 0)
    await store.close()

    # The new key alone opens the data now; the old one alone does not.
    with pytest.raises(EncryptionRefused):
        await opened(Cipher(K1))
    store = await opened(Cipher(K2))
    await assert_everything_reads_back(store, HISTORY)


async def test_writes_during_rotation_are_kept(
    engine: Engine, opened: Callable[[Cipher | None], Awaitable[Store]]
) -> None:
    store = await opened(Cipher(K1))
    await fill(store)
    await store.close()
    store = await opened(Cipher(K2, [K1]))
    history = {**HISTORY, "a": bodies(50, "a"), "b": bodies(30, "b")}

    async def write_versions(workspace: str) -> None:
        for serial in range(len(HISTORY[workspace]) + 1, len(history[workspace]) + 1):
            await put_version(store, workspace, serial, history[workspace][serial - 1])
            await asyncio.sleep(0)

    async def write_locks_and_runs() -> None:
        run = await store.get_run("run-1")
        assert run is not None
        for i in range(20):
            await put_lock(store, "a", f"lock-{i}")
            updated = await store.update_run(
                replace(run, error=f"step {i}"), expect_revision=run.revision
            )
            assert updated is not None
            run = updated
            await store.append_run_log("run-1", f"more {i};".encode())
            await asyncio.sleep(0)

    async def read() -> None:
        for _ in range(3):
            await assert_everything_reads_back(store, HISTORY)

    async def rotate() -> list[str]:
        *_, retired = await rotate_until_done(store, max_seconds=0.001, batch_versions=5)
        return retired

    *_, retired = await asyncio.gather(
        write_versions("a"), write_versions("b"), write_locks_and_runs(), read(), rotate()
    )
    # Whatever the rotation finished with, one more pass leaves nothing under the old key.
    retired += (await rotate_until_done(store))[2]
    assert retired == [OLD]
    await assert_everything_reads_back(store, history)
    ws = await store.get_workspace("a")
    assert ws is not None and ws.lock is not None and ws.lock.id == "lock-19"
    run = await store.get_run("run-1")
    assert run is not None and run.error == "step 19" and run.revision == 21
    log = await store.read_run_log("run-1")
    assert log.endswith(b"".join(f"more {i};".encode() for i in range(20)))
    status = await store.encryption_status()
    assert status.versions == {NEW: 82} and status.locks == {NEW: 1}
    assert set(await engine.sealed_with(store)) == {NEW}


async def test_etcd_rotation_reseals_a_value_changed_since_it_was_read(tmp_path: Path) -> None:
    """etcd only: there a value can change between the rotation's read and its write (on
    SQLite a rotation batch is one transaction of the writer). Here another node, still with
    the old key current, rewrites a lock payload, a run document and a chunked run file after
    the rotation read them: each compare fails, the new content is read and re-sealed."""
    from blixard.store.etcd.encryption import LOCKS, RUN_DATA, VERSIONS

    engine = _etcd_engine(tmp_path)
    store = engine.build(Cipher(K1))
    await store.open()
    await fill(store)
    await store.close()
    store, other = engine.build(Cipher(K2, [K1])), engine.build(Cipher(K1, [K2]))
    assert isinstance(store, EtcdStore) and isinstance(other, EtcdStore)
    await store.open()
    await other.open()
    try:
        documents, files = RUN_DATA[0], RUN_DATA[1]
        rotation = store._encryption
        ws = await rotation._fetch([store.keys.workspace("a")])
        run = await rotation._fetch([store.keys.key("runs/run-1")])
        config = await rotation._fetch([store.keys.key("runblob/run-1\x00config")])
        big = await rotation._fetch([store.keys.version("big", 1)])
        await put_lock(other, "a", "lock-2")
        stored = await other.get_run("run-1")
        assert stored is not None
        assert await other.update_run(replace(stored, error="moved on"), expect_revision=1)
        big2 = os.urandom(len(BIG))
        await other.put_run_blob("run-1", "config", big2)

        assert await rotation.reseal(LOCKS, ws) == (1, 0)
        assert await rotation.reseal(documents, run) == (1, 0)
        assert await rotation.reseal(files, config) == (1, 0)
        # A reader that got the old pointer of a chunked version still finds its chunks.
        old = orjson.loads(big[0].raw)
        assert await rotation.reseal(VERSIONS, big) == (1, 0)
        assert orjson.loads((await store._get(big[0].key)).value)["chunks_at"] != old["chunks_at"]
        kept = await store._read_chunks(store.keys.key(old["chunks_at"]), old["chunks"])
        assert key_id_of_blob(kept) == OLD
        found_big = await store.read_version("big", 1)
        assert found_big is not None and found_big[1] == BIG
        found = await store.get_workspace("a")
        assert found is not None and found.lock is not None and found.lock.id == "lock-2"
        found_run = await store.get_run("run-1")
        assert found_run is not None and found_run.error == "moved on"
        assert await store.get_run_blob("run-1", "config") == big2
        # Each of the three is now under the new key in etcd.
        lock_doc = orjson.loads((await store._get(store.keys.workspace("a"))).value)["lock"]
        pointer = orjson.loads((await store._get(store.keys.key("runblob/run-1\x00config"))).value)
        first_chunk = await store._get(store.keys.key(pointer["chunks_at"], "00000"))
        for sealed in (
            unb64(lock_doc["info"]),
            bytes((await store._get(store.keys.key("runs/run-1"))).value),
            bytes(first_chunk.value),
        ):
            assert key_id_of_blob(sealed) == NEW
    finally:
        await store.close()
        await other.close()


async def index_document_keys(store: Store) -> Counter[str]:
    """Key id (or PLAINTEXT) of every stored resource index document."""
    if isinstance(store, EtcdStore):
        prefix = store.keys.key("rix/")
        values = [bytes(kv.value) async for kv in store._scan(prefix, prefix_end(prefix))]
    else:
        assert isinstance(store, SQLiteStore)
        conn = sqlite3.connect(store.path)
        values = [bytes(row[0]) for row in conn.execute("SELECT doc FROM resource_index")]
        conn.close()
    return Counter(key_id_of_blob(v) or PLAINTEXT for v in values)


async def test_index_documents_are_sealed_and_follow_the_current_key(
    opened: Callable[[Cipher | None], Awaitable[Store]],
) -> None:
    """Index documents hold identity values: sealed like versions, and rebuilt under the
    current key at the first open after a key change (readable meanwhile with the old key)."""
    store = await opened(Cipher(K1))
    for serial in range(1, 6):
        body = resources_state(serial, {"r.x": ("aws_thing", f"ident-secret-{serial}")})
        await put_version(store, "a", serial, body)
    assert await index_document_keys(store) == Counter({OLD: 1})  # the current version's
    assert not any(b"ident-secret" in v for v in await index_values(store))
    await store.close()
    store = await opened(Cipher(K2, [K1]))
    await store.reindexer.wait()  # type: ignore[attr-defined]
    assert await index_document_keys(store) == Counter({NEW: 1})
    index = store.resource_index  # type: ignore[attr-defined]
    assert index.version_of("a") == 5
    history = await store.index_history("a")  # type: ignore[attr-defined]
    assert [doc.version for doc in history] == [1, 2, 3, 4, 5]


async def index_values(store: Store) -> list[bytes]:
    if isinstance(store, EtcdStore):
        prefix = store.keys.key("rix/")
        return [bytes(kv.value) async for kv in store._scan(prefix, prefix_end(prefix))]
    assert isinstance(store, SQLiteStore)
    conn = sqlite3.connect(store.path)
    values = [bytes(row[0]) for row in conn.execute("SELECT doc FROM resource_index")]
    conn.close()
    return values
