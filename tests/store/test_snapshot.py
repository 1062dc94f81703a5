"""Snapshots in the engine suite: export → import into a fresh store of the same engine gives an
identical store; import refuses a store that is not empty; exports are consistent views; the
file format verifies everything it carries. Every test that takes `store_factory` runs against
every engine (see conftest.ENGINES)."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from blixard.domain.access import ApiKey, AuditEvent, Role
from blixard.domain.models import Lock, NewVersion, StateMeta
from blixard.domain.runs import OPEN, PlanSummary, Run, RunStatus
from blixard.store.crypto import Cipher
from blixard.store.protocol import Store
from blixard.store.snapshot import (
    AuditRecord,
    DataRecord,
    KeyRecord,
    SnapshotBegin,
    SnapshotCorrupt,
    SnapshotCounts,
    SnapshotReader,
    SnapshotRecord,
    SnapshotWriter,
    StoreNotEmpty,
    UnfinishedImport,
    VersionRecord,
    WorkspaceRecord,
    decode_record,
    digest_store,
    encode_record,
    records_from,
)
from blixard.store.sqlite import SQLiteStore
from tests.store.conftest import ENGINES, StoreFactory
from tests.store.test_engine_suite import a_lock, append, state

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- helpers


def other_factory(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> StoreFactory:
    """A factory for another, empty store of the engine under test."""
    engine = request.node.callspec.params["store_factory"]
    return ENGINES[engine](tmp_path / name)


@pytest.fixture
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = other_factory(request, tmp_path, "target")()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def similar_states(n: int, lineage: str, seed: int) -> list[bytes]:
    """Successive states that differ by one resource: the engine stores most as deltas."""
    rng = random.Random(seed)
    resources = [{"name": f"r{i}", "id": rng.randbytes(8).hex()} for i in range(150)]
    out = []
    for serial in range(1, n + 1):
        resources[rng.randrange(len(resources))]["id"] = rng.randbytes(8).hex()
        document = {"version": 4, "serial": serial, "lineage": lineage, "resources": resources}
        out.append(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return out


def version_of(body: bytes, serial: int, **extra: Any) -> NewVersion:
    return NewVersion(
        meta=StateMeta(serial=serial, lineage="L", terraform_version="1.15.5", resource_count=2),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        md5=hashlib.md5(body).hexdigest(),
        created_at=2_000_000.0 + serial + 0.125,
        lock_id=extra.pop("lock_id", None),
        source=extra.pop("source", "write"),
        **extra,
    )


async def put(store: Store, name: str, body: bytes, serial: int, **extra: Any) -> int:
    ws = await store.get_workspace(name)
    updated = await store.append_version(
        name, body, version_of(body, serial, **extra), expect_revision=ws.revision if ws else None
    )
    assert updated is not None and updated.head is not None
    return updated.head.version


async def populate(store: Store) -> None:
    """A bit of everything a store holds."""
    # Many similar versions (deltas), some written under a lock, by a key, and a rollback.
    for serial, body in enumerate(similar_states(70, "alpha", seed=1), start=1):
        await put(
            store,
            "alpha",
            body,
            serial,
            written_by="ci" if serial % 2 else None,
            lock_who="me@host" if serial % 3 == 0 else None,
        )
    await put(store, "alpha", state(2, salt="rolled"), 71, source="rollback", rolled_back_from=2)
    # A held lock on a workspace with versions, with its owner.
    ws = await store.get_workspace("alpha")
    assert ws is not None
    lock = Lock(
        "lock-alpha",
        {
            "ID": "lock-alpha",
            "Who": "me@host",
            "Operation": "apply",
            "Info": "",
            "Version": "1.15.5",
            "Created": "2026-01-01T00:00:00Z",
            "Path": "",
        },
        2_000_100.5,
        owner="ci",
    )
    assert await store.put_lock("alpha", lock, expect_revision=ws.revision, now=2_000_100.5)
    # A lock-only workspace (Terraform locks before its first write).
    assert await store.put_lock("beta", a_lock("L-beta"), expect_revision=None, now=7.25)
    # A soft-deleted workspace with history.
    for serial in (1, 2, 3):
        await append(store, "gamma", serial)
    ws = await store.get_workspace("gamma")
    assert ws is not None
    assert await store.set_deleted("gamma", 9.5, expect_revision=ws.revision, now=9.5)
    # A large body (stored full) and a tiny one; bodies are arbitrary bytes to the store.
    big = orjson.dumps(
        {"serial": 1, "lineage": "big", "blob": random.Random(3).randbytes(600_000).hex()}
    )
    await put(store, "delta", big, 1)
    await put(store, "delta", b'{"serial":2,"lineage":"big"}\n', 2)
    # API keys: active, revoked, used.
    for name, role, revoked in (("ci", Role.writer, None), ("old", Role.admin, 50.0)):
        key = ApiKey(
            id=f"id-{name}",
            name=name,
            role=role,
            scopes=("alpha", "team-*"),
            secret_hash=hashlib.sha256(name.encode()).hexdigest(),
            created_at=10.0,
            created_by="bootstrap",
            last_used_at=20.0,
            revoked_at=revoked,
        )
        assert await store.create_key(key)
    await store.touch_keys({"id-ci": 30.5})
    # Audit events, some with ids given by mutations' own transactions.
    await store.append_audit(
        [
            AuditEvent(
                at=float(i),
                action="state.write",
                outcome="ok",
                key_name="ci",
                role="writer",
                source="127.0.0.1",
                workspace="alpha",
                version=i,
                lock_id=None,
                status=200,
                detail=f"event {i}",
            )
            for i in range(1, 6)
        ]
    )
    await store.append_audit([AuditEvent(at=99.0, action="admin", outcome="denied")])
    # Runs: documents (one updated), a configuration archive, a plan file and log chunks.
    first = await store.create_run(
        Run(
            "run-0001",
            "alpha",
            RunStatus.queued,
            3.0,
            created_by="ci",
            variables={"a": "1"},
            targets=("terraform_data.x",),
        )
    )
    planned = replace(
        first,
        status=RunStatus.planned,
        planned_at=4.0,
        summary=PlanSummary(1, 0, 0, ({"address": "x", "actions": ["create"]},)),
    )
    assert await store.update_run(planned, expect_revision=first.revision)
    await store.create_run(Run("run-0002", "beta", RunStatus.queued, 5.0))
    third = await store.create_run(Run("run-0003", "alpha", RunStatus.queued, 6.0))
    assert await store.update_run(
        replace(third, status=RunStatus.errored, error="no binary"), expect_revision=1
    )
    await store.put_run_blob("run-0001", "config", b"\x1f\x8b archive bytes \x00\xff")
    await store.put_run_blob("run-0001", "plan", random.Random(4).randbytes(4096))
    for chunk in (b"Planning...\n", b"\x1b[1mPlan:\x1b[0m 1 to add\n"):
        await store.append_run_log("run-0001", chunk)


async def contents(store: Store) -> dict[str, Any]:
    """Everything observable through the Store contract (revisions are CAS tokens: left out)."""
    out: dict[str, Any] = {}
    for ws in await store.list_workspaces(include_deleted=True):
        versions = await store.list_versions(ws.name, limit=10_000)
        bodies = {}
        for meta in versions:
            found = await store.read_version(ws.name, meta.version)
            assert found is not None and found[0] == meta
            bodies[meta.version] = found[1]
        head = await store.read_head(ws.name)
        out[ws.name] = {
            "workspace": replace(ws, revision=0),
            "versions": versions,
            "bodies": bodies,
            "head": head,
        }
    out["keys"] = await store.list_keys(include_revoked=True)
    out["audit"] = await store.list_audit(limit=100_000)
    runs = await store.list_runs(limit=10_000)
    out["runs"] = runs
    # What the run sweep reads: through the open-runs index on etcd, which imports rebuild.
    out["open_runs"] = await store.list_runs(
        statuses=tuple(status.value for status in OPEN), limit=10_000
    )
    out["run_files"] = {
        run.id: (
            await store.get_run_blob(run.id, "config"),
            await store.get_run_blob(run.id, "plan"),
            await store.read_run_log(run.id),
        )
        for run in runs
    }
    stats = await store.stats()
    out["stats"] = {k: stats[k] for k in ("workspaces", "versions")}
    return out


async def collect(store: Store) -> list[SnapshotRecord]:
    return [record async for record in store.export_snapshot()]


async def replay(records: list[SnapshotRecord]) -> AsyncIterator[SnapshotRecord]:
    for record in records:
        yield record


# --------------------------------------------------------------------------- the contract


async def test_export_then_import_gives_an_identical_store(store: Store, target: Store) -> None:
    await populate(store)
    records = await collect(store)

    begin = records[0]
    assert isinstance(begin, SnapshotBegin) and begin.engine == store.engine
    assert begin.counts.workspaces == 4 and begin.counts.versions == 71 + 3 + 2
    assert begin.counts.locks == 2 and begin.counts.api_keys == 2
    assert begin.counts.audit_events >= 6 and begin.counts.runs == 3
    assert begin.counts.run_blobs == 2 and begin.counts.run_logs == 2

    report = await target.import_snapshot(replay(records))
    assert report.counts.to_json() == begin.counts.to_json()

    copied = await contents(target)
    assert copied == await contents(store)
    assert [run.id for run in copied["open_runs"]] == ["run-0002", "run-0001"]
    # Exporting the copy gives the very same records, so the same checksum.
    assert await collect(target) == records
    assert await digest_store(target) == await digest_store(store)


async def test_imported_store_keeps_working(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    await populate(store)
    records = await collect(store)
    factory = other_factory(request, tmp_path, "copy")
    copy = factory()
    await copy.open()
    try:
        await copy.import_snapshot(replay(records))
        # Appends continue the numbering (deltas against imported bases), locks still hold.
        number = await put(copy, "alpha", state(100, salt="after"), 100)
        assert number == 72
        found = await copy.read_version("alpha", 72)
        assert found is not None and found[1] == state(100, salt="after")
        ws = await copy.get_workspace("alpha")
        assert ws is not None and ws.lock is not None and ws.lock.id == "lock-alpha"
        assert not await copy.create_key(ApiKey("id-x", "ci", Role.reader, ("*",), "h", 1.0)), (
            "the imported active key 'ci' still owns its name"
        )
        await copy.append_audit([AuditEvent(at=1000.0, action="admin", outcome="ok")])
        newest = (await copy.list_audit(limit=1))[0]
        oldest_ids = [event.id for event in await store.list_audit(limit=100_000)]
        assert newest.id is not None and newest.id > max(i for i in oldest_ids if i is not None)
    finally:
        await copy.close()
    # ... and everything survives a reopen.
    reopened = factory()
    await reopened.open()
    try:
        found = await reopened.read_version("alpha", 71)
        assert found is not None and found[0].rolled_back_from == 2
        assert (await reopened.stats())["versions"] == 77
    finally:
        await reopened.close()


async def test_import_into_a_store_that_is_not_empty_is_refused(
    store: Store, target: Store
) -> None:
    await populate(store)
    records = await collect(store)
    await append(target, "existing", 1)
    with pytest.raises(StoreNotEmpty, match="not empty"):
        await target.import_snapshot(replay(records))
    assert [ws.name for ws in await target.list_workspaces()] == ["existing"]


async def test_a_key_or_audit_event_alone_makes_a_store_not_empty(
    store: Store, target: Store
) -> None:
    records = await collect(store)  # an empty store exports just its counts
    assert len(records) == 1 and isinstance(records[0], SnapshotBegin)
    await target.append_audit([AuditEvent(at=1.0, action="admin", outcome="ok")])
    with pytest.raises(StoreNotEmpty):
        await target.import_snapshot(replay(records))


async def test_empty_store_round_trips(store: Store, target: Store) -> None:
    report = await target.import_snapshot(replay(await collect(store)))
    assert report.counts.records == 0
    assert await target.list_workspaces(include_deleted=True) == []


async def test_export_is_one_consistent_view(store: Store) -> None:
    await populate(store)
    export = store.export_snapshot()
    begin = await anext(export)
    assert isinstance(begin, SnapshotBegin)
    # Writes after the view was taken: none of them may show up in this export.
    await put(store, "alpha", state(500, salt="late"), 500)
    await append(store, "zz-late", 1)
    assert await store.create_key(ApiKey("id-late", "late", Role.reader, ("*",), "h", 1.0))
    await store.append_audit([AuditEvent(at=500.0, action="late", outcome="ok")])
    rest = [record async for record in export]
    found = counts_of(rest)
    assert found == begin.counts.to_json()
    names = {r.name for r in rest if isinstance(r, WorkspaceRecord)}
    assert "zz-late" not in names
    assert not [r for r in rest if isinstance(r, KeyRecord) and r.key.name == "late"]
    assert not [r for r in rest if isinstance(r, AuditRecord) and r.event.action == "late"]
    assert (
        max(
            r.meta.version
            for r in rest
            if isinstance(r, VersionRecord) and r.meta.workspace == "alpha"
        )
        == 71
    )


def counts_of(records: list[SnapshotRecord]) -> dict[str, int]:
    counts = SnapshotCounts()
    for record in records:
        counts.add(record)
    return counts.to_json()


async def test_an_abandoned_export_lets_go(store: Store) -> None:
    await populate(store)
    export = store.export_snapshot()
    await anext(export)
    await anext(export)
    await export.aclose()
    await append(store, "after", 1)  # the store still writes ...
    assert len(await collect(store)) > 1  # ... and exports again


async def test_a_bad_body_fails_the_import_and_the_store_refuses_to_open(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    await populate(store)
    records = await collect(store)
    index = max(i for i, r in enumerate(records) if isinstance(r, VersionRecord))
    bad = records[index]
    assert isinstance(bad, VersionRecord)
    records[index] = replace(bad, body=bad.body + b" ")  # no longer matches its SHA-256
    factory = other_factory(request, tmp_path, "broken")
    broken = factory()
    await broken.open()
    try:
        with pytest.raises(SnapshotCorrupt, match=r"bytes|SHA-256"):
            await broken.import_snapshot(replay(records))
    finally:
        await broken.close()
    # Part of the snapshot was written: the store must never be served as if complete.
    again = factory()
    with pytest.raises(UnfinishedImport, match="unfinished import"):
        await again.open()
    await again.close()


async def test_a_stream_cut_short_is_refused(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An export that ends early without an error must not import as if complete."""
    await populate(store)
    records = await collect(store)
    first_key = next(i for i, r in enumerate(records) if isinstance(r, KeyRecord))
    factory = other_factory(request, tmp_path, "short")
    short = factory()
    await short.open()
    try:
        with pytest.raises(SnapshotCorrupt, match="announced"):
            await short.import_snapshot(replay(records[:first_key]))
    finally:
        await short.close()
    with pytest.raises(UnfinishedImport):
        await factory().open()


