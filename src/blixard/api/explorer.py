"""The state explorer's routes: resources, outputs, diffs and per-resource timelines.

Read-only views of stored versions (domain/explorer.py does the work). Each route is scoped
like the workspace routes: a reader key suffices, and a workspace outside the key's scopes
answers 404 exactly like a missing one. Sensitive values are masked; `GET /outputs?reveal=true`
needs an operator or admin key and is audited. Versions are chosen with `version=N` or
`as_of=<RFC 3339>` (the version current at that instant); the default is the current one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from blixard.api.security import authorize
from blixard.api.views import iso, json_response
from blixard.domain.access import Action
from blixard.domain.explorer import ExplorerService, TimelineEntry, describe_version

router = APIRouter(prefix="/api/tofu", tags=["explorer"])

#: Version numbers above this are refused as malformed (no store holds that many).
MAX_VERSION = 2**53

_ERROR = {"description": "JSON error: `{error, message}`"}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed parameter (version, as_of, address, ...)"},
    401: _ERROR,
    404: {"description": "No such workspace (or out of the key's scopes), version or address"},
}

Version = Annotated[
    int | None,
    Query(ge=1, le=MAX_VERSION, description="A version number (default: the current one)."),
]
AsOf = Annotated[
    str | None,
    Query(
        max_length=64,
        description="RFC 3339 time, e.g. 2026-12-05T18:00:00Z: the version current then.",
    ),
]


def explorer_of(request: Request) -> ExplorerService:
    explorer: ExplorerService = request.app.state.explorer
    return explorer


@router.get(
    "/resources/{workspace}",
    summary="Resource instances of a version (paged by address)",
    description=(
        "One entry per resource instance (deposed objects too): address, module, mode, type, "
        "name, index_key, provider, status (`tainted`, `deposed`), dependencies, identity "
        "values (`id`, `arn`, `self_link`, `name`; sensitive ones left out) and a SHA-256 "
        "digest of the attributes. Sorted by address; pass `next_after` as `after` for the "
        "next page. `readable` is false for a state whose resources cannot be read (e.g. "
        "OpenTofu client-side encryption)."
    ),
    responses=_READ_ERRORS,
)
async def list_resources(
    request: Request,
    workspace: str,
    version: Version = None,
    as_of: AsOf = None,
    type: Annotated[str | None, Query(max_length=256, description="Exact type")] = None,
    module: Annotated[
        str | None, Query(max_length=1024, description="Module path, e.g. module.app")
    ] = None,
    mode: Annotated[str | None, Query(pattern="^(managed|data)$")] = None,
    q: Annotated[
        str | None,
        Query(max_length=256, description="Case-insensitive text in the address or identity"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None, Query(max_length=4096, description="The last address of the page before")
    ] = None,
) -> Response:
    await authorize(request, Action.state_read, workspace)
    page = await explorer_of(request).resources(
        workspace,
        version=version,
        as_of=as_of,
        type=type,
        module=module,
        mode=mode,
        query=q,
        after=after,
        limit=limit,
    )
    return json_response(
        {
            "workspace": workspace,
            "version": describe_version(page.meta),
            "readable": page.contents.readable,
            "resources": [instance.as_dict() for instance in page.instances],
            "next_after": page.next_after,
        }
    )


@router.get(
    "/resources/{workspace}/{address:path}/history",
    summary="Timeline of one resource instance",
    description=(
        "The versions, newest first, in which the instance at `address` appeared, changed "
        "(with the attribute paths that changed) or disappeared (`moved_from`/`moved_to`: "
        "the same object at another address), each with its time, the key that wrote it, "
        "the lock holder's `Who` and its lock ID. Looks at `limit` versions per call; pass "
        "`next_before` as `before` to look further back."
    ),
    responses=_READ_ERRORS,
)
async def resource_history(
    request: Request,
    workspace: str,
    address: str,
    before: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Versions looked at")] = 50,
) -> Response:
    await authorize(request, Action.history_read, workspace)
    timeline = await explorer_of(request).timeline(workspace, address, before=before, limit=limit)
    return json_response(
        {
            "workspace": workspace,
            "address": address,
            "events": [_timeline_json(entry) for entry in timeline.entries],
            "next_before": timeline.next_before,
        }
    )


def _timeline_json(entry: TimelineEntry) -> dict[str, Any]:
    meta = entry.meta
    return {
        "version": meta.version,
        "event": entry.event,
        "paths": entry.paths,
        "status_before": entry.status_before,
        "status_after": entry.status_after,
        "moved_from": entry.moved_from,
        "moved_to": entry.moved_to,
        "serial": meta.serial,
        "created_at": iso(meta.created_at),
        "written_by": meta.written_by,
        "who": meta.lock_who,
        "lock_id": meta.lock_id,
        "source": meta.source,
    }


@router.get(
    "/resources/{workspace}/{address:path}",
    summary="One resource instance with its attributes (sensitive values masked)",
    description=(
        "The instance at `address` (URL-encoded, e.g. `module.app%5B%22x%22%5D.aws_instance.web"
        "%5B0%5D`) with its attributes; every path listed in `sensitive_attributes` reads "
        '`"(sensitive)"`. `deposed` lists objects kept by create_before_destroy.'
    ),
    responses=_READ_ERRORS,
)
async def get_resource(
    request: Request, workspace: str, address: str, version: Version = None, as_of: AsOf = None
) -> Response:
    await authorize(request, Action.state_read, workspace)
    found = await explorer_of(request).resource(workspace, address, version=version, as_of=as_of)
    return json_response(
        {
            "workspace": workspace,
            "version": describe_version(found.meta),
            "address": address,
            "resource": found.current.as_dict(attributes=True) if found.current else None,
            "deposed": [instance.as_dict(attributes=True) for instance in found.deposed],
        }
    )


@router.get(
    "/outputs/{workspace}",
    summary="Outputs of a version (sensitive values masked unless revealed)",
    description=(
        "Name, type, value and whether it is sensitive. `reveal=true` shows sensitive values "
        "to operator and admin keys only (403 for readers and writers); every reveal is "
        "recorded in the audit trail (`sensitive.reveal`) before the values are sent."
    ),
    responses={**_READ_ERRORS, 403: {"description": "reveal=true with a reader or writer key"}},
)
async def list_outputs(
    request: Request,
    workspace: str,
    version: Version = None,
    as_of: AsOf = None,
    reveal: Annotated[bool, Query(description="Show sensitive values (audited)")] = False,
) -> Response:
    action = Action.sensitive_reveal if reveal else Action.state_read
    actor = await authorize(request, action, workspace)
    view = await explorer_of(request).outputs(
        workspace, version=version, as_of=as_of, reveal_to=actor if reveal else None
    )
    return json_response(
        {
            "workspace": workspace,
            "version": describe_version(view.meta),
            "revealed": view.revealed,
            "outputs": [output.as_dict(reveal=view.revealed) for output in view.outputs],
        }
    )


@router.get(
    "/diff/{workspace}",
    summary="What changed between two versions (or two workspaces)",
    description=(
        "`to` defaults to the current version and `from` to the version before `to` (an "
        "empty state when `to` is the first). `from_workspace` compares with another "
        "workspace (its current version unless `from`/`from_as_of`). Answers a `summary` "
        "{added, removed, changed, moved, unchanged}, one entry per instance that differs "
        "(`moved`: the same identity `id`, mode and type under a new address) with the "
        "attribute paths that changed and their `before`/`after` values (a path sensitive on "
        "either side reads `(sensitive)` on both), output changes and top-level changes "
        "(`terraform_version`, `lineage`, `serial`)."
    ),
    responses=_READ_ERRORS,
)
async def diff(
    request: Request,
    workspace: str,
    from_version: Annotated[
        int | None, Query(alias="from", ge=1, le=MAX_VERSION, description="From version")
    ] = None,
    to_version: Annotated[
        int | None, Query(alias="to", ge=1, le=MAX_VERSION, description="To version")
    ] = None,
    from_as_of: AsOf = None,
    to_as_of: AsOf = None,
    from_workspace: Annotated[
        str | None, Query(max_length=128, description="Compare with this workspace")
    ] = None,
) -> Response:
    await authorize(request, Action.state_read, workspace)
    if from_workspace is not None and from_workspace != workspace:
        await authorize(request, Action.state_read, from_workspace)
    view = await explorer_of(request).diff(
        workspace,
        to_version=to_version,
        to_as_of=to_as_of,
        from_version=from_version,
        from_as_of=from_as_of,
        from_workspace=from_workspace,
    )
    return json_response(
        {
            "workspace": workspace,
            "from": describe_version(view.before),
            "to": describe_version(view.after),
            **view.diff.as_dict(),
        }
    )
