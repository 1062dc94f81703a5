"""The resource index, shared by every engine: one stored index document per workspace, for
its current version, and an in-memory index of every workspace's current version that search
and duplicates answer from.

Why this shape (docs/search.md): each engine writes the new head's index document in the very
transaction that writes the version, and removes the previous head's in it (a SQLite row; an
etcd key in the version's Txn, since one Txn cannot hold a key per instance), so the index is
never behind or ahead of the history and costs one document per workspace, not per version. A
document is the version's rows (domain/resource_index.py), compressed, and sealed like the
version when encryption is on: the index reveals nothing at rest that the state would not.
Every node keeps the current version's document of every workspace in memory (compressed,
~50 bytes per instance) with postings by type and by identity value, so the common searches
(by type, by id/arn) are dictionary look-ups that decode only the workspaces they return;
other filters scan the current documents; `history=true` builds older versions' rows from
their stored bodies (HistoryRows), a bounded number per page.

A document is derived data: one that is missing (heads written before the index existed, a
restored snapshot) or that no configured key opens is (re)built from its version's bytes by
the reindex, which each engine runs in the background after open.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

import orjson
import zstandard

from blixard.domain.models import Body, ResourceSlices
from blixard.domain.parsing import resource_slices
from blixard.domain.resource_index import IndexRow, ResourceQuery, index_rows, resource_rows
from blixard.store.crypto import Cipher

log = logging.getLogger(__name__)

#: A packed document is this header (magic, version number) and the rows' JSON compressed:
#: the version stays outside the compressed part, so a write that keeps the head's resources
#: only swaps the header (restamp). Documents of the first format (one compressed object
#: {"v": 1, "version": n, "rows": [...]}) are still read.
_HEADER = struct.Struct(">4sQ")
#: What a kept row costs in memory (an IndexRow of short strings), for HeadIndex's budget.
ROW_BYTES = 600
_MAGIC = b"BXI\x02"


def index_aad(workspace: str) -> bytes:
    """Binds a sealed index document to its workspace (as a version blob is)."""
    return b"blixard-index:" + workspace.encode()


@dataclass(frozen=True, slots=True)
class IndexDoc:
    version: int
    rows: list[IndexRow]
    #: Bytes of state read to build it (history search's page budget); 0 when stored.
    read_bytes: int = 0
    #: Built by build_doc from the head's document (same resources): `rows` is left empty,
    #: HeadIndex.put keeps the head's postings.
    same_as_head: bool = False


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One per thread: making a zstd context costs more than compressing a small document."""
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=3)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def pack(version: int, rows: Iterable[IndexRow]) -> bytes:
    """A document as kept in memory: compressed, not sealed."""
    plain = orjson.dumps([list(row) for row in rows])
    return _HEADER.pack(_MAGIC, version) + _compressor().compress(plain)


def unpack(packed: bytes) -> IndexDoc:
    if packed[: len(_MAGIC)] == _MAGIC:
        _, version = _HEADER.unpack_from(packed)
        rows = orjson.loads(_decompressor().decompress(memoryview(packed)[_HEADER.size :]))
    else:  # the first format
        doc = orjson.loads(_decompressor().decompress(packed))
        version, rows = doc["version"], doc["rows"]
    return IndexDoc(version, [IndexRow(*row) for row in rows])


def packed_version(packed: bytes) -> int:
    """The version number of a packed document (read from its header)."""
    if packed[: len(_MAGIC)] == _MAGIC:
        return int(_HEADER.unpack_from(packed)[1])
    return unpack(packed).version


def build(version: int, body: Body) -> bytes:
    """The packed document of a version's body."""
    return pack(version, index_rows(body))


@dataclass(frozen=True, slots=True)
class ResourceRows:
    """A version's resources as slices of its body and, when known, the rows of each one
    (same order): what the next write of the workspace compares its own with."""

    slices: ResourceSlices
    groups: list[list[IndexRow]] | None = None