async def test_records_out_of_order_are_refused(store: Store, target: Store) -> None:
    await populate(store)
    records = await collect(store)
    first_version = next(i for i, r in enumerate(records) if isinstance(r, VersionRecord))
    records.insert(1, records.pop(first_version))  # a version before its workspace
    with pytest.raises(SnapshotCorrupt, match="workspace"):
        await target.import_snapshot(replay(records))


async def test_a_snapshot_that_begins_twice_is_refused(store: Store, target: Store) -> None:
    await populate(store)
    records = await collect(store)
    records.insert(2, records[0])  # a second SnapshotBegin after the first records
    with pytest.raises(SnapshotCorrupt, match="begins twice"):
        await target.import_snapshot(replay(records))


# --------------------------------------------------------------------------- the file format


async def write_file(store: Store) -> tuple[bytes, SnapshotWriter]:
    writer = SnapshotWriter(created_at=123.0)
    out = io.BytesIO()
    async for chunk in writer.stream(store.export_snapshot()):
        out.write(chunk)
    return out.getvalue(), writer


def chunks_of(data: bytes, size: int = 7_000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_file_round_trip_verifies_and_restores(store: Store, target: Store) -> None:
    await populate(store)
    data, writer = await write_file(store)
    assert writer.summary is not None
    reader = SnapshotReader(chunks_of(data))
    await target.import_snapshot(records_from(reader))
    assert reader.summary == writer.summary
    assert reader.header is not None and reader.header["engine"] == store.engine
    assert await digest_store(target) == writer.summary
    assert await contents(target) == await contents(store)


def read_all(data: bytes) -> list[DataRecord]:
    return list(SnapshotReader(chunks_of(data)))


def recompress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw)


