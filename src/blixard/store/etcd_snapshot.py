"""Snapshots in the etcd engine (records in snapshot.py; design in docs/etcd-notes.md §8).

Export: every read is a range at one cluster revision R, so writes made meanwhile are
invisible and memory stays bounded (paged ranges, bodies one at a time). R is pinned
(`EtcdStore.pinned_revision`) so Blixard's compaction, on any node, leaves it readable until
the export ends; a compaction by someone else (etcd's --auto-compaction-*, etcdctl) can still
fail a long export loudly (ErrCompacted → StorageUnavailable), and it is re-run.

Import: refuses a prefix that holds anything, writes `meta/import` first, then the records
in Txns of at most ~100 ops and ~1 MiB (large bodies as chunks put before the record that
points at them), and deletes the marker last. A prefix with the marker refuses to open.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from blixard.domain.access import AuditEvent
from blixard.domain.errors import StorageUnavailable
from blixard.domain.models import VersionMeta, Workspace
from blixard.store.codec import DeltaBase, Encoded
from blixard.store.snapshot import (
    AuditRecord,
    ImportReport,
    KeyRecord,
    RunBlobRecord,
    RunLogRecord,
    RunRecord,
    SnapshotBegin,
    SnapshotCorrupt,
    SnapshotCounts,
    SnapshotRecord,
    StoreNotEmpty,
    VersionRecord,
    WorkspaceRecord,
    check_version,
    encode_imported,
)

if TYPE_CHECKING:
    from blixard.store.etcd import EtcdStore

_VERSIONS_PER_TXN = 16
_BATCH_OPS = 100
_BATCH_BYTES = 1024 * 1024


# --------------------------------------------------------------------------- export


async def _count(store: EtcdStore, prefix: str, revision: int) -> int:
    from blixard.store.etcd import _prefix_end

    start = store._k(prefix)
    resp = await store._call(
        store._kv.get(
            start, _prefix_end(start), revision=revision, count_only=True, timeout=store.timeout
        )
    )
    return int(resp.count)


async def _value_at(store: EtcdStore, doc: dict[str, Any], revision: int) -> bytes:
    from blixard.store.etcd import _unb64

    if "inline" in doc:
        return _unb64(doc["inline"])
    return await store._read_chunks(store._k(doc["chunks_at"]), doc["chunks"], revision)


async def export(store: EtcdStore) -> AsyncGenerator[SnapshotRecord, None]:
    if store._kv is None:
        raise StorageUnavailable("The store is not open.")
    async with (
        store.pinned_revision() as rev,
        contextlib.aclosing(_export_at(store, rev)) as records,
    ):
        async for record in records:
            yield record


async def _export_at(store: EtcdStore, rev: int) -> AsyncGenerator[SnapshotRecord, None]:
    from blixard.store.etcd import _prefix_end

    # Counts of the view.
    counts = SnapshotCounts()
    records: list[tuple[str, dict[str, Any], int]] = []  # name, doc, mod_revision
    ws_prefix = store._k("ws/")
    async for kv in store._scan(ws_prefix, _prefix_end(ws_prefix), revision=rev):
        name = bytes(kv.key)[len(ws_prefix) :].decode()
        doc = orjson.loads(kv.value)
        counts.workspaces += 1
        counts.locks += doc["lock"] is not None
        counts.versions += doc["version_count"]
        counts.body_bytes += doc.get("body_bytes", 0)
        records.append((name, doc, int(kv.mod_revision)))
    counts.api_keys = await _count(store, "keys/id/", rev)
    counts.audit_events = await _count(store, "audit/", rev)
    counts.runs = await _count(store, "runrev/", rev)
    counts.run_blobs = await _count(store, "runblob/", rev)
    counts.run_logs = await _count(store, "runlog/", rev)
    yield SnapshotBegin(store.engine, counts)

    # Workspaces by name, each followed by its versions by number.
    for name, _doc, mod_revision in records:
        kv_like = _KV(orjson.dumps(_doc), mod_revision)
        ws: Workspace = store._decode_record(name, kv_like).ws
        yield WorkspaceRecord(
            name,
            ws.created_at,
            ws.updated_at,
            ws.deleted_at,
            ws.head.version if ws.head else None,
            ws.lock,
        )
        head = ws.head.version if ws.head else 0
        last_full: tuple[int, bytes] | None = None
        for start in range(1, head + 1, _VERSIONS_PER_TXN):
            numbers = list(range(start, min(head, start + _VERSIONS_PER_TXN - 1) + 1))
            resp = await store._txn(
                [],
                [store._kv.txn_op_get(store._ver_key(name, n), revision=rev) for n in numbers],
                [],
            )
            for number, op in zip(numbers, resp.responses, strict=True):
                kvs = op.response_range.kvs
                if not kvs:
                    raise StorageUnavailable(f"workspace '{name}': version {number} is missing")
                vdoc = orjson.loads(kvs[0].value)
                meta = store._meta_from(name, vdoc["meta"])
                blob = await _value_at(store, vdoc, rev)
                encoded = Encoded(vdoc["encoding"], vdoc["base_version"], blob)
                base_body = None
                if encoded.base_version is not None:
                    if last_full is not None and last_full[0] == encoded.base_version:
                        base_body = last_full[1]
                    else:
                        base_kv = await store._range(
                            store._ver_key(name, encoded.base_version), b"", revision=rev
                        )
                        if not base_kv.kvs:
                            raise StorageUnavailable(
                                f"workspace '{name}' version {number}: its delta base "
                                f"{encoded.base_version} is missing"
                            )
                        bdoc = orjson.loads(base_kv.kvs[0].value)
                        base_blob = await _value_at(store, bdoc, rev)
                        base_body = store.codec.decode(
                            name, Encoded(bdoc["encoding"], None, base_blob), None, cache=False
                        )
                body = store.codec.decode(name, encoded, base_body, cache=False)
                if encoded.encoding == "zstd":
                    last_full = (number, body)
                yield VersionRecord(meta, body)

    # API keys by creation time, then id.
    used: dict[str, bytes] = {}
    used_prefix = store._k("keys/used/")
    async for kv in store._scan(used_prefix, _prefix_end(used_prefix), revision=rev):
        used[bytes(kv.key)[len(used_prefix) :].decode()] = bytes(kv.value)
    keys = []
    id_prefix = store._k("keys/id/")
    async for kv in store._scan(id_prefix, _prefix_end(id_prefix), revision=rev):
        key_id = bytes(kv.key)[len(id_prefix) :].decode()
        keys.append(store._key_from(bytes(kv.value), used.get(key_id)))
    keys.sort(key=lambda k: (k.created_at, k.id))
    for key in keys:
        yield KeyRecord(key)

    # Audit events by id: their keys are inverted ids, so walk the range backwards.
    from etcd3aio import SortOrder

    audit_prefix = store._k("audit/")
    end = _prefix_end(audit_prefix)
    while True:
        resp = await store._call(
            store._kv.get(
                audit_prefix,
                end,
                revision=rev,
                limit=500,
                sort_order=SortOrder.DESCEND,
                timeout=store.timeout,
            )
        )
        for kv in resp.kvs:
            yield AuditRecord(AuditEvent(**orjson.loads(kv.value)))
        if not resp.more or not resp.kvs:
            break
        end = bytes(resp.kvs[-1].key)

    # Runs by id, their blobs by (run id, kind), their logs by (run id, seq).
    runs_prefix = store._k("runs/")
    rev_prefix = store._k("runrev/")
    async for kv in store._scan(runs_prefix, _prefix_end(runs_prefix), revision=rev):
        run_id = bytes(kv.key)[len(runs_prefix) :].decode()
        found = await store._range(rev_prefix + run_id.encode(), b"", revision=rev)
        revision = bytes(found.kvs[0].value) if found.kvs else b"1"
        yield RunRecord(store._run_from(run_id, bytes(kv.value), revision))
    blob_prefix = store._k("runblob/")
    async for kv in store._scan(blob_prefix, _prefix_end(blob_prefix), page=16, revision=rev):
        run_id, kind = bytes(kv.key)[len(blob_prefix) :].decode().split("\x00", 1)
        data = await _value_at(store, orjson.loads(kv.value), rev)
        yield RunBlobRecord(run_id, kind, store._open_run(run_id, kind, data))
    log_prefix = store._k("runlog/")
    async for kv in store._scan(log_prefix, _prefix_end(log_prefix), revision=rev):
        run_id, seq_text = bytes(kv.key)[len(log_prefix) :].decode().split("\x00", 1)
        seq = int(seq_text)
        yield RunLogRecord(run_id, seq, store._open_run(run_id, f"log{seq}", bytes(kv.value)))


@dataclass(frozen=True, slots=True)
class _KV:
    value: bytes
    mod_revision: int


# --------------------------------------------------------------------------- import


@dataclass(slots=True)
class _Current:
    record: WorkspaceRecord
    last: VersionMeta | None = None
    base: DeltaBase | None = None
    version_count: int = 0
    stored_bytes: int = 0
    body_bytes: int = 0


class _Importer:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.kv = store._kv
        self.report = ImportReport()
        self._names: set[str] = set()
        self._run_ids: set[str] = set()
        self._current: _Current | None = None
        self._last_audit_id = 0
        #: The newest imported audit id below OLD_AUDIT_IDS (ids above it are re-keyed).
        self._newest_id = 0
        self._announced: SnapshotCounts | None = None
        self._ops: list[Any] = []
        self._bytes = 0

    async def begin(self) -> None:
        store = self.store
        found = {
            what: await _count(store, prefix, 0)
            for what, prefix in (
                ("workspaces", "ws/"),
                ("API keys", "keys/id/"),
                ("audit events", "audit/"),
                ("runs", "runrev/"),
                ("run files", "runblob/"),
                ("run logs", "runlog/"),
                ("import markers", "meta/import"),
            )
        }
        if any(found.values()):
            listed = ", ".join(f"{n} {what}" for what, n in found.items())
            raise StoreNotEmpty(
                f"etcd prefix {store.prefix} is not empty ({listed}): a snapshot is restored "
                "only into an empty store"
            )
        marker = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
        # The audit id marker open() wrote goes: finish() writes it again for what came in.
        await store._txn(
            [],
            [
                self.kv.txn_op_put(store._k("meta/import"), marker),
                self.kv.txn_op_delete(store._k("meta/auditids")),
            ],
            [],
        )

    async def _op(self, op: Any, size: int = 256) -> None:
        if self._ops and self._bytes + size > _BATCH_BYTES:
            await self._flush()
        self._ops.append(op)
        self._bytes += size
        if len(self._ops) >= _BATCH_OPS or self._bytes >= _BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._ops:
            ops, self._ops, self._bytes = self._ops, [], 0
            await self.store._txn([], ops, [])

    async def _value_doc(self, chunks_key: bytes, data: bytes) -> dict[str, Any]:
        """A value inline, or its chunks written now (no lease: the marker guards them)."""
        from blixard.store.etcd import CHUNK_BYTES, INLINE_BYTES, _b64

        store = self.store
        if len(data) <= INLINE_BYTES:
            return {"inline": _b64(data)}
        count = 0
        for i in range(0, len(data), CHUNK_BYTES):
            await store._call(
                self.kv.put(
                    chunks_key + f"{count:05d}".encode(),
                    data[i : i + CHUNK_BYTES],
                    timeout=max(store.timeout, 30),
                )
            )
            count += 1
        return {"chunks_at": chunks_key[len(store._p) :].decode(), "chunks": count}

    async def add(self, record: SnapshotRecord) -> None:
        store = self.store
        if isinstance(record, SnapshotBegin):
            if self._announced is not None or self.report.counts.records:
                raise SnapshotCorrupt("the snapshot begins twice")
            self._announced = record.counts
            return
        if isinstance(record, VersionRecord):
            await self._version(record)
        elif isinstance(record, WorkspaceRecord):
            await self._end_workspace()
            if record.name in self._names:
                raise SnapshotCorrupt(f"workspace '{record.name}' appears twice")
            self._names.add(record.name)
            self._current = _Current(record)
        else:
            await self._end_workspace()
            if isinstance(record, KeyRecord):
                for op in store._key_ops(record.key):
                    await self._op(op)
            elif isinstance(record, AuditRecord):
                from blixard.store.etcd import OLD_AUDIT_IDS

                event = record.event
                if event.id is None or event.id <= self._last_audit_id:
                    raise SnapshotCorrupt(
                        f"audit event ids must increase (got {event.id} after "
                        f"{self._last_audit_id})"
                    )
                self._last_audit_id = event.id
                if event.id < OLD_AUDIT_IDS:
                    self._newest_id = event.id
                for op in store._audit_ops(event):
                    await self._op(op)
            elif isinstance(record, RunRecord):
                self._run_ids.add(record.run.id)
                for op in store._run_ops(record.run):
                    await self._op(op, 1024)
            elif isinstance(record, RunBlobRecord):
                self._known_run(record.run_id)
                key = store._k("runblob/", record.run_id, "\x00", record.kind)
                sealed = store._seal_run(record.run_id, record.kind, record.data)
                doc = await self._value_doc(store._chunks_prefix(key), sealed)
                value = orjson.dumps(doc)
                await self._op(self.kv.txn_op_put(key, value), len(value))
            elif isinstance(record, RunLogRecord):
                self._known_run(record.run_id)
                key = store._log_prefix(record.run_id) + f"{record.seq:08d}".encode()
                sealed = store._seal_run(record.run_id, f"log{record.seq}", record.data)
                await self._op(self.kv.txn_op_put(key, sealed), len(sealed))
            else:  # pragma: no cover - the union is exhaustive
                raise SnapshotCorrupt(f"unexpected record {type(record).__name__}")
        self.report.counts.add(record)

    def _known_run(self, run_id: str) -> None:
        if run_id not in self._run_ids:
            raise SnapshotCorrupt(f"run data for run '{run_id}', which the snapshot does not hold")

    async def _version(self, record: VersionRecord) -> None:
        store = self.store
        meta, body = record.meta, record.body
        current = self._current
        if current is None or current.record.name != meta.workspace:
            where = "is not" if meta.workspace in self._names else "comes before"
            raise SnapshotCorrupt(
                f"version {meta.version} of workspace '{meta.workspace}' {where} "
                "right after its workspace record"
            )
        if current.last is not None and meta.version <= current.last.version:
            raise SnapshotCorrupt(
                f"workspace '{meta.workspace}': version {meta.version} after "
                f"{current.last.version} (versions must increase)"
            )
        check_version(record)
        encoded, current.base = await encode_imported(
            store.codec, meta.workspace, meta.version, body, current.base
        )
        current.last = meta
        current.version_count += 1
        current.stored_bytes += len(encoded.blob)
        current.body_bytes += len(body)
        self.report.stored_bytes += len(encoded.blob)
        chunks_key = store._blob_prefix(meta.workspace, meta.version, "import")
        doc: dict[str, Any] = {
            "meta": store._meta_doc(meta),
            "encoding": encoded.encoding,
            "base_version": encoded.base_version,
            "stored": len(encoded.blob),
            **await self._value_doc(chunks_key, encoded.blob),
        }
        value = orjson.dumps(doc)
        await self._op(
            self.kv.txn_op_put(store._ver_key(meta.workspace, meta.version), value), len(value)
        )

    async def _end_workspace(self) -> None:
        current = self._current
        if current is None:
            return
        self._current = None
        record = current.record
        last = current.last.version if current.last else None
        if last != record.head_version:
            raise SnapshotCorrupt(
                f"workspace '{record.name}': its head is version {record.head_version} but "
                f"the snapshot's last version of it is {last}"
            )
        ws = Workspace(
            record.name,
            0,
            record.created_at,
            record.updated_at,
            head=current.last,
            lock=record.lock,
            deleted_at=record.deleted_at,
        )
        base = current.base
        base_doc = (
            {
                "version": base.version,
                "size": len(base.body),
                "stored_size": base.stored_size,
                "deltas_since": base.deltas_since,
            }
            if base
            else None
        )
        value = self.store._encode_record(
            ws, base_doc, current.version_count, current.stored_bytes, current.body_bytes
        )
        await self._op(self.kv.txn_op_put(self.store._ws_key(record.name), value), len(value))

    async def finish(self) -> None:
        await self._end_workspace()
        if self._announced is not None:
            problems = self.report.counts.differences(self._announced)
            if problems:
                raise SnapshotCorrupt(
                    "the snapshot does not hold what it announced (" + "; ".join(problems) + ")"
                )
        await self._flush()
        # Events of an etcd export from before the ids changed get new ones now; new events
        # will have ids above every imported one.
        await self.store._upgrade_audit_ids(floor=self._newest_id)
        await self.store._txn([], [self.kv.txn_op_delete(self.store._k("meta/import"))], [])


async def import_records(store: EtcdStore, records: AsyncIterator[SnapshotRecord]) -> ImportReport:
    started = time.monotonic()
    importer = _Importer(store)
    await importer.begin()
    async for record in records:
        await importer.add(record)
    await importer.finish()
    importer.report.seconds = time.monotonic() - started
    return importer.report
