"""The replicated engine: an etcd v3 cluster, every mutation one Txn compared on revisions.

Several Blixard nodes may share one cluster and prefix, so nothing in this process is an
authority: `Workspace.revision` is the `mod_revision` of the workspace's record key, every
compare-and-set is an etcd Txn on it, and the only caches hold immutable data (decoded delta
bases by workspace and version number). Key layout and the mapping of each method to one Txn:
docs/etcd-notes.md §5-§7. Bodies go through the shared VersionCodec exactly as in the SQLite
engine, so they come back byte-identical.

Large encoded values (> CHUNK_BYTES) are written first as chunks attached to a short lease,
then published by the single Txn that records the version, which re-puts each chunk without
the lease (`ignore_value`): a lost race or a dead writer leaves only leased chunks, which etcd
deletes when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import orjson

from blixard.domain.access import ApiKey, AuditEvent, Role
from blixard.domain.errors import StorageUnavailable
from blixard.domain.models import Body, Lock, NewVersion, VersionMeta, Workspace
from blixard.domain.runs import FINISHED, OPEN, Run
from blixard.store import resource_index
from blixard.store.codec import DELTA_MAX_BYTES, DeltaBase, Encoded, VersionCodec
from blixard.store.crypto import (
    Cipher,
    DecryptionError,
    is_sealed,
    key_id_of_blob,
    lock_aad,
    run_aad,
)
from blixard.store.encryption import EncryptionStatus, RotationProgress
from blixard.store.errors import StoreCannotConnect
from blixard.store.etcd.batch import (
    MAX_TXN_OPS,
    DirectKV,
    TxnBatcher,
    delete_range_op,
    get_op,
    put_op,
    unavailable,
)
from blixard.store.etcd.conn import Compaction, EtcdAccess, EtcdConnection
from blixard.store.etcd.keyspace import (
    AUDIT,
    AUDIT_BY_KEY,
    AUDIT_BY_WORKSPACE,
    AUDIT_EPOCH_MS,
    AUDIT_LOW_BITS,
    CHUNK_BYTES,
    INLINE_BYTES,
    KEYS_BY_ID,
    KEYS_BY_NAME,
    KEYS_USED,
    META_AUDIT_IDS,
    META_COMPACTION,
    META_ENCRYPTION,
    META_IMPORT,
    META_PINS,
    META_RESOURCE_INDEX_KEY,
    META_RUN_INDEX,
    META_RUN_INDEX_WS,
    META_SCHEMA,
    NODES,
    OLD_AUDIT_IDS,
    RESOURCE_INDEX,
    RESOURCE_INDEX_ALL,
    RESOURCE_INDEX_BLOBS,
    RESOURCE_INDEX_HEADS,
    RUN_REVISIONS,
    RUNS,
    RUNS_BY_WORKSPACE,
    RUNS_OPEN,
    WORKSPACES,
    Keyspace,
    b64,
    chunk_keys,
    inline,
    inv,
    prefix_end,
    unb64,
    uninv,
)
from blixard.store.resource_index import HeadIndex, IndexDoc, Reindexer, ReindexPlan
from blixard.store.snapshot import ImportReport, SnapshotRecord, UnfinishedImport

if TYPE_CHECKING:
    from blixard.domain.events import EventBus
    from blixard.store.etcd.changes import ChangeFeed
    from blixard.store.etcd.encryption import EtcdEncryption

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Chunk puts in one publishing Txn level (etcd allows 128 ops per level).
_OPS_PER_LEVEL = 100
#: Lease on unpublished chunks: expired, etcd deletes what a lost race or dead node left.
_UPLOAD_LEASE_TTL = 60
#: Deadline of one chunk put (1 MiB): long enough for a slow link, short enough that a write
#: without quorum answers 503 in seconds rather than hanging.
_CHUNK_PUT_TIMEOUT = 10.0
#: Chunks read per range (responses stay far below the gRPC receive limit).
_CHUNKS_PER_READ = 4
#: Bodies larger than this are encoded on a worker thread instead of the event loop.
_INLINE_ENCODE_BYTES = 1024 * 1024
#: Seconds /health/hiqlite waits for the quorum read and each member's status (in parallel).
HEALTH_DEADLINE = 1.5
#: Workspace records and version metadata kept (see EtcdStore._records).
_RECORD_CACHE = 4096
_META_CACHE = 16384
#: Lease on an export's revision pin (kept alive while the export runs; see pinned_revision).
_PIN_TTL = 30
#: The statuses `runopen/` indexes (list_runs asking only for these reads the index).
_OPEN_STATUSES = frozenset(status.value for status in OPEN)
#: Old events read per re-keying Txn; those whose deletes + puts (2-6 each) fit in one flat
#: Txn of 128 ops go (a nested Txn may hold only 128 minus its parent's longest list, which
#: the per-event compares would cut into).
_REKEY_PAGE = 64


class _BodyCache:
    """A bytes-bounded LRU of immutable bodies keyed by (workspace, version)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size = 0
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, version: int) -> bytes | None:
        with self._lock:
            body = self._items.get((name, version))
            if body is not None:
                self._items.move_to_end((name, version))
            return body

    def put(self, name: str, version: int, body: Body) -> None:
        if len(body) > min(DELTA_MAX_BYTES, self.max_bytes):
            return
        data = bytes(body)
        with self._lock:
            old = self._items.pop((name, version), None)
            if old is not None:
                self._size -= len(old)
            self._items[(name, version)] = data
            self._size += len(data)
            while self._size > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    """A workspace record as stored at `ws/<name>`, with its mod_revision."""

    ws: Workspace
    base: dict[str, int] | None
    version_count: int
    stored_bytes: int
    #: Sum of the plaintext sizes of the versions (snapshot counts).
    body_bytes: int = 0
    #: The id of the newest audit event written with the record: the next one is above it
    #: even if this node's clock is behind the node that wrote it.
    last_audit: int = 0


