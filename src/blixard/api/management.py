"""Workspaces, history and rollback: what operators use around the backend protocol."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from blixard.api.params import (
    WorkspacePath,
    count_param,
    query_count,
    query_limit,
    string_param,
)
from blixard.api.security import authorize
from blixard.api.views import json_response, service_of, version_json, workspace_json
from blixard.domain.access import Action
from blixard.domain.parsing import MAX_INT64, parse_count

router = APIRouter(prefix="/api/tofu", tags=["management"])

_ERROR = {"description": "JSON error: `{error, message}`"}


@router.get(
    "/workspaces",
    summary="List workspaces (sorted by name)",
    openapi_extra={
        "parameters": [
            count_param("limit", "Page size.", maximum=10000, default=1000),
            string_param("after", "Return names after this one."),
        ]
    },
)
async def list_workspaces(request: Request) -> Response:
    actor = await authorize(request, Action.workspace_list)
    limit = query_limit(request, maximum=10000, default=1000)
    after = request.query_params.get("after")
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
    openapi_extra={
        "parameters": [
            count_param("limit", "Page size.", maximum=1000, default=50),
            count_param("before", "Versions below this number."),
        ]
    },
)
async def history(request: Request, workspace: WorkspacePath) -> Response:
    await authorize(request, Action.history_read, workspace)
    limit = query_limit(request, maximum=1000, default=50)
    before = query_count(request, "before")
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
    openapi_extra={"parameters": [string_param("ID", "Lock ID, if you hold it.")]},
    responses={409: _ERROR, 423: _ERROR},
)
async def rollback(
    request: Request,
    workspace: WorkspacePath,
    version: Annotated[
        str,
        Path(
            description="The version to make current again.",
            json_schema_extra={"type": "integer", "minimum": 0, "maximum": MAX_INT64},
        ),
    ],
) -> Response:
    actor = await authorize(request, Action.rollback, workspace)
    number = parse_count(version, "version", minimum=0)  # version 0: no such version, 404
    lock_id = request.query_params.get("ID")
    meta = await service_of(request).rollback(workspace, number, lock_id=lock_id, actor=actor)
    metrics = request.app.state.metrics
    metrics.bytes_written.inc(meta.size)
    metrics.versions_written.labels(meta.source).inc()
    return json_response(version_json(meta))


@router.delete(
    "/workspaces/{workspace}",
    summary="Soft-delete a workspace (history kept, restorable)",
    responses={404: _ERROR, 423: _ERROR},
)
async def delete_workspace(request: Request, workspace: WorkspacePath) -> Response:
    actor = await authorize(request, Action.workspace_delete, workspace)
    await service_of(request).delete_workspace(workspace, actor=actor)
    return json_response({"workspace": workspace, "deleted": True})


@router.post(
    "/workspaces/{workspace}/restore",
    summary="Restore a soft-deleted workspace",
    responses={404: _ERROR, 409: _ERROR},
)
async def restore_workspace(request: Request, workspace: WorkspacePath) -> Response:
    actor = await authorize(request, Action.workspace_restore, workspace)
    await service_of(request).restore_workspace(workspace, actor=actor)
    return json_response({"workspace": workspace, "deleted": False})
