"""The Terraform/OpenTofu http backend protocol: state, lock and unlock addresses.

Every method is accepted on each address where it makes sense, so both the stock LOCK/UNLOCK
configuration and the seed's `lock_method = "POST"` configuration work.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from blixard.api.body import SMALL_BODY_LIMIT, read_body
from blixard.api.views import iso, json_response, lock_json, service_of, version_json
from blixard.domain.errors import Locked

router = APIRouter(prefix="/api/tofu", tags=["backend protocol"])

WorkspacePath = Annotated[str, "workspace name"]
LockIdQuery = Annotated[
    str | None,
    Query(alias="ID", description="The lock ID the writer holds (sent by clients while locked)."),
]

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


@router.get(
    "/state/{workspace}",
    summary="Read the current state (or ?version=N)",
    response_class=Response,
    responses={
        200: {
            "description": "The state bytes exactly as written",
            "content": {"application/json": {}},
        },
        404: _ERROR,
    },
)
async def get_state(
    request: Request,
    workspace: WorkspacePath,
    version: Annotated[int | None, Query(ge=1, description="A past version number")] = None,
) -> Response:
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


@router.api_route(
    "/state/{workspace}",
    methods=["POST", "PUT"],
    summary="Write a new state version",
    description=(
        "Stores the body byte-for-byte as the next version. While the workspace is locked the "
        "writer must pass its lock ID as `?ID=`. A byte-identical re-send of the current state "
        "is acknowledged without creating a version."
    ),
    openapi_extra=_STATE_BODY,
    responses={400: _ERROR, 409: _ERROR, 413: _ERROR, 423: _HOLDER},
)
async def write_state(
    request: Request, workspace: WorkspacePath, lock_id: LockIdQuery = None
) -> Response:
    settings = request.app.state.settings
    body = await read_body(request, settings.max_state_bytes, verify_md5=False)
    result = await service_of(request).write_state(
        workspace, body, lock_id=lock_id, content_md5=request.headers.get("content-md5")
    )
    if result.created:
        metrics = request.app.state.metrics
        metrics.bytes_written.inc(result.meta.size)
        metrics.versions_written.labels(result.meta.source).inc()
    return json_response(version_json(result.meta))


async def _lock(request: Request, workspace: str) -> Response:
    body = await read_body(request, SMALL_BODY_LIMIT)
    try:
        lock = await service_of(request).lock(workspace, body)
    except Locked:
        request.app.state.metrics.lock_conflicts.inc()
        raise
    return json_response(lock_json(lock))


async def _unlock(request: Request, workspace: str) -> Response:
    body = await read_body(request, SMALL_BODY_LIMIT)
    released = await service_of(request).unlock(workspace, body)
    return json_response({"workspace": workspace, "unlocked": True, "lock": lock_json(released)})


_LOCK_DOC = dict(
    summary="Acquire the state lock",
    description=(
        "Body: the client's LockInfo. 200 with the LockInfo when granted (also when the same ID "
        "asks again); 423 with the holder's LockInfo fields when another ID holds it."
    ),
    openapi_extra=_LOCK_INFO_BODY,
    responses={400: _ERROR, 423: _HOLDER},
)
_UNLOCK_DOC = dict(
    summary="Release the state lock",
    description=(
        "Body: the LockInfo that locked (only `ID` is compared). An empty body, as "
        "`terraform force-unlock` sends, releases any lock. 409 with the holder's fields when "
        "another ID holds it; 200 when nothing is locked."
    ),
    responses={400: _ERROR, 409: _HOLDER},
)


@router.api_route("/lock/{workspace}", methods=["LOCK", "POST"], **_LOCK_DOC)  # type: ignore[arg-type]
async def lock_on_lock_address(request: Request, workspace: WorkspacePath) -> Response:
    return await _lock(request, workspace)


@router.api_route("/state/{workspace}", methods=["LOCK"], **_LOCK_DOC)  # type: ignore[arg-type]
async def lock_on_state_address(request: Request, workspace: WorkspacePath) -> Response:
    return await _lock(request, workspace)


@router.api_route("/unlock/{workspace}", methods=["UNLOCK", "POST"], **_UNLOCK_DOC)  # type: ignore[arg-type]
async def unlock_on_unlock_address(request: Request, workspace: WorkspacePath) -> Response:
    return await _unlock(request, workspace)


@router.api_route("/lock/{workspace}", methods=["UNLOCK"], **_UNLOCK_DOC)  # type: ignore[arg-type]
async def unlock_on_lock_address(request: Request, workspace: WorkspacePath) -> Response:
    return await _unlock(request, workspace)


@router.api_route("/state/{workspace}", methods=["UNLOCK"], **_UNLOCK_DOC)  # type: ignore[arg-type]
async def unlock_on_state_address(request: Request, workspace: WorkspacePath) -> Response:
    return await _unlock(request, workspace)


@router.get("/lock/{workspace}", summary="Lock status and holder", responses={404: _ERROR})
async def lock_status(request: Request, workspace: WorkspacePath) -> Response:
    status = await service_of(request).lock_status(workspace)
    lock = status.lock
    now = request.app.state.service.clock()
    return json_response(
        {
            "workspace": workspace,
            "locked": lock is not None,
            "lock": lock_json(lock),
            "locked_at": iso(lock.locked_at) if lock else None,
            "age_seconds": round(now - lock.locked_at, 3) if lock else None,
        }
    )


@router.delete(
    "/lock/{workspace}",
    summary="Force-unlock: break whatever lock is held",
    responses={400: _ERROR},
)
async def force_unlock(request: Request, workspace: WorkspacePath) -> Response:
    released = await service_of(request).force_unlock(workspace)
    return json_response({"workspace": workspace, "unlocked": True, "lock": lock_json(released)})


@router.delete(
    "/state/{workspace}",
    summary="Soft-delete the workspace (history kept, restorable)",
    responses={404: _ERROR, 423: _HOLDER},
)
async def delete_state(request: Request, workspace: WorkspacePath) -> Response:
    await service_of(request).delete_workspace(workspace)
    return json_response({"workspace": workspace, "deleted": True})