async def test_damaged_files_are_refused_with_a_reason(store: Store) -> None:
    await populate(store)
    data, _ = await write_file(store)
    raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
    assert len(read_all(data)) > 80

    with pytest.raises(SnapshotCorrupt, match="truncated"):
        read_all(data[: len(data) // 2])
    with pytest.raises(SnapshotCorrupt, match="not a Blixard snapshot"):
        read_all(b"this is not a snapshot at all" * 10)
    with pytest.raises(SnapshotCorrupt, match="empty"):
        read_all(recompress(b""))
    with pytest.raises(SnapshotCorrupt, match="not a Blixard snapshot"):
        read_all(recompress(b'{"type":"header","format":"other"}\n'))
    with pytest.raises(SnapshotCorrupt, match="after the end"):
        read_all(data + data)
    # A flipped byte inside the compressed stream: zstd's own checksum or framing catches it.
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(SnapshotCorrupt):
        read_all(bytes(flipped))
    # A changed body with a valid zstd frame: the version's SHA-256 catches it.
    marker = b'"resources"'
    at = raw.index(marker)
    tampered = raw[:at] + b'"resourcez"' + raw[at + len(marker) :]
    with pytest.raises(SnapshotCorrupt, match="SHA-256"):
        read_all(recompress(tampered))
    # A dropped record: the counts and checksum in the manifest catch it.
    lines = raw.split(b"\n")
    audit_line = next(i for i, line in enumerate(lines) if line.startswith(b'{"action"'))
    dropped = b"\n".join(lines[:audit_line] + lines[audit_line + 1 :])
    with pytest.raises(SnapshotCorrupt, match="manifest"):
        read_all(recompress(dropped))
    # A manifest-less stream (the export failed half-way) is a truncated file.
    without_manifest = raw[: raw.rindex(b'{"checksum"')]
    with pytest.raises(SnapshotCorrupt, match="truncated"):
        read_all(recompress(without_manifest))


# --------------------------------------------------------------------------- across ciphers


@pytest.mark.parametrize(
    ("source_key", "target_key"),
    [(None, b"t" * 32), (b"s" * 32, None)],
    ids=["plaintext-to-encrypted", "encrypted-to-plaintext"],
)
async def test_snapshot_moves_between_plaintext_and_encrypted_stores(
    tmp_path: Path, source_key: bytes | None, target_key: bytes | None
) -> None:
    source = SQLiteStore(tmp_path / "a.db", cipher=Cipher(source_key) if source_key else None)
    copy = SQLiteStore(tmp_path / "b.db", cipher=Cipher(target_key) if target_key else None)
    await source.open()
    await copy.open()
    try:
        await populate(source)
        await copy.import_snapshot(source.export_snapshot())
        assert await contents(copy) == await contents(source)
        assert await digest_store(copy) == await digest_store(source)
    finally:
        await source.close()
        await copy.close()
    raw = (tmp_path / "b.db").read_bytes()
    assert (b"me@host" in raw) == (target_key is None)  # lock payloads sealed iff encrypted


# --------------------------------------------------------------------------- encrypted files


def test_sealed_snapshot_files_open_only_whole_and_with_their_key(tmp_path: Path) -> None:
    from blixard.store.snapshot_seal import (
        MAGIC,
        SealedSnapshotError,
        SealingWriter,
        sealed_key_id,
        snapshot_chunks,
    )

    payload = random.Random(5).randbytes(2_500_000)  # three frames
    key, other = Cipher(b"a" * 32), Cipher(b"b" * 32)
    path = tmp_path / "sealed.bxs"
    with path.open("wb") as out:
        sealer = SealingWriter(out, key)
        for i in range(0, len(payload), 100_000):
            sealer.write(payload[i : i + 100_000])
        sealer.finish()
    data = path.read_bytes()
    assert data.startswith(MAGIC) and payload[:64] not in data
    assert sealed_key_id(path) == key.current_id
    assert b"".join(snapshot_chunks(path, key)) == payload
    assert b"".join(snapshot_chunks(path, Cipher(b"b" * 32, [b"a" * 32]))) == payload

    with pytest.raises(SealedSnapshotError, match="encrypted"):
        b"".join(snapshot_chunks(path, None))
    with pytest.raises(SealedSnapshotError, match="key id"):
        b"".join(snapshot_chunks(path, other))

    def damaged(content: bytes) -> Path:
        bad = tmp_path / "bad.bxs"
        bad.write_bytes(content)
        return bad

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(SealedSnapshotError, match="cannot be opened"):
        b"".join(snapshot_chunks(damaged(bytes(flipped)), key))
    # Cut at a frame boundary: the last frame (and its "final" mark) is missing.
    header = len(MAGIC) + 16
    first = header + 4 + int.from_bytes(data[header : header + 4], "big")
    with pytest.raises(SnapshotCorrupt, match="truncated"):
        b"".join(snapshot_chunks(damaged(data[:first]), key))
    with pytest.raises(SnapshotCorrupt, match="after the end"):
        b"".join(snapshot_chunks(damaged(data + b"x"), key))


def test_a_version_record_without_a_lock_holder_still_decodes() -> None:
    """Snapshots from before versions kept the lock holder's `Who` have no such field."""
    body = state(1)
    meta = version_of(body, 1, lock_who="me@host").numbered("w", 1)
    line, payload = encode_record(VersionRecord(meta, body))
    obj = orjson.loads(line)
    assert obj["lock_who"] == "me@host"
    assert decode_record(obj, payload) == VersionRecord(meta, body)
    del obj["lock_who"]
    decoded = decode_record(obj, payload)
    assert isinstance(decoded, VersionRecord)
    assert decoded.meta == replace(meta, lock_who=None)


async def test_restored_store_rebuilds_its_resource_index(store: Store, target: Store) -> None:
    """Snapshots carry no index: the importing store builds it from the exact bodies."""
    from tests.store.test_engine_suite import found, indexed, resources_state

    for serial in (1, 2):
        body = resources_state(serial, {"n.vpc": ("aws_vpc", f"v{serial}")})
        await put(store, "net", body, serial)
    await put(store, "db", resources_state(1, {"d.db": ("aws_db_instance", "db-1")}), 1)
    await target.import_snapshot(replay(await collect(store)))
    await indexed(target).reindexer.wait()
    assert indexed(target).reindexer.status.complete
    assert (
        found(target, type="aws_vpc") == found(store, type="aws_vpc") == [("net", 2, "aws_vpc.vpc")]
    )
    assert found(target, id="db-1") == [("db", 1, "aws_db_instance.db")]
    history = await indexed(target).index_history("net")
    assert [[row.id for row in doc.rows] for doc in history] == [["v1"], ["v2"]]
