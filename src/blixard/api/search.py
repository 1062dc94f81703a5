"""Search across workspaces and duplicates (issue 12 items 6 and 8), and the index rebuild.

Thin handlers over store/search.py: every answer is scoped to the key's workspaces.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from blixard.api.params import bool_param, count_param, query_bool, query_limit, string_param
from blixard.api.security import authorize
from blixard.api.views import json_response, service_of, store_of
from blixard.domain.access import Action, audit_event
from blixard.domain.errors import InvalidInput
from blixard.domain.explorer import MODES
from blixard.domain.resource_index import MAX_FILTER_CHARS, AttributeFilter, ResourceQuery
from blixard.store.resource_index import Cursor, Match
from blixard.store.search import SearchService

router = APIRouter(prefix="/api/tofu", tags=["search"])

#: The text filters of GET /search, documented here and checked by the domain (ResourceQuery).
_FILTERS = {
    "type": "Resource type, e.g. aws_s3_bucket",
    "address": "Instance address; * wildcards",
    "name": "Resource name",
    "id": "An identity value: id, arn or self_link",
    "module": 'Module path ("" for root)',
    "provider": "Part of the provider address",
}


def match_json(match: Match) -> dict[str, Any]:
    row = match.row
    return {
        "workspace": match.workspace,
        "version": match.version,
        "address": row.address,
        "type": row.type,
        "name": row.name,
        "module": row.module,
        "mode": row.mode,
        "provider": row.provider,
        "status": row.status,
        "id": row.id,
        "arn": row.arn,
        "self_link": row.self_link,
        "digest": row.digest,
    }


def _search_service(request: Request) -> SearchService:
    return SearchService(store_of(request))


@router.get(
    "/search",
    summary="Search resource instances across workspaces",
    description=(
        "Matches in the current version of every workspace the key can see (every version "
        "with `history=true`), sorted by workspace, version and address. Every filter given "
        'must match: `type`, `name`, `module` ("" is the root module) and `mode` exactly, '
        "`address` exactly or with `*` wildcards, `provider` as a part of the provider "
        "address, `id` against any identity value (id, arn, self_link), `attr=<path>=<value>` "
        "against an attribute (dotted path; read from the stored state, never a sensitive "
        "one; needs another filter). Pages with `limit` and the `next_after` cursor; "
        "`complete` is false while versions written before the index are still being indexed."
    ),
    openapi_extra={
        "parameters": [
            *(
                string_param(name, description, max_length=MAX_FILTER_CHARS)
                for name, description in _FILTERS.items()
            ),
            string_param("attr", "<path>=<value>, e.g. tags.Name=web"),
            string_param("mode", "managed or data", choices=MODES),
            bool_param("history", "Search every version, not the current"),
            count_param("limit", "Page size.", maximum=1000, default=100),
            string_param("after", "next_after of the previous page"),
        ]
    },
)
async def search(request: Request) -> Response:
    actor = await authorize(request, Action.history_read)
    text = request.query_params.get
    history = query_bool(request, "history")
    limit = query_limit(request, default=100, maximum=1000)
    cursor = None
    if (after := text("after")) is not None:
        cursor = Cursor.decode(after)
        if cursor is None:
            raise InvalidInput("after is not a cursor this server gave (use next_after).")
    attr = text("attr")
    query = ResourceQuery(
        type=text("type"),
        address=text("address"),
        name=text("name"),
        id=text("id"),
        module=text("module"),
        provider=text("provider"),
        mode=text("mode"),
        attr=AttributeFilter.parse(attr) if attr is not None else None,
    )
    page = await _search_service(request).search(
        query, actor=actor, history=history, after=cursor, limit=limit
    )
    return json_response(
        {
            "matches": [match_json(m) for m in page.matches],
            "next_after": page.next_after.encode() if page.next_after else None,
            "complete": page.complete,
        }
    )


@router.get(
    "/search/duplicates",
    summary="Identity values managed by two or more workspaces",
    description=(
        "Every `id`, `arn` or `self_link` value held by the current versions of two or more "
        "workspaces the key can see: a real-world object managed twice. Workspaces outside "
        "the key's scopes neither appear nor count."
    ),
)
async def duplicates(request: Request) -> Response:
    actor = await authorize(request, Action.history_read)
    found = await _search_service(request).duplicates(actor=actor)
    return json_response(
        {
            "duplicates": [
                {
                    "kind": d.kind,
                    "value": d.value,
                    "workspaces": sorted({m.workspace for m in d.holders}),
                    "instances": [match_json(m) for m in d.holders],
                }
                for d in found
            ]
        }
    )


@router.get("/admin/reindex", summary="Progress of the resource index build")
async def reindex_status(request: Request) -> Response:
    await authorize(request, Action.admin)
    return json_response(_search_service(request).index.reindexer.status.to_json())


@router.post(
    "/admin/reindex",
    summary="Rebuild the resource index of every workspace (in the background)",
    status_code=202,
    responses={202: {"description": "Started: `started` and the build's progress"}},
    description=(
        "Starts rebuilding every workspace's index document from its current version's stored "
        "bytes on this node; searches keep answering meanwhile. Poll GET /admin/reindex for "
        "progress."
    ),
)
async def reindex(request: Request) -> Response:
    actor = await authorize(request, Action.admin)
    index = _search_service(request).index
    index.reindexer.start(force=True)
    request.app.state.audit.record(
        audit_event(
            actor, Action.admin, service_of(request).clock(), detail="resource index rebuild"
        )
    )
    return json_response({"started": True, **index.reindexer.status.to_json()}, status_code=202)
