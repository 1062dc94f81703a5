"""Encryption at rest in the SQLite engine: the checks at open, status and rotation batches.

Migration 3 adds a `meta` table and a virtual `versions.key_id` column computed from each
blob's header, with an index: counting blobs per key and finding the next ones to rotate are
index lookups, and writers need not know the column exists. `meta` holds:

- `encryption` — present once the store is encrypted; from then on it is never served without
  a key, and never holds new plaintext.
- `canary:<key id>` — a known plaintext sealed with that key, for every key id that may seal
  some data. A key id gets its canary before it seals anything (when it is the current key at
  open) and loses it only when rotation has found no blob left that uses it. So "all canary ids
  are configured and open their canary" is exactly "every blob can be opened".

Every function here runs on one connection inside the caller's transaction (the writer thread
for anything that writes).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from blixard.store.crypto import Cipher, key_id_of_blob, lock_aad, run_aad, state_aad
from blixard.store.encryption import PLAINTEXT, EncryptionRefused, EncryptionStatus

#: Schema migration 3, one statement per item.
MIGRATION: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    )
    """,
    """
    ALTER TABLE versions ADD COLUMN key_id TEXT GENERATED ALWAYS AS (
        CASE WHEN substr(blob, 1, 4) = X'42584501' THEN lower(hex(substr(blob, 5, 8))) END
    ) VIRTUAL
    """,
    "CREATE INDEX versions_by_key_id ON versions(key_id)",
)

_ENCRYPTED = "encryption"
_CANARY = "canary:"


@dataclass(frozen=True, slots=True)
class RotationBatch:
    rotated_versions: int
    rotated_locks: int
    #: How much the stored bytes grew (sealing a plaintext blob adds the envelope).
    grown_bytes: int
    retired_key_ids: list[str]


def _meta(conn: sqlite3.Connection) -> tuple[bool, dict[str, bytes]]:
    rows = conn.execute("SELECT name, value FROM meta").fetchall()
    encrypted = any(name == _ENCRYPTED for name, _ in rows)
    canaries = {
        name[len(_CANARY) :]: bytes(value) for name, value in rows if name.startswith(_CANARY)
    }
    return encrypted, canaries


