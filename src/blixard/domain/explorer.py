"""The state explorer: resources, outputs, diffs, per-resource timelines and time travel.

Read-only views of stored versions, built from the stored bytes through the Store's read
methods only (get_workspace, list_versions, read_version), so they work on every engine and
on versions written before the explorer existed. Parsed versions are kept in a small LRU
cache keyed by (workspace, version, sha256) and bounded by the size of their stored bodies,
so repeated views of the same versions (a diff, then its resources) parse each body once.

Sensitive values are masked everywhere (domain/resources.py); only `outputs(reveal=...)`
shows them, and it records the reveal in the audit trail (durably) before answering.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from blixard.domain.access import Action, Actor, audit_event
from blixard.domain.diff import EMPTY_STATE, StateDiff, attribute_changes, diff_states
from blixard.domain.errors import InvalidInput, NotFound
from blixard.domain.models import VersionMeta, Workspace
from blixard.domain.parsing import check_workspace_name
from blixard.domain.resources import Output, ResourceInstance, StateContents, read_contents
from blixard.store.protocol import Store

#: Estimated memory of the parsed versions kept (ParsedCache): about four 10 MiB versions.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: Bodies at least this large are parsed and diffed off the event loop.
_OFFLOAD_BYTES = 256 * 1024
#: Longest resource address accepted (Terraform's are far shorter; this bounds the work).
MAX_ADDRESS_LENGTH = 4096

MODES = ("managed", "data")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(timestamp: float) -> int:
    """A stored time in whole microseconds, exactly as the API prints it (RFC 3339 with six
    decimals), so a `created_at` copied from an answer names that very instant."""
    return (datetime.fromtimestamp(timestamp, UTC) - _EPOCH) // _MICROSECOND


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def parse_instant(value: str) -> int:
    """An RFC 3339 timestamp (`2026-12-05T18:00:00Z`, `...+02:00`) in Unix microseconds."""
    if not _RFC3339.fullmatch(value):
        if _RFC3339.fullmatch(value + "Z"):
            raise InvalidInput(
                f"Timestamp '{value}' needs a time zone: end it with Z or an offset like +02:00."
            )
        raise InvalidInput(
            f"'{value[:64]}' is not an RFC 3339 timestamp such as 2026-12-05T18:00:00Z."
        )
    try:
        instant = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"'{value}' is not a valid date and time.") from None
    return (instant - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Parsed:
    """A version's parsed contents, with the indexes the explorer's views need."""

    meta: VersionMeta
    contents: StateContents
    by_address: dict[str, list[ResourceInstance]] = field(repr=False)
    ordered: tuple[ResourceInstance, ...] = field(repr=False)  # by key
    keys: tuple[str, ...] = field(repr=False)  # the keys of `ordered`, for paging


def _index(meta: VersionMeta, contents: StateContents) -> Parsed:
    by_address: dict[str, list[ResourceInstance]] = {}
    for instance in contents.instances:
        by_address.setdefault(instance.address, []).append(instance)
    ordered = tuple(sorted(contents.instances, key=lambda i: i.key))
    return Parsed(meta, contents, by_address, ordered, tuple(i.key for i in ordered))


class ParsedCache:
    """LRU of parsed versions, bounded by an estimate of their memory: the stored body's size
    (each instance keeps its attributes' JSON) plus INSTANCE_BYTES per instance."""

    #: Memory an instance's Python objects take besides its attributes' JSON (measured:
    #: ~360 bytes with the indexes, tracemalloc, 10 MiB state; rounded up).
    INSTANCE_BYTES = 512

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, str], tuple[Parsed, int]] = OrderedDict()
        self._bytes = 0

    def get(self, meta: VersionMeta) -> Parsed | None:
        key = (meta.workspace, meta.version, meta.sha256)
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, parsed: Parsed) -> None:
        meta = parsed.meta
        weight = meta.size + self.INSTANCE_BYTES * len(parsed.contents.instances)
        key = (meta.workspace, meta.version, meta.sha256)
        if weight > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (parsed, weight)
        self._bytes += weight
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted


@dataclass(frozen=True, slots=True)
class ResourcePage:
    meta: VersionMeta
    contents: StateContents
    instances: list[ResourceInstance]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class ResourceObjects:
    """An address in one version: its current object (if any) and its deposed objects."""

    meta: VersionMeta
    current: ResourceInstance | None
    deposed: list[ResourceInstance]


