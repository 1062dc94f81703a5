"""Snapshots in the SQLite engine: a streaming export from one read transaction, and an import
into an empty store in writer batches (the records are defined in snapshot.py).

Export: a dedicated thread opens its own read-only connection, starts one read transaction
(WAL: a consistent view of the whole file while writers carry on) and walks the tables in the
canonical order, decoding (and decrypting) each blob. Records travel to the event loop in small
batches through a bounded queue, so memory stays bounded however large the store is, and an
export that stops early (a client that hangs up) releases its transaction within ~0.1 s.

Import: the writer thread first checks that the store is empty and records an "unfinished
import" marker in `meta`, then takes the rows in batches (each batch one writer operation,
encoded with the store's codec and cipher while the previous batch commits); the final batch
deletes the marker. A store that still has the marker refuses to open, so an import that died
part-way is never served as if it were complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from blixard.domain.access import AuditEvent
from blixard.domain.errors import StorageUnavailable
from blixard.domain.models import Lock
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
    UnfinishedImport,
    VersionRecord,
    WorkspaceRecord,
    check_version,
    encode_imported,
)
from blixard.store.sqlite_rows import (
    INSERT_KEY,
    INSERT_VERSION,
    KEY_COLUMNS,
    key_row,
    version_row,
)

if TYPE_CHECKING:
    from blixard.store.sqlite import SQLiteStore

#: The `meta` row present while an import is unfinished.
IMPORT_MARKER = "import:unfinished"

#: Records per hand-off from the export thread, and their most payload bytes.
_EXPORT_BATCH = 64
_EXPORT_BATCH_BYTES = 4 * 1024 * 1024
#: Hand-offs queued ahead of the consumer.
_EXPORT_QUEUE = 4
#: Rows, and blob bytes, per import batch (one writer operation).
_IMPORT_BATCH_ROWS = 512
_IMPORT_BATCH_BYTES = 8 * 1024 * 1024
_POLL = 0.1


def check_at_open(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse to serve a store whose import never finished."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (IMPORT_MARKER,)).fetchone()
    if row is not None:
        raise UnfinishedImport(
            f"{path} holds an unfinished import (a restore or migration stopped part-way, at "
            f"{bytes(row[0]).decode(errors='replace')}); it is incomplete and will not be "
            "served: delete it and run the restore or migration again"
        )


# --------------------------------------------------------------------------- export


def _counts(conn: sqlite3.Connection) -> SnapshotCounts:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM workspaces), (SELECT count(*) FROM versions), "
        "(SELECT count(*) FROM workspaces WHERE lock_id IS NOT NULL), "
        "(SELECT count(*) FROM api_keys), (SELECT count(*) FROM audit), "
        "(SELECT count(*) FROM runs), (SELECT count(*) FROM run_blobs), "
        "(SELECT count(*) FROM run_logs), (SELECT coalesce(sum(size), 0) FROM versions)"
    ).fetchone()
    return SnapshotCounts(*row)


def _records(store: SQLiteStore, conn: sqlite3.Connection) -> Iterator[SnapshotRecord]:
    """Every record, in canonical order, from `conn`'s read transaction."""
    from blixard.store.sqlite import (
        _VERSION_COLUMN_COUNT,
        _VERSION_COLUMNS,
        _api_key,
    )

    yield SnapshotBegin(store.engine, _counts(conn))
    workspaces = conn.execute(
        "SELECT id, name, created_at, updated_at, deleted_at, head_version, lock_id, lock_info, "
        "locked_at, lock_owner FROM workspaces ORDER BY name"
    ).fetchall()
    for (
        ws_id,
        name,
        created,
        updated,
        deleted,
        head,
        lock_id,
        lock_info,
        locked_at,
        owner,
    ) in workspaces:
        lock = None
        if lock_id is not None:
            info = orjson.loads(store._open_lock(name, lock_info))
            lock = Lock(lock_id, info, locked_at, owner)
        yield WorkspaceRecord(name, created, updated, deleted, head, lock)
        last_full: tuple[int, bytes] | None = None
        rows = conn.execute(
            f"SELECT {_VERSION_COLUMNS}, v.encoding, v.base_version, v.blob FROM versions v "
            "WHERE v.workspace_id = ? ORDER BY v.version",
            (ws_id,),
        )
        for row in rows:
            meta = store._version_meta(name, row[:_VERSION_COLUMN_COUNT])
            encoded = Encoded(*row[_VERSION_COLUMN_COUNT:])
            base_body = None
            if encoded.base_version is not None:
                if last_full is not None and last_full[0] == encoded.base_version:
                    base_body = last_full[1]
                else:
                    base_row = conn.execute(
                        "SELECT encoding, base_version, blob FROM versions "
                        "WHERE workspace_id = ? AND version = ?",
                        (ws_id, encoded.base_version),
                    ).fetchone()
                    if base_row is None:
                        raise StorageUnavailable(
                            f"workspace '{name}' version {meta.version}: its delta base "
                            f"{encoded.base_version} is missing"
                        )
                    base_body = store.codec.decode(name, Encoded(*base_row), None, cache=False)
            body = store.codec.decode(name, encoded, base_body, cache=False)
            if encoded.encoding == "zstd":
                last_full = (meta.version, body)
            yield VersionRecord(meta, body)
    for row in conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"):
        yield KeyRecord(_api_key(row))
    for row in conn.execute(
        "SELECT at, action, outcome, key_name, role, source, workspace, version, lock_id, "
        "status, detail, id FROM audit ORDER BY id"
    ):
        yield AuditRecord(AuditEvent(*row))
    for row in conn.execute("SELECT id, revision, document FROM runs ORDER BY id"):
        yield RunRecord(store._run_from_row(row))
    for run_id, kind, data in conn.execute(
        "SELECT run_id, kind, data FROM run_blobs ORDER BY run_id, kind"
    ):
        yield RunBlobRecord(run_id, kind, store._open_run(run_id, kind, data))
    for run_id, seq, data in conn.execute(
        "SELECT run_id, seq, data FROM run_logs ORDER BY run_id, seq"
    ):
        yield RunLogRecord(run_id, seq, store._open_run(run_id, f"log{seq}", data))


