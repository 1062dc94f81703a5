"""Engine-independent pieces of encryption at rest: startup refusals, status and rotation reports.

Rotation model: the server is restarted with the new key as BLIXARD_ENCRYPTION_KEY and the
previous one(s) in BLIXARD_ENCRYPTION_OLD_KEYS. From then on everything new is sealed with the
new key while old blobs stay readable. `rotate` re-seals old blobs in small batches through the
engine's normal write path, so it runs next to live traffic; once no blob or lock payload uses
an old key id, the engine forgets that id and the operator may drop the old key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from blixard.domain.errors import Conflict
from blixard.store.crypto import Cipher, EncryptionError
from blixard.store.errors import StoreError

#: How status and rotation reports name blobs that are not encrypted at all.
PLAINTEXT = "plaintext"


class EncryptionRefused(EncryptionError, StoreError):
    """The store must not be served with the configured keys; the message says why and what next."""


class EncryptionNotConfigured(Conflict):
    code = "encryption_not_configured"


@dataclass(frozen=True, slots=True)
class EncryptionStatus:
    encrypted: bool
    current_key_id: str | None
    configured_key_ids: list[str]
    #: Key ids the store requires at start (every id that may still seal some data).
    key_ids_in_use: list[str]
    #: Stored versions per key id (PLAINTEXT for unencrypted ones).
    versions: dict[str, int]
    #: Lock payloads per key id (PLAINTEXT for unencrypted ones).
    locks: dict[str, int]
    #: Configured old keys that nothing needs any more: safe to remove from the configuration.
    removable_key_ids: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        *,
        encrypted: bool,
        cipher: Cipher | None,
        in_use: Iterable[str],
        versions: dict[str, int],
        locks: dict[str, int],
    ) -> EncryptionStatus:
        """The status both engines report: what they counted, and which of the configured
        old keys nothing needs (no canary, no version, no lock sealed with it)."""
        sealed_with = sorted(in_use)
        return cls(
            encrypted=encrypted,
            current_key_id=cipher.current_id if cipher else None,
            configured_key_ids=cipher.key_ids if cipher else [],
            key_ids_in_use=sealed_with,
            versions=versions,
            locks=locks,
            removable_key_ids=[
                key_id
                for key_id in (cipher.old_key_ids if cipher else [])
                if key_id not in sealed_with and key_id not in versions and key_id not in locks
            ],
        )

    @property
    def pending_versions(self) -> int:
        return sum(n for key_id, n in self.versions.items() if key_id != self.current_key_id)

    @property
    def pending_locks(self) -> int:
        return sum(n for key_id, n in self.locks.items() if key_id != self.current_key_id)

    @property
    def rotation_needed(self) -> bool:
        return self.encrypted and (self.pending_versions > 0 or self.pending_locks > 0)

    def message(self) -> str:
        if not self.encrypted:
            return "Encryption at rest is off: blobs are stored compressed but not encrypted."
        if self.rotation_needed:
            old = sorted(
                key_id
                for counts in (self.versions, self.locks)
                for key_id, n in counts.items()
                if n and key_id != self.current_key_id
            )
            return (
                f"{self.pending_versions} versions and {self.pending_locks} lock payloads are "
                f"not yet sealed with the current key {self.current_key_id} "
                f"(found: {', '.join(dict.fromkeys(old))}); run `blixard encryption rotate`."
            )
        if self.removable_key_ids:
            return (
                f"Everything is sealed with the current key {self.current_key_id}; no data uses "
                f"old key ids {', '.join(self.removable_key_ids)} any more: they may be removed "
                "from BLIXARD_ENCRYPTION_OLD_KEYS."
            )
        return f"Everything is sealed with the current key {self.current_key_id}."

    def to_json(self) -> dict[str, Any]:
        return {
            "encrypted": self.encrypted,
            "current_key_id": self.current_key_id,
            "configured_key_ids": self.configured_key_ids,
            "key_ids_in_use": self.key_ids_in_use,
            "versions": self.versions,
            "locks": self.locks,
            "pending_versions": self.pending_versions,
            "pending_locks": self.pending_locks,
            "rotation_needed": self.rotation_needed,
            "removable_key_ids": self.removable_key_ids,
            "message": self.message(),
        }


@dataclass(frozen=True, slots=True)
class RotationProgress:
    current_key_id: str
    rotated_versions: int
    rotated_locks: int
    remaining_versions: int
    remaining_locks: int
    total_versions: int
    #: Old key ids that no blob uses any more (forgotten by the store in this step).
    retired_key_ids: list[str]

    @property
    def done(self) -> bool:
        return self.remaining_versions == 0 and self.remaining_locks == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "current_key_id": self.current_key_id,
            "rotated_versions": self.rotated_versions,
            "rotated_locks": self.rotated_locks,
            "remaining_versions": self.remaining_versions,
            "remaining_locks": self.remaining_locks,
            "total_versions": self.total_versions,
            "retired_key_ids": self.retired_key_ids,
            "done": self.done,
        }
