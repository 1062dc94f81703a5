"""Portable snapshots: everything a store holds as one verifiable stream, for every engine.

A store exports a *consistent* view as a stream of typed records (`Store.export_snapshot`) and
imports such a stream into an empty store (`Store.import_snapshot`). This module defines the
records and their file format, shared by `blixard backup`, `restore` and `migrate` and by the
`GET /api/tofu/admin/backup` endpoint.

File format (``.bxs``, media type ``application/vnd.blixard.snapshot+zstd``): one zstd frame
(with zstd's own content checksum) holding a sequence of records. Each record is one line of
JSON (sorted keys) ending in ``\\n``; a record with ``"bytes": N`` is followed by exactly N raw
bytes and a ``\\n`` (state bodies, plan files, logs: byte-exact, no base64). In order:

- ``header``: format name and version, source engine, creation time, and the counts the
  exporter found in its consistent view;
- the data records, in a canonical order: every ``workspace`` (by name: times, soft-delete,
  head version, the held lock) followed by its ``version`` records (by number: every field of
  the version's metadata, and the exact body); then ``api_key`` (hashes only, revoked ones
  too), ``audit`` (by id: the trail in order), ``run`` (the run document), ``run_blob`` and
  ``run_log``;
- ``manifest``: the counts of what was written, ``versions_sha256`` (SHA-256 over the ordered
  list of "workspace version sha256-of-body" lines) and ``checksum`` (SHA-256 over every byte of
  the data records, i.e. everything between the header and the manifest).

Every version record carries the SHA-256, MD5 and size of its body; a reader checks each one,
then the counts and both digests against the manifest. The stream is deterministic: exporting a
restored store gives the same data records, hence the same checksum, which is how restore and
migrate prove the target holds exactly what the source held (`digest_store`).

Bodies are stored in plaintext (decrypted): a snapshot of an encrypted store must be protected
like the state files themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, cast

import orjson
import zstandard

from blixard.domain.access import ApiKey, AuditEvent, Role
from blixard.domain.models import Lock, VersionMeta, VersionSource
from blixard.domain.runs import Run
from blixard.store.codec import DeltaBase, Encoded, VersionCodec

if TYPE_CHECKING:
    from blixard.store.protocol import Store

FORMAT = "blixard-snapshot"
FORMAT_VERSION = 1
MEDIA_TYPE = "application/vnd.blixard.snapshot+zstd"
SUFFIX = ".bxs"

#: A JSON line longer than this is not a record (bodies travel as raw bytes, not in lines).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Records at least this large are compressed on a worker thread, off the event loop.
_THREAD_BYTES = 1024 * 1024
#: The encoder hands out compressed chunks of about this size.
_CHUNK_BYTES = 256 * 1024
#: The decoder feeds the decompressor this much compressed input at a time.
_SLICE_BYTES = 16 * 1024


class SnapshotError(Exception):
    """A snapshot cannot be written, read or imported; the message says why."""


class SnapshotCorrupt(SnapshotError):
    """The snapshot is damaged, truncated, or not a Blixard snapshot at all."""


class StoreNotEmpty(SnapshotError):
    """Snapshots are imported only into an empty store."""


class UnfinishedImport(SnapshotError):
    """The store holds a partial import (a restore or migration stopped part-way)."""


# --------------------------------------------------------------------------- counts


@dataclass(slots=True)
class SnapshotCounts:
    workspaces: int = 0
    versions: int = 0
    locks: int = 0
    api_keys: int = 0
    audit_events: int = 0
    runs: int = 0
    run_blobs: int = 0
    run_logs: int = 0
    #: The sum of the version bodies' sizes (plaintext, uncompressed).
    body_bytes: int = 0

    def add(self, record: SnapshotRecord) -> None:
        if isinstance(record, WorkspaceRecord):
            self.workspaces += 1
            self.locks += record.lock is not None
        elif isinstance(record, VersionRecord):
            self.versions += 1
            self.body_bytes += len(record.body)
        elif isinstance(record, KeyRecord):
            self.api_keys += 1
        elif isinstance(record, AuditRecord):
            self.audit_events += 1
        elif isinstance(record, RunRecord):
            self.runs += 1
        elif isinstance(record, RunBlobRecord):
            self.run_blobs += 1
        elif isinstance(record, RunLogRecord):
            self.run_logs += 1

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: Any) -> SnapshotCounts:
        if not isinstance(value, dict):
            raise SnapshotCorrupt("the snapshot's counts are not an object")
        names = {f.name for f in fields(cls)}
        if set(value) != names or not all(type(v) is int and v >= 0 for v in value.values()):
            raise SnapshotCorrupt("the snapshot's counts are malformed")
        return cls(**value)

    def differences(self, other: SnapshotCounts) -> list[str]:
        """'versions: 12 != 13' for every count that differs."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: {mine[k]} != {theirs[k]}" for k in mine if mine[k] != theirs[k]]

    @property
    def records(self) -> int:
        """How many data records these counts describe."""
        return sum(v for k, v in self.to_json().items() if k not in ("locks", "body_bytes"))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    """First record of an export: the source engine and what its consistent view holds."""

    engine: str
    counts: SnapshotCounts


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    name: str
    created_at: float
    updated_at: float
    deleted_at: float | None
    #: The current version (None: the workspace only has a lock so far).
    head_version: int | None
    lock: Lock | None