def _weight(record: SnapshotRecord) -> int:
    if isinstance(record, VersionRecord):
        return len(record.body)
    if isinstance(record, RunBlobRecord | RunLogRecord):
        return len(record.data)
    return 256


_Handoff = list[SnapshotRecord] | BaseException | None


def _produce(store: SQLiteStore, handoff: queue.Queue[_Handoff], stop: threading.Event) -> None:
    """The export thread: one connection, one read transaction, records in batches."""
    from blixard.store.sqlite import _connect

    def put(item: _Handoff) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(store.path)
        conn.execute("PRAGMA query_only=1")
        conn.execute("BEGIN")  # deferred: the first SELECT fixes the view for the whole export
        batch: list[SnapshotRecord] = []
        weight = 0
        for record in _records(store, conn):
            batch.append(record)
            weight += _weight(record)
            if len(batch) >= _EXPORT_BATCH or weight >= _EXPORT_BATCH_BYTES:
                if not put(batch):
                    return
                batch, weight = [], 0
        if batch and not put(batch):
            return
        put(None)
    except sqlite3.Error as exc:
        put(StorageUnavailable(f"The database could not be read ({exc})."))
    except BaseException as exc:  # surfaced to the consumer
        put(exc)
    finally:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()


def _take(handoff: queue.Queue[_Handoff], stop: threading.Event) -> _Handoff:
    while not stop.is_set():
        try:
            return handoff.get(timeout=_POLL)
        except queue.Empty:
            continue
    return None


async def export(store: SQLiteStore) -> AsyncGenerator[SnapshotRecord, None]:
    if store._executor is None:
        raise StorageUnavailable("The store is not open.")
    handoff: queue.Queue[_Handoff] = queue.Queue(maxsize=_EXPORT_QUEUE)
    stop = threading.Event()
    thread = threading.Thread(
        target=_produce, args=(store, handoff, stop), name="blixard-sqlite-export", daemon=True
    )
    store._exports.add(stop)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(_take, handoff, stop)
            if item is None:
                if stop.is_set():
                    raise StorageUnavailable("The store was closed during the export.")
                return
            if isinstance(item, BaseException):
                raise item
            for record in item:
                yield record
    finally:
        stop.set()
        store._exports.discard(stop)
        await asyncio.to_thread(thread.join)


# --------------------------------------------------------------------------- import

