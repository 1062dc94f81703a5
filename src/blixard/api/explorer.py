"""The state explorer's routes: resources, outputs, diffs and per-resource timelines.

Read-only views of stored versions (domain/explorer.py does the work). Each route is scoped
like the workspace routes: a reader key suffices, and a workspace outside the key's scopes
answers 404 exactly like a missing one. Sensitive values are masked; `GET /outputs?reveal=true`
needs an operator or admin key and is audited. Versions are chosen with `version=N` or
`as_of=<RFC 3339>` (the version current at that instant); the default is the current one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from blixard.api.params import (
    WorkspacePath,
    bool_param,
    count_param,
    query_bool,
    query_count,
    query_flag_set,
    query_limit,
    query_text,
    string_param,
)
from blixard.api.security import authorize
from blixard.api.views import iso, json_response
from blixard.domain.access import Action
from blixard.domain.explorer import MODES, ExplorerService, TimelineEntry, describe_version

router = APIRouter(prefix="/api/tofu", tags=["explorer"])

#: Version numbers above this are refused as malformed (no store holds that many).
MAX_VERSION = 2**53
#: Longest `as_of` looked at (an RFC 3339 time is about 35 characters).
MAX_AS_OF = 64

_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed parameter (version, as_of, address, ...)"},
    404: {"description": "No such workspace (or out of the key's scopes), version or address"},
}


def _version_param(name: str, description: str) -> dict[str, Any]:
    return count_param(name, description, maximum=MAX_VERSION)


def _as_of_param(name: str, description: str) -> dict[str, Any]:
    return string_param(name, description, max_length=MAX_AS_OF, format="date-time")


_VERSION = _version_param("version", "A version number (default: the current one).")
_AS_OF = _as_of_param(
    "as_of", "RFC 3339 time, e.g. 2026-12-05T18:00:00Z: the version current then."
)


def _version(request: Request, name: str = "version") -> int | None:
    return query_count(request, name, maximum=MAX_VERSION)


def _as_of(request: Request, name: str = "as_of") -> str | None:
    """The raw time; the domain parses it (and refuses it together with a version)."""
    return query_text(request, name, max_length=MAX_AS_OF)


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
    openapi_extra={
        "parameters": [
            _VERSION,
            _AS_OF,
            string_param("type", "Exact type", max_length=256),
            string_param("module", "Module path, e.g. module.app", max_length=1024),
            string_param("mode", "managed or data", choices=MODES),
            string_param("q", "Case-insensitive text in the address or identity", max_length=256),
            count_param("limit", "Page size.", maximum=1000, default=100),
            string_param("after", "The last address of the page before", max_length=4096),
        ]
    },
    responses=_READ_ERRORS,
)
async def list_resources(request: Request, workspace: WorkspacePath) -> Response:
    await authorize(request, Action.state_read, workspace)
    version, as_of = _version(request), _as_of(request)
    type = query_text(request, "type", max_length=256)
    module = query_text(request, "module", max_length=1024)
    mode = request.query_params.get("mode")  # the domain knows the modes
    q = query_text(request, "q", max_length=256)
    limit = query_limit(request, default=100, maximum=1000)
    after = query_text(request, "after", max_length=4096)
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
    openapi_extra={
        "parameters": [
            _version_param("before", "Versions below this number."),
            count_param("limit", "Versions looked at", maximum=500, default=50),
        ]
    },
    responses=_READ_ERRORS,
)
async def resource_history(request: Request, workspace: WorkspacePath, address: str) -> Response:
    await authorize(request, Action.history_read, workspace)
    before = _version(request, "before")
    limit = query_limit(request, default=50, maximum=500)
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
    openapi_extra={"parameters": [_VERSION, _AS_OF]},
    responses=_READ_ERRORS,
)
async def get_resource(request: Request, workspace: WorkspacePath, address: str) -> Response:
    await authorize(request, Action.state_read, workspace)
    version, as_of = _version(request), _as_of(request)
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
    openapi_extra={
        "parameters": [_VERSION, _AS_OF, bool_param("reveal", "Show sensitive values (audited)")]
    },
    responses={**_READ_ERRORS, 403: {"description": "reveal=true with a reader or writer key"}},
)
async def list_outputs(request: Request, workspace: WorkspacePath) -> Response:
    # The action depends on the flag; a malformed flag is refused once the key is checked.
    action = Action.sensitive_reveal if query_flag_set(request, "reveal") else Action.state_read
    actor = await authorize(request, action, workspace)
    reveal = query_bool(request, "reveal")
    version, as_of = _version(request), _as_of(request)
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
    openapi_extra={
        "parameters": [
            _version_param("from", "From version"),
            _version_param("to", "To version"),
            _as_of_param(
                "from_as_of", "RFC 3339 time: the `from` version is the one current then."
            ),
            _as_of_param("to_as_of", "RFC 3339 time: the `to` version is the one current then."),
            string_param("from_workspace", "Compare with this workspace", max_length=128),
        ]
    },
    responses=_READ_ERRORS,
)
async def diff(request: Request, workspace: WorkspacePath) -> Response:
    await authorize(request, Action.state_read, workspace)
    from_version, to_version = _version(request, "from"), _version(request, "to")
    from_as_of, to_as_of = _as_of(request, "from_as_of"), _as_of(request, "to_as_of")
    from_workspace = query_text(request, "from_workspace", max_length=128)
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