@dataclass(frozen=True, slots=True)
class VersionRecord:
    meta: VersionMeta
    body: bytes


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key: ApiKey


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event: AuditEvent


@dataclass(frozen=True, slots=True)
class RunRecord:
    run: Run


@dataclass(frozen=True, slots=True)
class RunBlobRecord:
    run_id: str
    kind: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RunLogRecord:
    run_id: str
    seq: int
    data: bytes


DataRecord = (
    WorkspaceRecord
    | VersionRecord
    | KeyRecord
    | AuditRecord
    | RunRecord
    | RunBlobRecord
    | RunLogRecord
)
SnapshotRecord = SnapshotBegin | DataRecord


@dataclass(frozen=True, slots=True)
class SnapshotSummary:
    """What a snapshot holds and its digests (see the module docstring)."""

    counts: SnapshotCounts
    checksum: str
    versions_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts.to_json(),
            "checksum": self.checksum,
            "versions_sha256": self.versions_sha256,
        }

    def mismatches(self, other: SnapshotSummary) -> list[str]:
        problems = self.counts.differences(other.counts)
        if self.versions_sha256 != other.versions_sha256:
            problems.append("the version bodies differ (versions_sha256)")
        if self.checksum != other.checksum:
            problems.append("the content differs (checksum)")
        return problems


@dataclass(slots=True)
class ImportReport:
    """What an import wrote."""

    counts: SnapshotCounts = field(default_factory=SnapshotCounts)
    #: Bytes the store used for the version blobs (compressed, sealed when encrypted).
    stored_bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts.to_json(),
            "stored_bytes": self.stored_bytes,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- encoding


