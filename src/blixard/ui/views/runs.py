"""Runs: a workspace's runs, one run's page, its log streamed live (SSE), and the operator's
approve / discard / cancel."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from blixard.auth.grants import StreamGrant
from blixard.domain.access import Action
from blixard.domain.errors import InvalidInput, StorageUnavailable
from blixard.domain.events import EventBus
from blixard.domain.runs import EXECUTING, FINISHED, Run, RunStatus
from blixard.runs.service import RunRequest, RunService
from blixard.ui.web import form, page, redirect, render, router

PAGE_SIZE = 25
#: Seconds between looks at the log while a process of the run executes.
LOG_POLL_SECONDS = 0.25
#: Seconds between keep-alives (and status looks) while nothing executes.
IDLE_SECONDS = 15.0


def _runs(request: Request) -> RunService:
    service: RunService = request.app.state.runs
    return service


def waiting_for_approval(run: Run) -> bool:
    return run.status == RunStatus.planned and run.approved_at is None


@router.get("/workspaces/{workspace}/runs")
async def runs_list(request: Request, workspace: str) -> Response:
    current = await page(request, Action.plan_read, workspace)
    before = request.query_params.get("before") or None
    found = await _runs(request).list(workspace, before=before, limit=PAGE_SIZE + 1)
    rows = found[:PAGE_SIZE]
    return render(
        current,
        request,
        "runs.html",
        section="workspaces",
        workspace=workspace,
        rows=rows,
        before=before,
        next_before=rows[-1].id if len(found) > PAGE_SIZE else None,
        plan_roots=[str(root) for root in _runs(request).settings.plan_root_paths],
    )


@router.post("/workspaces/{workspace}/runs")
async def create_run(request: Request, workspace: str) -> Response:
    """Plan a configuration directory under BLIXARD_PLAN_ROOTS (the RunService checks it)."""
    current = await page(request, Action.plan_create, workspace)
    fields = await form(request, current)
    variables: dict[str, str] = {}
    for line in fields.get("variables", "").splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidInput("Write each variable on its own line as NAME=VALUE.")
        variables[name.strip()] = value
    run = await _runs(request).create(
        RunRequest(
            workspace=workspace,
            config_dir=fields.get("config_dir", "").strip() or None,
            destroy=fields.get("destroy") == "1",
            auto_approve=fields.get("auto_approve") == "1",
            variables=variables,
        ),
        current.actor,
    )
    return redirect(f"/ui/runs/{run.id}")


@router.get("/runs/{plan_id}")
async def run_page(request: Request, plan_id: str) -> Response:
    current = await page(request, Action.plan_read)
    run = await _runs(request).get(plan_id, current.actor)
    log = (await _runs(request).read_log(run)).decode(errors="replace")
    return render(
        current,
        request,
        "run.html",
        section="workspaces",
        run=run,
        log=log,
        log_bytes=len(log.encode()),
        waiting=waiting_for_approval(run),
        finished=run.status in FINISHED,
        can_cancel=run.status in (*EXECUTING, RunStatus.queued),
        can_discard=run.status in (RunStatus.queued, RunStatus.planned) and run.approved_at is None,
    )


@router.get("/runs/{plan_id}/log")
async def run_log_events(request: Request, plan_id: str) -> Response:
    """The log from byte `from` on as SSE `log` events, and `status` events, until finished."""
    current = await page(request, Action.plan_read)
    run = await _runs(request).get(plan_id, current.actor)
    raw = request.query_params.get("from", "0")
    start = int(raw) if raw.isdigit() else 0
    grant = StreamGrant(
        request.app.state.keyring,
        current.session.key,
        current.actor,
        Action.plan_read,
        current.session.expires_at,
    )
    return StreamingResponse(
        _log_stream(_runs(request), request.app.state.events, run, start, grant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _log_stream(
    runs: RunService, bus: EventBus, run: Run, sent: int, grant: StreamGrant
) -> AsyncIterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        listener = await bus.subscribe()
    except StorageUnavailable:  # etcd cannot be watched now: the page's stream retries
        return
    status = run.status
    try:
        yield b"retry: 2000\n" + _sse("status", {"status": status.value})
        while not listener.ended:
            actor = await grant.current()  # a revoked key or ended session: nothing more
            if actor is None or not actor.can_see(run.workspace):
                return
            current = await runs.store.get_run(run.id)
            if current is None:
                return
            log = await runs.read_log(current)
            if len(log) > sent:
                yield _sse("log", decoder.decode(log[sent:]))
                sent = len(log)
            if current.status != status:
                status = current.status
                yield _sse("status", {"status": status.value})
            if status in FINISHED:
                yield _sse("end", {"status": status.value})
                return
            if status in EXECUTING:
                await listener.next(LOG_POLL_SECONDS)
            elif await listener.next(IDLE_SECONDS) is None:
                # Queued, or waiting for approval: woken by a change, else keep the line open.
                yield b": keep-alive\n\n"
    finally:
        listener.close()


async def _act(request: Request, plan_id: str, verb: str) -> Response:
    current = await page(request, Action.plan_apply)
    runs = _runs(request)
    run = await runs.get(plan_id, current.actor)
    request.state.workspace = run.workspace
    await form(request, current)
    if verb == "approve":
        await runs.approve(run, current.actor, None)
    elif verb == "discard":
        await runs.discard(run, current.actor)
    else:
        await runs.cancel(run, current.actor)
    return redirect(f"/ui/runs/{plan_id}")


@router.post("/runs/{plan_id}/approve")
async def approve(request: Request, plan_id: str) -> Response:
    return await _act(request, plan_id, "approve")


@router.post("/runs/{plan_id}/discard")
async def discard(request: Request, plan_id: str) -> Response:
    return await _act(request, plan_id, "discard")


@router.post("/runs/{plan_id}/cancel")
async def cancel(request: Request, plan_id: str) -> Response:
    return await _act(request, plan_id, "cancel")
