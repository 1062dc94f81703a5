"""The Terraform/OpenTofu http backend protocol: state, lock and unlock addresses.

Every method is accepted on each address where it makes sense, so both the stock LOCK/UNLOCK
configuration and the seed's `lock_method = "POST"` configuration work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from blixard.api.body import SMALL_BODY_LIMIT, read_body
from blixard.api.security import authorize
from blixard.api.views import iso, json_response, lock_json, service_of, version_json
from blixard.domain.access import Action
from blixard.domain.errors import InvalidInput, Locked

router = APIRouter(prefix="/api/tofu", tags=["backend protocol"])

Handler = Callable[[Request, str], Awaitable[Response]]

#: (route template, method) -> handler, for the fast path in api/fastpath.py.
PROTOCOL_HANDLERS: dict[tuple[str, str], Handler] = {}

_LOCK_ID_PARAM = {
    "name": "ID",
    "in": "query",
    "required": False,
    "description": "The lock ID the writer holds (clients send it while locked).",
    "schema": {"type": "string"},
}
_VERSION_PARAM = {
    "name": "version",
    "in": "query",
    "required": False,
    "description": "A past version number (default: the current state).",
    "schema": {"type": "integer", "minimum": 1},
}

_AS_OF_PARAM = {
    "name": "as_of",
    "in": "query",
    "required": False,
    "description": "RFC 3339 time: the version that was current then (404 before the first).",
    "schema": {"type": "string", "format": "date-time"},
}

_ERROR = {"description": "JSON error: `{error, message}`"}
_HOLDER = {"description": "JSON error with the lock holder's LockInfo fields at top level"}
_LOCK_INFO_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["ID"],
                    "properties": {
                        name: {"type": "string"}
                        for name in ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")
                    },
                }
            }
        },
    }
}
_STATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["serial", "lineage"],
                    "properties": {"serial": {"type": "integer"}, "lineage": {"type": "string"}},
                    "additionalProperties": True,
                }
            }
        },
    }
}


def positive_int_query(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput(f"Query parameter '{name}' must be a positive integer.")
    return int(raw)


def protocol_route(path: str, methods: list[str], **doc: Any) -> Callable[[Handler], Handler]:
    """Register a handler with FastAPI (docs, fallback) and with the fast-path table."""

    def register(handler: Handler) -> Handler:
        template = router.prefix + path
        address = path.split("/")[1]
        for method in methods:
            PROTOCOL_HANDLERS[(template, method)] = handler
            router.add_api_route(
                path,
                handler,
                methods=[method],
                response_class=Response,
                operation_id=f"{handler.__name__}_{method.lower()}_{address}",
                **doc,
            )
        return handler

    return register


@protocol_route(
    "/state/{workspace}",
    ["GET"],
    summary="Read the current state (or ?version=N, or ?as_of=TIME)",
    openapi_extra={"parameters": [_VERSION_PARAM, _AS_OF_PARAM]},
    responses={
        200: {
            "description": "The state bytes exactly as written",
            "content": {"application/json": {}},
        },
        400: _ERROR,
        404: _ERROR,
    },
)
async def get_state(request: Request, workspace: str) -> Response:
    await authorize(request, Action.state_read, workspace)
    version = positive_int_query(request, "version")
    if (as_of := request.query_params.get("as_of")) is not None:  # time travel
        version = await request.app.state.explorer.version_at(workspace, as_of, version)
    meta, body = await service_of(request).read_state(workspace, version)
    return Response(
        body,
        media_type="application/json",
        headers={
            "ETag": f'"{meta.sha256}"',
            "X-Blixard-Version": str(meta.version),
            "X-Blixard-Serial": str(meta.serial),
        },
    )


@protocol_route(
    "/state/{workspace}",
    ["POST", "PUT"],
    summary="Write a new state version",
    description=(
        "Stores the body byte-for-byte as the next version. While the workspace is locked the "
        "writer must pass its lock ID as `?ID=`. A byte-identical re-send of the current state "
        "is acknowledged without creating a version. `Content-MD5` is verified when present."
    ),
    openapi_extra={**_STATE_BODY, "parameters": [_LOCK_ID_PARAM]},
    responses={
        200: {"description": "VersionMeta of the stored version"},
        400: _ERROR,
        409: _ERROR,
        413: _ERROR,
        423: _HOLDER,
    },
)
async def write_state(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.state_write, workspace)
    settings = request.app.state.settings
    body = await read_body(request, settings.max_state_bytes, verify_md5=False)
    result = await service_of(request).write_state(
        workspace,
        body,
        lock_id=request.query_params.get("ID"),
        content_md5=request.headers.get("content-md5"),
        actor=actor,
    )
    if result.created:
        metrics = request.app.state.metrics
        metrics.bytes_written.inc(result.meta.size)
        metrics.versions_written.labels(result.meta.source).inc()
    return json_response(version_json(result.meta))


_LOCK_DOC: dict[str, Any] = dict(
    summary="Acquire the state lock",
    description=(
        "Body: the client's LockInfo. 200 with the LockInfo when granted (also when the same ID "
        "asks again); 423 with the holder's LockInfo fields when another ID holds it."
    ),
    openapi_extra=_LOCK_INFO_BODY,
    responses={200: {"description": "The granted LockInfo"}, 400: _ERROR, 423: _HOLDER},
)
_UNLOCK_DOC: dict[str, Any] = dict(
    summary="Release the state lock",
    description=(
        "Body: the LockInfo that locked (only `ID` is compared). An empty body, as "
        "`terraform force-unlock` sends, releases any lock. 409 with the holder's fields when "
        "another ID holds it; 200 when nothing is locked."
    ),
    responses={200: {"description": "The released lock, if any"}, 400: _ERROR, 409: _HOLDER},
)


@protocol_route("/lock/{workspace}", ["LOCK", "POST"], **_LOCK_DOC)
@protocol_route("/state/{workspace}", ["LOCK"], **_LOCK_DOC)
async def lock(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.lock_acquire, workspace)
    body = await read_body(request, SMALL_BODY_LIMIT)
    try:
        granted = await service_of(request).lock(workspace, body, actor=actor)
    except Locked:
        request.app.state.metrics.lock_conflicts.inc()
        raise
    return json_response(lock_json(granted))


@protocol_route("/unlock/{workspace}", ["UNLOCK", "POST"], **_UNLOCK_DOC)
@protocol_route("/lock/{workspace}", ["UNLOCK"], **_UNLOCK_DOC)
@protocol_route("/state/{workspace}", ["UNLOCK"], **_UNLOCK_DOC)
async def unlock(request: Request, workspace: str) -> Response:
    body = await read_body(request, SMALL_BODY_LIMIT)
    # An empty body is `terraform force-unlock`: breaking any lock is an admin's call.
    action = Action.lock_release if body.strip() else Action.lock_force
    actor = await authorize(request, action, workspace)
    released = await service_of(request).unlock(workspace, body, actor=actor)
    return json_response({"workspace": workspace, "unlocked": True, "lock": lock_json(released)})


@protocol_route(
    "/lock/{workspace}",
    ["GET"],
    summary="Lock status and holder",
    responses={200: {"description": "Lock status"}, 404: _ERROR},
)
async def lock_status(request: Request, workspace: str) -> Response:
    await authorize(request, Action.lock_status, workspace)
    status = await service_of(request).lock_status(workspace)
    held = status.lock
    now = request.app.state.service.clock()
    return json_response(
        {
            "workspace": workspace,
            "locked": held is not None,
            "lock": lock_json(held),
            "locked_at": iso(held.locked_at) if held else None,
            "age_seconds": round(now - held.locked_at, 3) if held else None,
        }
    )


@protocol_route(
    "/lock/{workspace}",
    ["DELETE"],
    summary="Force-unlock: break whatever lock is held",
    responses={200: {"description": "The removed lock, if any"}, 400: _ERROR},
)
async def force_unlock(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.lock_force, workspace)
    released = await service_of(request).force_unlock(workspace, actor=actor)
    return json_response({"workspace": workspace, "unlocked": True, "lock": lock_json(released)})


@protocol_route(
    "/state/{workspace}",
    ["DELETE"],
    summary="Soft-delete the workspace (history kept, restorable)",
    responses={200: {"description": "Deleted"}, 404: _ERROR, 423: _HOLDER},
)
async def delete_state(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.workspace_delete, workspace)
    await service_of(request).delete_workspace(workspace, actor=actor)
    return json_response({"workspace": workspace, "deleted": True})