def _dumps(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _lock_json(lock: Lock | None) -> dict[str, Any] | None:
    if lock is None:
        return None
    return {"id": lock.id, "info": lock.info, "locked_at": lock.locked_at, "owner": lock.owner}


def encode_record(record: SnapshotRecord) -> tuple[bytes, bytes | None]:
    """The record's JSON line (without its newline) and its raw payload, if it has one."""
    if isinstance(record, WorkspaceRecord):
        return _dumps(
            {
                "type": "workspace",
                "name": record.name,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "deleted_at": record.deleted_at,
                "head_version": record.head_version,
                "lock": _lock_json(record.lock),
            }
        ), None
    if isinstance(record, VersionRecord):
        meta = {f.name: getattr(record.meta, f.name) for f in fields(record.meta)}
        return _dumps({"type": "version", **meta, "bytes": len(record.body)}), record.body
    if isinstance(record, KeyRecord):
        key = record.key
        return _dumps(
            {
                "type": "api_key",
                "id": key.id,
                "name": key.name,
                "role": key.role.name,
                "scopes": list(key.scopes),
                "secret_hash": key.secret_hash,
                "created_at": key.created_at,
                "created_by": key.created_by,
                "last_used_at": key.last_used_at,
                "revoked_at": key.revoked_at,
            }
        ), None
    if isinstance(record, AuditRecord):
        event = {f.name: getattr(record.event, f.name) for f in fields(record.event)}
        return _dumps({"type": "audit", **event}), None
    if isinstance(record, RunRecord):
        return _dumps({"type": "run", "document": record.run.to_document()}), None
    if isinstance(record, RunBlobRecord):
        return _dumps(
            {
                "type": "run_blob",
                "run_id": record.run_id,
                "kind": record.kind,
                "bytes": len(record.data),
            }
        ), record.data
    if isinstance(record, RunLogRecord):
        return _dumps(
            {
                "type": "run_log",
                "run_id": record.run_id,
                "seq": record.seq,
                "bytes": len(record.data),
            }
        ), record.data
    raise TypeError(f"not a data record: {type(record).__name__}")


def _opt_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SnapshotCorrupt(f"{what} is not a string")
    return value


def _num(value: Any, what: str) -> float:
    if type(value) not in (int, float):
        raise SnapshotCorrupt(f"{what} is not a number")
    return float(value)


def _opt_num(value: Any, what: str) -> float | None:
    return None if value is None else _num(value, what)


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise SnapshotCorrupt(f"{what} is not an integer")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SnapshotCorrupt(f"{what} is not a string")
    return value


def decode_record(obj: dict[str, Any], payload: bytes | None) -> DataRecord:
    """The record a JSON line (and its payload) stands for; SnapshotCorrupt if malformed."""
    kind = obj.get("type")
    try:
        if kind == "workspace":
            lock_obj = obj["lock"]
            lock = None
            if lock_obj is not None:
                info = lock_obj["info"]
                if not isinstance(info, dict):
                    raise SnapshotCorrupt("a lock's info is not an object")
                lock = Lock(
                    id=_str(lock_obj["id"], "a lock id"),
                    info=info,
                    locked_at=_num(lock_obj["locked_at"], "a lock time"),
                    owner=_opt_str(lock_obj["owner"], "a lock owner"),
                )
            return WorkspaceRecord(
                name=_str(obj["name"], "a workspace name"),
                created_at=_num(obj["created_at"], "created_at"),
                updated_at=_num(obj["updated_at"], "updated_at"),
                deleted_at=_opt_num(obj["deleted_at"], "deleted_at"),
                head_version=_opt_int(obj["head_version"], "head_version"),
                lock=lock,
            )
        if kind == "version":
            assert payload is not None
            source = obj["source"]
            if source not in ("write", "rollback", "restore"):
                raise SnapshotCorrupt(f"unknown version source {source!r}")
            meta = VersionMeta(
                workspace=_str(obj["workspace"], "a version's workspace"),
                version=_int(obj["version"], "a version number"),
                serial=_int(obj["serial"], "a serial"),
                lineage=_str(obj["lineage"], "a lineage"),
                size=_int(obj["size"], "a size"),
                sha256=_str(obj["sha256"], "a sha256"),
                md5=_str(obj["md5"], "an md5"),
                created_at=_num(obj["created_at"], "created_at"),
                lock_id=_opt_str(obj["lock_id"], "lock_id"),
                terraform_version=_opt_str(obj["terraform_version"], "terraform_version"),
                resource_count=_opt_int(obj["resource_count"], "resource_count"),
                source=cast(VersionSource, source),
                rolled_back_from=_opt_int(obj["rolled_back_from"], "rolled_back_from"),
                written_by=_opt_str(obj["written_by"], "written_by"),
                # Snapshots written before lock holders were kept have no such field.
                lock_who=_opt_str(obj.get("lock_who"), "lock_who"),
            )
            return VersionRecord(meta, payload)
        if kind == "api_key":
            scopes = obj["scopes"]
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise SnapshotCorrupt("a key's scopes are not a list of strings")
            return KeyRecord(
                ApiKey(
                    id=_str(obj["id"], "a key id"),
                    name=_str(obj["name"], "a key name"),
                    role=Role[_str(obj["role"], "a role")],
                    scopes=tuple(scopes),
                    secret_hash=_str(obj["secret_hash"], "a key hash"),
                    created_at=_num(obj["created_at"], "created_at"),
                    created_by=_opt_str(obj["created_by"], "created_by"),
                    last_used_at=_opt_num(obj["last_used_at"], "last_used_at"),
                    revoked_at=_opt_num(obj["revoked_at"], "revoked_at"),
                )
            )
        if kind == "audit":
            return AuditRecord(
                AuditEvent(
                    at=_num(obj["at"], "an audit time"),
                    action=_str(obj["action"], "an audit action"),
                    outcome=_str(obj["outcome"], "an audit outcome"),
                    key_name=_opt_str(obj["key_name"], "key_name"),
                    role=_opt_str(obj["role"], "role"),
                    source=_opt_str(obj["source"], "source"),
                    workspace=_opt_str(obj["workspace"], "workspace"),
                    version=_opt_int(obj["version"], "version"),
                    lock_id=_opt_str(obj["lock_id"], "lock_id"),
                    status=_opt_int(obj["status"], "status"),
                    detail=_opt_str(obj["detail"], "detail"),
                    id=_int(obj["id"], "an audit id"),
                )
            )
        if kind == "run":
            document = obj["document"]
            if not isinstance(document, dict):
                raise SnapshotCorrupt("a run document is not an object")
            return RunRecord(Run.from_document(document))
        if kind == "run_blob":
            assert payload is not None
            return RunBlobRecord(
                _str(obj["run_id"], "a run id"), _str(obj["kind"], "a kind"), payload
            )
        if kind == "run_log":
            assert payload is not None
            return RunLogRecord(_str(obj["run_id"], "a run id"), _int(obj["seq"], "a seq"), payload)
    except SnapshotCorrupt:
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise SnapshotCorrupt(f"malformed {kind} record ({type(exc).__name__}: {exc})") from None
    raise SnapshotCorrupt(f"unknown record type {kind!r}")


def check_version(record: VersionRecord) -> None:
    """The body must be exactly what the version's metadata describes."""
    meta, body = record.meta, record.body
    where = f"workspace '{meta.workspace}' version {meta.version}"
    if len(body) != meta.size:
        raise SnapshotCorrupt(
            f"{where}: the body has {len(body)} bytes, its metadata says {meta.size}"
        )
    if hashlib.sha256(body).hexdigest() != meta.sha256:
        raise SnapshotCorrupt(f"{where}: the body's SHA-256 does not match its metadata")
    if hashlib.md5(body).hexdigest() != meta.md5:
        raise SnapshotCorrupt(f"{where}: the body's MD5 does not match its metadata")


class SnapshotDigest:
    """Counts and digests of a sequence of data records, as the manifest states them."""

    def __init__(self) -> None:
        self.counts = SnapshotCounts()
        self._checksum = hashlib.sha256()
        self._versions = hashlib.sha256()

    def add_framed(self, record: DataRecord, parts: Iterable[bytes]) -> None:
        """Account for a record whose exact framed bytes are `parts`."""
        for part in parts:
            self._checksum.update(part)
        self.counts.add(record)
        if isinstance(record, VersionRecord):
            meta = record.meta
            self._versions.update(f"{meta.workspace} {meta.version} {meta.sha256}\n".encode())

    def add(self, record: DataRecord) -> None:
        self.add_framed(record, frame(record))

    def summary(self) -> SnapshotSummary:
        return SnapshotSummary(
            counts=SnapshotCounts(**self.counts.to_json()),
            checksum=self._checksum.hexdigest(),
            versions_sha256=self._versions.hexdigest(),
        )


def frame(record: DataRecord) -> list[bytes]:
    """The exact bytes of a record in the file: its line, and its payload if any."""
    line, payload = encode_record(record)
    parts = [line, b"\n"]
    if payload is not None:
        parts += [payload, b"\n"]
    return parts


def _weight(record: SnapshotRecord) -> int:
    if isinstance(record, VersionRecord):
        return len(record.body)
    if isinstance(record, RunBlobRecord | RunLogRecord):
        return len(record.data)
    return 256


# --------------------------------------------------------------------------- writing


class SnapshotWriter:
    """Turns a store's export into the compressed file format, chunk by chunk.

    After `stream()` is exhausted, `summary` holds what the manifest says.
    """

    def __init__(self, *, level: int = 3, created_at: float | None = None) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        self._digest = SnapshotDigest()
        self._created_at = time.time() if created_at is None else created_at
        self.begin: SnapshotBegin | None = None
        self.summary: SnapshotSummary | None = None

    def _header(self, begin: SnapshotBegin) -> bytes:
        self.begin = begin
        line = _dumps(
            {
                "type": "header",
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "engine": begin.engine,
                "created_at": self._created_at,
                "counts": begin.counts.to_json(),
            }
        )
        return self._compressor.compress(line + b"\n")

    def _record(self, record: DataRecord) -> bytes:
        if isinstance(record, VersionRecord):
            check_version(record)  # never write a backup that restore would refuse
        parts = frame(record)
        self._digest.add_framed(record, parts)
        return b"".join(self._compressor.compress(part) for part in parts)

    def _finish(self) -> bytes:
        summary = self._digest.summary()
        self.summary = summary
        line = _dumps({"type": "manifest", **summary.to_json()})
        out = self._compressor.compress(line + b"\n")
        return out + self._compressor.flush()

    async def stream(self, records: AsyncIterator[SnapshotRecord]) -> AsyncIterator[bytes]:
        pending: list[bytes] = []
        size = 0
        started = False
        async for record in records:
            if isinstance(record, SnapshotBegin):
                if started:
                    raise SnapshotError("the export began twice")
                out = self._header(record)
                started = True
            else:
                if not started:
                    raise SnapshotError("the export did not begin with its counts")
                if _weight(record) >= _THREAD_BYTES:
                    out = await asyncio.to_thread(self._record, record)
                else:
                    out = self._record(record)
            if out:
                pending.append(out)
                size += len(out)
            if size >= _CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
        if not started:
            raise SnapshotError("the export produced nothing")
        pending.append(self._finish())
        yield b"".join(pending)


# --------------------------------------------------------------------------- reading


class SnapshotReader:
    """Reads and verifies a snapshot from an iterable of compressed chunks (a file, a download).

    Iterating yields the data records, each checked as it goes (bodies against their SHA-256,
    MD5 and size); at the end the counts and digests are checked against the manifest. Any
    problem raises SnapshotCorrupt. `header` is available after the first record, `summary`
    once the iteration has finished.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._buffer = bytearray()
        self._pos = 0
        self._input: memoryview = memoryview(b"")
        self._input_done = False
        self._seen_input = False
        self._digest = SnapshotDigest()
        self.header: dict[str, Any] | None = None
        self.expected: SnapshotCounts | None = None
        self.summary: SnapshotSummary | None = None

    # -- decompressed byte buffer ------------------------------------------------------

    def _fill(self) -> bool:
        """Decompress more input into the buffer; False when the input is exhausted.

        Input goes to the decompressor in small slices: similar versions compress ~100x, so
        one large chunk at once could expand to hundreds of MiB.
        """
        while True:
            if not self._input:
                if self._input_done:
                    return False
                try:
                    chunk = next(self._chunks)
                except StopIteration:
                    self._input_done = True
                    if not self._seen_input:
                        raise SnapshotCorrupt("the file is empty: not a Blixard snapshot") from None
                    if not self._at_end():
                        raise self._truncated() from None
                    return False
                self._input = memoryview(chunk)
                self._seen_input = self._seen_input or bool(chunk)
                continue
            piece, self._input = self._input[:_SLICE_BYTES], self._input[_SLICE_BYTES:]
            if self._at_end():
                raise SnapshotCorrupt("unexpected data after the end of the snapshot")
            try:
                out = self._decompressor.decompress(piece)
            except zstandard.ZstdError as exc:
                raise SnapshotCorrupt(f"not a Blixard snapshot, or damaged (zstd: {exc})") from None
            if self._at_end() and (self._decompressor.unused_data or self._input):
                raise SnapshotCorrupt("unexpected data after the end of the snapshot")
            if out:
                if self._pos and self._pos * 2 >= len(self._buffer):
                    del self._buffer[: self._pos]
                    self._pos = 0
                self._buffer += out
                return True

    def _at_end(self) -> bool:
        """Whether the zstd frame is complete (its checksum verified)."""
        return bool(self._decompressor.eof)

    def _truncated(self) -> SnapshotCorrupt:
        return SnapshotCorrupt(
            "the snapshot ends before its manifest: the file is truncated (an interrupted "
            "backup or copy?)"
        )

    def _line(self) -> bytes | None:
        scanned = 0  # bytes after self._pos known to hold no newline (compaction keeps them)
        while True:
            end = self._buffer.find(b"\n", self._pos + scanned)
            if end >= 0:
                line = bytes(self._buffer[self._pos : end])
                self._pos = end + 1
                return line
            scanned = len(self._buffer) - self._pos
            if scanned > MAX_LINE_BYTES:
                raise SnapshotCorrupt("a record line is implausibly long: not a Blixard snapshot")
            if not self._fill():
                if scanned == 0:
                    return None
                raise self._truncated()

    def _exact(self, n: int) -> bytes:
        while len(self._buffer) - self._pos < n + 1:
            if not self._fill():
                raise self._truncated()
        with memoryview(self._buffer) as view:
            data = bytes(view[self._pos : self._pos + n])  # one copy, not two
        if self._buffer[self._pos + n] != 0x0A:
            raise SnapshotCorrupt("a record's payload is not where its length says: damaged")
        self._pos += n + 1
        return data

    def _json(self, line: bytes) -> dict[str, Any]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise SnapshotCorrupt("a record is not valid JSON: the snapshot is damaged") from None
        if not isinstance(obj, dict):
            raise SnapshotCorrupt("a record is not a JSON object: the snapshot is damaged")
        return cast(dict[str, Any], obj)

    # -- records -----------------------------------------------------------------------

    def read_header(self) -> dict[str, Any]:
        if self.header is not None:
            return self.header
        line = self._line()
        if line is None:
            raise SnapshotCorrupt("the snapshot is empty")
        header = self._json(line)
        if header.get("type") != "header" or header.get("format") != FORMAT:
            raise SnapshotCorrupt("not a Blixard snapshot (no snapshot header)")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise SnapshotCorrupt(
                f"snapshot format version {version!r}; this Blixard reads version "
                f"{FORMAT_VERSION} (upgrade Blixard to restore it)"
            )
        self.expected = SnapshotCounts.from_json(header.get("counts"))
        self.header = header
        return header

    def __iter__(self) -> Iterator[DataRecord]:
        self.read_header()
        while True:
            line = self._line()
            if line is None:
                raise self._truncated()
            obj = self._json(line)
            if obj.get("type") == "manifest":
                self._finish(obj)
                return
            payload = None
            if "bytes" in obj:
                n = obj["bytes"]
                if type(n) is not int or n < 0:
                    raise SnapshotCorrupt("a record has an invalid payload length")
                payload = self._exact(n)
                parts = [line, b"\n", payload, b"\n"]
            else:
                parts = [line, b"\n"]
            record = decode_record(obj, payload)
            if isinstance(record, VersionRecord):
                check_version(record)
            self._digest.add_framed(record, parts)
            yield record

    def _finish(self, manifest: dict[str, Any]) -> None:
        if self._line() is not None or self._fill():
            raise SnapshotCorrupt("unexpected data after the snapshot's manifest")
        if not self._at_end():
            raise self._truncated()
        try:
            stated = SnapshotSummary(
                counts=SnapshotCounts.from_json(manifest.get("counts")),
                checksum=_str(manifest.get("checksum"), "the checksum"),
                versions_sha256=_str(manifest.get("versions_sha256"), "versions_sha256"),
            )
        except SnapshotCorrupt as exc:
            raise SnapshotCorrupt(f"the manifest is malformed: {exc}") from None
        found = self._digest.summary()
        problems = found.mismatches(stated)
        if problems:
            raise SnapshotCorrupt(
                "the snapshot does not match its manifest (" + "; ".join(problems) + ")"
            )
        assert self.expected is not None
        problems = found.counts.differences(self.expected)
        if problems:
            raise SnapshotCorrupt(
                "the snapshot does not hold what its header announced (" + "; ".join(problems) + ")"
            )
        self.summary = found


def file_chunks(path: Any, size: int = 1024 * 1024) -> Iterator[bytes]:
    """The bytes of a file, in chunks (for SnapshotReader)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


async def records_from(reader: SnapshotReader, *, batch: int = 64) -> AsyncIterator[DataRecord]:
    """A SnapshotReader as an async iterator, reading and verifying on a worker thread."""
    iterator = iter(reader)

    def take() -> list[DataRecord]:
        out: list[DataRecord] = []
        weight = 0
        for record in iterator:
            out.append(record)
            weight += _weight(record)
            if len(out) >= batch or weight >= 8 * 1024 * 1024:
                break
        return out

    while True:
        records = await asyncio.to_thread(take)
        if not records:
            return
        for record in records:
            yield record


async def digest_store(
    store: Store, on_record: Callable[[SnapshotRecord], None] | None = None
) -> SnapshotSummary:
    """Export `store` and compute what a snapshot of it would state, writing nothing.

    Every body is checked against its metadata on the way.
    """
    digest = SnapshotDigest()
    async for record in store.export_snapshot():
        if on_record is not None:
            on_record(record)
        if isinstance(record, SnapshotBegin):
            continue
        if isinstance(record, VersionRecord):
            check_version(record)
        digest.add(record)
    return digest.summary()


async def encode_imported(
    codec: VersionCodec, workspace: str, version: int, body: bytes, base: DeltaBase | None
) -> tuple[Encoded, DeltaBase | None]:
    """Pack one imported version as a live write would, and the delta base to use next.

    Every engine's import goes through here, so a restored store holds the same full/delta
    layout (and history size) whatever engine it lands in.
    """
    usable = base
    if usable is not None and codec.wants_full(len(body), len(usable.body), usable.deltas_since):
        usable = None
    if len(body) > _THREAD_BYTES:
        encoded = await asyncio.to_thread(codec.encode, workspace, body, usable)
    else:
        encoded = codec.encode(workspace, body, usable)
    if encoded.encoding == "zstd":
        return encoded, DeltaBase(version, body, len(encoded.blob), 0)
    if base is not None and encoded.base_version == base.version:
        return encoded, DeltaBase(base.version, base.body, base.stored_size, base.deltas_since + 1)
    return encoded, base