def _locks(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    return conn.execute(
        "SELECT id, name, lock_info FROM workspaces WHERE lock_info IS NOT NULL"
    ).fetchall()


def _versions_by_key(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT key_id, count(*) FROM versions GROUP BY key_id").fetchall()
    return {key_id or PLAINTEXT: count for key_id, count in rows}


def _locks_by_key(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(Counter(key_id_of_blob(info) or PLAINTEXT for _, _, info in _locks(conn)))


def _ids(key_ids: list[str]) -> str:
    return ", ".join(key_ids) if key_ids else "none"


def check_at_open(
    conn: sqlite3.Connection, cipher: Cipher | None, path: Path, *, adopt_plaintext: bool
) -> None:
    """Refuse to serve a store with keys that cannot open it; start using the current key.

    `adopt_plaintext` is for `blixard encryption rotate --data-dir`: it lets an unencrypted
    store with data become encrypted (the rotation then seals what is still plaintext).
    """
    encrypted, canaries = _meta(conn)
    sealed_with = sorted(canaries)
    rotate_offline = f"`blixard encryption rotate --data-dir {path.parent}`"
    if cipher is None:
        if encrypted:
            raise EncryptionRefused(
                f"{path} is encrypted (data sealed with key ids {_ids(sealed_with)}) but no key "
                "is configured: set BLIXARD_ENCRYPTION_KEY or BLIXARD_ENCRYPTION_KEY_FILE"
            )
        if conn.execute("SELECT 1 FROM versions WHERE key_id IS NOT NULL LIMIT 1").fetchone():
            raise EncryptionRefused(
                f"{path} holds encrypted versions but no key is configured: set "
                "BLIXARD_ENCRYPTION_KEY or BLIXARD_ENCRYPTION_KEY_FILE"
            )
        return

    if not encrypted:
        has_data = conn.execute(
            "SELECT EXISTS(SELECT 1 FROM versions) "
            "OR EXISTS(SELECT 1 FROM workspaces WHERE lock_info IS NOT NULL)"
        ).fetchone()[0]
        if has_data and not adopt_plaintext:
            raise EncryptionRefused(
                f"{path} holds unencrypted data and an encryption key is now configured; stop "
                f"the server and encrypt the existing data first with {rotate_offline} (same "
                "environment), or unset BLIXARD_ENCRYPTION_KEY"
            )
        conn.execute("INSERT INTO meta(name, value) VALUES (?, ?)", (_ENCRYPTED, b"aes-256-gcm"))

    missing = [key_id for key_id in sealed_with if not cipher.has(key_id)]
    if missing:
        if len(cipher.key_ids) == 1:
            raise EncryptionRefused(
                f"the configured BLIXARD_ENCRYPTION_KEY does not open this database (key id "
                f"{cipher.current_id}); data is sealed with key ids {_ids(sealed_with)}"
            )
        raise EncryptionRefused(
            f"the configured keys (key ids {_ids(cipher.key_ids)}) do not open this database: "
            f"data is also sealed with key ids {_ids(missing)}; add those keys to "
            "BLIXARD_ENCRYPTION_OLD_KEYS until `blixard encryption rotate` has finished"
        )
    for key_id in sealed_with:
        if not cipher.opens_canary(key_id, canaries[key_id]):
            raise EncryptionRefused(
                f"the configured key with id {key_id} fails to open this database's check "
                "value: the key or the database is damaged"
            )

    if not adopt_plaintext:
        plaintext_versions = conn.execute(
            "SELECT count(*) FROM versions WHERE key_id IS NULL"
        ).fetchone()[0]
        plaintext_locks = _locks_by_key(conn).get(PLAINTEXT, 0)
        if plaintext_versions or plaintext_locks:
            raise EncryptionRefused(
                f"{path} is only partly encrypted ({plaintext_versions} versions and "
                f"{plaintext_locks} lock payloads are still plaintext, from an interrupted "
                f"offline encryption); run {rotate_offline} again with the server stopped"
            )

    if cipher.current_id not in canaries:
        conn.execute(
            "INSERT INTO meta(name, value) VALUES (?, ?)",
            (_CANARY + cipher.current_id, cipher.canary()),
        )


def status(conn: sqlite3.Connection, cipher: Cipher | None) -> EncryptionStatus:
    encrypted, canaries = _meta(conn)
    versions = _versions_by_key(conn)
    locks = _locks_by_key(conn)
    old = cipher.old_key_ids if cipher else []
    return EncryptionStatus(
        encrypted=encrypted,
        current_key_id=cipher.current_id if cipher else None,
        configured_key_ids=cipher.key_ids if cipher else [],
        key_ids_in_use=sorted(canaries),
        versions=versions,
        locks=locks,
        removable_key_ids=[
            key_id
            for key_id in old
            if key_id not in canaries and key_id not in versions and key_id not in locks
        ],
    )


def pending(conn: sqlite3.Connection, cipher: Cipher) -> tuple[int, int, int]:
    """(versions not under the current key, such lock payloads, all versions)."""
    total = conn.execute("SELECT count(*) FROM versions").fetchone()[0]
    current = conn.execute(
        "SELECT count(*) FROM versions WHERE key_id = ?", (cipher.current_id,)
    ).fetchone()[0]
    locks = sum(1 for _, _, info in _locks(conn) if key_id_of_blob(info) != cipher.current_id)
    return total - current, locks, total


def _rotate_runs(conn: sqlite3.Connection, cipher: Cipher) -> int:
    """Re-seal run documents, plan files, configurations and logs not under the current key.

    Counted with the lock payloads: both are small next to the versions and go in one step.
    """
    rotated = 0
    tables = (
        ("runs", "rowid, id, 'document', document", "document"),
        ("run_blobs", "rowid, run_id, kind, data", "data"),
        ("run_logs", "rowid, run_id, 'log' || seq, data", "data"),
    )
    for table, columns, column in tables:
        for rowid, run_id, kind, payload in conn.execute(
            f"SELECT {columns} FROM {table}"
        ).fetchall():
            if key_id_of_blob(payload) == cipher.current_id:
                continue
            sealed = cipher.reseal(payload, run_aad(run_id, kind))
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (sealed, rowid))
            rotated += 1
    return rotated


def rotate_batch(
    conn: sqlite3.Connection,
    cipher: Cipher,
    *,
    adopt_plaintext: bool,
    max_versions: int,
    max_bytes: int,
) -> RotationBatch:
    """Re-seal up to `max_versions` (or about `max_bytes` of) versions under the current key.

    Version blobs only change envelope: the compressed payload inside is the same, so deltas
    and their bases need no recompression. Lock payloads follow once no version is left, and
    then every old key id that nothing uses any more is forgotten.
    """
    _, canaries = _meta(conn)
    targets: list[str | None] = [key_id for key_id in canaries if key_id != cipher.current_id]
    if adopt_plaintext:
        targets.append(None)
    rotated = grown = budget = 0
    for key_id in targets:
        if rotated >= max_versions or budget >= max_bytes:
            break
        where, params = ("v.key_id IS NULL", ()) if key_id is None else ("v.key_id = ?", (key_id,))
        # Ids first, then one blob at a time: a batch never holds more than one blob in memory,
        # and no statement scans the index that the updates move rows in.
        rows = conn.execute(
            "SELECT v.rowid, w.name FROM versions v "
            f"JOIN workspaces w ON w.id = v.workspace_id WHERE {where} LIMIT ?",
            (*params, max_versions - rotated),
        ).fetchall()
        for rowid, name in rows:
            blob, who = conn.execute(
                "SELECT blob, lock_who FROM versions WHERE rowid = ?", (rowid,)
            ).fetchone()
            sealed = cipher.reseal(blob, state_aad(name))
            # The lock holder was sealed with the blob's key: it moves with it.
            who = None if who is None else cipher.reseal(who, lock_aad(name))
            conn.execute(
                "UPDATE versions SET blob = ?, lock_who = ? WHERE rowid = ?", (sealed, who, rowid)
            )
            rotated += 1
            grown += len(sealed) - len(blob)
            budget += len(blob)
            if budget >= max_bytes:
                break
    if rotated:
        return RotationBatch(rotated, 0, grown, [])

    rotated_locks = 0
    for ws_id, name, info in _locks(conn):
        if key_id_of_blob(info) != cipher.current_id:
            sealed = cipher.reseal(info, lock_aad(name))
            conn.execute("UPDATE workspaces SET lock_info = ? WHERE id = ?", (sealed, ws_id))
            rotated_locks += 1
    rotated_locks += _rotate_runs(conn, cipher)
    retired = []
    for key_id in canaries:
        if key_id == cipher.current_id:
            continue
        used = conn.execute("SELECT 1 FROM versions WHERE key_id = ? LIMIT 1", (key_id,))
        if used.fetchone() is None:
            conn.execute("DELETE FROM meta WHERE name = ?", (_CANARY + key_id,))
            retired.append(key_id)
    return RotationBatch(0, rotated_locks, 0, retired)
