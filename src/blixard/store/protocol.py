"""The whole engine: every role (domain/roles.py), plus snapshots, encryption admin and its
life cycle. Only what builds and runs a store (the bootstrap, the app's wiring, backup and
restore) uses `Store`; everything else is typed against the role it uses.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from blixard.domain.roles import AuditTrail, KeyStore, NodeLeases, RunStore, StateStore
from blixard.store.encryption import EncryptionStatus, RotationProgress
from blixard.store.snapshot import SnapshotStore


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
