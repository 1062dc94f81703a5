"""Row shapes shared by the SQLite engine's normal writes and its snapshot import."""

from __future__ import annotations

from typing import Any

import orjson

from blixard.domain.access import ApiKey
from blixard.domain.models import VersionMeta
from blixard.store.codec import Encoded

INSERT_VERSION = (
    "INSERT INTO versions(workspace_id, version, serial, lineage, size, sha256, md5, "
    "created_at, lock_id, terraform_version, resource_count, source, rolled_back_from, "
    "encoding, base_version, blob, written_by, lock_who) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

KEY_COLUMNS = (
    "id, name, role, scopes, secret_hash, created_at, created_by, last_used_at, revoked_at"
)
INSERT_KEY = f"INSERT INTO api_keys({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def version_row(
    workspace_id: int, meta: VersionMeta, encoded: Encoded, lock_who: bytes | None
) -> tuple[Any, ...]:
    """`lock_who` is the holder's `Who` as stored (sealed when encryption is on)."""
    return (
        workspace_id,
        meta.version,
        meta.serial,
        meta.lineage,
        meta.size,
        meta.sha256,
        meta.md5,
        meta.created_at,
        meta.lock_id,
        meta.terraform_version,
        meta.resource_count,
        meta.source,
        meta.rolled_back_from,
        encoded.encoding,
        encoded.base_version,
        encoded.blob,
        meta.written_by,
        lock_who,
    )


def key_row(key: ApiKey) -> tuple[Any, ...]:
    return (
        key.id,
        key.name,
        key.role.name,
        orjson.dumps(list(key.scopes)),
        key.secret_hash,
        key.created_at,
        key.created_by,
        key.last_used_at,
        key.revoked_at,
    )
