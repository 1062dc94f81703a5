"""Every etcd key the engine writes, and the document a large value is stored as.

The layout (docs/architecture.md lists it with what each value holds): every key starts with
the store's prefix (`blixard/` by default) followed by one of the families below. No other
module spells a key; they call `Keyspace` with these names.

A value that may be large (a version's encoded body, a run's blob) is a small JSON document
at its key: `{"inline": base64}` up to INLINE_BYTES, else `{"chunks_at": key, "chunks": n}`
naming n chunks of CHUNK_BYTES written elsewhere (under CHUNKS, or a version's BLOBS range).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

#: Workspace records by name (`ws/NAME`): head, lock, base and counts.
WORKSPACES = "ws/"
#: Version documents (`ver/NAME\0INV`, newest first): meta and the encoded body or its chunks.
VERSIONS = "ver/"
#: A version's body chunks (`blob/NAME\0INV/UPLOAD/NNNNN`).
BLOBS = "blob/"
#: Chunks of other large values (`chunks/KEY/RANDOM/NNNNN`), outside the value's own range.
CHUNKS = "chunks/"
#: API keys by id, the active key id by name, and last-used times by id.
KEYS_BY_ID = "keys/id/"
KEYS_BY_NAME = "keys/name/"
KEYS_USED = "keys/used/"
#: The audit trail (`audit/INV`, newest first) and its indexes by workspace and key name.
AUDIT = "audit/"
AUDIT_BY_WORKSPACE = "audit-ws/"
AUDIT_BY_KEY = "audit-key/"
#: Run documents by id, their index by workspace, their revisions, and the open runs.
RUNS = "runs/"
RUNS_BY_WORKSPACE = "runs-ws/"
RUN_REVISIONS = "runrev/"
RUNS_OPEN = "runopen/"
#: A run's blobs (`runblob/ID\0KIND`) and its log (`runlog/ID\0SEQ`).
RUN_BLOBS = "runblob/"
RUN_LOGS = "runlog/"
#: The resource index (docs/search.md): the current version's document (`rix/NAME\0INV`), the
#: chunks of a large one (`rixblob/NAME\0INV/RANDOM/NNNNN`), and each workspace's head marker
#: written by soft delete and restore (`rixhead/NAME`). RESOURCE_INDEX_ALL covers all three
#: (the index watch and the load at open read that range).
RESOURCE_INDEX_ALL = "rix"
RESOURCE_INDEX = "rix/"
RESOURCE_INDEX_BLOBS = "rixblob/"
RESOURCE_INDEX_HEADS = "rixhead/"
#: Live nodes, each under its lease (`nodes/NODE_ID`).
NODES = "nodes/"
#: The store's own records.
META_SCHEMA = "meta/schema"
META_IMPORT = "meta/import"
META_ENCRYPTION = "meta/encryption"
META_AUDIT_IDS = "meta/auditids"
META_RUN_INDEX = "meta/runindex"
META_RUN_INDEX_WS = "meta/runindex-ws"
META_COMPACTION = "meta/compaction"
META_PINS = "meta/pins/"
#: The encryption key id the resource index documents were last sealed under.
META_RESOURCE_INDEX_KEY = "meta/rixkey"

#: Values up to this size are stored inline (base64 in the document): one put, well below
#: etcd's 1.5 MiB request limit; larger ones are written as chunks of CHUNK_BYTES.
INLINE_BYTES = 512 * 1024
CHUNK_BYTES = 1024 * 1024

#: Audit ids, which the audit keys sort by (newest first), are `(milliseconds since
#: AUDIT_EPOCH_MS << AUDIT_LOW_BITS) + low bits`: below 2**53 (exact as a JSON double) until
#: 2093. The low bits start at a random offset per store instance and count up within a
#: millisecond (docs/etcd-notes.md §12, "Audit ids").
AUDIT_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
AUDIT_LOW_BITS = 12
#: Ids from here up were made by the earlier scheme, `(µs since 1970 << 8) | slot`; open()
#: gives those events new ids below it, once per prefix (marker `meta/auditids`).
OLD_AUDIT_IDS = 2**53

_INV_WIDTH = 20
_INV_MAX = 10**_INV_WIDTH - 1


def inv(number: int) -> str:
    """A fixed-width decimal that sorts in reverse numeric order (newest first)."""
    return f"{_INV_MAX - number:0{_INV_WIDTH}d}"


def uninv(text: str | bytes) -> int:
    """The number an inv() string stands for."""
    number: int = _INV_MAX - int(text)
    return number


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key starting with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def chunk_keys(prefix: bytes, size: int) -> list[bytes]:
    """The keys of the chunks a value of `size` bytes is written as under `prefix`."""
    return [prefix + f"{i:05d}".encode() for i in range((size + CHUNK_BYTES - 1) // CHUNK_BYTES)]


class Keyspace:
    """The keys of one store: its prefix followed by a family and the parts that name a
    record. The store and its helpers (snapshot.py, encryption.py) share one instance."""

    __slots__ = ("prefix", "root")

    def __init__(self, prefix: str) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        #: The prefix as bytes: every key starts with it.
        self.root = prefix.encode()

    def key(self, *parts: str) -> bytes:
        """The key of a family (a constant above) and the parts after it."""
        return self.root + "".join(parts).encode()

    def relative(self, key: bytes) -> str:
        """A key without the prefix, as a value document names it (`chunks_at`)."""
        return key[len(self.root) :].decode()

    def workspace(self, name: str) -> bytes:
        return self.key(WORKSPACES, name)

    def versions(self, name: str) -> bytes:
        """The prefix of a workspace's version documents."""
        return self.key(VERSIONS, name, "\x00")

    def version(self, name: str, number: int) -> bytes:
        return self.versions(name) + inv(number).encode()

    def blob(self, name: str, number: int, upload: str) -> bytes:
        """Where one upload of a version's body chunks goes."""
        return self.key(BLOBS, name, "\x00", inv(number), "/", upload, "/")

    def chunks_of(self, key: bytes) -> bytes:
        """Where the chunks of a large value at `key` go: outside the value's own range."""
        return (
            self.key(CHUNKS) + key[len(self.root) :] + b"/" + secrets.token_hex(8).encode() + b"/"
        )

    def run_blob(self, run_id: str, kind: str) -> bytes:
        return self.key(RUN_BLOBS, run_id, "\x00", kind)

    def run_log(self, run_id: str) -> bytes:
        """The prefix of a run's log chunks."""
        return self.key(RUN_LOGS, run_id, "\x00")

    # -- the value document ------------------------------------------------------------------

    def chunked(self, chunks_at: bytes, count: int) -> dict[str, Any]:
        """The document of a value written as `count` chunks under `chunks_at`."""
        return {"chunks_at": self.relative(chunks_at), "chunks": count}

    async def read_value(
        self, doc: dict[str, Any], read_chunks: Callable[[bytes, int], Awaitable[bytes]]
    ) -> bytes:
        """The bytes a value document holds: inline, or its chunks read with `read_chunks`
        (prefix, count)."""
        if "inline" in doc:
            return unb64(doc["inline"])
        return await read_chunks(self.key(doc["chunks_at"]), doc["chunks"])


def inline(data: bytes) -> dict[str, Any]:
    """The document of a value stored inline (at most INLINE_BYTES)."""
    return {"inline": b64(data)}