class EtcdStore:
    engine = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/blixard/",
        *,
        codec: VersionCodec | None = None,
        cipher: Cipher | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
        timeout: float = 5.0,
        access: EtcdAccess | None = None,
        compaction: Compaction | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if codec is not None and codec.cipher is not cipher:
            raise ValueError("the codec must use the store's cipher")
        self.endpoints = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        #: Every key of this store (keyspace.py); snapshot.py and encryption.py share it.
        self.keys = Keyspace(prefix)
        self.codec = codec or VersionCodec(cipher=cipher)
        self.cipher = cipher
        self.timeout = timeout
        self._bodies = _BodyCache(cache_bytes)
        #: Workspace records by name as last seen (the newest revision seen wins), each with
        #: the monotonic instant its etcd request was sent: the record was current at some
        #: instant after it. A record at a given mod_revision never changes, so one is used
        #: for a write only when its revision is the one the caller expects (and the Txn
        #: compares that very revision): a stale entry costs a failed compare, never a wrong
        #: write. `recent_workspace` hands it out as a view to decide on; reads that answer
        #: clients always go to etcd.
        self._records: OrderedDict[str, tuple[WorkspaceRecord, float]] = OrderedDict()
        #: Version metadata (immutable once published) by (workspace, number).
        self._metas: OrderedDict[tuple[str, int], VersionMeta] = OrderedDict()
        self.access = access or EtcdAccess()
        self.compaction = compaction
        self._conn: EtcdConnection | None = None
        self._client: Any = None
        self._kv: Any = None
        #: Txn and point reads without etcd3aio's per-call wrapper (etcd_batch.DirectKV).
        self._direct: DirectKV | None = None
        #: Group commit of Txns and point reads (batch.py); set while open.
        self._batcher: TxnBatcher | None = None
        #: Revisions this process's exports read at, by their pin's lease (see pinned_revision).
        self._pins: dict[int, int] = {}
        self._compactor: asyncio.Task[None] | None = None
        #: The wall clock audit ids are made from (tests skew it).
        self._clock = clock
        self._audit_slot = secrets.randbelow(1 << AUDIT_LOW_BITS)
        #: The newest audit id this instance gave (ids only grow per instance).
        self._last_audit = 0
        #: New ids go above it: the newest id an upgrade or import left (`meta/auditids`).
        self._audit_floor = 0
        #: Current versions' resource index documents (search), kept current by a watch on
        #: `rixhead/` (every node's writes); see resource_index.py and docs/search.md.
        self.resource_index = HeadIndex()
        self.reindexer = Reindexer(self.engine, self._plan_reindex)
        self._index_watch: asyncio.Task[None] | None = None
        self._watch_stop = asyncio.Event()
        #: Version each workspace has a write of in flight on this node, and a document the
        #: watch reported for that very version meanwhile (ours, unless the write fails).
        self._writing: dict[str, int] = {}
        self._held_docs: dict[str, tuple[bytes, bytes]] = {}
        #: Publishes every node's changes on the bus it was given (changes.py); None: none.
        self._changes: ChangeFeed | None = None

    def feed_changes(self, bus: EventBus) -> None:
        """Publish every node's changes on `bus` from an etcd watch, while it has listeners
        (subscribed ones, `EventBus.subscribe`): so a node's event stream hears what was done
        through any node (changes.py)."""
        from blixard.store.etcd.changes import ChangeFeed

        self._changes = ChangeFeed(self, bus)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        from blixard.store.etcd.conn import EtcdConnectError

        conn = EtcdConnection(self.endpoints, self.access, timeout=self.timeout)
        self._conn = conn
        try:
            self._client = await conn.open(self.prefix)
        except EtcdConnectError as exc:
            await self.close()
            raise StoreCannotConnect(str(exc)) from None
        except BaseException:
            await self.close()
            raise
        self._kv = self._client.kv
        self._direct = DirectKV(self._kv)
        self._batcher = TxnBatcher(self._direct, timeout=self.timeout)
        try:
            found = await self._get(self.keys.key(META_IMPORT))
            if found is not None:
                raise UnfinishedImport(
                    f"etcd prefix {self.prefix} holds an unfinished import (a restore or "
                    "migration stopped part-way); it is incomplete and will not be served: "
                    "delete the prefix and run the restore or migration again"
                )
            schema = self.keys.key(META_SCHEMA)
            await self._call(
                self._kv.txn(
                    [self._kv.txn_compare_create_revision(schema, 0)],
                    [put_op(schema, orjson.dumps({"schema": 1}))],
                    [],
                    timeout=self.timeout,
                )
            )
            await self._check_encryption()
            await self._index_runs()
            await self._upgrade_audit_ids()
            await self._follow_resource_heads()
            self.reindexer.start()
            if self.compaction is not None:
                self._compactor = asyncio.create_task(self._compact_loop(self.compaction))
        except BaseException:
            await self.close()
            raise

    async def _check_encryption(self) -> None:
        """Refuse keys that cannot open this prefix (as the SQLite engine does at open).

        `meta/encryption` holds, for every key id that may have sealed something, a canary
        sealed with it; the current key gets its canary before it seals anything."""
        from blixard.store.encryption import EncryptionRefused

        key = self.keys.key(META_ENCRYPTION)
        while True:
            kv = await self._get(key)
            doc = orjson.loads(kv.value) if kv is not None else {"canaries": {}}
            canaries = {k: unb64(v) for k, v in doc["canaries"].items()}
            cipher = self.cipher
            if cipher is None:
                if canaries:
                    raise EncryptionRefused(
                        f"etcd prefix {self.prefix} is encrypted (key ids "
                        f"{', '.join(sorted(canaries))}) but no key is configured: set "
                        "BLIXARD_ENCRYPTION_KEY or BLIXARD_ENCRYPTION_KEY_FILE"
                    )
                return
            if not canaries:
                ws = self.keys.key(WORKSPACES)
                found = await self._call(
                    self._kv.get(ws, prefix_end(ws), count_only=True, timeout=self.timeout)
                )
                if found.count:
                    raise EncryptionRefused(
                        f"etcd prefix {self.prefix} holds unencrypted data and an encryption "
                        "key is now configured: migrate it into an encrypted prefix with a "
                        "backup and restore, or unset BLIXARD_ENCRYPTION_KEY"
                    )
            missing = sorted(k for k in canaries if not cipher.has(k))
            if missing:
                raise EncryptionRefused(
                    f"the configured keys do not open etcd prefix {self.prefix}: data is sealed "
                    f"with key ids {', '.join(missing)}; add them to BLIXARD_ENCRYPTION_OLD_KEYS"
                )
            for key_id, canary in canaries.items():
                if not cipher.opens_canary(key_id, canary):
                    raise EncryptionRefused(
                        f"the configured key with id {key_id} fails to open the check value of "
                        f"etcd prefix {self.prefix}: the key or the data is damaged"
                    )
            if cipher.current_id in canaries:
                return
            canaries[cipher.current_id] = cipher.canary()
            value = orjson.dumps({"canaries": {k: b64(v) for k, v in canaries.items()}})
            compare = (
                self._kv.txn_compare_create_revision(key, 0)
                if kv is None
                else self._cmp_mod(key, int(kv.mod_revision))
            )
            resp = await self._txn([compare], [put_op(key, value)], [])
            if resp.succeeded:
                return

    def _cmp_mod(self, key: bytes, revision: int) -> Any:
        from blixard.store.etcd.wire import Compare

        return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=revision)

    async def close(self) -> None:
        # The watch's request stream ends first, so cancelling its call then cancels no
        # request iterator (gRPC logs a traceback for that).
        self._watch_stop.set()
        await asyncio.sleep(0.01)
        await self.reindexer.stop()
        if self._changes is not None:
            await self._changes.stop()
        for task in (self._index_watch, self._compactor):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._index_watch = self._compactor = None
        if self._conn is not None:
            await self._conn.close()
        if self._batcher is not None:
            self._batcher.close()
        self._batcher = None
        self._conn = None
        self._client = None
        self._kv = None
        self._direct = None

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T]) -> T:
        import grpc
        from etcd3aio.errors import EtcdError

        if self._kv is None:
            raise StorageUnavailable("The store is not open.")
        try:
            return await awaitable
        except (TimeoutError, EtcdError, grpc.aio.AioRpcError) as exc:
            # etcd3aio re-raises the gRPC codes it does not map (e.g. a request too large).
            raise unavailable(exc) from None

    @property
    def _batch(self) -> TxnBatcher:
        if self._batcher is None:
            raise StorageUnavailable("The store is not open.")
        return self._batcher

    async def _get(self, key: bytes) -> Any | None:
        """A linearizable point read, batched with what queues behind calls in flight."""
        resp = await self._call(self._batch.get(key))
        return resp.kvs[0] if resp.kvs else None

    async def _range(self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0) -> Any:
        return await self._call(
            self._kv.get(start, end, revision=revision, limit=limit, timeout=self.timeout)
        )

    async def _scan(
        self, start: bytes, end: bytes, *, page: int = 500, revision: int = 0
    ) -> AsyncIterator[Any]:
        """Every key-value in [start, end), ascending, paged."""
        while True:
            resp = await self._range(start, end, limit=page, revision=revision)
            for kv in resp.kvs:
                yield kv
            if not resp.more or not resp.kvs:
                return
            start = bytes(resp.kvs[-1].key) + b"\x00"

    async def _txn(
        self, compare: list[Any], success: list[Any], failure: list[Any], *, batch: bool = False
    ) -> Any:
        """One Txn. With `batch`, it may share an etcd Txn with others (batch.py): only
        for ops that cannot fail at apply time (no lease, no `ignore_value`, no read at a past
        revision), since such a failure would fail the whole batch."""
        if batch:
            return await self._call(self._batch.txn(compare, success, failure))
        if self._direct is None:
            raise StorageUnavailable("The store is not open.")
        from blixard.store.etcd.wire import TxnRequest

        request = TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(self._direct.txn(request, self.timeout))

    def _cmp_ws(self, name: str, expect_revision: int | None) -> Any:
        from blixard.store.etcd.wire import Compare

        key = self.keys.workspace(name)
        if expect_revision is None:
            return self._kv.txn_compare_create_revision(key, 0)
        return Compare(
            result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=expect_revision
        )

    # -- workspace records ---------------------------------------------------------------

    def _seal_lock(self, name: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.seal(payload, lock_aad(name))

    def _open_lock(self, name: str, payload: bytes) -> bytes:
        if self.cipher is None:
            if is_sealed(payload):
                raise DecryptionError("found an encrypted lock but no encryption key is configured")
            return payload
        return self.cipher.open(payload, lock_aad(name))

    def _encode_record(
        self,
        ws: Workspace,
        base: dict[str, int] | None,
        version_count: int,
        stored_bytes: int,
        body_bytes: int = 0,
        last_audit: int = 0,
    ) -> bytes:
        lock = ws.lock
        return orjson.dumps(
            {
                "created_at": ws.created_at,
                "updated_at": ws.updated_at,
                "deleted_at": ws.deleted_at,
                "head": self._head_doc(ws.head),
                "lock": (
                    {
                        "id": lock.id,
                        "info": b64(self._seal_lock(ws.name, orjson.dumps(lock.info))),
                        "locked_at": lock.locked_at,
                        "owner": lock.owner,
                    }
                    if lock
                    else None
                ),
                "base": base,
                "version_count": version_count,
                "stored_bytes": stored_bytes,
                "body_bytes": body_bytes,
                "audit": last_audit,
            }
        )

    def _decode_record(self, name: str, kv: Any) -> WorkspaceRecord:
        doc = orjson.loads(kv.value)
        lock_doc = doc["lock"]
        lock = (
            Lock(
                lock_doc["id"],
                orjson.loads(self._open_lock(name, unb64(lock_doc["info"]))),
                lock_doc["locked_at"],
                lock_doc["owner"],
            )
            if lock_doc
            else None
        )
        head = self.meta_from(name, doc["head"]) if doc["head"] else None
        ws = Workspace(
            name,
            int(kv.mod_revision),
            doc["created_at"],
            doc["updated_at"],
            head=head,
            lock=lock,
            deleted_at=doc["deleted_at"],
        )
        return WorkspaceRecord(
            ws,
            doc["base"],
            doc["version_count"],
            doc["stored_bytes"],
            doc.get("body_bytes", 0),
            doc.get("audit", 0),
        )

    def meta_doc(self, meta: VersionMeta) -> Any:
        """A version's metadata as its `ver/` document holds it: the lock holder's `Who` is
        sealed (base64) when encryption is on, with the blob's key (rotation re-seals both)."""
        if meta.lock_who is None or self.cipher is None:
            return meta  # orjson writes dataclasses as asdict() would, faster
        doc = asdict(meta)
        doc["lock_who"] = b64(self.cipher.seal(meta.lock_who.encode(), lock_aad(meta.workspace)))
        return doc

    def _head_doc(self, meta: VersionMeta | None) -> Any:
        """The head's metadata in the workspace record. With encryption on it leaves out the
        lock holder (read it from the version): rotation re-seals a record only for its lock,
        so nothing else in it may be sealed."""
        if meta is None or meta.lock_who is None or self.cipher is None:
            return meta
        return replace(meta, lock_who=None)

    def meta_from(self, name: str, doc: dict[str, Any]) -> VersionMeta:
        who = doc.get("lock_who")
        if who is not None and self.cipher is not None:
            doc = {**doc, "lock_who": self.cipher.open(unb64(who), lock_aad(name)).decode()}
        return VersionMeta(**doc)

    async def _record(self, name: str) -> WorkspaceRecord | None:
        sent = time.monotonic()
        kv = await self._get(self.keys.workspace(name))
        if kv is None:
            self._records.pop(name, None)
            return None
        record = self._decode_record(name, kv)
        self._remember(record, sent)
        return record

    def _remember(self, record: WorkspaceRecord, sent: float) -> None:
        """Keep `record`, current at some instant after `sent`, unless a newer one is known."""
        name = record.ws.name
        known = self._records.get(name)
        if known is not None and known[0].ws.revision >= record.ws.revision:
            if known[0].ws.revision == record.ws.revision and sent > known[1]:
                self._records[name] = (known[0], sent)
        else:
            self._records[name] = (record, sent)
        self._records.move_to_end(name)
        while len(self._records) > _RECORD_CACHE:
            self._records.popitem(last=False)

    def _remember_lost(self, name: str, resp: Any, sent: float) -> None:
        """After a lost compare: keep the record the Txn's failure branch read (one range)."""
        kvs = resp.responses[0].response_range.kvs if resp.responses else []
        if kvs:
            self._remember(self._decode_record(name, kvs[0]), sent)
        else:
            self._records.pop(name, None)

    def _read_on_failure(self, name: str) -> list[Any]:
        """A Txn failure branch that reads the workspace record (see _remember_lost)."""
        return [get_op(self.keys.workspace(name))]

    async def recent_workspace(self, name: str) -> tuple[Workspace | None, float]:
        known = self._records.get(name)
        if known is not None:
            return known[0].ws, known[1]
        sent = time.monotonic()
        record = await self._record(name)
        return (record.ws if record else None), sent

    async def _record_at(self, name: str, expect_revision: int) -> WorkspaceRecord | None:
        """The record at `expect_revision` (cached if seen), or None if it is not current."""
        known = self._records.get(name)
        if known is not None:
            if known[0].ws.revision == expect_revision:
                return known[0]
            if known[0].ws.revision > expect_revision:
                return None  # revisions only grow: a compare on it would fail
        current = await self._record(name)
        if current is None or current.ws.revision != expect_revision:
            return None
        return current

    def _remember_meta(self, meta: VersionMeta) -> None:
        key = (meta.workspace, meta.version)
        self._metas[key] = meta
        self._metas.move_to_end(key)
        while len(self._metas) > _META_CACHE:
            self._metas.popitem(last=False)

    # -- audit ---------------------------------------------------------------------------

    def _next_audit_id(self, after: int = 0) -> int:
        """A new id above `after`, above the prefix's floor and above every id this instance
        gave. Normally this millisecond in the high bits and this instance's offset in the
        low ones, counting up from it for more events in the same millisecond. A floor at or
        above that (another node's clock is ahead, imported ids are) gives the millisecond
        after the floor's, with this instance's offset: nodes that start from one floor do
        not make the same ids."""
        floor = max(after, self._audit_floor)
        ms = max(int(self._clock() * 1000) - AUDIT_EPOCH_MS, 0)
        candidate = (ms << AUDIT_LOW_BITS) + self._audit_slot
        if candidate <= floor:
            candidate = (((floor >> AUDIT_LOW_BITS) + 1) << AUDIT_LOW_BITS) + self._audit_slot
        self._last_audit = max(candidate, self._last_audit + 1)
        return self._last_audit

    def _audit_key(self, event_id: int) -> bytes:
        return self.keys.key(AUDIT, inv(event_id))

    def _event_keys(self, event: AuditEvent) -> list[bytes]:
        """Where an event with an id is kept: its key, and index copies (events are small)
        so that a listing filtered by workspace or key reads only its own events."""
        assert event.id is not None
        keys = [self._audit_key(event.id)]
        if event.workspace is not None:
            keys.append(self.keys.key(AUDIT_BY_WORKSPACE, event.workspace, "\x00", inv(event.id)))
        if event.key_name is not None:
            keys.append(self.keys.key(AUDIT_BY_KEY, event.key_name, "\x00", inv(event.id)))
        return keys

    def _audit_ops(self, event: AuditEvent) -> list[Any]:
        value = orjson.dumps(event)
        return [put_op(key, value) for key in self._event_keys(event)]

    def _count_op(self, key: bytes) -> Any:
        from blixard.store.etcd.wire import RangeRequest, RequestOp

        return RequestOp(request_range=RangeRequest(key=key, count_only=True))

    async def _audited(
        self,
        events: Sequence[AuditEvent],
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        *,
        put_newest: Callable[[int], Any] | None = None,
        after: int = 0,
        batch: bool = True,
    ) -> tuple[Any, list[AuditEvent]]:
        """One Txn with `events` given new ids (above `after`) and put only if no event holds
        those ids yet; returns its answer and the events as written. `put_newest(id)`: an op
        that records the newest id (the workspace record's).

        Each event key is compared `create_revision == 0` and counted in the failure branch
        (after the caller's `failure` ops, whose places do not move). A Txn that found one
        of them taken (another node or store made the same id) is sent again with new ids,
        so the caller's own compares are decided again; any other lost compare is the
        caller's answer."""
        while True:
            ids = [self._next_audit_id(after) for _ in events]
            written = [replace(e, id=i) for e, i in zip(events, ids, strict=True)]
            keys = [self._audit_key(i) for i in ids]
            resp = await self._txn(
                [*compare, *(self._kv.txn_compare_create_revision(k, 0) for k in keys)],
                [
                    *success,
                    *([put_newest(ids[-1] if ids else after)] if put_newest else []),
                    *(op for e in written for op in self._audit_ops(e)),
                ],
                [*failure, *(self._count_op(k) for k in keys)],
                batch=batch,
            )
            checks = resp.responses[len(resp.responses) - len(keys) :] if keys else []
            if resp.succeeded or not any(c.response_range.count for c in checks):
                return resp, written
            # Another sequence runs where this one does: leave it, at a new offset.
            self._audit_slot = secrets.randbelow(1 << AUDIT_LOW_BITS)
            after = max(after, ids[-1])

    async def _upgrade_audit_ids(self, floor: int = 0) -> None:
        """Give events written with the earlier ids (`(µs << 8) | slot`, at least
        OLD_AUDIT_IDS) new ids below it, once per prefix, then make this instance's ids go
        above every id there (the marker's `floor`; `floor` here: the newest id an import
        wrote below OLD_AUDIT_IDS).

        Old events go newest first, as many per Txn as fit in its ops: the Txn deletes their
        keys (event and index copies) and puts them under their new id, `min(the highest id
        of their millisecond, the previous one's new id - 1)`, so the order is kept and they
        sort before new events. The same Txn rewrites `meta/auditids` (`next`: the last id
        given, `floor`, `done` after the last event) compared on its mod_revision, so nodes
        opening at once take turns and an interrupted run resumes where it stopped. Each new
        key is compared absent; an id found taken is skipped."""
        key = self.keys.key(META_AUDIT_IDS)
        old_end = self._audit_key(OLD_AUDIT_IDS - 1)  # keys before it hold old ids
        fresh = {"next": OLD_AUDIT_IDS, "floor": floor}
        found = await self._get(key)
        doc = orjson.loads(found.value) if found is not None else fresh
        revision = int(found.mod_revision) if found is not None else 0
        taken: set[int] = set()
        while not doc.get("done"):
            page = await self._range(self.keys.key(AUDIT), old_end, limit=_REKEY_PAGE)
            next_id, top = doc["next"], doc["floor"]
            ops: list[Any] = []
            ids: list[int] = []
            for old in page.kvs:
                event = AuditEvent(**orjson.loads(old.value))
                assert event.id is not None
                ms = max((event.id >> 8) // 1000 - AUDIT_EPOCH_MS, 0)
                new_id = min(((ms + 1) << AUDIT_LOW_BITS) - 1, next_id - 1)
                while new_id in taken:
                    new_id -= 1
                moved = [self._kv.txn_op_delete(k) for k in self._event_keys(event)]
                moved += self._audit_ops(replace(event, id=new_id))
                if len(ops) + len(moved) >= MAX_TXN_OPS:  # + the marker's put
                    break
                next_id, top = new_id, max(top, new_id)
                ops += moved
                ids.append(new_id)
            marker = {
                "next": next_id,
                "floor": top,
                "done": not page.more and len(ids) == len(page.kvs),
            }
            resp = await self._txn(
                [
                    self._cmp_mod(key, revision)
                    if revision
                    else self._kv.txn_compare_create_revision(key, 0),
                    *(self._kv.txn_compare_create_revision(self._audit_key(i), 0) for i in ids),
                ],
                [put_op(key, orjson.dumps(marker)), *ops],
                [self._count_op(self._audit_key(i)) for i in ids],
            )
            if resp.succeeded:
                doc, revision = marker, int(resp.header.revision)
                continue
            # Another node moved the marker, or an id is taken.
            answers = zip(ids, resp.responses, strict=True)
            taken |= {i for i, r in answers if r.response_range.count}
            found = await self._get(key)
            doc = orjson.loads(found.value) if found is not None else fresh
            revision = int(found.mod_revision) if found is not None else 0
        self._audit_floor = max(self._audit_floor, doc["floor"])

    # -- reads ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Quorum, leader and every member's state, answered within HEALTH_DEADLINE seconds.

        Quorum is a linearizable read answering in time; each member is probed on its own
        client URL (maintenance status: does it answer, and does it know a leader). Without
        quorum reads fail rather than serve stale data, so `stale_reads` is false only when
        there is quorum. Served unauthenticated: no key prefix, no data.
        """
        report: dict[str, Any] = {"engine": self.engine}
        if self._client is None:
            report.update(
                is_healthy=False,
                quorum=False,
                stale_reads=True,
                node_count=0,
                has_leader=False,
                members=[],
                error="The store is not open.",
            )
            return report
        try:
            return await asyncio.wait_for(self._health(report), HEALTH_DEADLINE + 0.5)
        except TimeoutError:
            report.update(
                is_healthy=False,
                quorum=False,
                stale_reads=True,
                has_leader=False,
                error=f"etcd health did not answer within {HEALTH_DEADLINE:g} s",
            )
            report.setdefault("node_count", 0)
            report.setdefault("members", [])
            return report

    async def _health(self, report: dict[str, Any]) -> dict[str, Any]:
        deadline = HEALTH_DEADLINE

        async def quorum() -> str | None:
            try:
                await self._call(self._kv.get(self.keys.key(META_SCHEMA), timeout=deadline))
            except StorageUnavailable as exc:
                return exc.message
            return None

        async def member_list() -> Any:
            try:
                # Served from the answering member's copy: works without quorum too.
                return await self._call(
                    self._client.cluster.member_list(linearizable=False, timeout=deadline)
                )
            except StorageUnavailable:
                return None

        no_quorum, listed = await asyncio.gather(quorum(), member_list())
        members: list[dict[str, Any]] = []
        if listed is not None:
            probes = await asyncio.gather(
                *(self._probe_member(list(m.clientURLs), deadline) for m in listed.members)
            )
            for m, status in zip(listed.members, probes, strict=True):
                members.append(
                    {
                        "id": f"{m.ID:x}",
                        "name": m.name,
                        "client_urls": list(m.clientURLs),
                        "healthy": status is not None and bool(status.leader),
                        "is_learner": bool(m.isLearner),
                        "_status": status,
                    }
                )
        answered = [m["_status"] for m in members if m["_status"] is not None]
        # The leader as a majority of the members see it.
        votes: dict[int, int] = {}
        for status in answered:
            if status.leader:
                votes[int(status.leader)] = votes.get(int(status.leader), 0) + 1
        leader_id = next((lid for lid, n in votes.items() if n > len(members) // 2), 0)
        leader = next((m for m in members if m["id"] == f"{leader_id:x}"), None)
        for m in members:
            m["is_leader"] = leader is not None and m is leader
        quorum_ok = no_quorum is None
        report.update(
            is_healthy=quorum_ok,
            quorum=quorum_ok,
            stale_reads=not quorum_ok,
            node_count=len(members),
            healthy_members=sum(1 for m in members if m["healthy"]),
            has_leader=leader is not None,
            leader={"id": leader["id"], "name": leader["name"]} if leader else None,
            raft_term=max((int(s.raftTerm) for s in answered), default=0),
            members=[{k: v for k, v in m.items() if k != "_status"} for m in members],
        )
        if answered:
            newest = max(answered, key=lambda s: int(s.raftTerm))
            report.update(db_size=int(newest.dbSize), version=newest.version)
        if not quorum_ok:
            report["error"] = (
                "no quorum: writes answer 503 and reads fail rather than serve stale data"
                f" ({no_quorum})"
            )
        # A member's status lists the cluster's alarms; NOSPACE refuses every write.
        if any("NOSPACE" in str(error) for status in answered for error in status.errors):
            report.update(
                is_healthy=False,
                writes_failing=True,
                error="writes are failing: etcd raised its NOSPACE alarm (its space quota, "
                "--quota-backend-bytes, is used up); free space (compact, defrag), then "
                "etcdctl alarm disarm",
            )
        return report

    async def _probe_member(self, client_urls: list[str], deadline: float) -> Any | None:
        """One member's maintenance status on its own client URL (over TLS with this store's
        certificates when the URL is https), on connections of its own (a member that is
        back answers at once), or None if it does not answer within `deadline`. Status needs
        no auth token."""
        import grpc
        from etcd3aio.errors import EtcdError
        from etcd3aio.maintenance import MaintenanceService

        conn = self._conn
        if conn is None:
            return None
        for url in client_urls:
            parsed = urlparse(url if "://" in url else f"http://{url}")
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                continue
            channel = conn.channel(parsed.netloc, tls=parsed.scheme == "https", fresh=True)
            try:
                service = MaintenanceService(channel, max_attempts=1)
                return await service.status(timeout=deadline)
            except (TimeoutError, EtcdError, grpc.aio.AioRpcError):
                continue
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return None

    async def get_workspace(self, name: str) -> Workspace | None:
        record = await self._record(name)
        return record.ws if record else None

    async def list_workspaces(
        self, *, after: str | None = None, limit: int = 1000, include_deleted: bool = False
    ) -> list[Workspace]:
        start = (
            self.keys.workspace(after) + b"\x00" if after is not None else self.keys.key(WORKSPACES)
        )
        end = prefix_end(self.keys.key(WORKSPACES))
        found: list[Workspace] = []
        async for kv in self._scan(start, end, page=max(1, min(limit, 500))):
            name = bytes(kv.key)[len(self.keys.key(WORKSPACES)) :].decode()
            record = self._decode_record(name, kv)
            if include_deleted or not record.ws.deleted:
                found.append(record.ws)
                if len(found) >= limit:
                    break
        return found

    async def stats(self) -> dict[str, int]:
        workspaces = versions = stored = 0
        prefix = self.keys.key(WORKSPACES)
        async for kv in self._scan(prefix, prefix_end(prefix)):
            doc = orjson.loads(kv.value)
            workspaces += 1
            versions += doc["version_count"]
            stored += doc["stored_bytes"]
        return {"workspaces": workspaces, "versions": versions, "stored_bytes": stored}

    async def list_versions(
        self, name: str, *, before: int | None = None, limit: int = 50
    ) -> list[VersionMeta]:
        prefix = self.keys.versions(name)
        start = self.keys.version(name, before - 1) if before is not None else prefix
        if before is not None and before <= 1:
            return []
        resp = await self._range(start, prefix_end(prefix), limit=limit)
        return [self.meta_from(name, orjson.loads(kv.value)["meta"]) for kv in resp.kvs]

    async def read_head(self, name: str) -> tuple[VersionMeta, bytes] | None:
        record = await self._record(name)
        if record is None or record.ws.head is None:
            return None
        return await self.read_version(name, record.ws.head.version)

    async def read_version(self, name: str, version: int) -> tuple[VersionMeta, bytes] | None:
        if version < 1:
            return None
        cached = self._bodies.get(name, version)
        known = self._metas.get((name, version))
        if cached is not None and known is not None:
            return known, cached  # versions are immutable once published
        found = await self._read_encoded(name, version)
        if found is None:
            return None
        meta, encoded = found
        self._remember_meta(meta)
        if cached is not None:
            return meta, cached
        base_body = None
        if encoded.base_version is not None:
            base_body = await self._body(name, encoded.base_version)
        if len(encoded.blob) > _INLINE_ENCODE_BYTES:
            body = await asyncio.to_thread(
                functools.partial(
                    self.codec.decode_version, name, version, encoded, base_body, sha256=meta.sha256
                )
            )
        else:
            body = self.codec.decode_version(name, version, encoded, base_body, sha256=meta.sha256)
        self._bodies.put(name, version, body)
        return meta, body

    async def _body(self, name: str, version: int) -> bytes:
        cached = self._bodies.get(name, version)
        if cached is not None:
            return cached
        found = await self.read_version(name, version)
        if found is None:
            raise StorageUnavailable(f"version {version} of {name} is missing (a delta base)")
        return found[1]

    async def _read_encoded(self, name: str, version: int) -> tuple[VersionMeta, Encoded] | None:
        kv = await self._get(self.keys.version(name, version))
        if kv is None:
            return None
        doc = orjson.loads(kv.value)
        meta = self.meta_from(name, doc["meta"])
        blob = await self.keys.read_value(doc, self._read_chunks)
        return meta, Encoded(doc["encoding"], doc["base_version"], blob)

    async def _read_chunks(self, prefix: bytes, count: int, revision: int = 0) -> bytes:
        parts: list[bytes] = []
        async for kv in self._scan(
            prefix, prefix_end(prefix), page=_CHUNKS_PER_READ, revision=revision
        ):
            parts.append(bytes(kv.value))
        if len(parts) != count:
            raise StorageUnavailable(
                f"expected {count} chunks under {prefix!r}, found {len(parts)}"
            )
        return b"".join(parts)

    # -- large values --------------------------------------------------------------------

    async def _upload_chunks(self, prefix: bytes, blob: bytes) -> tuple[int, list[Any]]:
        """Write `blob` as leased chunks under `prefix`; returns the lease and the ops that
        publish them (re-put without the lease, values untouched)."""
        from blixard.store.etcd.wire import PutRequest, RequestOp

        lease_api = self._client.lease
        grant = await self._call(lease_api.grant(_UPLOAD_LEASE_TTL, timeout=self.timeout))
        lease_id = int(grant.ID)
        keys = chunk_keys(prefix, len(blob))
        semaphore = asyncio.Semaphore(4)

        async def put(i: int, key: bytes) -> None:
            async with semaphore:
                chunk = blob[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
                await self._call(
                    self._kv.put(
                        key, chunk, lease=lease_id, timeout=max(self.timeout, _CHUNK_PUT_TIMEOUT)
                    )
                )

        try:
            await asyncio.gather(*(put(i, key) for i, key in enumerate(keys)))
        except BaseException:
            await self._revoke(lease_id)
            raise
        publish = [
            RequestOp(request_put=PutRequest(key=key, ignore_value=True, lease=0)) for key in keys
        ]
        return lease_id, publish

    async def _revoke(self, lease_id: int) -> None:
        with contextlib.suppress(Exception):
            await self._client.lease.revoke(lease_id, timeout=self.timeout)

    @staticmethod
    def _nest(ops: list[Any]) -> list[Any]:
        """Ops for one Txn level: beyond _OPS_PER_LEVEL, grouped into nested Txns."""
        from blixard.store.etcd.wire import RequestOp, TxnRequest

        if len(ops) <= _OPS_PER_LEVEL:
            return ops
        return [
            RequestOp(request_txn=TxnRequest(compare=[], success=ops[i : i + _OPS_PER_LEVEL]))
            for i in range(0, len(ops), _OPS_PER_LEVEL)
        ]

    # -- writes --------------------------------------------------------------------------

    async def _cas_record(
        self,
        name: str,
        expect_revision: int | None,
        updated: WorkspaceRecord,
        audit: AuditEvent | None,
        extra: Sequence[Any] = (),
        *,
        batch: bool = True,
    ) -> Workspace | None:
        """Put `updated` (+ `extra` ops and `audit`, which becomes the record's newest event)
        compared on `expect_revision` (None: the record must not exist); None if lost."""

        def put_record(newest: int) -> Any:
            value = self._encode_record(
                updated.ws,
                updated.base,
                updated.version_count,
                updated.stored_bytes,
                updated.body_bytes,
                newest,
            )
            return put_op(self.keys.workspace(name), value)

        sent = time.monotonic()
        resp, written = await self._audited(
            [audit] if audit else [],
            [self._cmp_ws(name, expect_revision)],
            extra,
            self._read_on_failure(name),
            put_newest=put_record,
            after=updated.last_audit,
            batch=batch,
        )
        if not resp.succeeded:
            self._remember_lost(name, resp, sent)
            return None
        ws = replace(updated.ws, revision=int(resp.header.revision))
        newest = written[-1].id if written else None
        self._remember(replace(updated, ws=ws, last_audit=newest or updated.last_audit), sent)
        return ws

    async def _write_record(
        self,
        name: str,
        expect_revision: int,
        build: Callable[[WorkspaceRecord], WorkspaceRecord],
        audit: AuditEvent | None,
    ) -> Workspace | None:
        """Read the record, build the new one, and CAS it (with `audit`) on its revision."""
        current = await self._record_at(name, expect_revision)
        if current is None:
            return None
        return await self._cas_record(name, expect_revision, build(current), audit)

    async def put_lock(
        self,
        name: str,
        lock: Lock | None,
        *,
        expect_revision: int | None,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        if expect_revision is None:
            created = WorkspaceRecord(Workspace(name, 0, now, now, lock=lock), None, 0, 0)
            return await self._cas_record(name, None, created, audit)

        def build(current: WorkspaceRecord) -> WorkspaceRecord:
            return replace(current, ws=replace(current.ws, lock=lock, updated_at=now))

        return await self._write_record(name, expect_revision, build, audit)

    async def set_deleted(
        self,
        name: str,
        deleted_at: float | None,
        *,
        expect_revision: int,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        current = await self._record_at(name, expect_revision)
        if current is None:
            return None
        ws = replace(current.ws, deleted_at=deleted_at, updated_at=now)
        # The index's head marker says whether the workspace is searchable (every node).
        head = current.ws.head
        extra = [self._index_head_op(name, head.version, deleted_at is not None)] if head else []
        updated = await self._cas_record(
            name, expect_revision, replace(current, ws=ws), audit, extra
        )
        if updated is not None:
            self.resource_index.set_hidden(name, updated.deleted)
        return updated

    async def _delta_base(self, record: WorkspaceRecord | None, body_size: int) -> DeltaBase | None:
        if record is None or record.base is None:
            return None
        info = record.base
        if self.codec.wants_full(body_size, info["size"], info["deltas_since"]):
            return None
        body = await self._body(record.ws.name, info["version"])
        return DeltaBase(info["version"], body, info["stored_size"], info["deltas_since"])

    async def append_version(
        self,
        name: str,
        body: Body,
        version: NewVersion,
        *,
        expect_revision: int | None,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        now = version.created_at
        if expect_revision is None:
            record = None
        else:
            record = await self._record_at(name, expect_revision)
            if record is None:
                return None
        base = await self._delta_base(record, len(body))
        if len(body) > _INLINE_ENCODE_BYTES:
            encoded = await asyncio.to_thread(self.codec.encode, name, body, base)
        else:
            encoded = self.codec.encode(name, body, base)
        current = record.ws if record else Workspace(name, 0, now, now)
        number = current.head.version + 1 if current.head else 1
        meta = version.numbered(name, number)
        reusable = self.resource_index.reusable(name)
        if len(body) > _INLINE_ENCODE_BYTES:
            packed, index, resources = await asyncio.to_thread(
                resource_index.build_doc, number, body, reusable, version.meta.resources
            )
        else:
            packed, index, resources = resource_index.build_doc(
                number, body, reusable, version.meta.resources
            )
        upload = secrets.token_hex(8)
        ver_doc: dict[str, Any] = {
            "meta": self.meta_doc(meta),
            "encoding": encoded.encoding,
            "base_version": encoded.base_version,
            "stored": len(encoded.blob),
        }
        lease_id = 0
        publish: list[Any] = []
        if len(encoded.blob) <= INLINE_BYTES:
            ver_doc.update(inline(encoded.blob))
        else:
            chunks_at = self.keys.blob(name, number, upload)
            lease_id, publish = await self._upload_chunks(chunks_at, encoded.blob)
            ver_doc.update(self.keys.chunked(chunks_at, len(publish)))
        # The delta base the next version will use.
        if encoded.encoding == "zstd":
            next_base: dict[str, int] | None = {
                "version": number,
                "size": len(body),
                "stored_size": len(encoded.blob),
                "deltas_since": 0,
            }
        else:
            assert record is not None and record.base is not None
            next_base = dict(record.base)
            if encoded.base_version == next_base["version"]:
                next_base["deltas_since"] += 1
        ws = replace(current, head=meta, updated_at=now)
        updated = WorkspaceRecord(
            ws,
            next_base,
            (record.version_count if record else 0) + 1,
            (record.stored_bytes if record else 0) + len(encoded.blob),
            (record.body_bytes if record else 0) + len(body),
            record.last_audit if record else 0,
        )
        ops = [
            put_op(self.keys.version(name, number), orjson.dumps(ver_doc)),
            *self._nest(publish),
        ]
        index_lease, index_ops = await self._index_doc_ops(name, number, packed)
        ops += index_ops
        lease_id = lease_id or index_lease
        stored = None
        self._writing[name] = number
        try:
            stored = await self._cas_record(
                name,
                expect_revision,
                updated,
                replace(audit, version=number) if audit else None,
                ops,
                # Publishing re-puts leased chunks with ignore_value.
                batch=not publish and not index_lease,
            )
        finally:
            if self._writing.get(name) == number:
                del self._writing[name]
            held = self._held_docs.pop(name, None)
            if stored is None and held is not None:
                # Another writer's version after all (or ours, if the outcome is unknown).
                await self._apply_document(*held)
            for lease in {lease_id, index_lease} - {0}:
                # Published chunks no longer hold the lease; unpublished ones go with it.
                await self._revoke(lease)
        if stored is None:
            return None
        self._bodies.put(name, number, body)
        self._remember_meta(meta)
        self.resource_index.put(name, packed, index, resources, len(body))
        self.resource_index.set_hidden(name, False)
        return stored

    # -- keys and audit ------------------------------------------------------------------

    @staticmethod
    def _key_doc(key: ApiKey) -> bytes:
        doc = asdict(key)
        doc["role"] = key.role.name
        doc["scopes"] = list(key.scopes)
        doc.pop("last_used_at")
        return orjson.dumps(doc)

    @staticmethod
    def _used_value(at: float | None) -> bytes:
        """Fixed-width microseconds first (byte order is time order), then the exact float."""
        if at is None:
            return b"0" * 20
        return f"{round(at * 1_000_000):020d}:{at!r}".encode()

    def _key_from(self, value: bytes, used: bytes | None) -> ApiKey:
        doc = orjson.loads(value)
        last = float(used.split(b":", 1)[1]) if used is not None and b":" in used else None
        return ApiKey(
            id=doc["id"],
            name=doc["name"],
            role=Role[doc["role"]],
            scopes=tuple(doc["scopes"]),
            secret_hash=doc["secret_hash"],
            created_at=doc["created_at"],
            created_by=doc["created_by"],
            last_used_at=last,
            revoked_at=doc["revoked_at"],
        )

    def _key_ops(self, key: ApiKey) -> list[Any]:
        ops = [
            put_op(self.keys.key(KEYS_BY_ID, key.id), self._key_doc(key)),
            put_op(self.keys.key(KEYS_USED, key.id), self._used_value(key.last_used_at)),
        ]
        if key.revoked_at is None:
            ops.append(put_op(self.keys.key(KEYS_BY_NAME, key.name), key.id.encode()))
        return ops

    async def create_key(self, key: ApiKey, *, audit: AuditEvent | None = None) -> bool:
        compare = [self._kv.txn_compare_create_revision(self.keys.key(KEYS_BY_ID, key.id), 0)]
        if key.revoked_at is None:
            compare.append(
                self._kv.txn_compare_create_revision(self.keys.key(KEYS_BY_NAME, key.name), 0)
            )
        resp, _ = await self._audited([audit] if audit else [], compare, self._key_ops(key))
        return bool(resp.succeeded)

    async def list_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        used: dict[str, bytes] = {}
        prefix = self.keys.key(KEYS_USED)
        async for kv in self._scan(prefix, prefix_end(prefix)):
            used[bytes(kv.key)[len(prefix) :].decode()] = bytes(kv.value)
        keys: list[ApiKey] = []
        prefix = self.keys.key(KEYS_BY_ID)
        async for kv in self._scan(prefix, prefix_end(prefix)):
            key_id = bytes(kv.key)[len(prefix) :].decode()
            key = self._key_from(bytes(kv.value), used.get(key_id))
            if include_revoked or key.revoked_at is None:
                keys.append(key)
        keys.sort(key=lambda k: (k.name, k.created_at))
        return keys

    async def revoke_key(
        self, name: str, at: float, *, audit: AuditEvent | None = None
    ) -> ApiKey | None:
        name_key = self.keys.key(KEYS_BY_NAME, name)
        while True:
            pointer = await self._get(name_key)
            if pointer is None:
                return None
            key_id = bytes(pointer.value).decode()
            kv = await self._get(self.keys.key(KEYS_BY_ID, key_id))
            used = await self._get(self.keys.key(KEYS_USED, key_id))
            if kv is None:
                return None
            key = self._key_from(bytes(kv.value), bytes(used.value) if used else None)
            revoked = replace(key, revoked_at=at)
            ops = [
                put_op(self.keys.key(KEYS_BY_ID, key_id), self._key_doc(revoked)),
                self._kv.txn_op_delete(name_key),
            ]
            compare = [self._cmp_mod(name_key, int(pointer.mod_revision))]
            resp, _ = await self._audited([audit] if audit else [], compare, ops)
            if resp.succeeded:
                return revoked

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        from blixard.store.etcd.wire import Compare, RequestOp, TxnRequest

        ops = []
        for key_id, at in last_used.items():
            key = self.keys.key(KEYS_USED, key_id)
            value = self._used_value(at)
            ops.append(
                RequestOp(
                    request_txn=TxnRequest(
                        compare=[self._kv.txn_compare_value(key, value, result=Compare.LESS)],
                        success=[put_op(key, value)],
                    )
                )
            )
        for i in range(0, len(ops), _OPS_PER_LEVEL):
            await self._txn([], ops[i : i + _OPS_PER_LEVEL], [], batch=True)

    async def append_audit(self, events: list[AuditEvent]) -> None:
        # An event and its index copies always go in the same Txn (at most 3 ops each).
        per_txn = _OPS_PER_LEVEL // 3
        for i in range(0, len(events), per_txn):
            await self._audited(events[i : i + per_txn], [], [])

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
        if workspace is not None:
            prefix = self.keys.key(AUDIT_BY_WORKSPACE, workspace, "\x00")
        elif key_name is not None:
            prefix = self.keys.key(AUDIT_BY_KEY, key_name, "\x00")
        else:
            prefix = self.keys.key(AUDIT)
        if before_id is not None and before_id <= 0:
            return []
        start = prefix + inv(before_id - 1).encode() if before_id is not None else prefix
        found: list[AuditEvent] = []
        async for kv in self._scan(start, prefix_end(prefix), page=max(limit, 100)):
            event = AuditEvent(**orjson.loads(kv.value))
            if (
                (workspace is not None and event.workspace != workspace)
                or (key_name is not None and event.key_name != key_name)
                or (action is not None and event.action != action)
                or (since is not None and event.at < since)
                or (until is not None and event.at >= until)
            ):
                continue
            found.append(event)
            if len(found) >= limit:
                break
        return found

    # -- runs ----------------------------------------------------------------------------

    def _seal_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.seal(payload, run_aad(run_id, kind))

    def _open_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return payload if self.cipher is None else self.cipher.open(payload, run_aad(run_id, kind))

    @staticmethod
    def _run_entry(run: Run) -> bytes | None:
        """The `runopen/<id>` value of an open run; None once it is finished."""
        if run.status in FINISHED:
            return None
        return orjson.dumps({"workspace": run.workspace, "status": run.status.value})

    def _run_ws_key(self, run: Run) -> bytes:
        """The run's `runs-ws/<workspace>\\0<id>` key (empty value: runs never move)."""
        return self.keys.key(RUNS_BY_WORKSPACE, run.workspace, "\x00", run.id)

    def _run_ops(self, run: Run, *, update: bool = False) -> list[Any]:
        """The document, its revision and its `runopen/` entry, for one Txn, plus its
        `runs-ws/` key when created. On `update` the run may have been open, so a finished
        run's entry is deleted."""
        document = self._seal_run(run.id, "document", orjson.dumps(run.to_document()))
        ops = [
            put_op(self.keys.key(RUNS, run.id), document),
            put_op(self.keys.key(RUN_REVISIONS, run.id), str(run.revision).encode()),
        ]
        if not update:
            ops.append(put_op(self._run_ws_key(run), b""))
        entry = self._run_entry(run)
        if entry is not None:
            ops.append(put_op(self.keys.key(RUNS_OPEN, run.id), entry))
        elif update:
            ops.append(self._kv.txn_op_delete(self.keys.key(RUNS_OPEN, run.id)))
        return ops

    async def _index_runs(self) -> None:
        """Once per prefix and index (markers `meta/runindex` for `runopen/`,
        `meta/runindex-ws` for `runs-ws/`): index the runs stored before the index existed,
        in one scan of the runs. Idempotent. A `runopen/` entry that no longer matches its
        run is fixed by a Txn compared on the run's revision (a run updated meanwhile got
        its entry from its own Txn); a missing `runs-ws/` key is put as is (a run's
        workspace never changes, and runs are never deleted)."""
        open_marker, ws_marker = self.keys.key(META_RUN_INDEX), self.keys.key(META_RUN_INDEX_WS)
        open_done, ws_done = await asyncio.gather(self._get(open_marker), self._get(ws_marker))
        if open_done is not None and ws_done is not None:
            return
        index, ws_index, docs = (
            self.keys.key(RUNS_OPEN),
            self.keys.key(RUNS_BY_WORKSPACE),
            self.keys.key(RUNS),
        )
        entries: dict[str, bytes] = {}
        if open_done is None:
            async for kv in self._scan(index, prefix_end(index)):
                entries[bytes(kv.key)[len(index) :].decode()] = bytes(kv.value)
        ws_keys: set[bytes] = set()
        if ws_done is None:
            ws_keys = {bytes(kv.key) async for kv in self._scan(ws_index, prefix_end(ws_index))}
        missing: list[bytes] = []
        async for kv in self._scan(docs, prefix_end(docs)):
            run = self._run_from(bytes(kv.key)[len(docs) :].decode(), bytes(kv.value), None)
            if ws_done is None and self._run_ws_key(run) not in ws_keys:
                missing.append(self._run_ws_key(run))
            entry = self._run_entry(run)
            if open_done is not None or entries.get(run.id) == entry:
                continue
            key = self.keys.key(RUNS_OPEN, run.id)
            await self._txn(
                [
                    self._kv.txn_compare_value(
                        self.keys.key(RUN_REVISIONS, run.id), str(run.revision)
                    )
                ],
                [self._kv.txn_op_delete(key) if entry is None else put_op(key, entry)],
                [],
            )
        for i in range(0, len(missing), _OPS_PER_LEVEL):
            batch = missing[i : i + _OPS_PER_LEVEL]
            await self._txn([], [put_op(key, b"") for key in batch], [])
        markers = [(open_marker, open_done, "runopen"), (ws_marker, ws_done, "runs-ws")]
        await self._txn(
            [],
            [
                put_op(marker, orjson.dumps({name: 1}))
                for marker, done, name in markers
                if done is None
            ],
            [],
        )

    def _run_from(self, run_id: str, document: bytes, revision: bytes | None) -> Run:
        run = Run.from_document(orjson.loads(self._open_run(run_id, "document", document)))
        return run if revision is None else replace(run, revision=int(revision))

    async def create_run(self, run: Run) -> Run:
        stored = replace(run, revision=1)
        resp = await self._txn(
            [self._kv.txn_compare_create_revision(self.keys.key(RUN_REVISIONS, run.id), 0)],
            self._run_ops(stored),
            [],
            batch=True,
        )
        if not resp.succeeded:
            raise StorageUnavailable(f"run {run.id} already exists")
        return stored

    async def update_run(
        self, run: Run, *, expect_revision: int, audit: AuditEvent | None = None
    ) -> Run | None:
        stored = replace(run, revision=expect_revision + 1)
        compare = [
            self._kv.txn_compare_value(self.keys.key(RUN_REVISIONS, run.id), str(expect_revision))
        ]
        ops = self._run_ops(stored, update=True)
        resp, _ = await self._audited([audit] if audit else [], compare, ops)
        return stored if resp.succeeded else None

    async def get_run(self, run_id: str) -> Run | None:
        resp = await self._txn(
            [],
            [
                get_op(self.keys.key(RUNS, run_id)),
                get_op(self.keys.key(RUN_REVISIONS, run_id)),
            ],
            [],
            batch=True,
        )
        doc, rev = (r.response_range.kvs for r in resp.responses)
        if not doc or not rev:
            return None
        return self._run_from(run_id, bytes(doc[0].value), bytes(rev[0].value))

    async def list_runs(
        self,
        *,
        workspace: str | None = None,
        statuses: tuple[str, ...] = (),
        before: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        from etcd3aio import SortOrder

        if statuses and _OPEN_STATUSES.issuperset(statuses):
            return await self._list_open_runs(workspace, statuses, before, limit)
        if workspace is not None:
            return await self._list_workspace_runs(workspace, statuses, before, limit)
        prefix = self.keys.key(RUNS)
        end = self.keys.key(RUNS, before) if before is not None else prefix_end(prefix)
        runs: list[Run] = []
        # Newest first: pages of a descending range whose end moves down. (The document
        # carries the revision it was written with, in the same Txn as runrev/<id>.)
        while len(runs) < limit:
            resp = await self._call(
                self._kv.get(
                    prefix,
                    end,
                    limit=200,
                    sort_order=SortOrder.DESCEND,
                    timeout=self.timeout,
                )
            )
            for kv in resp.kvs:
                run_id = bytes(kv.key)[len(prefix) :].decode()
                run = self._run_from(run_id, bytes(kv.value), None)
                if statuses and run.status.value not in statuses:
                    continue
                runs.append(run)
                if len(runs) >= limit:
                    break
            if not resp.more or not resp.kvs:
                break
            end = bytes(resp.kvs[-1].key)
        return runs

    async def _list_workspace_runs(
        self, workspace: str, statuses: tuple[str, ...], before: str | None, limit: int
    ) -> list[Run]:
        """One workspace's runs through `runs-ws/<workspace>\\0`: pages of a descending range
        over its keys (not the runs of every workspace), each followed by one Txn of point
        ranges for the documents, all at the first range's revision (one view). A status
        filter is applied to the documents, paging on until `limit` runs match."""
        from etcd3aio import SortOrder

        prefix = self.keys.key(RUNS_BY_WORKSPACE, workspace, "\x00")
        end = prefix + before.encode() if before is not None else prefix_end(prefix)
        page = min(limit, _OPS_PER_LEVEL) if not statuses else _OPS_PER_LEVEL
        runs: list[Run] = []
        revision = 0
        while len(runs) < limit:
            resp = await self._call(
                self._kv.get(
                    prefix,
                    end,
                    revision=revision,
                    limit=page,
                    sort_order=SortOrder.DESCEND,
                    timeout=self.timeout,
                )
            )
            revision = revision or int(resp.header.revision)
            ids = [bytes(kv.key)[len(prefix) :].decode() for kv in resp.kvs]
            if ids:
                found = await self._txn(
                    [],
                    [self._kv.txn_op_get(self.keys.key(RUNS, r), revision=revision) for r in ids],
                    [],
                )
                for run_id, docs in zip(ids, found.responses, strict=True):
                    for kv in docs.response_range.kvs:
                        run = self._run_from(run_id, bytes(kv.value), None)
                        if not statuses or run.status.value in statuses:
                            runs.append(run)
            if not resp.more or not resp.kvs:
                break
            end = bytes(resp.kvs[-1].key)
        return runs[: max(limit, 0)]

    async def _list_open_runs(
        self, workspace: str | None, statuses: tuple[str, ...], before: str | None, limit: int
    ) -> list[Run]:
        """Open runs through `runopen/`: one range over the open set (runs waiting or
        executing: small however long the history), then the documents wanted, read at
        that range's revision so the listing is one view, newest first."""
        prefix = self.keys.key(RUNS_OPEN)
        end = self.keys.key(RUNS_OPEN, before) if before is not None else prefix_end(prefix)
        index = await self._range(prefix, end)
        wanted = []
        for kv in reversed(index.kvs):
            entry = orjson.loads(kv.value)
            if entry["status"] in statuses and (
                workspace is None or entry["workspace"] == workspace
            ):
                wanted.append(bytes(kv.key)[len(prefix) :].decode())
        wanted = wanted[: max(limit, 0)]
        revision = int(index.header.revision)
        runs: list[Run] = []
        for i in range(0, len(wanted), _OPS_PER_LEVEL):
            batch = wanted[i : i + _OPS_PER_LEVEL]
            resp = await self._txn(
                [],
                [self._kv.txn_op_get(self.keys.key(RUNS, r), revision=revision) for r in batch],
                [],
            )
            for run_id, found in zip(batch, resp.responses, strict=True):
                for kv in found.response_range.kvs:
                    run = self._run_from(run_id, bytes(kv.value), None)
                    # The document decides: a node of a version without the index (a rolling
                    # upgrade) updates runs without their entries.
                    if run.status.value in statuses:
                        runs.append(run)
        return runs

    async def _put_value(self, key: bytes, data: bytes) -> None:
        """A possibly large value at `key`: inline, or chunks published with their pointer."""
        if len(data) <= INLINE_BYTES:
            await self._txn([], [put_op(key, orjson.dumps(inline(data)))], [], batch=True)
            return
        chunks_at = self.keys.chunks_of(key)
        lease_id, publish = await self._upload_chunks(chunks_at, data)
        try:
            pointer = self.keys.chunked(chunks_at, len(publish))
            await self._txn([], [put_op(key, orjson.dumps(pointer)), *self._nest(publish)], [])
        finally:
            await self._revoke(lease_id)

    async def _get_value(self, key: bytes) -> bytes | None:
        kv = await self._get(key)
        if kv is None:
            return None
        return await self.keys.read_value(orjson.loads(kv.value), self._read_chunks)

    async def put_run_blob(self, run_id: str, kind: str, data: bytes) -> None:
        await self._put_value(self.keys.run_blob(run_id, kind), self._seal_run(run_id, kind, data))

    async def get_run_blob(self, run_id: str, kind: str) -> bytes | None:
        data = await self._get_value(self.keys.run_blob(run_id, kind))
        return self._open_run(run_id, kind, data) if data is not None else None

    async def append_run_log(self, run_id: str, chunk: bytes) -> None:
        from etcd3aio import SortOrder

        prefix = self.keys.run_log(run_id)
        while True:
            last = await self._call(
                self._kv.get(
                    prefix,
                    prefix_end(prefix),
                    limit=1,
                    sort_order=SortOrder.DESCEND,
                    keys_only=True,
                    timeout=self.timeout,
                )
            )
            seq = int(bytes(last.kvs[0].key)[len(prefix) :]) + 1 if last.kvs else 1
            key = prefix + f"{seq:08d}".encode()
            resp = await self._txn(
                [self._kv.txn_compare_create_revision(key, 0)],
                [put_op(key, self._seal_run(run_id, f"log{seq}", chunk))],
                [],
                batch=True,
            )
            if resp.succeeded:
                return

    async def read_run_log(self, run_id: str) -> bytes:
        prefix = self.keys.run_log(run_id)
        parts = []
        async for kv in self._scan(prefix, prefix_end(prefix)):
            seq = int(bytes(kv.key)[len(prefix) :])
            parts.append(self._open_run(run_id, f"log{seq}", bytes(kv.value)))
        return b"".join(parts)

    # -- snapshots -----------------------------------------------------------------------

    def export_snapshot(self) -> AsyncGenerator[SnapshotRecord, None]:
        from blixard.store.etcd import snapshot as etcd_snapshot

        return etcd_snapshot.export(self)

    async def import_snapshot(self, records: AsyncIterator[SnapshotRecord]) -> ImportReport:
        """Imported versions get their index documents from the reindex started here (the
        snapshot format carries no index: it is rebuilt from the exact bodies)."""
        from blixard.store.etcd import snapshot as etcd_snapshot

        report = await etcd_snapshot.import_records(self, records)
        self.reindexer.start()
        return report

    # -- the resource index (resource_index.py, docs/search.md) ---------------------------
    #
    # `rix/<name>\0<INV(n)>`: the index document of version n, the head (sealed like the
    # version), or, when larger than INLINE_BYTES, a JSON pointer to its chunks (as version
    # blobs are). Writing the next head's deletes it (and its chunks) in the same Txn.
    # `rixhead/<name>`: {"version": head, "deleted": bool}, written by soft delete/restore.
    # Every node watches both (prefix `rix`) to keep its in-memory index current: a new
    # version's document arrives in the event itself, a delete/restore as its marker.

    def _rix_prefix(self, name: str) -> bytes:
        return self.keys.key(RESOURCE_INDEX, name, "\x00")

    def _rix_key(self, name: str, number: int) -> bytes:
        return self._rix_prefix(name) + inv(number).encode()

    def _index_blobs_prefix(self, name: str) -> bytes:
        return self.keys.key(RESOURCE_INDEX_BLOBS, name, "\x00")

    def _older_docs_ops(self, name: str, number: int) -> list[Any]:
        """Deletes of the documents (and chunks) of versions before `number`: keys sort newest
        first (INV), so they are the rest of the workspace's range from version number - 1."""
        if number <= 1:
            return []
        docs, blobs = self._rix_prefix(name), self._index_blobs_prefix(name)
        older = inv(number - 1).encode()
        return [
            delete_range_op(docs + older, prefix_end(docs)),
            delete_range_op(blobs + older, prefix_end(blobs)),
        ]

    def _index_head_op(self, name: str, version: int, deleted: bool) -> Any:
        value = orjson.dumps({"version": version, "deleted": deleted})
        return put_op(self.keys.key(RESOURCE_INDEX_HEADS, name), value)

    async def _index_doc_ops(self, name: str, number: int, packed: bytes) -> tuple[int, list[Any]]:
        """Ops writing version `number`'s document and deleting the older ones, and the lease
        of its chunks if it had to be chunked (0 if not)."""
        stored = resource_index.seal(self.cipher, name, packed)
        lease = 0
        if len(stored) <= INLINE_BYTES:
            ops = [put_op(self._rix_key(name, number), stored)]
        else:
            chunks_at = self._index_blobs_prefix(name) + (
                f"{inv(number)}/{secrets.token_hex(8)}".encode()
            )
            lease, publish = await self._upload_chunks(chunks_at + b"/", stored)
            pointer = {
                "chunks_at": self.keys.relative(chunks_at) + "/",
                "chunks": len(publish),
            }
            ops = [put_op(self._rix_key(name, number), orjson.dumps(pointer)), *self._nest(publish)]
        return lease, ops + self._older_docs_ops(name, number)

    async def _index_doc_value(self, name: str, value: bytes) -> bytes | None:
        """The packed document a `rix/` value holds; None if no configured key opens it."""
        if value[:1] == b"{":
            pointer = orjson.loads(value)
            value = await self._read_chunks(self.keys.key(pointer["chunks_at"]), pointer["chunks"])
        try:
            return resource_index.open_sealed(self.cipher, name, value)
        except DecryptionError:
            return None

    async def _index_docs(self, wanted: list[tuple[str, int]]) -> list[bytes | None]:
        """Packed documents of (workspace, version) pairs, None where missing or unreadable."""
        found: list[bytes | None] = []
        for start in range(0, len(wanted), 64):
            group = wanted[start : start + 64]
            resp = await self._txn([], [get_op(self._rix_key(n, v)) for n, v in group], [])
            for (name, _), op in zip(group, resp.responses, strict=True):
                kvs = op.response_range.kvs
                found.append(
                    await self._index_doc_value(name, bytes(kvs[0].value)) if kvs else None
                )
        return found

    async def _apply_heads(self, heads: list[tuple[str, dict[str, Any]]]) -> None:
        """Bring the in-memory index to these head markers (fetching new documents)."""
        fetch = [
            (name, marker["version"])
            for name, marker in heads
            if (self.resource_index.version_of(name) or 0) < marker["version"]
        ]
        for (name, _), packed in zip(fetch, await self._index_docs(fetch), strict=True):
            if packed is not None:
                self.resource_index.put(name, packed)
        for name, marker in heads:
            self.resource_index.set_hidden(name, bool(marker["deleted"]))

    async def _load_resource_heads(self) -> int:
        """Load every workspace's current document (and whether it is deleted) from the
        workspace records; the revision they were read at."""
        prefix = self.keys.key(WORKSPACES)
        first = await self._range(prefix, prefix_end(prefix), limit=1)
        revision = int(first.header.revision)
        heads: list[tuple[str, dict[str, Any]]] = []
        async for kv in self._scan(prefix, prefix_end(prefix), page=1000, revision=revision):
            doc = orjson.loads(kv.value)
            if doc["head"]:
                name = bytes(kv.key)[len(prefix) :].decode()
                marker = {"version": doc["head"]["version"], "deleted": bool(doc["deleted_at"])}
                heads.append((name, marker))
            if len(heads) >= 1000:
                await self._apply_heads(heads)
                heads = []
        await self._apply_heads(heads)
        return revision

    async def _follow_resource_heads(self) -> None:
        self._watch_stop = asyncio.Event()
        revision = await self._load_resource_heads()
        self._index_watch = asyncio.create_task(self._watch_resource_heads(revision))

    async def _watch_resource_heads(self, revision: int) -> None:
        """Apply other nodes' (and this node's) documents and delete/restore markers as etcd
        reports them. A watch that fell behind a compaction reloads everything.

        The watch is a gRPC stream on etcd3aio's stub (wire.stub_watch, as batch.py's calls
        are) whose request side ends when the store closes (`_watch_stop`) before the call is
        cancelled: gRPC logs a traceback when it has to cancel a request iterator still
        waiting."""
        from blixard.store.etcd.wire import WatchCreateRequest, WatchRequest, stub_watch

        prefix = self.keys.key(RESOURCE_INDEX_ALL)
        docs, markers = self.keys.key(RESOURCE_INDEX), self.keys.key(RESOURCE_INDEX_HEADS)
        stop = self._watch_stop
        renewed = False  # reopened with a fresh token and no answer since: no second at once
        while not stop.is_set():

            async def requests(start: int) -> AsyncIterator[Any]:
                create = WatchCreateRequest(
                    key=prefix,
                    range_end=prefix_end(prefix),
                    start_revision=start,
                    # Only puts matter (a new document, a marker): a write's delete of the
                    # previous head's document is not sent to every node.
                    filters=[WatchCreateRequest.NODELETE],
                )
                yield WatchRequest(create_request=create)
                await stop.wait()

            call = stub_watch(self._client.watch, requests(revision + 1))
            try:
                async for response in call:
                    if response.compact_revision > 0:
                        revision = await self._load_resource_heads()
                        call.cancel()
                        break
                    if response.canceled:  # refused at creation (a stale token, say)
                        raise ConnectionError(response.cancel_reason or "watch cancelled")
                    renewed = False
                    heads: list[tuple[str, dict[str, Any]]] = []
                    for event in response.events:
                        key, value = bytes(event.kv.key), bytes(event.kv.value)
                        if not value:
                            continue
                        if key.startswith(markers):
                            heads.append((key[len(markers) :].decode(), orjson.loads(value)))
                        elif key.startswith(docs):
                            await self._apply_document(key[len(docs) :], value)
                    await self._apply_heads(heads)
                    revision = max(revision, int(response.header.revision))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away: retry; reads stay as they were meanwhile
                if stop.is_set():
                    return
                if not renewed and await self.renew_stale_token(exc):
                    renewed = True
                    continue  # reopened at once with the fresh token
                log.warning("resource index: watch interrupted (%s); resuming", exc)
                await asyncio.sleep(1.0)

    async def _apply_document(self, rest: bytes, value: bytes) -> None:
        """A version's document as a watch reported it: kept if newer than the known one."""
        name_bytes, _, inverted = rest.rpartition(b"\x00")
        name, version = name_bytes.decode(), uninv(inverted)
        if version <= (self.resource_index.version_of(name) or 0):
            return  # this node's own write (already applied), or an older version's
        if self._writing.get(name) == version:
            # Most likely this node's write, about to apply its document with the resources
            # the next write reuses: held until that write says whether it committed.
            self._held_docs[name] = (rest, value)
            return
        packed = await self._index_doc_value(name, value)
        if packed is not None:
            self.resource_index.put(name, packed)

    async def _unindexed(self, force: bool) -> list[tuple[str, int]]:
        """(workspace, head version) of the current documents that must be (re)built: missing
        ones, and, when the key sealing new documents changed since the last full pass
        (`meta/rixkey`: a rotation, encryption turned on or off), those it did not seal.
        Until a pass has completed under the one-document-per-workspace layout (the marker's
        `heads_only`), it also deletes the older versions' documents an earlier layout kept
        (idempotent, so an interrupted pass does it again at the next open)."""
        current = self.cipher.current_id if self.cipher else None
        marker = await self._get(self.keys.key(META_RESOURCE_INDEX_KEY))
        recorded = orjson.loads(marker.value) if marker is not None else {}
        sweep = recorded.get("key", "") != current
        tidy = not recorded.get("heads_only", False)
        missing: list[tuple[str, int]] = []
        prefix = self.keys.key(WORKSPACES)
        async for kv in self._scan(prefix, prefix_end(prefix)):
            name = bytes(kv.key)[len(prefix) :].decode()
            head = orjson.loads(kv.value)["head"]
            if not head:
                continue
            top = head["version"]
            if tidy and top > 1:
                await self._txn([], self._older_docs_ops(name, top), [])
            if force:
                missing.append((name, top))
                continue
            found = await self._get(self._rix_key(name, top))
            if found is None:
                missing.append((name, top))
            elif sweep:
                value = bytes(found.value)
                if (key_id_of_blob(value) if is_sealed(value) else None) != current:
                    missing.append((name, top))
        return missing

    async def _mark_index_key(self) -> None:
        """Every current document is now sealed with the current key (or none), and no older
        version has one: later opens skip the sweep over document values and the clean-up."""
        current = self.cipher.current_id if self.cipher else None
        value = orjson.dumps({"key": current, "heads_only": True})
        await self._txn([], [put_op(self.keys.key(META_RESOURCE_INDEX_KEY), value)], [])

    async def _plan_reindex(self, force: bool) -> ReindexPlan[tuple[str, int]]:
        """The reindex (Reindexer) builds the listed current documents one at a time (memory:
        about two bodies and one document), then marks the key they are sealed with."""
        missing = await self._unindexed(force)
        last_full: tuple[str, int, bytes] | None = None

        async def listed() -> AsyncIterator[tuple[str, int]]:
            for item in missing:
                yield item

        async def index_one(item: tuple[str, int]) -> None:
            nonlocal last_full
            name, number = item
            found = await self._read_uncached(name, number, last_full)
            if found is None:
                return
            body, last_full = found
            packed = resource_index.build(number, body)
            del body
            await self._store_index_doc(name, number, packed)

        return ReindexPlan(len(missing), listed(), index_one, self._mark_index_key)

    async def _read_uncached(
        self, name: str, number: int, last_full: tuple[str, int, bytes] | None
    ) -> tuple[bytes, tuple[str, int, bytes] | None] | None:
        """A version's body without filling the body cache (a reindex reads everything
        once), reusing the last full version read as a delta base."""
        found = await self._read_encoded(name, number)
        if found is None:
            return None
        _, encoded = found
        base_body = None
        if encoded.base_version is not None:
            if last_full is not None and last_full[:2] == (name, encoded.base_version):
                base_body = last_full[2]
            else:
                base = await self._read_encoded(name, encoded.base_version)
                if base is None:
                    raise StorageUnavailable(f"version {encoded.base_version} of {name} is missing")
                base_body = self.codec.decode(name, base[1], None, cache=False)
                last_full = (name, encoded.base_version, base_body)
        decode = functools.partial(self.codec.decode, name, encoded, base_body, cache=False)
        body = (
            await asyncio.to_thread(decode)
            if len(encoded.blob) > _INLINE_ENCODE_BYTES
            else decode()
        )
        if encoded.encoding == "zstd":
            last_full = (name, number, body)
        return body, last_full

    async def _store_index_doc(self, name: str, number: int, packed: bytes) -> None:
        """Put a head's document (other nodes get it through their watch), unless a write
        made a newer version meanwhile (its document, written with it, then exists)."""
        lease, ops = await self._index_doc_ops(name, number, packed)
        newer_absent = self._kv.txn_compare_create_revision(self._rix_key(name, number + 1), 0)
        try:
            resp = await self._txn([newer_absent], ops, [])
        finally:
            if lease:
                await self._revoke(lease)
        if resp.succeeded:
            self.resource_index.put(name, packed)

    async def index_history(
        self, workspace: str, *, from_version: int = 1, limit: int = 64
    ) -> list[IndexDoc]:
        """Built from the bodies (only the head has a stored document), without filling the
        body cache, reusing the last full version read as the deltas' base."""
        record = await self._record(workspace)
        if record is None or record.ws.head is None:
            return []
        numbers = list(range(max(1, from_version), record.ws.head.version + 1))[:limit]
        rows = resource_index.HistoryRows()
        last_full: tuple[str, int, bytes] | None = None
        docs = []
        for number in numbers:
            found = await self._read_uncached(workspace, number, last_full)
            if found is None:
                continue
            body, last_full = found
            docs.append(rows.doc(number, body))
        return docs

    # -- node liveness -------------------------------------------------------------------

    async def grant_node_lease(self, node_id: str, info: dict[str, Any], *, ttl: int) -> int:
        """An etcd lease carrying `nodes/<node id>`: when the node stops renewing it, etcd
        deletes the key, which is how the other nodes learn that it is gone."""
        grant = await self._call(self._client.lease.grant(ttl, timeout=self.timeout))
        lease_id = int(grant.ID)
        try:
            await self._call(
                self._kv.put(
                    self.keys.key(NODES, node_id),
                    orjson.dumps(info),
                    lease=lease_id,
                    timeout=self.timeout,
                )
            )
        except BaseException:
            await self._revoke(lease_id)
            raise
        return lease_id

    async def renew_node_lease(self, lease_id: int) -> bool:
        if self._client is None:
            raise StorageUnavailable("The store is not open.")
        lease_api = self._client.lease

        async def keep_alive() -> bool:
            stream = lease_api.keep_alive(lease_id)
            try:
                async for response in stream:
                    return int(response.TTL) > 0  # etcd answers TTL 0 for an expired lease
            finally:
                stream.cancel()
            raise StorageUnavailable("etcd closed the lease keep-alive stream without answer.")

        return await self._call(asyncio.wait_for(keep_alive(), self.timeout))

    async def revoke_node_lease(self, lease_id: int) -> None:
        if self._client is not None:
            await self._revoke(lease_id)

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        prefix = self.keys.key(NODES)
        nodes: dict[str, dict[str, Any]] = {}
        async for kv in self._scan(prefix, prefix_end(prefix)):
            nodes[bytes(kv.key)[len(prefix) :].decode()] = orjson.loads(kv.value)
        return nodes

    # -- encryption at rest (encryption.py) -------------------------------------------

    @functools.cached_property
    def _encryption(self) -> EtcdEncryption:
        from blixard.store.etcd.encryption import EtcdEncryption

        return EtcdEncryption(self)

    async def encryption_status(self) -> EncryptionStatus:
        return await self._encryption.status()

    async def rotate_encryption(
        self, *, max_seconds: float = 1.0, batch_versions: int = 64
    ) -> RotationProgress:
        """Re-seal values an old key sealed for about `max_seconds`, then report (resumable)."""
        return await self._encryption.rotate(max_seconds=max_seconds, batch_versions=batch_versions)

    # -- revision pins and compaction -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def pinned_revision(self) -> AsyncIterator[int]:
        """The current revision, which this installation's compaction leaves readable until
        the block ends (an export reads everything at it).

        One Txn creates `meta/pins/<id>` on a lease and its revision is the one returned, so
        a compaction round that read the pins before that Txn compacts below it anyway (its
        target is never above the revision of its own read). The lease, renewed here, lets
        etcd drop the pin of a process that died; this process's own rounds also honour
        `_pins`, which outlives a lease lost to a long outage."""
        grant = await self._call(self._client.lease.grant(_PIN_TTL, timeout=self.timeout))
        lease_id = int(grant.ID)
        key = self.keys.key(META_PINS, secrets.token_hex(8))
        value = orjson.dumps({"since": time.time()})
        try:
            resp = await self._txn([], [put_op(key, value, lease=lease_id)], [])
        except BaseException:
            await self._revoke(lease_id)
            raise
        revision = int(resp.header.revision)
        self._pins[lease_id] = revision
        renew = asyncio.create_task(self._renew_pin(lease_id))
        try:
            yield revision
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
            self._pins.pop(lease_id, None)
            await self._revoke(lease_id)

    async def _renew_pin(self, lease_id: int) -> None:
        while True:
            await asyncio.sleep(_PIN_TTL / 3)
            conn = self._conn
            try:
                if conn is not None:
                    await conn.keep_alive(lease_id)
            except Exception as exc:  # the next renewal may work; the pin in _pins stays
                log.warning("etcd: renewing an export's revision pin failed: %s", exc)

    async def _pinned_revisions(self) -> list[int]:
        """Revisions exports are reading at, on every node of this prefix."""
        prefix = self.keys.key(META_PINS)
        pinned = [int(kv.create_revision) async for kv in self._scan(prefix, prefix_end(prefix))]
        return [*pinned, *self._pins.values()]

    async def compact_once(self, policy: Compaction, *, now: float | None = None) -> int | None:
        """One compaction round; the revision compacted to, or None when there was nothing
        to do or another node took this round.

        `meta/compaction` holds samples (time, revision) taken by every node's rounds and
        the revision last compacted to. A round claims itself by rewriting that record
        compared on its mod_revision (so one node per interval does the work), then compacts
        to the newest sample at least `retention` seconds old, but never above a pinned
        revision. A compaction another party already went past is fine."""
        now = time.time() if now is None else now
        key = self.keys.key(META_COMPACTION)
        found = await self._call(self._kv.get(key, timeout=self.timeout))
        current = int(found.header.revision)
        kv = found.kvs[0] if found.kvs else None
        empty = {"at": 0, "compacted": 0, "samples": []}
        doc: dict[str, Any] = orjson.loads(kv.value) if kv is not None else empty
        if now - doc["at"] < policy.interval / 2:
            return None
        cutoff = now - policy.retention
        old = [sample for sample in doc["samples"] if sample[0] <= cutoff]
        samples = [max(old)] if old else []  # the newest old sample: next round's floor
        samples += [sample for sample in doc["samples"] if sample[0] > cutoff]
        if not samples or now - samples[-1][0] >= policy.retention / 64:  # a bounded record
            samples.append([now, current])
        target = max(old)[1] if old else 0
        pinned = await self._pinned_revisions()
        if pinned:
            target = min(target, min(pinned))
        compacted = int(doc["compacted"])
        record = orjson.dumps({"at": now, "compacted": max(compacted, target), "samples": samples})
        compare = (
            self._kv.txn_compare_create_revision(key, 0)
            if kv is None
            else self._cmp_mod(key, int(kv.mod_revision))
        )
        claimed = await self._txn([compare], [put_op(key, record)], [])
        if not claimed.succeeded or target <= compacted:
            return None
        try:
            await self._call(self._kv.compact(target, timeout=self.timeout))
        except StorageUnavailable as exc:
            if "required revision has been compacted" not in exc.message:
                raise
        return target

    async def _compact_loop(self, policy: Compaction) -> None:
        failing = False
        while True:
            await asyncio.sleep(policy.interval)
            try:
                revision = await self.compact_once(policy)
            except Exception as exc:
                if not failing:  # once per outage, not every round
                    log.warning("etcd compaction round failed (will retry): %s", exc)
                failing = True
                continue
            failing = False
            if revision is not None:
                log.debug("etcd: compacted history up to revision %d", revision)

    # -- the public door for this package's helpers (snapshot.py, encryption.py) -----------
    # What door.py's EtcdDoor promises them (documented there): `self.keys`, the KV access,
    # the large-value writer and the record codec the engine itself uses.

    @property
    def kv(self) -> Any:
        return self._kv

    @property
    def client(self) -> Any:
        return self._client

    async def call(self, awaitable: Awaitable[T]) -> T:
        return await self._call(awaitable)

    async def renew_stale_token(self, exc: BaseException) -> bool:
        return self._conn is not None and await self._conn.renew_stale_token(exc)

    async def txn(
        self, compare: list[Any], success: list[Any], failure: list[Any], *, batch: bool = False
    ) -> Any:
        return await self._txn(compare, success, failure, batch=batch)

    async def get_kv(self, key: bytes) -> Any | None:
        return await self._get(key)

    async def read_range(
        self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0
    ) -> Any:
        return await self._range(start, end, limit=limit, revision=revision)

    def scan(
        self, start: bytes, end: bytes, *, page: int = 500, revision: int = 0
    ) -> AsyncIterator[Any]:
        return self._scan(start, end, page=page, revision=revision)

    def compare_mod_revision(self, key: bytes, revision: int) -> Any:
        return self._cmp_mod(key, revision)

    @staticmethod
    def nest(ops: list[Any]) -> list[Any]:
        return EtcdStore._nest(ops)

    async def read_chunks(self, prefix: bytes, count: int, revision: int = 0) -> bytes:
        return await self._read_chunks(prefix, count, revision)

    async def upload_chunks(self, prefix: bytes, blob: bytes) -> tuple[int, list[Any]]:
        return await self._upload_chunks(prefix, blob)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._revoke(lease_id)

    def encode_record(
        self,
        ws: Workspace,
        base: dict[str, int] | None,
        version_count: int,
        stored_bytes: int,
        body_bytes: int = 0,
        last_audit: int = 0,
    ) -> bytes:
        return self._encode_record(ws, base, version_count, stored_bytes, body_bytes, last_audit)

    def decode_record(self, name: str, kv: Any) -> WorkspaceRecord:
        return self._decode_record(name, kv)

    def audit_ops(self, event: AuditEvent) -> list[Any]:
        return self._audit_ops(event)

    def key_ops(self, key: ApiKey) -> list[Any]:
        return self._key_ops(key)

    def key_from_document(self, value: bytes, used: bytes | None) -> ApiKey:
        return self._key_from(value, used)

    def run_ops(self, run: Run, *, update: bool = False) -> list[Any]:
        return self._run_ops(run, update=update)

    def run_from_document(self, run_id: str, document: bytes, revision: bytes | None) -> Run:
        return self._run_from(run_id, document, revision)

    def seal_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return self._seal_run(run_id, kind, payload)

    def open_run(self, run_id: str, kind: str, payload: bytes) -> bytes:
        return self._open_run(run_id, kind, payload)

    async def upgrade_audit_ids(self, floor: int = 0) -> None:
        await self._upgrade_audit_ids(floor)


def unique_prefix(base: str = "blixard") -> str:
    return f"/{base}/{os.getpid()}-{secrets.token_hex(4)}/"
