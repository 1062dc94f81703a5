"""Server-side plans and applies: create, review, approve, discard, cancel, read logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response, StreamingResponse

from blixard.api.body import SMALL_BODY_LIMIT, read_body, read_json_model
from blixard.api.params import (
    WorkspacePath,
    count_param,
    query_bool,
    query_limit,
    string_param,
)
from blixard.api.security import authorize
from blixard.api.views import json_response
from blixard.domain.access import Action
from blixard.domain.errors import InvalidInput
from blixard.domain.runs import FINISHED, Run, RunStatus
from blixard.domain.shapes import run_json
from blixard.runs.service import RunRequest, RunService

router = APIRouter(prefix="/api/tofu", tags=["runs"])

_ERROR = {"description": "JSON error: `{error, message}`"}
_ARCHIVE_TYPES = (
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/octet-stream",
)


class PlanRequest(BaseModel):
    workspace: str
    config_dir: str | None = Field(None, description="A directory under BLIXARD_PLAN_ROOTS.")
    auto_approve: bool = False
    destroy: bool = False
    variables: dict[str, str] = Field(default_factory=dict)
    targets: list[str] = Field(default_factory=list)


class ApplyRequest(BaseModel):
    approver: str | None = Field(None, description="A comment; the approver is the key's name.")


def _runs(request: Request) -> RunService:
    service: RunService = request.app.state.runs
    return service


async def _plan_request(request: Request, destroy: bool) -> RunRequest:
    """JSON with config_dir, or a tar.gz body with the options in the query string."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _ARCHIVE_TYPES:
        # Authorise before accepting megabytes of upload.
        await authorize(request, Action.plan_create, request.query_params.get("workspace", ""))
        archive = await read_body(request, request.app.state.settings.max_archive_bytes)
        query = request.query_params
        variables: dict[str, str] = {}
        for item in query.getlist("var"):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise InvalidInput("Each 'var' query parameter must be NAME=VALUE.")
            variables[name] = value
        return RunRequest(
            workspace=query.get("workspace", ""),
            archive=bytes(archive),
            auto_approve=query_bool(request, "auto_approve"),
            destroy=destroy or query_bool(request, "destroy"),
            variables=variables,
            targets=tuple(query.getlist("target")),
        )
    # The workspace is in the body: the key and its role are checked before reading it,
    # its scopes once the body names the workspace (_create).
    await authorize(request, Action.plan_create)
    wanted = await read_json_model(request, PlanRequest, "plan request")
    return RunRequest(
        workspace=wanted.workspace,
        config_dir=wanted.config_dir,
        auto_approve=wanted.auto_approve,
        destroy=destroy or wanted.destroy,
        variables=wanted.variables,
        targets=tuple(wanted.targets),
    )


_PLAN_DOC: dict[str, Any] = dict(
    status_code=202,
    description=(
        "Queue a plan of a workspace. Either JSON `{workspace, config_dir, auto_approve, "
        "destroy, variables, targets}` (config_dir must be under BLIXARD_PLAN_ROOTS), or a "
        "tar.gz of the configuration as the body (Content-Type: application/gzip) with "
        "`?workspace=&auto_approve=&destroy=&var=NAME=VALUE&target=ADDR` in the query."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PlanRequest.model_json_schema()},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses={202: {"description": "The queued run"}, 400: _ERROR, 403: _ERROR, 503: _ERROR},
)


async def _create(request: Request, destroy: bool) -> Response:
    wanted = await _plan_request(request, destroy)
    actor = await authorize(request, Action.plan_create, wanted.workspace)
    run = await _runs(request).create(wanted, actor)
    return json_response(run_json(run), status_code=202)


@router.post("/plan", summary="Create a plan (a run)", **_PLAN_DOC)
async def create_plan(request: Request) -> Response:
    return await _create(request, destroy=False)


@router.post("/destroy", summary="Create a destroy plan", **_PLAN_DOC)
async def create_destroy_plan(request: Request) -> Response:
    return await _create(request, destroy=True)


async def _visible_run(request: Request, plan_id: str, action: Action) -> Any:
    """Credentials and role first, so an unknown id and a hidden one look the same."""
    actor = await authorize(request, action)
    run = await _runs(request).get(plan_id, actor)
    request.state.workspace = run.workspace
    return run, actor


