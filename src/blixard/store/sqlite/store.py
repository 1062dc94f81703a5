"""The embedded engine: one SQLite file in WAL mode with full fsync on every commit.

One writer connection lives on its own thread and drains a queue of operations; whatever has
queued up while a commit was in flight goes into the next transaction together (group commit),
each operation inside its own savepoint so one failure does not sink its neighbours. Readers use
their own connections on a small thread pool. Because this process is the only writer of the
file (an exclusive flock guards it), workspace records are kept in memory, written through after
every commit, which makes the lock and head checks on the hot path free of I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from blixard.datadir import private_file
from blixard.domain.access import ApiKey, AuditEvent
from blixard.domain.errors import StorageUnavailable
from blixard.domain.models import Body, Lock, NewVersion, VersionMeta, Workspace
from blixard.domain.runs import OPEN, Run
from blixard.store import resource_index
from blixard.store.codec import DELTA_MAX_BYTES, DeltaBase, Encoded, VersionCodec
from blixard.store.crypto import Cipher, DecryptionError, is_sealed, lock_aad, run_aad
from blixard.store.encryption import EncryptionNotConfigured, EncryptionStatus, RotationProgress
from blixard.store.errors import StoreCannotConnect, StoreCorrupt, StoreInUse
from blixard.store.resource_index import HeadIndex, IndexDoc, Reindexer, ReindexPlan
from blixard.store.snapshot import ImportReport, SnapshotRecord
from blixard.store.sqlite import encryption as sqlite_encryption
from blixard.store.sqlite import snapshot as sqlite_snapshot
from blixard.store.sqlite.rows import (
    INSERT_KEY,
    INSERT_VERSION,
    KEY_COLUMNS,
    VERSION_COLUMN_COUNT,
    VERSION_COLUMNS,
    api_key_from_row,
    key_row,
    version_meta_from_row,
    version_row,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Bodies larger than this are compressed on a worker thread instead of the event loop.
_INLINE_ENCODE_BYTES = 1024 * 1024
#: The most operations one group commit takes from the queue.
_MAX_BATCH = 128

MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """
            CREATE TABLE workspaces (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                revision INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                deleted_at REAL,
                head_version INTEGER,
                lock_id TEXT,
                lock_info BLOB,
                locked_at REAL,
                base_version INTEGER,
                base_stored_size INTEGER,
                deltas_since_base INTEGER NOT NULL DEFAULT 0
            )
            """,
            """
            CREATE TABLE versions (
                workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
                version INTEGER NOT NULL,
                serial INTEGER NOT NULL,
                lineage TEXT NOT NULL,
                size INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                md5 TEXT NOT NULL,
                created_at REAL NOT NULL,
                lock_id TEXT,
                terraform_version TEXT,
                resource_count INTEGER,
                source TEXT NOT NULL,
                rolled_back_from INTEGER,
                encoding TEXT NOT NULL,
                base_version INTEGER,
                blob BLOB NOT NULL,
                PRIMARY KEY (workspace_id, version)
            )
            """,
        ),
    ),
    (
        2,
        (
            "ALTER TABLE workspaces ADD COLUMN lock_owner TEXT",
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                scopes TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                created_at REAL NOT NULL,
                created_by TEXT,
                last_used_at REAL,
                revoked_at REAL
            )
            """,
            "CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL",
            """
            CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                action TEXT NOT NULL,
                outcome TEXT NOT NULL,
                key_name TEXT,
                role TEXT,
                source TEXT,
                workspace TEXT,
                version INTEGER,
                lock_id TEXT,
                status INTEGER,
                detail TEXT
            )
            """,
            "CREATE INDEX audit_by_workspace ON audit(workspace, id)",
            "CREATE INDEX audit_by_key ON audit(key_name, id)",
            """
            CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
            """,
            """
            CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
            """,
        ),
    ),
    (3, sqlite_encryption.MIGRATION),
    (
        4,
        (
            "ALTER TABLE versions ADD COLUMN written_by TEXT",
            """
            CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                workspace TEXT NOT NULL,
                status TEXT NOT NULL,
                revision INTEGER NOT NULL,
                created_at REAL NOT NULL,
                document BLOB NOT NULL
            )
            """,
            "CREATE INDEX runs_by_workspace ON runs(workspace, id)",
            "CREATE INDEX runs_by_status ON runs(status)",
            """
            CREATE TABLE run_blobs (
                run_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (run_id, kind)
            )
            """,
            """
            CREATE TABLE run_logs (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (run_id, seq)
            )
            """,
        ),
    ),
    # The lock holder's LockInfo `Who` per version (sealed like lock payloads when encrypted).
    (5, ("ALTER TABLE versions ADD COLUMN lock_who BLOB",)),
    # The resource index document of each workspace's current version (resource_index.py).
    (
        6,
        (
            """
            CREATE TABLE resource_index (
                workspace_id INTEGER NOT NULL,
                version INTEGER NOT NULL,
                doc BLOB NOT NULL,
                PRIMARY KEY (workspace_id, version)
            ) WITHOUT ROWID
            """,
        ),
    ),
    # Only the current version keeps its index document (docs/search.md): drop the others
    # that migration 6's per-version index wrote (one transaction, so never half done).
    (
        7,
        (
            """
            DELETE FROM resource_index WHERE NOT EXISTS (
                SELECT 1 FROM workspaces w
                WHERE w.id = resource_index.workspace_id
                AND w.head_version = resource_index.version
            )
            """,
        ),
    ),
]

_OPEN_STATUSES = frozenset(status.value for status in OPEN)
log = logging.getLogger("blixard.store.sqlite")


@dataclass(frozen=True, slots=True)
class _BaseInfo:
    version: int
    size: int
    stored_size: int
    deltas_since: int


