"""What the etcd engine's helpers (snapshot.py, encryption.py) may use of it: the door.

They take an `EtcdDoor`, not the engine class: its keys (keyspace.py), the KV access with
the engine's error mapping, the large-value writer, and the record codec the engine itself
writes with. EtcdStore satisfies it (mypy checks it where the engine hands itself to a
helper); nothing else of the engine is theirs to touch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from blixard.domain.access import ApiKey, AuditEvent
from blixard.domain.models import VersionMeta, Workspace
from blixard.domain.runs import Run
from blixard.store.codec import VersionCodec
from blixard.store.crypto import Cipher
from blixard.store.etcd.keyspace import Keyspace

if TYPE_CHECKING:
    from blixard.store.etcd.store import WorkspaceRecord

T = TypeVar("T")


class EtcdDoor(Protocol):
    @property
    def engine(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def keys(self) -> Keyspace: ...

    @property
    def codec(self) -> VersionCodec: ...

    @property
    def cipher(self) -> Cipher | None: ...

    @property
    def timeout(self) -> float: ...

    def pinned_revision(self) -> contextlib.AbstractAsyncContextManager[int]:
        """The current revision, kept readable by compaction until the block ends."""
        ...

    @property
    def kv(self) -> Any:
        """etcd3aio's KV client (for its Txn builders); None while closed."""
        ...

    @property
    def client(self) -> Any:
        """etcd3aio's client (leases); None while closed."""
        ...

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await an etcd call, its failures as StorageUnavailable."""
        ...

    async def renew_stale_token(self, exc: BaseException) -> bool:
        """After a watch failed: authenticate again if etcd refused its token (True then)."""
        ...

    async def txn(
        self, compare: list[Any], success: list[Any], failure: list[Any], *, batch: bool = False
    ) -> Any:
        """One Txn. With `batch`, it may share an etcd Txn with others (batch.py): only for
        ops that cannot fail at apply time (no lease, no `ignore_value`, no past revision)."""
        ...

    async def get_kv(self, key: bytes) -> Any | None:
        """A linearizable point read."""
        ...

    async def read_range(
        self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0
    ) -> Any:
        """One Range over [start, end), at `revision` (0: now)."""
        ...

    def scan(
        self, start: bytes, end: bytes, *, page: int = 500, revision: int = 0
    ) -> AsyncIterator[Any]:
        """Every key-value in [start, end), ascending, paged."""
        ...

    def compare_mod_revision(self, key: bytes, revision: int) -> Any: ...

    def nest(self, ops: list[Any]) -> list[Any]:
        """Ops for one Txn level, grouped into nested Txns beyond etcd's per-level limit."""
        ...

    async def read_chunks(self, prefix: bytes, count: int, revision: int = 0) -> bytes: ...

    async def upload_chunks(self, prefix: bytes, blob: bytes) -> tuple[int, list[Any]]:
        """Write `blob` as leased chunks; the lease and the ops that publish them."""
        ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    def meta_doc(self, meta: VersionMeta) -> Any:
        """A version's metadata as its version document holds it (the lock holder sealed)."""
        ...

    def meta_from(self, name: str, doc: dict[str, Any]) -> VersionMeta:
        """A version document's metadata, the lock holder opened."""
        ...

    def encode_record(
        self,
        ws: Workspace,
        base: dict[str, int] | None,
        version_count: int,
        stored_bytes: int,
        body_bytes: int = 0,
        last_audit: int = 0,
    ) -> bytes:
        """A workspace record as stored at `ws/NAME`."""
        ...

    def decode_record(self, name: str, kv: Any) -> WorkspaceRecord: ...

    def audit_ops(self, event: AuditEvent) -> list[Any]:
        """The puts that record an audit event (the trail and its indexes)."""
        ...

    def key_ops(self, key: ApiKey) -> list[Any]:
        """The puts that store an API key (by id, by name, last used)."""
        ...

    def key_from_document(self, value: bytes, used: bytes | None) -> ApiKey: ...

    def run_ops(self, run: Run, *, update: bool = False) -> list[Any]:
        """The puts that store a run (document, revision, indexes)."""
        ...

    def run_from_document(self, run_id: str, document: bytes, revision: bytes | None) -> Run: ...

    def seal_run(self, run_id: str, kind: str, payload: bytes) -> bytes: ...

    def open_run(self, run_id: str, kind: str, payload: bytes) -> bytes: ...

    async def upgrade_audit_ids(self, floor: int = 0) -> None:
        """Renumber audit events written with the earlier ids, once per prefix; new ids go
        above `floor`."""
        ...
