"""The whole engine: every role (domain/roles.py), plus snapshots, encryption admin and its
life cycle. Only what builds and runs a store (the bootstrap, the app's wiring, backup and
restore) uses `Store`; everything else is typed against the role it uses.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, runtime_checkable

from blixard.domain.roles import AuditTrail, KeyStore, NodeLeases, RunStore, StateStore
from blixard.store.encryption import EncryptionStatus, RotationProgress
from blixard.store.snapshot import ImportReport, SnapshotRecord


@runtime_checkable
class SnapshotStore(Protocol):
    """Backup, restore, migrate: the whole store as a stream of records (snapshot.py)."""

    def export_snapshot(self) -> AsyncGenerator[SnapshotRecord, None]:
        """Everything the store holds, as one consistent view, streamed (an async generator).

        First a SnapshotBegin with the engine and the counts of that view, then the data
        records in canonical order: each workspace (by name) followed by its versions (by
        number, exact bodies), then API keys (by creation time, then id), audit events (by
        id), runs (by id), run blobs (by run id, kind) and run logs (by run id, seq). The view
        is one read transaction (SQLite) or one revision (etcd): writes made meanwhile are
        not in it. Memory stays bounded whatever the store's size; stopping the iteration
        early (aclose) releases the view.
        """
        ...

    async def import_snapshot(self, records: AsyncIterator[SnapshotRecord]) -> ImportReport:
        """Write a snapshot's records into this store, which must be empty (StoreNotEmpty).

        Versions keep their numbers, times and metadata, bodies stay byte-identical (stored
        with this store's codec and cipher), the audit trail keeps its ids and order, keys
        their hashes, runs their documents and revisions. Writes go in batches; while an
        import is unfinished the store refuses to serve (UnfinishedImport at open), so a
        failure part-way never leaves a store that looks complete. Records must come in
        export order (a workspace before its versions). Any inconsistency (a body that does
        not match its SHA-256, a version of an unknown workspace, a head version that never
        came, fewer or more records than the SnapshotBegin announced) raises
        SnapshotCorrupt. For stores not serving traffic: restore and migrate run offline.
        """
        ...


@runtime_checkable
class EncryptionAdmin(Protocol):
    """Encryption at rest as an operator sees it (encryption.py): status and key rotation."""

    async def encryption_status(self) -> EncryptionStatus:
        """Key ids in use, and how many versions and lock payloads each one seals."""
        ...

    async def rotate_encryption(self, *, max_seconds: float = 1.0) -> RotationProgress:
        """Re-seal what old keys sealed under the current key for about `max_seconds`, next
        to live writes, then report; call again until done (EncryptionNotConfigured without
        a key)."""
        ...


@runtime_checkable
class Store(
    StateStore, KeyStore, AuditTrail, RunStore, NodeLeases, SnapshotStore, EncryptionAdmin, Protocol
):
    """An engine: every role, plus opening and closing it."""

    engine: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...
