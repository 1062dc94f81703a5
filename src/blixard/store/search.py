"""Search across workspaces, and identity values managed twice (duplicates), strictly scoped.

Both read the store's resource index (store/resource_index.py): the current versions from the
in-memory index, every version (`history`) from rows built from the stored bodies. A workspace
the caller cannot see is filtered out before anything is counted or returned, so it never
shows, not even in a count. `attr=` filters read the candidate instances' attributes from the
stored bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blixard.domain.access import Actor
from blixard.domain.resource_index import ResourceQuery
from blixard.domain.resources import StateContents, read_contents
from blixard.store.protocol import Store
from blixard.store.resource_index import Cursor, Duplicate, Match, ResourceIndexStore

#: Most versions one history search reads before it answers with a cursor to go on...
HISTORY_DOCS_PER_PAGE = 2000
#: ... and most bytes of state it reads to build their rows (older versions have no stored
#: document: ~10 ms per MiB of state, so a page costs at most about a third of a second).
HISTORY_BYTES_PER_PAGE = 32 * 1024 * 1024
#: Versions read from the store at a time.
_HISTORY_BATCH = 16
#: After the last address of a version (a cursor that resumes at the next version).
_AFTER_ALL = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[Match]
    next_after: Cursor | None
    #: False while the index is still being built for versions written before it existed.
    complete: bool


class SearchService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.index: ResourceIndexStore = store  # type: ignore[assignment]  # every engine has it

    @staticmethod
    def _visible(actor: Actor | None) -> Callable[[str], bool]:
        if actor is None or actor.scopes == ("*",):
            return lambda _: True
        return actor.can_see

    async def search(
        self,
        query: ResourceQuery,
        *,
        actor: Actor | None,
        history: bool = False,
        after: Cursor | None = None,
        limit: int = 100,
    ) -> SearchPage:
        visible = self._visible(actor)
        if history:
            matches, next_after = await self._search_history(query, visible, after, limit)
        else:
            matches, next_after = await self._search_current(query, visible, after, limit)
        status = self.index.reindexer.status
        return SearchPage(matches, next_after, complete=status.complete and not status.running)

    async def _search_current(
        self, query: ResourceQuery, visible: Callable[[str], bool], after: Cursor | None, limit: int
    ) -> tuple[list[Match], Cursor | None]:
        matches: list[Match] = []
        contents = _ContentsCache(self.store)
        for match in self.index.resource_index.search(query, visible, after=after):
            if query.attr is not None and not await contents.attr_matches(query, match):
                continue
            if len(matches) == limit:
                last = matches[-1]
                return matches, Cursor(last.workspace, last.version, last.row.address)
            matches.append(match)
        return matches, None

    async def _search_history(
        self, query: ResourceQuery, visible: Callable[[str], bool], after: Cursor | None, limit: int
    ) -> tuple[list[Match], Cursor | None]:
        matches: list[Match] = []
        contents = _ContentsCache(self.store)
        budget, byte_budget = HISTORY_DOCS_PER_PAGE, HISTORY_BYTES_PER_PAGE
        start = after.workspace if after else None
        names: list[str] = []
        while True:  # every visible, not deleted workspace from the cursor's on, by name
            page = await self.store.list_workspaces(after=start, limit=1000)
            names += [ws.name for ws in page if visible(ws.name)]
            if len(page) < 1000:
                break
            start = page[-1].name
        if after is not None and visible(after.workspace):
            current = await self.store.get_workspace(after.workspace)  # listed from past it
            if current is not None and not current.deleted:
                names.insert(0, after.workspace)
        for name in names:
            if after is not None and name < after.workspace:
                continue
            version = after.version if after is not None and name == after.workspace else 1
            while True:
                docs = await self.index.index_history(
                    name, from_version=max(version, 1), limit=_HISTORY_BATCH
                )
                if not docs:
                    break
                for doc in docs:
                    for row in sorted(doc.rows, key=lambda r: r.address):
                        if after is not None and not after.before(name, doc.version, row.address):
                            continue
                        if not query.matches(row):
                            continue
                        match = Match(name, doc.version, row)
                        if query.attr is not None and not await contents.attr_matches(query, match):
                            continue
                        if len(matches) == limit:
                            last = matches[-1]
                            return matches, Cursor(last.workspace, last.version, last.row.address)
                        matches.append(match)
                    budget -= 1
                    byte_budget -= doc.read_bytes
                    if budget <= 0 or byte_budget <= 0:
                        return matches, Cursor(name, doc.version, _AFTER_ALL)
                version = docs[-1].version + 1
        return matches, None

    async def duplicates(self, *, actor: Actor | None) -> list[Duplicate]:
        return self.index.resource_index.duplicates(self._visible(actor))


class _ContentsCache:
    """Parsed versions for `attr=` (a few per page: candidates come grouped by version)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: tuple[str, int] | None = None
        self._contents: StateContents | None = None

    async def attr_matches(self, query: ResourceQuery, match: Match) -> bool:
        assert query.attr is not None
        key = (match.workspace, match.version)
        if key != self._key:
            found = await self.store.read_version(match.workspace, match.version)
            self._key = key
            self._contents = read_contents(found[1]) if found else None
        if self._contents is None:
            return False
        for instance in self._contents.instances:
            if instance.address == match.row.address and (
                (instance.status == "deposed") == (match.row.status == "deposed")
            ):
                return query.attr.matches(instance.attributes, instance.sensitive_paths)
        return False