def build_doc(
    version: int,
    body: Body,
    previous: tuple[ResourceRows, bytes] | None = None,
    slices: ResourceSlices | None = None,
) -> tuple[bytes, IndexDoc, ResourceRows | None]:
    """The packed document of a version's body, the document (for HeadIndex.put) and its
    resources (`slices` when the caller has them: StateMeta's, read in the pass that
    validated the body). `previous` (the head's resources and packed document,
    HeadIndex.reusable) is reused: whole when the resources are byte-identical, else the
    rows of each resource whose bytes are unchanged, so a write costs the resources it
    changed."""
    if slices is None:
        slices = resource_slices(body)
    if slices is None:
        rows = index_rows(body)
        return pack(version, rows), IndexDoc(version, rows), None
    if previous is not None and previous[0].slices == slices:
        # The rows are the head's: its document with the new version number, without
        # decoding and re-encoding every row (a write that changes no resource, such as
        # every state Terraform persists while an apply is in progress).
        document = IndexDoc(version, [], same_as_head=True)
        return restamp(previous[1], version), document, ResourceRows(slices, previous[0].groups)
    groups = _groups(slices, previous[0] if previous is not None else None)
    if groups is None:  # a resource of an unusual shape: the whole state, tolerantly
        rows = index_rows(body)
        return pack(version, rows), IndexDoc(version, rows), ResourceRows(slices)
    rows = [row for group in groups for row in group]
    return pack(version, rows), IndexDoc(version, rows), ResourceRows(slices, groups)


def _groups(slices: ResourceSlices, previous: ResourceRows | None) -> list[list[IndexRow]] | None:
    """Each resource's rows, taken from `previous` for a resource whose bytes it has (at the
    same place, or, once resources were added or removed, anywhere), read otherwise."""
    old_slices, old_groups = (previous.slices, previous.groups) if previous else ([], None)
    shifted = len(old_slices) != len(slices)
    by_bytes: dict[bytes, list[IndexRow]] | None = None
    groups: list[list[IndexRow]] = []
    for place, raw in enumerate(slices):
        rows: list[IndexRow] | None = None
        if old_groups is not None:
            if place < len(old_slices) and old_slices[place] == raw:
                rows = old_groups[place]
            elif shifted:  # look the bytes up (copying every slice once, so only then)
                if by_bytes is None:
                    by_bytes = {bytes(s): g for s, g in zip(old_slices, old_groups, strict=True)}
                rows = by_bytes.get(bytes(raw))
        if rows is None:
            rows = resource_rows(raw)
            if rows is None:
                return None
        groups.append(rows)
    return groups


def restamp(packed: bytes, version: int) -> bytes:
    """A packed document with another version number."""
    if packed[: len(_MAGIC)] != _MAGIC:
        return pack(version, unpack(packed).rows)
    return _HEADER.pack(_MAGIC, version) + packed[_HEADER.size :]


class HistoryRows:
    """Rows of successive versions of one workspace built from their bodies (history search):
    a version whose resources are byte-identical to the previous one's reuses its rows (a
    serial bump or changed outputs cost a comparison, not a parse)."""

    def __init__(self) -> None:
        self._slices: ResourceSlices | None = None
        self._rows: list[IndexRow] = []

    def doc(self, version: int, body: Body) -> IndexDoc:
        slices = resource_slices(body)
        if slices is None or slices != self._slices:
            self._rows = index_rows(body)
        self._slices = slices
        return IndexDoc(version, self._rows, len(body))


def seal(cipher: Cipher | None, workspace: str, packed: bytes) -> bytes:
    return packed if cipher is None else cipher.seal(packed, index_aad(workspace))


def open_sealed(cipher: Cipher | None, workspace: str, stored: bytes) -> bytes:
    return stored if cipher is None else cipher.open(stored, index_aad(workspace))