@dataclass(frozen=True, slots=True)
class OutputsView:
    meta: VersionMeta
    outputs: tuple[Output, ...]
    revealed: bool


@dataclass(frozen=True, slots=True)
class DiffView:
    before: VersionMeta | None  # None: compared with an empty state (no earlier version)
    after: VersionMeta
    diff: StateDiff


HistoryEvent = Literal["appeared", "changed", "disappeared"]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """A version in which the instance at an address appeared, changed or disappeared."""

    meta: VersionMeta
    event: HistoryEvent
    paths: list[str]  # changed attribute paths (masked paths are named, never valued)
    status_before: str | None
    status_after: str | None
    moved_from: str | None = None  # appeared: the address it had in the version before
    moved_to: str | None = None  # disappeared: the address it has in this version


@dataclass(frozen=True, slots=True)
class Timeline:
    workspace: str
    address: str
    entries: list[TimelineEntry]
    next_before: int | None  # older versions remain: pass as `before` to continue


class ExplorerService:
    def __init__(
        self,
        store: Store,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cache = ParsedCache(cache_bytes)
        self.clock = clock

    # -- choosing a version ----------------------------------------------------------------

    async def _workspace(self, name: str) -> Workspace:
        check_workspace_name(name)
        ws = await self.store.get_workspace(name)
        if ws is None or ws.deleted:
            raise NotFound(f"Workspace '{name}' does not exist.")
        return ws

    async def _meta(self, name: str, version: int) -> VersionMeta:
        found = await self.store.list_versions(name, before=version + 1, limit=1)
        if not found or found[0].version != version:
            raise NotFound(f"Workspace '{name}' has no version {version}.")
        return found[0]

    async def _previous(self, meta: VersionMeta) -> VersionMeta | None:
        found = await self.store.list_versions(meta.workspace, before=meta.version, limit=1)
        return found[0] if found else None

    async def select(
        self, name: str, *, version: int | None = None, as_of: str | None = None
    ) -> VersionMeta:
        """The version a request names: `version`, the one current at `as_of`, or the head."""
        if version is not None and as_of is not None:
            raise InvalidInput("Pass either a version or as_of, not both.")
        instant = parse_instant(as_of) if as_of is not None else None
        ws = await self._workspace(name)
        if ws.head is None:
            raise NotFound(f"Workspace '{name}' has no state yet.")
        if version is not None:
            return ws.head if version == ws.head.version else await self._meta(name, version)
        if instant is not None:
            return await self._current_at(ws.head, instant, as_of or "")
        return ws.head

    async def _current_at(self, head: VersionMeta, instant: int, shown: str) -> VersionMeta:
        """The newest version created at or before `instant` (binary search over numbers:
        versions are numbered in the order they were written)."""
        if micros(head.created_at) <= instant:
            return head
        first = await self.store.list_versions(head.workspace, before=2, limit=1)
        if not first or micros(first[0].created_at) > instant:
            when = f" (its first version was written at {_rfc3339(first[0].created_at)})"
            raise NotFound(
                f"Workspace '{head.workspace}' had no state at {shown.strip()}"
                + (when if first else "")
                + "."
            )
        best, low, high = first[0], first[0].version, head.version
        while high - low > 1:
            middle = (low + high) // 2
            found = await self.store.list_versions(head.workspace, before=middle + 1, limit=1)
            probe = found[0] if found else best
            if micros(probe.created_at) <= instant:
                best = probe if probe.version > best.version else best
                low = middle
            else:
                high = probe.version
        return best

    async def version_at(self, name: str, as_of: str, version: int | None = None) -> int:
        """The number of the version current at `as_of` (GET /state?as_of=; passing a
        `version` too is refused)."""
        return (await self.select(name, version=version, as_of=as_of)).version

    # -- parsed versions -------------------------------------------------------------------

    async def parsed(self, meta: VersionMeta) -> Parsed:
        cached = self.cache.get(meta)
        if cached is not None:
            return cached
        found = await self.store.read_version(meta.workspace, meta.version)
        if found is None:
            raise NotFound(f"Workspace '{meta.workspace}' has no version {meta.version}.")
        stored_meta, body = found
        if len(body) >= _OFFLOAD_BYTES:
            contents = await asyncio.to_thread(_read_without_gc, body)
        else:
            contents = read_contents(body)
        parsed = _index(stored_meta, contents)
        self.cache.put(parsed)
        return parsed

    # -- views -----------------------------------------------------------------------------

    async def resources(
        self,
        name: str,
        *,
        version: int | None = None,
        as_of: str | None = None,
        type: str | None = None,
        module: str | None = None,
        mode: str | None = None,
        query: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> ResourcePage:
        """Instances of a version sorted by key (address, deposed objects after it), filtered
        by exact type, module path prefix, mode and a case-insensitive substring of the
        address or an identity value; paged with `after` (the last key of the page before)."""
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}.")
        parsed = await self.parsed(await self.select(name, version=version, as_of=as_of))
        needle = query.lower() if query else None
        page: list[ResourceInstance] = []
        more = False
        start = 0 if after is None else bisect.bisect_right(parsed.keys, after)
        for instance in parsed.ordered[start:]:
            if type is not None and instance.type != type:
                continue
            if mode is not None and instance.mode != mode:
                continue
            if module is not None and not _in_module(instance.module, module):
                continue
            if needle is not None and not _mentions(instance, needle):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(instance)
        return ResourcePage(
            parsed.meta, parsed.contents, page, page[-1].key if more and page else None
        )

    async def resource(
        self, name: str, address: str, *, version: int | None = None, as_of: str | None = None
    ) -> ResourceObjects:
        _check_address(address)
        parsed = await self.parsed(await self.select(name, version=version, as_of=as_of))
        objects = parsed.by_address.get(address, [])
        if not objects:
            raise NotFound(
                f"Version {parsed.meta.version} of '{name}' has no resource instance {address}."
            )
        current = next((i for i in objects if i.deposed_key is None), None)
        return ResourceObjects(
            parsed.meta, current, [i for i in objects if i.deposed_key is not None]
        )

    async def outputs(
        self,
        name: str,
        *,
        version: int | None = None,
        as_of: str | None = None,
        reveal_to: Actor | None = None,
    ) -> OutputsView:
        """Outputs of a version; `reveal_to` (an actor already allowed to reveal) gets the
        sensitive values, once the reveal is durably in the audit trail."""
        parsed = await self.parsed(await self.select(name, version=version, as_of=as_of))
        outputs = parsed.contents.outputs
        if reveal_to is not None:
            secret = [output.name for output in outputs if output.sensitive]
            await self.store.append_audit(
                [
                    audit_event(
                        reveal_to,
                        Action.sensitive_reveal,
                        self.clock(),
                        workspace=name,
                        version=parsed.meta.version,
                        detail="outputs revealed: " + (", ".join(secret) or "(none sensitive)"),
                    )
                ]
            )
        return OutputsView(parsed.meta, outputs, revealed=reveal_to is not None)

    async def diff(
        self,
        name: str,
        *,
        to_version: int | None = None,
        to_as_of: str | None = None,
        from_version: int | None = None,
        from_as_of: str | None = None,
        from_workspace: str | None = None,
    ) -> DiffView:
        """`from` -> `to`. `to` defaults to the current version; `from` to the version before
        `to` (an empty state when there is none) or, with `from_workspace`, to that
        workspace's current version."""
        after_meta = await self.select(name, version=to_version, as_of=to_as_of)
        before_meta: VersionMeta | None
        if from_workspace is not None or from_version is not None or from_as_of is not None:
            before_meta = await self.select(
                from_workspace or name, version=from_version, as_of=from_as_of
            )
        else:
            before_meta = await self._previous(after_meta)
        after = await self.parsed(after_meta)
        before = await self.parsed(before_meta) if before_meta else None
        before_contents = before.contents if before else EMPTY_STATE
        if max(after.meta.size, before.meta.size if before else 0) >= _OFFLOAD_BYTES:
            diff = await asyncio.to_thread(diff_states, before_contents, after.contents)
        else:
            diff = diff_states(before_contents, after.contents)
        return DiffView(before.meta if before else None, after.meta, diff)

    async def timeline(
        self, name: str, address: str, *, before: int | None = None, limit: int = 50
    ) -> Timeline:
        """Versions (newest first) below `before` in which the instance at `address`
        appeared, changed or disappeared (moved here from, or away to, another address when
        the same object is found there), looking at `limit` versions per call."""
        _check_address(address)
        await self._workspace(name)
        versions = await self.store.list_versions(name, before=before, limit=limit)
        if not versions:
            if before is None:
                raise NotFound(f"Workspace '{name}' has no state yet.")
            return Timeline(name, address, [], None)
        oldest = versions[-1]
        previous = await self._previous(oldest)
        chain = [*reversed(versions)]
        entries: list[TimelineEntry] = []
        earlier = await self._object_at(previous, address) if previous else None
        earlier_meta = previous
        for meta in chain:
            if earlier_meta is not None and meta.sha256 == earlier_meta.sha256:
                continue  # same bytes (an identical rollback): nothing changed
            now = await self._object_at(meta, address)
            entry = _timeline_entry(meta, earlier, now)
            if entry is not None and entry.event == "appeared" and earlier_meta is not None:
                assert now is not None
                moved_from = await self._moved(earlier_meta, now, address)
                entry = replace(entry, moved_from=moved_from)
            elif entry is not None and entry.event == "disappeared":
                assert earlier is not None
                entry = replace(entry, moved_to=await self._moved(meta, earlier, address))
            if entry is not None:
                entries.append(entry)
            earlier, earlier_meta = now, meta
        entries.reverse()
        return Timeline(name, address, entries, oldest.version if previous else None)

    async def _moved(
        self, meta: VersionMeta, instance: ResourceInstance, address: str
    ) -> str | None:
        """The address of the same object (mode, type and identity `id`, as diffs match
        moves) at another address in version `meta`, if there is one."""
        object_id = instance.identity.get("id")
        if object_id is None:
            return None
        parsed = await self.parsed(meta)
        for other in parsed.contents.instances:
            if (
                other.address != address
                and other.deposed_key is None
                and (other.mode, other.type) == (instance.mode, instance.type)
                and other.identity.get("id") == object_id
            ):
                return other.address
        return None

    async def _object_at(self, meta: VersionMeta, address: str) -> ResourceInstance | None:
        parsed = await self.parsed(meta)
        return next((i for i in parsed.by_address.get(address, ()) if i.deposed_key is None), None)


def _read_without_gc(body: bytes) -> StateContents:
    """read_contents with the cyclic garbage collector paused: reading a large state creates
    tens of thousands of objects, none in cycles, and the collections they would trigger
    (each walking every object of the process) cost about a quarter of the read. Resumed
    by whichever reader paused it, so it is never left paused."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return read_contents(body)
    finally:
        if paused:
            gc.enable()


def _timeline_entry(
    meta: VersionMeta, before: ResourceInstance | None, after: ResourceInstance | None
) -> TimelineEntry | None:
    if before is None and after is None:
        return None
    if before is None:
        assert after is not None
        return TimelineEntry(meta, "appeared", [], None, after.status)
    if after is None:
        return TimelineEntry(meta, "disappeared", [], before.status, None)
    if before.raw_attributes == after.raw_attributes and before.status == after.status:
        return None
    paths = [change.as_dict()["attribute"] for change in attribute_changes(before, after)]
    return TimelineEntry(meta, "changed", paths, before.status, after.status)


def _in_module(module: str, wanted: str) -> bool:
    """`module.a` matches module.a, module.a[0], module.a["x"] and modules nested in them."""
    return module == wanted or module.startswith((wanted + ".", wanted + "["))


def _mentions(instance: ResourceInstance, needle: str) -> bool:
    return needle in instance.address.lower() or any(
        needle in value.lower() for value in instance.identity.values()
    )


def _check_address(address: str) -> None:
    if not address or len(address) > MAX_ADDRESS_LENGTH or not address.isprintable():
        raise InvalidInput(
            f"A resource address is 1-{MAX_ADDRESS_LENGTH} printable characters, e.g. "
            'module.app["x"].aws_instance.web[0].'
        )


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def describe_version(meta: VersionMeta | None) -> dict[str, Any] | None:
    """The few fields of a version that explorer answers repeat."""
    if meta is None:
        return None
    return {
        "workspace": meta.workspace,
        "version": meta.version,
        "serial": meta.serial,
        "created_at": _rfc3339(meta.created_at),
        "sha256": meta.sha256,
        "written_by": meta.written_by,
        "who": meta.lock_who,
    }
