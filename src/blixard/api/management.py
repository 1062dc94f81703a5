"""Workspaces, history and rollback: what operators use around the backend protocol."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from blixard.api.security import authorize
from blixard.api.views import json_response, service_of, version_json, workspace_json
from blixard.domain.access import Action

router = APIRouter(prefix="/api/tofu", tags=["management"])

_ERROR = {"description": "JSON error: `{error, message}`"}


@router.get("/workspaces", summary="List workspaces (sorted by name)")
async def list_workspaces(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    after: Annotated[str | None, Query(description="Return names after this one")] = None,
) -> Response:
    actor = await authorize(request, Action.workspace_list)
    found = await service_of(request).list_workspaces(after=after, limit=limit + 1, actor=actor)
    page = found[:limit]
    return json_response(
        {
            "workspaces": [workspace_json(ws) for ws in page],
            "next_after": page[-1].name if len(found) > limit else None,
        }
    )


@router.get(
    "/history/{workspace}",
    summary="Version history, newest first",
    responses={404: _ERROR},
)
async def history(
    request: Request,
    workspace: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[int | None, Query(ge=1, description="Versions below this number")] = None,
) -> Response:
    await authorize(request, Action.history_read, workspace)
    versions = await service_of(request).history(workspace, before=before, limit=limit + 1)
    page = versions[:limit]
    return json_response(
        {
            "workspace": workspace,
            "versions": [version_json(meta) for meta in page],
            "next_before": page[-1].version if len(versions) > limit else None,
        }
    )


@router.post(
    "/rollback/{workspace}/{version}",
    summary="Roll back to a past version (as a new version)",
    description=(
        "Creates a new version whose content is version N's with the top-level `serial` set to "
        "the current serial + 1, so clients accept it as newer. This is the only operation in "
        "which the server changes state bytes, and only the digits of that one value change. "
        "Refused with 423 while someone else holds the lock; the holder may roll back by "
        "passing `?ID=`."
    ),
    responses={404: _ERROR, 409: _ERROR, 423: _ERROR},
)
async def rollback(
    request: Request,
    workspace: str,
    version: int,
    lock_id: Annotated[str | None, Query(alias="ID", description="Lock ID, if you hold it")] = None,
) -> Response:
    actor = await authorize(request, Action.rollback, workspace)
    meta = await service_of(request).rollback(workspace, version, lock_id=lock_id, actor=actor)
    metrics = request.app.state.metrics
    metrics.bytes_written.inc(meta.size)
    metrics.versions_written.labels(meta.source).inc()
    return json_response(version_json(meta))


@router.delete(
    "/workspaces/{workspace}",
    summary="Soft-delete a workspace (history kept, restorable)",
    responses={404: _ERROR, 423: _ERROR},
)
async def delete_workspace(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.workspace_delete, workspace)
    await service_of(request).delete_workspace(workspace, actor=actor)
    return json_response({"workspace": workspace, "deleted": True})


@router.post(
    "/workspaces/{workspace}/restore",
    summary="Restore a soft-deleted workspace",
    responses={404: _ERROR, 409: _ERROR},
)
async def restore_workspace(request: Request, workspace: str) -> Response:
    actor = await authorize(request, Action.workspace_restore, workspace)
    await service_of(request).restore_workspace(workspace, actor=actor)
    return json_response({"workspace": workspace, "deleted": False})