# -- search results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    workspace: str
    version: int
    row: IndexRow


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: results sort by (workspace, version, address)."""

    workspace: str
    version: int
    address: str

    def encode(self) -> str:
        raw = orjson.dumps([self.workspace, self.version, self.address])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """None when `text` is not a cursor this module made."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            workspace, version, address = orjson.loads(raw)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            return None
        if not (
            isinstance(workspace, str)
            and type(version) is int
            and version >= 0
            and isinstance(address, str)
        ):
            return None
        return cls(workspace, version, address)

    def before(self, workspace: str, version: int, address: str) -> bool:
        """True when (workspace, version, address) comes after this cursor."""
        return (workspace, version, address) > (self.workspace, self.version, self.address)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An identity value held by the current versions of several workspaces."""

    kind: str  # id, arn or self_link
    value: str
    holders: list[Match]


@dataclass(slots=True)
class ReindexStatus:
    """Progress of building missing index documents (reported by /health and the reindex)."""

    running: bool = False
    complete: bool = False
    indexed: int = 0
    remaining: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "complete": self.complete,
            "indexed": self.indexed,
            "remaining": self.remaining,
            "error": self.error,
        }


class ProgressLog:
    """Logs reindex progress at most every few seconds."""

    def __init__(self, engine: str, total: int, every: float = 5.0) -> None:
        self.engine, self.total, self.every = engine, total, every
        self.started = self.last = time.monotonic()
        self.done = 0

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info(
                "resource index (%s): %d of %d versions indexed (%.0f s)",
                self.engine,
                self.done,
                self.total,
                now - self.started,
            )

    def finish(self) -> None:
        if self.total:
            log.info(
                "resource index (%s): %d versions indexed in %.1f s",
                self.engine,
                self.done,
                time.monotonic() - self.started,
            )


#: What one engine's reindex builds a document for (a workspace and its head version).
Work = TypeVar("Work")


@dataclass(frozen=True, slots=True)
class ReindexPlan(Generic[Work]):
    """One engine's reindex pass: how many documents it will build, which ones (listed as the
    pass goes), how to build one, and what to record once all are built."""

    total: int
    work: AsyncIterable[Work]
    index_one: Callable[[Work], Awaitable[None]]
    on_complete: Callable[[], Awaitable[None]] | None = None


class Reindexer:
    """Runs an engine's reindex passes, in the background or awaited, and reports their
    progress. The engine supplies only `plan` (what is missing, how to build one document);
    the documents built are the progress marker, so an interrupted pass resumes at the next."""

    def __init__(self, engine: str, plan: Callable[[bool], Awaitable[ReindexPlan[Any]]]) -> None:
        self.engine = engine
        self.status = ReindexStatus()
        self._plan = plan
        self._task: asyncio.Task[None] | None = None

    def start(self, *, force: bool = False) -> None:
        """Run a pass in the background (a forced one replaces a pass in progress)."""
        if self._task is not None and not self._task.done():
            if not force:
                return
            self._task.cancel()
        # Reported as running from now on, not only once the task has started.
        self.status.running, self.status.complete = True, False
        self._task = asyncio.create_task(self._run_in_background(force))

    async def wait(self) -> None:
        """Until the background pass, if any, has ended."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Cancel the background pass (what it built stays built)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run_in_background(self, force: bool) -> None:
        try:
            await self.run(force=force)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged and reported; the next open resumes
            log.warning("resource index: reindex stopped: %s", exc)

    async def run(self, *, force: bool = False) -> ReindexStatus:
        """Build every workspace's missing current document (all of them with `force`), one
        at a time, then return."""
        status = self.status
        status.running, status.complete, status.error = True, False, None
        status.started_at, status.indexed = time.time(), 0
        try:
            plan = await self._plan(force)
            status.remaining = plan.total
            progress = ProgressLog(self.engine, plan.total)
            async for item in plan.work:
                await plan.index_one(item)
                status.indexed += 1
                status.remaining = max(0, status.remaining - 1)
                progress.step()
            progress.finish()
            if plan.on_complete is not None:
                await plan.on_complete()
            status.complete = True
        except Exception as exc:
            status.error = str(exc)
            raise
        finally:
            status.running = False
            status.finished_at = time.time()
        return status