_INSERTS = (
    (
        "workspaces",
        "INSERT INTO workspaces(id, name, revision, created_at, updated_at, deleted_at, "
        "head_version, lock_id, lock_info, locked_at, lock_owner) "
        "VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    (
        "versions",
        INSERT_VERSION,
    ),
    (
        "bases",
        "UPDATE workspaces SET base_version = ?, base_stored_size = ?, deltas_since_base = ? "
        "WHERE id = ?",
    ),
    (
        "api_keys",
        INSERT_KEY,
    ),
    (
        "audit",
        "INSERT INTO audit(id, at, action, outcome, key_name, role, source, workspace, version, "
        "lock_id, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    (
        "runs",
        "INSERT INTO runs(id, workspace, status, revision, created_at, document) "
        "VALUES (?, ?, ?, ?, ?, ?)",
    ),
    ("run_blobs", "INSERT INTO run_blobs(run_id, kind, data) VALUES (?, ?, ?)"),
    ("run_logs", "INSERT INTO run_logs(run_id, seq, data) VALUES (?, ?, ?)"),
)


@dataclass(slots=True)
class _Current:
    """The workspace whose versions are arriving."""

    name: str
    id: int
    head_version: int | None
    last_version: int | None = None
    base: DeltaBase | None = None


class _Importer:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.report = ImportReport()
        self._names: set[str] = set()
        self._current: _Current | None = None
        self._run_ids: set[str] = set()
        self._last_audit_id = 0
        self._rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table, _ in _INSERTS}
        self._pending_rows = 0
        self._pending_bytes = 0
        self._inflight: asyncio.Future[None] | None = None
        #: What the snapshot's first record said it holds.
        self._announced: SnapshotCounts | None = None

    async def begin(self) -> None:
        path = self.store.path

        def operation(conn: sqlite3.Connection) -> None:
            check_at_open(conn, path)
            found = conn.execute(
                "SELECT (SELECT count(*) FROM workspaces), (SELECT count(*) FROM api_keys), "
                "(SELECT count(*) FROM audit), (SELECT count(*) FROM runs), "
                "(SELECT count(*) FROM run_blobs) + (SELECT count(*) FROM run_logs)"
            ).fetchone()
            if any(found):
                workspaces, keys, audit, runs, run_data = found
                raise StoreNotEmpty(
                    f"{path} is not empty ({workspaces} workspaces, {keys} API keys, {audit} "
                    f"audit events, {runs} runs, {run_data} run files): a snapshot is restored "
                    "only into an empty store"
                )
            conn.execute(
                "INSERT INTO meta(name, value) VALUES (?, ?)",
                (IMPORT_MARKER, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()),
            )

        await self.store._write(operation)

    def _add_row(self, table: str, row: tuple[Any, ...], size: int = 0) -> None:
        self._rows[table].append(row)
        self._pending_rows += 1
        self._pending_bytes += size

    async def add(self, record: SnapshotRecord) -> None:
        if isinstance(record, SnapshotBegin):
            if self._announced is not None or self.report.counts.records:
                raise SnapshotCorrupt("the snapshot begins twice")
            self._announced = record.counts
            return
        if isinstance(record, VersionRecord):
            await self._version(record)
        elif isinstance(record, WorkspaceRecord):
            self._workspace(record)
        elif isinstance(record, KeyRecord):
            key = record.key
            self._add_row("api_keys", key_row(key))
        elif isinstance(record, AuditRecord):
            event = record.event
            if event.id is None or event.id <= self._last_audit_id:
                raise SnapshotCorrupt(
                    f"audit event ids must increase (got {event.id} after {self._last_audit_id})"
                )
            self._last_audit_id = event.id
            self._add_row(
                "audit",
                (
                    event.id,
                    event.at,
                    event.action,
                    event.outcome,
                    event.key_name,
                    event.role,
                    event.source,
                    event.workspace,
                    event.version,
                    event.lock_id,
                    event.status,
                    event.detail,
                ),
            )
        elif isinstance(record, RunRecord):
            run = record.run
            self._run_ids.add(run.id)
            document = self.store._seal_run(run.id, "document", orjson.dumps(run.to_document()))
            self._add_row(
                "runs",
                (run.id, run.workspace, run.status.value, run.revision, run.created_at, document),
                len(document),
            )
        elif isinstance(record, RunBlobRecord):
            self._known_run(record.run_id)
            sealed = self.store._seal_run(record.run_id, record.kind, record.data)
            self._add_row("run_blobs", (record.run_id, record.kind, sealed), len(sealed))
        elif isinstance(record, RunLogRecord):
            self._known_run(record.run_id)
            sealed = self.store._seal_run(record.run_id, f"log{record.seq}", record.data)
            self._add_row("run_logs", (record.run_id, record.seq, sealed), len(sealed))
        else:  # pragma: no cover - the union is exhaustive
            raise SnapshotCorrupt(f"unexpected record {type(record).__name__}")
        self.report.counts.add(record)
        if self._pending_rows >= _IMPORT_BATCH_ROWS or self._pending_bytes >= _IMPORT_BATCH_BYTES:
            await self._flush(final=False)

    def _known_run(self, run_id: str) -> None:
        if run_id not in self._run_ids:
            raise SnapshotCorrupt(f"run data for run '{run_id}', which the snapshot does not hold")

    def _workspace(self, record: WorkspaceRecord) -> None:
        self._end_workspace()
        if record.name in self._names:
            raise SnapshotCorrupt(f"workspace '{record.name}' appears twice")
        self._names.add(record.name)
        ws_id = len(self._names)
        lock = record.lock
        lock_info = self.store._seal_lock(record.name, orjson.dumps(lock.info)) if lock else None
        self._add_row(
            "workspaces",
            (
                ws_id,
                record.name,
                record.created_at,
                record.updated_at,
                record.deleted_at,
                record.head_version,
                lock.id if lock else None,
                lock_info,
                lock.locked_at if lock else None,
                lock.owner if lock else None,
            ),
        )
        self._current = _Current(record.name, ws_id, record.head_version)

    def _end_workspace(self) -> None:
        current = self._current
        if current is None:
            return
        if current.last_version != current.head_version:
            raise SnapshotCorrupt(
                f"workspace '{current.name}': its head is version {current.head_version} but "
                f"the snapshot's last version of it is {current.last_version}"
            )
        if current.base is not None:
            base = current.base
            self._add_row("bases", (base.version, base.stored_size, base.deltas_since, current.id))
        self._current = None

    async def _version(self, record: VersionRecord) -> None:
        meta, body = record.meta, record.body
        current = self._current
        if current is None or current.name != meta.workspace:
            where = "is not" if meta.workspace in self._names else "comes before"
            raise SnapshotCorrupt(
                f"version {meta.version} of workspace '{meta.workspace}' {where} "
                "right after its workspace record"
            )
        if current.last_version is not None and meta.version <= current.last_version:
            raise SnapshotCorrupt(
                f"workspace '{meta.workspace}': version {meta.version} after "
                f"{current.last_version} (versions must increase)"
            )
        check_version(record)
        encoded, current.base = await encode_imported(
            self.store.codec, meta.workspace, meta.version, body, current.base
        )
        current.last_version = meta.version
        self.report.stored_bytes += len(encoded.blob)
        self._add_row(
            "versions",
            version_row(
                current.id, meta, encoded, self.store._seal_who(meta.workspace, meta.lock_who)
            ),
            len(encoded.blob),
        )

    async def _flush(self, *, final: bool) -> None:
        batches = [(sql, self._rows[table]) for table, sql in _INSERTS if self._rows[table]]
        self._rows = {table: [] for table, _ in _INSERTS}
        self._pending_rows = self._pending_bytes = 0

        def operation(conn: sqlite3.Connection) -> None:
            for sql, rows in batches:
                conn.executemany(sql, rows)
            if final:
                conn.execute("DELETE FROM meta WHERE name = ?", (IMPORT_MARKER,))

        # One batch commits while the next one is being encoded.
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight
        future = self.store._write(operation)
        if final:
            await future
        else:
            self._inflight = future

    async def finish(self) -> None:
        self._end_workspace()
        if self._announced is not None:
            problems = self.report.counts.differences(self._announced)
            if problems:
                raise SnapshotCorrupt(
                    "the snapshot does not hold what it announced (" + "; ".join(problems) + ")"
                )
        await self._flush(final=True)

    async def abandon(self) -> None:
        """After a failure: let the batch in flight settle (its outcome no longer matters)."""
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
            self._inflight = None


async def import_records(
    store: SQLiteStore, records: AsyncIterator[SnapshotRecord]
) -> ImportReport:
    started = time.monotonic()
    importer = _Importer(store)
    await importer.begin()
    try:
        async for record in records:
            await importer.add(record)
        await importer.finish()
    except sqlite3.IntegrityError as exc:
        await importer.abandon()
        raise SnapshotCorrupt(f"the snapshot contradicts itself ({exc})") from None
    except BaseException:
        await importer.abandon()
        raise
    finally:
        # The in-memory index follows the file, whatever made it into it.
        store._workspaces.clear()
        store._ids.clear()
        store._base_info.clear()
        with contextlib.suppress(StorageUnavailable):
            await store._read(store._load_index)
    importer.report.seconds = time.monotonic() - started
    return importer.report