class _ByteLRU:
    """A bytes-bounded LRU of (version, body) per workspace."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size = 0
        self._items: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, version: int) -> bytes | None:
        with self._lock:
            item = self._items.get(name)
            if item is None or item[0] != version:
                return None
            self._items.move_to_end(name)
            return item[1]

    def put(self, name: str, version: int, body: Body) -> None:
        if len(body) > min(DELTA_MAX_BYTES, self.max_bytes):
            self.discard(name)
            return
        body = bytes(body)  # a no-op for bytes; a cached body must never change under us
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._size -= len(old[1])
            self._items[name] = (version, body)
            self._size += len(body)
            while self._size > self.max_bytes and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._size -= len(evicted)

    def discard(self, name: str) -> None:
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._size -= len(old[1])


@dataclass(slots=True)
class _NodeLease:
    node_id: str
    info: dict[str, Any]
    ttl: int
    expires: float  # time.monotonic()


@dataclass(slots=True)
class _Job:
    operation: Callable[[sqlite3.Connection], Any]
    on_commit: Callable[[Any], None] | None
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _Checkpointer(threading.Thread):
    """Copies the WAL back into the database off the writer's path.

    SQLite's automatic checkpoint runs inside a committing writer and adds its fsyncs to
    that commit's latency; a PASSIVE checkpoint on its own connection never blocks writers.
    """

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(name="blixard-sqlite-checkpoint", daemon=True)
        self._path = path
        self._interval = interval
        self._stop_event = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        conn = _connect(self._path)
        try:
            while not self._stop_event.is_set():
                self.wake.wait(self._interval)
                self.wake.clear()
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.wake.set()
        self.join()


def _connect(path: Path) -> sqlite3.Connection:
    private_file(path)  # 0600 before SQLite opens it: its WAL and SHM inherit the mode
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # see _Checkpointer
    # Freed pages are zeroed: no plaintext (or old-key ciphertext) lingers after a rotation.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


class _Writer(threading.Thread):
    """The one thread that writes; batches queued operations into one commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="blixard-sqlite-writer", daemon=True)
        self._path = path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.commits = 0
        #: Why the last write failed (e.g. SQLITE_FULL: the disk is full), until one succeeds;
        #: /health/hiqlite reports it.
        self.write_failure: str | None = None

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def submit(
        self,
        operation: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(operation, on_commit, future, loop))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        try:
            conn = _connect(self._path)
        except BaseException as exc:  # surfaced to the opener
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stopping = False
                while len(batch) < _MAX_BATCH:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
                self._run_batch(conn, batch)
                if stopping:
                    return
        finally:
            conn.close()

    def _write_failed(self, exc: sqlite3.Error) -> None:
        code = getattr(exc, "sqlite_errorname", None)
        failure = f"{exc} ({code})" if code else str(exc)
        if self.write_failure is None:
            log.error("SQLite writes are failing: %s", failure)
        self.write_failure = failure

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, job.operation(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        # SQLite rolled the whole transaction back itself (e.g. SQLITE_FULL):
                        # every job of the batch is lost, not only this one.
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.OperationalError):
                        # Disk full, I/O error, busy: the store, not the request, is at fault.
                        self._write_failed(exc)
                        exc = StorageUnavailable(f"The database refused a write ({exc}).")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
            if all(ok or not isinstance(value, StorageUnavailable) for ok, value in outcomes):
                self.write_failure = None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._write_failed(exc)
            failure = StorageUnavailable(f"The database could not commit ({exc}).")
            outcomes = [(False, failure)] * len(batch)
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            if ok and job.on_commit is not None:
                job.on_commit(value)
            job.loop.call_soon_threadsafe(_resolve, job.future, ok, value)