# -- the in-memory index of current versions -----------------------------------------------


@dataclass(slots=True)
class _Head:
    version: int
    packed: bytes
    types: frozenset[str]
    identities: frozenset[str]


@dataclass
class HeadIndex:
    """The current version's document of every workspace, with postings by type and by
    identity value. Soft-deleted workspaces are kept but hidden (a restore shows them again).
    Used from the event loop only."""

    _heads: dict[str, _Head] = field(default_factory=dict)
    _hidden: set[str] = field(default_factory=set)
    _by_type: dict[str, set[str]] = field(default_factory=dict)
    #: identity value → the workspace holding it, or a set of them (most values have one).
    _by_identity: dict[str, str | set[str]] = field(default_factory=dict)
    #: Resources of the heads this node wrote lately (a write keeping them restamps
    #: the head's document), by workspace, oldest first; they hold their bodies and rows,
    #: so their total is bounded (the engines' body caches usually hold the same bodies).
    recent_bytes: int = 64 * 1024 * 1024
    _recent: OrderedDict[str, tuple[int, ResourceRows, int]] = field(default_factory=OrderedDict)
    _recent_size: int = 0

    def __len__(self) -> int:
        return len(self._heads)

    def version_of(self, workspace: str) -> int | None:
        head = self._heads.get(workspace)
        return head.version if head else None

    def reusable(self, workspace: str) -> tuple[ResourceRows, bytes] | None:
        """The current document's resources and packed form, when this node wrote it lately
        (build_doc)."""
        head = self._heads.get(workspace)
        recent = self._recent.get(workspace)
        if head is None or recent is None or recent[0] != head.version:
            return None
        self._recent.move_to_end(workspace)
        return recent[1], head.packed

    def put(
        self,
        workspace: str,
        packed: bytes,
        doc: IndexDoc | None = None,
        resources: ResourceRows | None = None,
        size: int = 0,
    ) -> None:
        """Make `packed` the workspace's current document, unless a newer one is known;
        `resources` (of a body of `size` bytes) are what the next write compares with."""
        known = self._heads.get(workspace)
        version = doc.version if doc is not None else packed_version(packed)
        if known is not None and known.version >= version:
            if resources is not None and known.version == version:
                # The same document arrived first another way (an etcd watch): keep its
                # postings, learn the resources that let the next write reuse it.
                self._remember(workspace, version, resources, size)
            return
        if doc is not None and doc.same_as_head:
            if known is not None and known.packed[_HEADER.size :] == packed[_HEADER.size :]:
                # Same rows as the head: same postings, only the document and version move.
                self._heads[workspace] = replace(known, version=version, packed=packed)
                self._remember(workspace, version, resources, size)
                return
            doc = None  # the head moved meanwhile: read the document itself
        doc = doc or unpack(packed)
        self.drop(workspace, keep_hidden=True)
        head = _Head(
            doc.version,
            packed,
            frozenset(row.type for row in doc.rows),
            frozenset(value for row in doc.rows for _, value in row.identities()),
        )
        self._heads[workspace] = head
        self._remember(workspace, version, resources, size)
        for type_ in head.types:
            self._by_type.setdefault(type_, set()).add(workspace)
        for value in head.identities:
            held = self._by_identity.get(value)
            if held is None:
                self._by_identity[value] = workspace
            elif isinstance(held, str):
                if held != workspace:
                    self._by_identity[value] = {held, workspace}
            else:
                held.add(workspace)

    def _remember(
        self, workspace: str, version: int, resources: ResourceRows | None, size: int
    ) -> None:
        """Keep a head's resources (their slices hold its body, `size` bytes, and their rows
        about ROW_BYTES each) within recent_bytes, newest first."""
        self._forget(workspace)
        if resources is None:
            return
        if resources.groups is not None:
            size += ROW_BYTES * sum(map(len, resources.groups))
        if size > self.recent_bytes:
            return
        self._recent[workspace] = (version, resources, size)
        self._recent_size += size
        while self._recent_size > self.recent_bytes:
            _, (_, _, dropped) = self._recent.popitem(last=False)
            self._recent_size -= dropped

    def _forget(self, workspace: str) -> None:
        recent = self._recent.pop(workspace, None)
        if recent is not None:
            self._recent_size -= recent[2]

    def drop(self, workspace: str, *, keep_hidden: bool = False) -> None:
        head = self._heads.pop(workspace, None)
        self._forget(workspace)
        if not keep_hidden:
            self._hidden.discard(workspace)
        if head is None:
            return
        for type_ in head.types:
            holders = self._by_type.get(type_)
            if holders is not None:
                holders.discard(workspace)
                if not holders:
                    del self._by_type[type_]
        for value in head.identities:
            held = self._by_identity.get(value)
            if held == workspace:
                del self._by_identity[value]
            elif isinstance(held, set):
                held.discard(workspace)
                if len(held) == 1:
                    self._by_identity[value] = next(iter(held))

    def set_hidden(self, workspace: str, hidden: bool) -> None:
        if hidden:
            self._hidden.add(workspace)
        else:
            self._hidden.discard(workspace)

    def _candidates(self, query: ResourceQuery) -> Iterable[str]:
        if query.id is not None:
            held = self._by_identity.get(query.id)
            found = set() if held is None else {held} if isinstance(held, str) else set(held)
            if query.type is not None:
                found &= self._by_type.get(query.type, set())
            return found
        if query.type is not None:
            return self._by_type.get(query.type, ())
        return self._heads.keys()

    def search(
        self,
        query: ResourceQuery,
        visible: Callable[[str], bool],
        *,
        after: Cursor | None = None,
        limit: int = 100,
    ) -> Iterator[Match]:
        """Matching rows of the current versions of visible workspaces, in (workspace,
        address) order after `after`; the caller stops iterating when it has enough."""
        names = sorted(
            name
            for name in self._candidates(query)
            if name not in self._hidden
            and (after is None or name >= after.workspace)
            and visible(name)
        )
        for name in names:
            head = self._heads.get(name)
            if head is None:
                continue
            doc = unpack(head.packed)
            for row in sorted(doc.rows, key=lambda r: r.address):
                if after is not None and (name, row.address) <= (after.workspace, after.address):
                    continue
                if query.matches(row):
                    yield Match(name, doc.version, row)

    def duplicates(self, visible: Callable[[str], bool]) -> list[Duplicate]:
        """Identity values in the current versions of two or more visible workspaces."""
        found: list[Duplicate] = []
        rows_of: dict[str, IndexDoc] = {}
        for value, held in self._by_identity.items():
            if isinstance(held, str):
                continue
            holders = sorted(n for n in held if n not in self._hidden and visible(n))
            if len(holders) < 2:
                continue
            by_kind: dict[str, list[Match]] = {}
            for name in holders:
                doc = rows_of.get(name) or unpack(self._heads[name].packed)
                rows_of[name] = doc
                for row in doc.rows:
                    for kind, identity in row.identities():
                        if identity == value:
                            by_kind.setdefault(kind, []).append(Match(name, doc.version, row))
            for kind, matches in sorted(by_kind.items()):
                if len({m.workspace for m in matches}) >= 2:
                    found.append(Duplicate(kind, value, matches))
        found.sort(key=lambda d: (d.kind, d.value))
        return found


class ResourceIndexStore(Protocol):
    """The store capability search is built on (both engines have it)."""

    #: Current versions, kept by the store in step with its writes (and, on etcd, with the
    #: writes of other nodes).
    resource_index: HeadIndex
    #: Builds missing current documents: in the background after open and after an import,
    #: and all of them on request (`blixard reindex`).
    reindexer: Reindexer

    async def index_history(
        self, workspace: str, *, from_version: int = 1, limit: int = 64
    ) -> list[IndexDoc]:
        """Index documents of versions `from_version` and up, by version: only the current
        version's is stored, the others are built from their bodies (HistoryRows) and not
        kept (their `read_bytes` say how much was read)."""
        ...
