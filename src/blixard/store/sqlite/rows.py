"""Row shapes shared by the SQLite engine's normal writes and its snapshot import."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

import orjson

from blixard.domain.access import ApiKey, Role
from blixard.domain.models import VersionMeta, VersionSource
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


#: The version columns every reader selects (`v.` is the versions table), in the order
#: version_meta_from_row reads them.
VERSION_COLUMNS = (
    "v.version, v.serial, v.lineage, v.size, v.sha256, v.md5, v.created_at, v.lock_id, "
    "v.terraform_version, v.resource_count, v.source, v.rolled_back_from, v.written_by, "
    "v.lock_who"
)
VERSION_COLUMN_COUNT = 14


def api_key_from_row(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        role=Role[row[2]],
        scopes=tuple(orjson.loads(row[3])),
        secret_hash=row[4],
        created_at=row[5],
        created_by=row[6],
        last_used_at=row[7],
        revoked_at=row[8],
    )


def version_meta_from_row(
    name: str, row: tuple[Any, ...] | sqlite3.Row, lock_who: str | None
) -> VersionMeta:
    """`lock_who` is row[13] as the engine opened it (sealed at rest under encryption)."""
    return VersionMeta(
        workspace=name,
        version=row[0],
        serial=row[1],
        lineage=row[2],
        size=row[3],
        sha256=row[4],
        md5=row[5],
        created_at=row[6],
        lock_id=row[7],
        terraform_version=row[8],
        resource_count=row[9],
        source=cast(VersionSource, row[10]),
        rolled_back_from=row[11],
        written_by=row[12],
        lock_who=lock_who,
    )
