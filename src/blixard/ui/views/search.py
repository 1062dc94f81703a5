"""Search across workspaces and the duplicates report, over the search service the API uses
(scoped by the key: an out-of-scope workspace neither appears nor counts)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.api.views import store_of
from blixard.domain.access import Action
from blixard.domain.errors import InvalidInput
from blixard.domain.resource_index import AttributeFilter, ResourceQuery
from blixard.store.resource_index import Cursor
from blixard.store.search import SearchService
from blixard.ui.web import page, render, router

PAGE_SIZE = 50
FIELDS = ("type", "address", "name", "id", "module", "provider", "attr")


def _search_service(request: Request) -> SearchService:
    return SearchService(store_of(request))


@router.get("/search")
async def search_page(request: Request) -> Response:
    current = await page(request, Action.history_read)
    query = request.query_params
    given = {name: query.get(name, "").strip() for name in FIELDS}
    history = query.get("history") == "1"
    asked = any(given.values())
    matches, next_after, complete = [], None, True
    if asked:
        cursor = None
        if query.get("after"):
            cursor = Cursor.decode(query["after"])
            if cursor is None:
                raise InvalidInput("That page link is not one this server gave.")
        wanted = ResourceQuery(
            type=given["type"] or None,
            address=given["address"] or None,
            name=given["name"] or None,
            id=given["id"] or None,
            module=given["module"] or None,
            provider=given["provider"] or None,
            attr=AttributeFilter.parse(given["attr"]) if given["attr"] else None,
        )
        found = await _search_service(request).search(
            wanted, actor=current.actor, history=history, after=cursor, limit=PAGE_SIZE
        )
        matches, complete = found.matches, found.complete
        next_after = found.next_after.encode() if found.next_after else None
    return render(
        current,
        request,
        "search.html",
        section="search",
        given=given,
        history=history,
        asked=asked,
        matches=matches,
        next_after=next_after,
        complete=complete,
    )


@router.get("/search/duplicates")
async def duplicates_page(request: Request) -> Response:
    current = await page(request, Action.history_read)
    found = await _search_service(request).duplicates(actor=current.actor)
    return render(current, request, "duplicates.html", section="search", duplicates=found)
