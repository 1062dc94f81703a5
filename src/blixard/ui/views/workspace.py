"""One workspace: summary, lock panel, versions timeline, raw downloads, force-unlock,
rollback, soft delete and restore (each behind a confirmation page)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from blixard.api.views import service_of
from blixard.domain.access import Action
from blixard.domain.errors import InvalidInput, NotFound
from blixard.domain.models import Lock, VersionMeta, Workspace
from blixard.ui.views.diff import OPEN_LIMIT, SYMBOLS, explorer_of, grouped
from blixard.ui.web import Page, form, page, redirect, render, router

PAGE_SIZE = 25
NOTICES = {
    "unlocked": "The lock was released.",
    "rolled_back": "Rolled back: the old content is now the newest version.",
    "restored": "The workspace was restored.",
    "nothing_locked": "The workspace was not locked (any more).",
}


@dataclass(frozen=True)
class VersionRow:
    meta: VersionMeta
    size_delta: int | None
    resource_delta: int | None
    who: str | None


def _rows(versions: list[VersionMeta], lock: Lock | None) -> list[VersionRow]:
    """Each version with its change against the one before it (when on hand)."""
    rows = []
    for index, meta in enumerate(versions):
        older = versions[index + 1] if index + 1 < len(versions) else None
        resource_delta = None
        if older and meta.resource_count is not None and older.resource_count is not None:
            resource_delta = meta.resource_count - older.resource_count
        who = None
        if lock is not None and meta.lock_id == lock.id:
            who = lock.info.get("Who") or None
        size_delta = meta.size - older.size if older else None
        rows.append(VersionRow(meta, size_delta, resource_delta, who))
    return rows


def _version_number(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise InvalidInput("A version is a positive whole number.")
    return int(raw)


async def _workspace(request: Request, name: str) -> Workspace:
    found = await service_of(request).store.get_workspace(name)
    if found is None or found.deleted:
        raise NotFound(f"Workspace '{name}' does not exist.")
    return found


def _before(request: Request) -> int | None:
    raw = request.query_params.get("before")
    return _version_number(raw) if raw else None


@router.get("/workspaces/{workspace}")
async def workspace_page(request: Request, workspace: str) -> Response:
    current = await page(request, Action.history_read, workspace)
    found = await service_of(request).store.get_workspace(workspace)
    if found is not None and found.deleted and current.can(Action.workspace_restore):
        return render(current, request, "deleted.html", ws=found, section="workspaces")
    ws = await _workspace(request, workspace)
    before = _before(request)
    versions = await service_of(request).history(workspace, before=before, limit=PAGE_SIZE + 2)
    rows = _rows(versions, ws.lock)[:PAGE_SIZE]
    next_before = rows[-1].meta.version if len(versions) > PAGE_SIZE else None
    return render(
        current,
        request,
        "workspace.html",
        section="workspaces",
        ws=ws,
        rows=rows,
        before=before,
        next_before=next_before,
        notice=NOTICES.get(request.query_params.get("notice", "")),
    )


@router.get("/workspaces/{workspace}/versions/{version}/raw")
async def raw_version(request: Request, workspace: str, version: str) -> Response:
    await page(request, Action.state_read, workspace)
    number = _version_number(version)
    meta, body = await service_of(request).read_state(workspace, number)
    return Response(
        bytes(body),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{workspace}-v{meta.version}.tfstate"',
            "Cache-Control": "no-store",
        },
    )


# -- force-unlock --------------------------------------------------------------------------


@router.get("/workspaces/{workspace}/unlock")
async def confirm_unlock(request: Request, workspace: str) -> Response:
    current = await page(request, Action.lock_force, workspace)
    ws = await _workspace(request, workspace)
    if ws.lock is None:
        return redirect(f"/ui/workspaces/{workspace}?notice=nothing_locked")
    return render(current, request, "confirm_unlock.html", section="workspaces", ws=ws)


@router.post("/workspaces/{workspace}/unlock")
async def force_unlock(request: Request, workspace: str) -> Response:
    current = await page(request, Action.lock_force, workspace)
    fields = await form(request, current)
    service = service_of(request)
    ws = await _workspace(request, workspace)
    expected = fields.get("lock_id", "")
    if ws.lock is None or (expected and ws.lock.id != expected):
        # The lock confirmed is gone (or replaced by another): never break a lock unseen.
        return redirect(f"/ui/workspaces/{workspace}?notice=nothing_locked")
    await service.force_unlock(workspace, actor=current.actor)
    return redirect(f"/ui/workspaces/{workspace}?notice=unlocked")


# -- rollback ------------------------------------------------------------------------------


@router.get("/workspaces/{workspace}/rollback/{version}")
async def confirm_rollback(request: Request, workspace: str, version: str) -> Response:
    current = await page(request, Action.rollback, workspace)
    ws = await _workspace(request, workspace)
    target, _ = await service_of(request).read_state(workspace, _version_number(version))
    assert ws.head is not None  # it has a version
    # What the rollback will change: from the current version to the chosen one.
    view = await explorer_of(request).diff(
        workspace, to_version=target.version, from_version=ws.head.version
    )
    return render(
        current,
        request,
        "confirm_rollback.html",
        section="workspaces",
        ws=ws,
        target=target,
        view=view,
        groups=grouped(view.diff.resources),
        symbols=SYMBOLS,
        fold=len(view.diff.resources) > OPEN_LIMIT,
    )


@router.post("/workspaces/{workspace}/rollback/{version}")
async def rollback(request: Request, workspace: str, version: str) -> Response:
    current = await page(request, Action.rollback, workspace)
    await form(request, current)
    meta = await service_of(request).rollback(
        workspace, _version_number(version), actor=current.actor
    )
    metrics = request.app.state.metrics
    metrics.bytes_written.inc(meta.size)
    metrics.versions_written.labels(meta.source).inc()
    return redirect(f"/ui/workspaces/{workspace}?notice=rolled_back")


# -- soft delete and restore ---------------------------------------------------------------


@router.get("/workspaces/{workspace}/delete")
async def confirm_delete(request: Request, workspace: str) -> Response:
    current = await page(request, Action.workspace_delete, workspace)
    ws = await _workspace(request, workspace)
    return render(current, request, "confirm_delete.html", section="workspaces", ws=ws)


@router.post("/workspaces/{workspace}/delete")
async def delete(request: Request, workspace: str) -> Response:
    current = await page(request, Action.workspace_delete, workspace)
    await form(request, current)
    await service_of(request).delete_workspace(workspace, actor=current.actor)
    return redirect("/ui/?notice=deleted")


@router.post("/workspaces/{workspace}/restore")
async def restore(request: Request, workspace: str) -> Response:
    current: Page = await page(request, Action.workspace_restore, workspace)
    await form(request, current)
    await service_of(request).restore_workspace(workspace, actor=current.actor)
    return redirect(f"/ui/workspaces/{workspace}?notice=restored")