@router.post(
    "/apply/{plan_id}",
    summary="Approve and apply a planned run",
    status_code=202,
    description="Applies exactly the stored plan. 409 if the run is not `planned`, or if the "
    "workspace's serial moved since the plan was made (stale plan).",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ApplyRequest.model_json_schema()}},
        }
    },
    responses={202: {"description": "The approved run"}, 404: _ERROR, 409: _ERROR},
)
async def apply_plan(request: Request, plan_id: str) -> Response:
    run, actor = await _visible_run(request, plan_id, Action.plan_apply)
    body = await read_body(request, SMALL_BODY_LIMIT)
    try:
        wanted = (
            ApplyRequest.model_validate_json(body) if body.strip() else ApplyRequest(approver=None)
        )
    except ValidationError:
        raise InvalidInput('The apply body must be JSON like {"approver": "name"}.') from None
    approved = await _runs(request).approve(run, actor, wanted.approver)
    return json_response(run_json(approved), status_code=202)


@router.get(
    "/plans/{workspace}",
    summary="A workspace's runs, newest first",
    openapi_extra={
        "parameters": [
            count_param("limit", "Page size.", maximum=1000, default=50),
            string_param("before", "Runs older than this plan_id."),
        ]
    },
)
async def list_plans(request: Request, workspace: WorkspacePath) -> Response:
    await authorize(request, Action.plan_read, workspace)
    limit = query_limit(request, maximum=1000, default=50)
    before = request.query_params.get("before")
    runs = await _runs(request).list(workspace, before=before, limit=limit + 1)
    page = runs[:limit]
    return json_response(
        {
            "workspace": workspace,
            "plans": [run_json(run) for run in page],
            "next_before": page[-1].id if len(runs) > limit else None,
        }
    )


@router.get("/plan/{plan_id}", summary="One run", responses={404: _ERROR})
async def get_plan(request: Request, plan_id: str) -> Response:
    run, _ = await _visible_run(request, plan_id, Action.plan_read)
    return json_response(run_json(run))


@router.get(
    "/plan/{plan_id}/logs",
    summary="A run's log (?follow=1 streams it while the run goes on)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 404: _ERROR},
)
async def plan_logs(request: Request, plan_id: str) -> Response:
    run, _ = await _visible_run(request, plan_id, Action.plan_read)
    runs = _runs(request)
    if not query_bool(request, "follow"):
        return Response(await runs.read_log(run), media_type="text/plain; charset=utf-8")
    return StreamingResponse(_follow(runs, run), media_type="text/plain; charset=utf-8")


async def _follow(runs: RunService, run: Run) -> AsyncIterator[bytes]:
    """Everything logged so far, then each new chunk, until the run is finished."""
    sent = 0
    while True:
        live = runs.executor.live.get(run.id)
        if live is not None:
            async with live.lock:
                stored = await runs.store.read_run_log(run.id)
                offset = live.flushed
            if len(stored) > sent:
                yield stored[sent:]
            sent = len(stored)
            async for chunk in live.follow(offset):
                yield chunk
                sent += len(chunk)
        else:
            stored = await runs.store.read_run_log(run.id)
            if len(stored) > sent:
                yield stored[sent:]
                sent = len(stored)
        current = await runs.store.get_run(run.id)
        if current is None or current.status in FINISHED:
            return
        if current.status == RunStatus.planned and current.approved_at is None:
            return  # waiting for a human: nothing more to stream now
        await asyncio.sleep(0.2)


@router.post("/plans/{plan_id}/discard", summary="Discard a queued or planned run")
async def discard_plan(request: Request, plan_id: str) -> Response:
    run, actor = await _visible_run(request, plan_id, Action.plan_apply)
    return json_response(run_json(await _runs(request).discard(run, actor)))


@router.post(
    "/plans/{plan_id}/cancel",
    summary="Cancel a queued or running run (SIGINT, then kill; its state lock is released)",
)
async def cancel_plan(request: Request, plan_id: str) -> Response:
    run, actor = await _visible_run(request, plan_id, Action.plan_apply)
    return json_response(run_json(await _runs(request).cancel(run, actor)))