class SQLiteStore:
    engine = "sqlite"
    #: Read threads of a server; an offline tool opens with one.
    DEFAULT_READERS = 4

    def __init__(
        self,
        path: Path,
        *,
        codec: VersionCodec | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
        readers: int = DEFAULT_READERS,
        cipher: Cipher | None = None,
        adopt_plaintext: bool = False,
    ) -> None:
        self.path = Path(path)
        if codec is not None and codec.cipher is not cipher:
            raise ValueError("the codec must use the store's cipher")
        self.codec = codec or VersionCodec(cipher=cipher)
        #: Seals blobs and lock payloads; None stores them unencrypted.
        self.cipher = cipher
        #: Only for offline encryption of an unencrypted store (see sqlite_encryption).
        self._adopt_plaintext = adopt_plaintext
        self._readers = readers
        self._heads = _ByteLRU(cache_bytes)
        self._bases = _ByteLRU(cache_bytes)
        self._workspaces: dict[str, Workspace] = {}
        self._ids: dict[str, int] = {}
        self._base_info: dict[str, _BaseInfo] = {}
        self._version_count = 0
        self._stored_bytes = 0
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._writer: _Writer | None = None
        self._checkpointer: _Checkpointer | None = None
        self._flock_fd: int | None = None
        #: Stop signals of the exports in progress (see sqlite_snapshot).
        self.exports: set[threading.Event] = set()
        #: Node leases by id (see grant_node_lease).
        self._node_leases: dict[int, _NodeLease] = {}
        self._lease_ids = itertools.count(1)
        #: Current versions' resource index documents (search); see resource_index.py.
        self.resource_index = HeadIndex()
        self.reindexer = Reindexer(self.engine, self._plan_reindex)
        #: Index documents found at open that no configured key opens (rebuilt by reindex).
        self._unreadable_docs: set[tuple[int, str, int]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Raises a StoreError subclass when the file cannot be used (in use by another
        process, unreadable, not a database, the wrong keys, an unfinished import)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._take_file_lock()
        except OSError as exc:
            raise StoreCannotConnect(str(exc)) from exc
        try:
            self._executor = ThreadPoolExecutor(
                self._readers, thread_name_prefix="blixard-sqlite-read"
            )
            self._writer = _Writer(self.path)
            await asyncio.to_thread(self._writer.start_and_wait)
            await self._writer.submit(self._migrate)
            await self._writer.submit(self._check_encryption)
            await self._writer.submit(lambda conn: sqlite_snapshot.check_at_open(conn, self.path))
            await self._read(self._load_index)
            await self._read(self._load_resource_heads)
        except BaseException as exc:
            await self.close()  # e.g. the wrong key: release the file for the next attempt
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreCorrupt(f"{self.path}: {exc}") from exc
            if isinstance(exc, OSError):
                raise StoreCannotConnect(str(exc)) from exc
            raise
        self._checkpointer = _Checkpointer(self.path, interval=1.0)
        self._checkpointer.start()
        self.reindexer.start()

    async def close(self) -> None:
        await self.reindexer.stop()
        for stop in list(self.exports):
            stop.set()  # an export's thread lets go of its read transaction
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._flock_fd is not None:
            os.close(self._flock_fd)
            self._flock_fd = None

    def _take_file_lock(self) -> None:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreInUse(f"{self.path} is already served by another Blixard process.") from None
        self._flock_fd = fd

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )

    def schema_version(self) -> int:
        return max(version for version, _ in MIGRATIONS)

    # -- threads -------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StorageUnavailable("The store is not open.")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: function(self._reader()))
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"The database could not be read ({exc}).") from None

    def _write(
        self,
        operation: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        if self._writer is None:
            raise StorageUnavailable("The store is not open.")
        return self._writer.submit(operation, on_commit)

    # -- the public door for this package's helpers (door.py's SQLiteDoor, documented there)

    async def execute_fn(self, function: Callable[[sqlite3.Connection], T]) -> T:
        return await self._read(function)

    def execute_write_fn(
        self,
        function: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        return self._write(function, on_commit)

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    def open_read_connection(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        conn.execute("PRAGMA query_only=1")
        return conn

    async def reload_index(self) -> None:
        self._workspaces.clear()
        self._ids.clear()
        self._base_info.clear()
        await self._read(self._load_index)

    # -- index ---------------------------------------------------------------------------

    def _load_index(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT w.id, w.name, w.revision, w.created_at, w.updated_at, w.deleted_at, "
            "w.lock_id, w.lock_info, w.locked_at, w.base_version, w.base_stored_size, "
            f"w.deltas_since_base, b.size, w.lock_owner, {VERSION_COLUMNS} FROM workspaces w "
            "LEFT JOIN versions v ON v.workspace_id = w.id AND v.version = w.head_version "
            "LEFT JOIN versions b ON b.workspace_id = w.id AND b.version = w.base_version"
        ).fetchall()
        for row in rows:
            ws_id, name, revision, created, updated, deleted = row[:6]
            lock_id, lock_info, locked_at = row[6:9]
            base_version, base_stored_size, deltas_since, base_body_size, owner = row[9:14]
            head = self.version_meta(name, row[14:]) if row[14] is not None else None
            assert len(row) == 14 + VERSION_COLUMN_COUNT
            lock = (
                Lock(lock_id, orjson.loads(self.open_lock(name, lock_info)), locked_at, owner)
                if lock_id is not None
                else None
            )
            self._ids[name] = ws_id
            self._workspaces[name] = Workspace(
                name, revision, created, updated, head=head, lock=lock, deleted_at=deleted
            )
            if base_version is not None:
                self._base_info[name] = _BaseInfo(
                    base_version, base_body_size, base_stored_size, deltas_since
                )
        count, stored = conn.execute(
            "SELECT count(*), coalesce(sum(length(blob)), 0) FROM versions"
        ).fetchone()
        self._version_count, self._stored_bytes = count, stored

    # -- reads ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        try:
            await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
            healthy = self._writer is not None and self._writer.is_alive()
        except StorageUnavailable:
            healthy = False
        report: dict[str, Any] = {
            "is_healthy": healthy,
            "engine": self.engine,
            "node_count": 1,
            "has_leader": healthy,
            "path": str(self.path),
            "schema_version": self.schema_version(),
        }
        failure = self._writer.write_failure if self._writer is not None else None
        if failure is not None:  # reads still answer; nothing new can be stored
            report.update(
                is_healthy=False,
                writes_failing=True,
                error=f"writes are failing until one succeeds again: {failure}",
            )
        return report

    async def get_workspace(self, name: str) -> Workspace | None:
        return self._workspaces.get(name)

    async def recent_workspace(self, name: str) -> tuple[Workspace | None, float]:
        # The in-memory index is authoritative: always current.
        return self._workspaces.get(name), time.monotonic()

    async def list_workspaces(
        self, *, after: str | None = None, limit: int = 1000, include_deleted: bool = False
    ) -> list[Workspace]:
        names = sorted(
            name
            for name, ws in self._workspaces.items()
            if (after is None or name > after) and (include_deleted or not ws.deleted)
        )
        return [self._workspaces[name] for name in names[:limit]]

    async def stats(self) -> dict[str, int]:
        return {
            "workspaces": len(self._workspaces),
            "versions": self._version_count,
            "stored_bytes": self._stored_bytes,
        }

    async def list_versions(
        self, name: str, *, before: int | None = None, limit: int = 50
    ) -> list[VersionMeta]:
        ws_id = self._ids.get(name)
        if ws_id is None:
            return []

        def query(conn: sqlite3.Connection) -> list[VersionMeta]:
            rows = conn.execute(
                f"SELECT {VERSION_COLUMNS} FROM versions v WHERE v.workspace_id = ? "
                "AND v.version < ? ORDER BY v.version DESC LIMIT ?",
                (ws_id, before if before is not None else 2**62, limit),
            ).fetchall()
            return [self.version_meta(name, row) for row in rows]

        return await self._read(query)

    async def read_head(self, name: str) -> tuple[VersionMeta, bytes] | None:
        ws = self._workspaces.get(name)
        if ws is None or ws.head is None:
            return None
        cached = self._heads.get(name, ws.head.version)
        if cached is not None:
            return ws.head, cached
        return await self.read_version(name, ws.head.version)

    async def read_version(self, name: str, version: int) -> tuple[VersionMeta, bytes] | None:
        ws_id = self._ids.get(name)
        if ws_id is None:
            return None
        ws = self._workspaces.get(name)
        if ws is not None and ws.head is not None and ws.head.version == version:
            cached = self._heads.get(name, version)
            if cached is not None:
                return ws.head, cached
        return await self._read(lambda conn: self._read_version(conn, name, ws_id, version))

    def _read_version(
        self, conn: sqlite3.Connection, name: str, ws_id: int, version: int
    ) -> tuple[VersionMeta, bytes] | None:
        row = conn.execute(
            f"SELECT {VERSION_COLUMNS}, v.encoding, v.base_version, v.blob FROM versions v "
            "WHERE v.workspace_id = ? AND v.version = ?",
            (ws_id, version),
        ).fetchone()
        if row is None:
            return None
        meta = self.version_meta(name, row[:VERSION_COLUMN_COUNT])
        encoded = Encoded(*row[VERSION_COLUMN_COUNT:])
        base_body = None
        if encoded.base_version is not None:
            base_body = self._bases.get(name, encoded.base_version)
            if base_body is None:
                base_row = conn.execute(
                    "SELECT encoding, base_version, blob FROM versions "
                    "WHERE workspace_id = ? AND version = ?",
                    (ws_id, encoded.base_version),
                ).fetchone()
                base_body = self.codec.decode_version(
                    name, encoded.base_version, Encoded(*base_row), None
                )
        body = self.codec.decode_version(name, version, encoded, base_body, sha256=meta.sha256)
        return meta, body

    async def _delta_base(self, name: str, body_size: int) -> DeltaBase | None:
        """The body to delta against, or None when this body will be stored full anyway."""
        info = self._base_info.get(name)
        if info is None or self.codec.wants_full(body_size, info.size, info.deltas_since):
            return None
        body = self._bases.get(name, info.version)
        if body is None:
            found = await self.read_version(name, info.version)
            if found is None:
                return None
            body = found[1]
            self._bases.put(name, info.version, body)
        return DeltaBase(info.version, body, info.stored_size, info.deltas_since)

    # -- writes --------------------------------------------------------------------------

    def _stale(self, name: str, expect_revision: int | None) -> bool:
        ws = self._workspaces.get(name)
        return (ws.revision if ws else None) != expect_revision

    async def put_lock(
        self,
        name: str,
        lock: Lock | None,
        *,
        expect_revision: int | None,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        if self._stale(name, expect_revision):
            return None
        lock_json = self.seal_lock(name, orjson.dumps(lock.info)) if lock else None

        def operation(conn: sqlite3.Connection) -> tuple[Workspace, int] | None:
            values = (
                lock.id if lock else None,
                lock_json,
                lock.locked_at if lock else None,
                lock.owner if lock else None,
            )
            if expect_revision is None:
                cursor = conn.execute(
                    "INSERT INTO workspaces(name, revision, created_at, updated_at, lock_id, "
                    "lock_info, locked_at, lock_owner) VALUES (?, 1, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO NOTHING",
                    (name, now, now, *values),
                )
                if cursor.rowcount == 0:
                    return None
                _insert_audit(conn, audit)
                return Workspace(name, 1, now, now, lock=lock), cast(int, cursor.lastrowid)
            cursor = conn.execute(
                "UPDATE workspaces SET lock_id = ?, lock_info = ?, locked_at = ?, lock_owner = ?, "
                "updated_at = ?, revision = revision + 1 WHERE name = ? AND revision = ?",
                (*values, now, name, expect_revision),
            )
            if cursor.rowcount == 0:
                return None
            _insert_audit(conn, audit)
            current = self._workspaces[name]
            updated = replace(current, revision=expect_revision + 1, lock=lock, updated_at=now)
            return updated, self._ids[name]

        return await self._write_workspace(operation)

    async def _write_workspace(
        self, operation: Callable[[sqlite3.Connection], tuple[Workspace, int] | None]
    ) -> Workspace | None:
        def on_commit(result: tuple[Workspace, int] | None) -> None:
            if result is not None:
                self._workspaces[result[0].name] = result[0]
                self._ids[result[0].name] = result[1]

        result = await self._write(operation, on_commit)
        return result[0] if result else None

    async def set_deleted(
        self,
        name: str,
        deleted_at: float | None,
        *,
        expect_revision: int,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        if self._stale(name, expect_revision):
            return None

        def operation(conn: sqlite3.Connection) -> tuple[Workspace, int] | None:
            cursor = conn.execute(
                "UPDATE workspaces SET deleted_at = ?, updated_at = ?, revision = revision + 1 "
                "WHERE name = ? AND revision = ?",
                (deleted_at, now, name, expect_revision),
            )
            if cursor.rowcount == 0:
                return None
            _insert_audit(conn, audit)
            current = self._workspaces[name]
            updated = replace(
                current, revision=expect_revision + 1, deleted_at=deleted_at, updated_at=now
            )
            return updated, self._ids[name]

        updated = await self._write_workspace(operation)
        if updated is not None:
            self.resource_index.set_hidden(name, updated.deleted)
        return updated

    async def append_version(
        self,
        name: str,
        body: Body,
        version: NewVersion,
        *,
        expect_revision: int | None,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        if self._stale(name, expect_revision):
            return None
        base = await self._delta_base(name, len(body))
        if len(body) > _INLINE_ENCODE_BYTES:
            encoded = await asyncio.to_thread(self.codec.encode, name, body, base)
        else:
            encoded = self.codec.encode(name, body, base)
        now = version.created_at
        lock_who = self.seal_who(name, version.lock_who)
        known = self._workspaces.get(name)
        expected_number = known.head.version + 1 if known and known.head else 1
        reusable = self.resource_index.reusable(name)
        if len(body) > _INLINE_ENCODE_BYTES:
            packed, index, resources = await asyncio.to_thread(
                resource_index.build_doc,
                expected_number,
                body,
                reusable,
                version.meta.resources,
            )
        else:
            packed, index, resources = resource_index.build_doc(
                expected_number, body, reusable, version.meta.resources
            )
        index_doc = resource_index.seal(self.cipher, name, packed)

        def operation(conn: sqlite3.Connection) -> tuple[Workspace, int, _BaseInfo] | None:
            if expect_revision is None:
                cursor = conn.execute(
                    "INSERT INTO workspaces(name, revision, created_at, updated_at) "
                    "VALUES (?, 0, ?, ?) ON CONFLICT(name) DO NOTHING",
                    (name, now, now),
                )
                if cursor.rowcount == 0:
                    return None
                ws_id = cast(int, cursor.lastrowid)
                current = Workspace(name, 0, now, now)
            else:
                found = conn.execute(
                    "SELECT id, revision FROM workspaces WHERE name = ?", (name,)
                ).fetchone()
                if found is None or found[1] != expect_revision:
                    return None
                ws_id = found[0]
                current = self._workspaces[name]
            number = current.head.version + 1 if current.head else 1
            if number != expected_number:
                return None  # the head moved since the index document was built
            meta = version.numbered(name, number)
            conn.execute(INSERT_VERSION, version_row(ws_id, meta, encoded, lock_who))
            _put_index_doc(conn, ws_id, number, index_doc)
            base_info = self._next_base(name, number, len(body), encoded)
            _insert_audit(conn, replace(audit, version=number) if audit else None)
            revision = (expect_revision or 0) + 1
            conn.execute(
                "UPDATE workspaces SET head_version = ?, revision = ?, updated_at = ?, "
                "base_version = ?, base_stored_size = ?, deltas_since_base = ? WHERE id = ?",
                (
                    number,
                    revision,
                    now,
                    base_info.version,
                    base_info.stored_size,
                    base_info.deltas_since,
                    ws_id,
                ),
            )
            updated = replace(current, revision=revision, head=meta, updated_at=now)
            return updated, ws_id, base_info

        def on_commit(result: tuple[Workspace, int, _BaseInfo] | None) -> None:
            if result is None:
                return
            ws, ws_id, base_info = result
            assert ws.head is not None
            self._workspaces[name] = ws
            self._ids[name] = ws_id
            self._base_info[name] = base_info
            self._heads.put(name, ws.head.version, body)
            if encoded.encoding == "zstd":
                self._bases.put(name, ws.head.version, body)
            self._version_count += 1
            self._stored_bytes += len(encoded.blob)

        result = await self._write(operation, on_commit)
        if result is None:
            return None
        self.resource_index.put(name, packed, index, resources, len(body))
        return result[0]

    # -- keys and audit ------------------------------------------------------------------

    async def create_key(self, key: ApiKey, *, audit: AuditEvent | None = None) -> bool:
        def operation(conn: sqlite3.Connection) -> bool:
            try:
                conn.execute(INSERT_KEY, key_row(key))
            except sqlite3.IntegrityError:
                return False  # an active key already has this name (or, vanishingly, this id)
            _insert_audit(conn, audit)
            return True

        return await self._write(operation)

    async def list_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"

        def query(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys{where} ORDER BY name, created_at"
            ).fetchall()
            return [api_key_from_row(row) for row in rows]

        return await self._read(query)

    async def revoke_key(
        self, name: str, at: float, *, audit: AuditEvent | None = None
    ) -> ApiKey | None:
        def operation(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (at, row[0]))
            _insert_audit(conn, audit)
            return replace(api_key_from_row(row), revoked_at=at)

        return await self._write(operation)

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(at, key_id) for key_id, at in last_used.items()],
            )

        await self._write(operation)

    async def append_audit(self, events: list[AuditEvent]) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            for event in events:
                _insert_audit(conn, event)

        await self._write(operation)

    async def list_audit(
        self,
        *,
        workspace: str | None = None,
        key_name: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        clauses, params = [], []
        for column, value in (
            ("workspace = ?", workspace),
            ("key_name = ?", key_name),
            ("action = ?", action),
            ("at >= ?", since),
            ("at < ?", until),
            ("id < ?", before_id),
        ):
            if value is not None:
                clauses.append(column)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""

        def query(conn: sqlite3.Connection) -> list[AuditEvent]:
            rows = conn.execute(
                "SELECT at, action, outcome, key_name, role, source, workspace, version, "
                f"lock_id, status, detail, id FROM audit{where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [AuditEvent(*row) for row in rows]

        return await self._read(query)

    # -- runs ----------------------------------------------------------------------------

    def seal_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.seal(payload, run_aad(run_id, kind))

    def open_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.open(payload, run_aad(run_id, kind))

    def run_from_row(self, row: tuple[Any, ...]) -> Run:
        run_id, revision, document = row
        run = Run.from_document(orjson.loads(self.open_run(run_id, "document", document)))
        return replace(run, revision=revision)

    async def create_run(self, run: Run) -> Run:
        stored = replace(run, revision=1)
        document = self.seal_run(run.id, "document", orjson.dumps(stored.to_document()))

        def operation(conn: sqlite3.Connection) -> Run:
            conn.execute(
                "INSERT INTO runs(id, workspace, status, revision, created_at, document) "
                "VALUES (?, ?, ?, 1, ?, ?)",
                (run.id, run.workspace, run.status.value, run.created_at, document),
            )
            return stored

        return await self._write(operation)

    async def update_run(
        self, run: Run, *, expect_revision: int, audit: AuditEvent | None = None
    ) -> Run | None:
        stored = replace(run, revision=expect_revision + 1)
        document = self.seal_run(run.id, "document", orjson.dumps(stored.to_document()))

        def operation(conn: sqlite3.Connection) -> Run | None:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, revision = ?, document = ? "
                "WHERE id = ? AND revision = ?",
                (run.status.value, stored.revision, document, run.id, expect_revision),
            )
            if cursor.rowcount == 0:
                return None
            _insert_audit(conn, audit)
            return stored

        return await self._write(operation)

    async def get_run(self, run_id: str) -> Run | None:
        def query(conn: sqlite3.Connection) -> Run | None:
            row = conn.execute(
                "SELECT id, revision, document FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            return self.run_from_row(row) if row else None

        return await self._read(query)

    async def list_runs(
        self,
        *,
        workspace: str | None = None,
        statuses: tuple[str, ...] = (),
        before: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        clauses, params = [], []
        if workspace is not None:
            clauses.append("workspace = ?")
            params.append(workspace)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        # Open runs are few however long the history: read them through the status index
        # and sort them, rather than walk a workspace's (or every) run newest first, which
        # the planner prefers for `workspace = ?` or once ANALYZE has seen the statuses.
        if statuses and _OPEN_STATUSES.issuperset(statuses):
            where = f" INDEXED BY runs_by_status{where}"

        def query(conn: sqlite3.Connection) -> list[Run]:
            rows = conn.execute(
                f"SELECT id, revision, document FROM runs{where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [self.run_from_row(row) for row in rows]

        return await self._read(query)

    async def put_run_blob(self, run_id: str, kind: str, data: bytes) -> None:
        sealed = self.seal_run(run_id, kind, data)

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO run_blobs(run_id, kind, data) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id, kind) DO UPDATE SET data = excluded.data",
                (run_id, kind, sealed),
            )

        await self._write(operation)

    async def get_run_blob(self, run_id: str, kind: str) -> bytes | None:
        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT data FROM run_blobs WHERE run_id = ? AND kind = ?", (run_id, kind)
            ).fetchone()
            return self.open_run(run_id, kind, row[0]) if row else None

        return await self._read(query)

    async def append_run_log(self, run_id: str, chunk: bytes) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM run_logs WHERE run_id = ?", (run_id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO run_logs(run_id, seq, data) VALUES (?, ?, ?)",
                (run_id, seq, self.seal_run(run_id, f"log{seq}", chunk)),
            )

        await self._write(operation)

    async def read_run_log(self, run_id: str) -> bytes:
        def query(conn: sqlite3.Connection) -> bytes:
            rows = conn.execute(
                "SELECT seq, data FROM run_logs WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
            return b"".join(self.open_run(run_id, f"log{seq}", data) for seq, data in rows)

        return await self._read(query)

    def _next_base(self, name: str, number: int, size: int, encoded: Encoded) -> _BaseInfo:
        current = self._base_info.get(name)
        if encoded.encoding == "zstd":
            return _BaseInfo(number, size, len(encoded.blob), 0)
        assert current is not None
        if encoded.base_version == current.version:
            return replace(current, deltas_since=current.deltas_since + 1)
        return current

    # -- snapshots (snapshot.py) ---------------------------------------------------

    def export_snapshot(self) -> AsyncGenerator[SnapshotRecord, None]:
        return sqlite_snapshot.export(self)

    async def import_snapshot(self, records: AsyncIterator[SnapshotRecord]) -> ImportReport:
        """Imported versions get their index documents from the reindex started here (the
        snapshot format carries no index: it is rebuilt from the exact bodies)."""
        report = await sqlite_snapshot.import_records(self, records)
        await self._read(self._load_resource_heads)
        self.reindexer.start()
        return report

    # -- the resource index (resource_index.py) -------------------------------------------

    def _load_resource_heads(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT w.id, w.name, w.head_version, r.doc FROM workspaces w "
            "JOIN resource_index r ON r.workspace_id = w.id AND r.version = w.head_version"
        ).fetchall()
        for ws_id, name, version, stored in rows:
            try:
                packed = resource_index.open_sealed(self.cipher, name, bytes(stored))
            except DecryptionError:
                self._unreadable_docs.add((ws_id, name, version))
                continue
            self.resource_index.put(name, packed)
            ws = self._workspaces.get(name)
            self.resource_index.set_hidden(name, ws is not None and ws.deleted)

    async def _plan_reindex(self, force: bool) -> ReindexPlan[tuple[int, str, int]]:
        """The reindex (Reindexer) builds the current versions' stale documents one at a time
        (memory: about two bodies and one document), in workspace order, listed a page at a
        time; the documents no configured key opened at open come first."""
        unreadable = sorted(self._unreadable_docs)
        key = self.cipher.current_id if self.cipher else None
        total = await self._read(lambda conn: _count_unindexed(conn, force, key))
        #: The last full version decoded (a delta base for the next ones): at most one.
        last_full: list[tuple[int, int, bytes]] = []

        async def listed() -> AsyncIterator[tuple[int, str, int]]:
            pending, cursor = unreadable, (0, 0)
            while True:
                page = await self._read(
                    functools.partial(
                        _unindexed, after=cursor, force=force, current_key=key, limit=32
                    )
                )
                if page:
                    cursor = (page[-1][0], page[-1][2])
                page, pending = pending + page, []
                if not page:
                    return
                for item in page:
                    yield item

        async def index_one(item: tuple[int, str, int]) -> None:
            await self._index_one(*item, last_full)
            self._unreadable_docs.discard(item)

        return ReindexPlan(total + len(unreadable), listed(), index_one)

    async def _index_one(
        self, ws_id: int, name: str, version: int, last_full: list[tuple[int, int, bytes]]
    ) -> None:
        def build(conn: sqlite3.Connection) -> tuple[bytes, bytes] | None:
            body = self._body_uncached(conn, name, ws_id, version, last_full)
            if body is None:
                return None
            packed = resource_index.build(version, body)
            return packed, resource_index.seal(self.cipher, name, packed)

        built = await self._read(build)
        if built is None:
            return
        packed, stored = built

        def operation(conn: sqlite3.Connection) -> None:
            # Only while `version` is still the head (a write since replaced it otherwise).
            still_head = conn.execute(
                "SELECT 1 FROM workspaces WHERE id = ? AND head_version = ?", (ws_id, version)
            ).fetchone()
            if still_head is None:
                return
            _put_index_doc(conn, ws_id, version, stored)

        await self._write(operation)
        ws = self._workspaces.get(name)
        if ws is not None and ws.head is not None and ws.head.version == version:
            self.resource_index.put(name, packed)
            self.resource_index.set_hidden(name, ws.deleted)

    def _body_uncached(
        self,
        conn: sqlite3.Connection,
        name: str,
        ws_id: int,
        version: int,
        last_full: list[tuple[int, int, bytes]],
    ) -> bytes | None:
        """A version's body for the reindex: no cache filled (no digested dictionary kept),
        the last full version decoded reused as the delta base (`last_full`, updated)."""
        row = conn.execute(
            "SELECT encoding, base_version, blob FROM versions WHERE workspace_id = ? "
            "AND version = ?",
            (ws_id, version),
        ).fetchone()
        if row is None:
            return None
        encoded = Encoded(*row)
        base_body = None
        if encoded.base_version is not None:
            if last_full and last_full[0][:2] == (ws_id, encoded.base_version):
                base_body = last_full[0][2]
            else:
                base_row = conn.execute(
                    "SELECT encoding, base_version, blob FROM versions "
                    "WHERE workspace_id = ? AND version = ?",
                    (ws_id, encoded.base_version),
                ).fetchone()
                base_body = self.codec.decode(name, Encoded(*base_row), None, cache=False)
                last_full[:] = [(ws_id, encoded.base_version, base_body)]
        body = self.codec.decode(name, encoded, base_body, cache=False)
        if encoded.encoding == "zstd":
            last_full[:] = [(ws_id, version, body)]
        return body

    async def index_history(
        self, workspace: str, *, from_version: int = 1, limit: int = 64
    ) -> list[IndexDoc]:
        ws_id = self._ids.get(workspace)
        if ws_id is None:
            return []

        def query(conn: sqlite3.Connection) -> list[IndexDoc]:
            """Built from the bodies (only the head has a stored document), without filling
            the body caches, reusing the last full version as the deltas' base."""
            numbers = conn.execute(
                "SELECT version FROM versions WHERE workspace_id = ? AND version >= ? "
                "ORDER BY version LIMIT ?",
                (ws_id, from_version, limit),
            ).fetchall()
            rows = resource_index.HistoryRows()
            last_full: list[tuple[int, int, bytes]] = []
            docs = []
            for (version,) in numbers:
                body = self._body_uncached(conn, workspace, ws_id, version, last_full)
                if body is not None:
                    docs.append(rows.doc(version, body))
            return docs

        return await self._read(query)

    # -- encryption at rest (encryption.py) ---------------------------------------

    def _check_encryption(self, conn: sqlite3.Connection) -> None:
        sqlite_encryption.check_at_open(
            conn, self.cipher, self.path, adopt_plaintext=self._adopt_plaintext
        )

    def seal_lock(self, name: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.seal(payload, lock_aad(name))

    def open_lock(self, name: str, payload: bytes) -> bytes:
        if self.cipher is None:
            if is_sealed(payload):
                raise DecryptionError("found an encrypted lock but no encryption key is configured")
            return payload
        if self._adopt_plaintext and not is_sealed(payload):
            return payload  # not sealed yet: offline encryption in progress
        return self.cipher.open(payload, lock_aad(name))

    def seal_who(self, name: str, who: str | None) -> bytes | None:
        """A version's lock holder as stored: sealed with the version's blob key (rotation
        re-seals both together), since `Who` names a person and a machine."""
        return None if who is None else self.seal_lock(name, who.encode())

    def version_meta(self, name: str, row: tuple[Any, ...] | sqlite3.Row) -> VersionMeta:
        """A version's metadata from its VERSION_COLUMNS, the lock holder opened."""
        who = row[13]
        return version_meta_from_row(
            name, row, None if who is None else self.open_lock(name, bytes(who)).decode()
        )

    async def encryption_status(self) -> EncryptionStatus:
        return await self._read(lambda conn: sqlite_encryption.status(conn, self.cipher))

    async def rotate_encryption(
        self,
        *,
        max_seconds: float = 1.0,
        batch_versions: int = 64,
        batch_bytes: int = 8 * 1024 * 1024,
    ) -> RotationProgress:
        """Re-seal old blobs under the current key in small writer batches, for ~max_seconds.

        Each batch is one operation on the writer thread, so it commits between (and together
        with) ordinary writes; readers may meanwhile see a blob under either key, and both are
        configured. Safe to interrupt and to call again at any time.
        """
        cipher = self.cipher
        if cipher is None:
            raise EncryptionNotConfigured(
                "Encryption at rest is not enabled on this server: set BLIXARD_ENCRYPTION_KEY "
                "(and encrypt existing data offline with `blixard encryption rotate --data-dir`)."
            )

        def batch(conn: sqlite3.Connection) -> sqlite_encryption.RotationBatch:
            return sqlite_encryption.rotate_batch(
                conn,
                cipher,
                adopt_plaintext=self._adopt_plaintext,
                max_versions=batch_versions,
                max_bytes=batch_bytes,
            )

        def on_commit(result: sqlite_encryption.RotationBatch) -> None:
            self._stored_bytes += result.grown_bytes

        versions = locks = 0
        retired: list[str] = []
        deadline = time.monotonic() + max_seconds
        while True:
            done = await self._write(batch, on_commit)
            versions += done.rotated_versions
            locks += done.rotated_locks
            retired += done.retired_key_ids
            # A batch that finds no version left has also done the locks and retired old ids.
            if done.rotated_versions == 0:
                break
            if time.monotonic() >= deadline:
                remaining, _, _ = await self._read(
                    lambda conn: sqlite_encryption.pending(conn, cipher)
                )
                if remaining:
                    break
        remaining_versions, remaining_locks, total = await self._read(
            lambda conn: sqlite_encryption.pending(conn, cipher)
        )
        return RotationProgress(
            current_key_id=cipher.current_id,
            rotated_versions=versions,
            rotated_locks=locks,
            remaining_versions=remaining_versions,
            remaining_locks=remaining_locks,
            total_versions=total,
            retired_key_ids=retired,
        )

    # -- node liveness -------------------------------------------------------------------

    async def grant_node_lease(self, node_id: str, info: dict[str, Any], *, ttl: int) -> int:
        """In memory: the file lock makes this process the store's only node, yet leases
        expire and are listed as on a shared engine, so the run sweeper works the same."""
        self._expire_node_leases()
        for lease_id, lease in list(self._node_leases.items()):
            if lease.node_id == node_id:
                del self._node_leases[lease_id]
        lease_id = next(self._lease_ids)
        self._node_leases[lease_id] = _NodeLease(node_id, dict(info), ttl, time.monotonic() + ttl)
        return lease_id

    async def renew_node_lease(self, lease_id: int) -> bool:
        self._expire_node_leases()
        lease = self._node_leases.get(lease_id)
        if lease is None:
            return False
        lease.expires = time.monotonic() + lease.ttl
        return True

    async def revoke_node_lease(self, lease_id: int) -> None:
        self._node_leases.pop(lease_id, None)

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        self._expire_node_leases()
        return {lease.node_id: dict(lease.info) for lease in self._node_leases.values()}

    def _expire_node_leases(self) -> None:
        now = time.monotonic()
        for lease_id, lease in list(self._node_leases.items()):
            if lease.expires <= now:
                del self._node_leases[lease_id]


#: Current versions, with their document if any (only heads have one).
_UNINDEXED = (
    "FROM versions v JOIN workspaces w ON w.id = v.workspace_id AND w.head_version = v.version "
    "LEFT JOIN resource_index r ON r.workspace_id = v.workspace_id AND r.version = v.version "
)


def _stale_documents(force: bool, current_key: str | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE condition for current versions whose document must be (re)built: missing, or not
    sealed with the current key (plaintext under encryption, an old key after a rotation, or
    sealed while encryption is now off): what the next reindex rebuilds."""
    if force:
        return "1", ()
    sealed = "substr(r.doc, 1, 4) = X'42584501'"
    if current_key is None:
        return f"(r.workspace_id IS NULL OR {sealed})", ()
    return (
        f"(r.workspace_id IS NULL OR NOT {sealed} OR lower(hex(substr(r.doc, 5, 8))) != ?)",
        (current_key,),
    )


def _count_unindexed(conn: sqlite3.Connection, force: bool, current_key: str | None) -> int:
    where, params = _stale_documents(force, current_key)
    count: int = conn.execute(f"SELECT count(*) {_UNINDEXED}WHERE {where}", params).fetchone()[0]
    return count


def _unindexed(
    conn: sqlite3.Connection,
    after: tuple[int, int],
    force: bool,
    current_key: str | None,
    limit: int,
) -> list[tuple[int, str, int]]:
    """Current versions after `after` (workspace id, version) whose document must be built:
    the documents already built are the reindex's progress marker."""
    where, params = _stale_documents(force, current_key)
    return conn.execute(
        f"SELECT v.workspace_id, w.name, v.version {_UNINDEXED}"
        f"WHERE {where} AND (v.workspace_id, v.version) > (?, ?) "
        "ORDER BY v.workspace_id, v.version LIMIT ?",
        (*params, *after, limit),
    ).fetchall()


def _put_index_doc(conn: sqlite3.Connection, ws_id: int, version: int, doc: bytes) -> None:
    """Make `doc` the workspace's index document: the head's replaces the one before (one row
    per workspace since migration 7), in one statement when there is one."""
    updated = conn.execute(
        "UPDATE resource_index SET version = ?, doc = ? WHERE workspace_id = ?",
        (version, doc, ws_id),
    )
    if updated.rowcount == 0:
        conn.execute(
            "INSERT INTO resource_index(workspace_id, version, doc) VALUES (?, ?, ?)",
            (ws_id, version, doc),
        )


def _insert_audit(conn: sqlite3.Connection, event: AuditEvent | None) -> None:
    """Audit rows are written in the transaction of the action they record."""
    if event is None:
        return
    conn.execute(
        "INSERT INTO audit(at, action, outcome, key_name, role, source, workspace, version, "
        "lock_id, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
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
