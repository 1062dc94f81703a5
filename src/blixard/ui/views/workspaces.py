"""The workspaces list: filtered and paged by walking the store's name order in batches.

A filter never loads every workspace: the walk stops once a page is full, or after
SCAN_BUDGET names (then the page links on from where it stopped), so a request costs the
same at 20,000 workspaces as at 200.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from blixard.api.views import service_of
from blixard.domain.access import Action, Actor
from blixard.domain.models import Workspace
from blixard.ui.web import page, render, router

PAGE_SIZE = 50
BATCH = 2_500
SCAN_BUDGET = 25_000
CHANGED_WITHIN = {"": None, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
NOTICES = {"deleted": "The workspace was deleted. An admin can restore it from this list."}


@dataclass(frozen=True)
class Filters:
    name: str
    locked: bool
    changed: str
    deleted: bool

    @staticmethod
    def of(request: Request, may_see_deleted: bool) -> Filters:
        query = request.query_params
        changed = query.get("changed", "")
        return Filters(
            name=query.get("q", "").strip()[:128],
            locked=query.get("locked") == "1",
            changed=changed if changed in CHANGED_WITHIN else "",
            deleted=may_see_deleted and query.get("deleted") == "1",
        )

    @property
    def active(self) -> bool:
        return bool(self.name or self.locked or self.changed or self.deleted)

    def matches(self, ws: Workspace, now: float) -> bool:
        if self.deleted != ws.deleted:
            return False
        if self.name and self.name.lower() not in ws.name.lower():
            return False
        if self.locked and ws.lock is None:
            return False
        within = CHANGED_WITHIN[self.changed]
        return within is None or ws.updated_at >= now - within


async def find_page(
    request: Request, actor: Actor, filters: Filters, after: str | None
) -> tuple[list[Workspace], str | None]:
    """One page of matching workspaces and the name to continue after (None: the end)."""
    service = service_of(request)
    if not filters.active:
        found = await service.list_workspaces(after=after, limit=PAGE_SIZE + 1, actor=actor)
        page_rows = found[:PAGE_SIZE]
        return page_rows, page_rows[-1].name if len(found) > PAGE_SIZE else None
    now = time.time()
    rows: list[Workspace] = []
    cursor, scanned = after, 0
    while True:
        batch = await service.store.list_workspaces(
            after=cursor, limit=BATCH, include_deleted=filters.deleted
        )
        for ws in batch:
            cursor = ws.name
            if filters.matches(ws, now) and actor.can_see(ws.name):
                rows.append(ws)
                if len(rows) == PAGE_SIZE:
                    return rows, cursor
        scanned += len(batch)
        if len(batch) < BATCH:
            return rows, None
        if scanned >= SCAN_BUDGET:
            return rows, cursor


@router.get("/")
async def workspaces(request: Request) -> Response:
    current = await page(request, Action.workspace_list)
    filters = Filters.of(request, current.can(Action.workspace_restore))
    after = request.query_params.get("after") or None
    rows, next_after = await find_page(request, current.actor, filters, after)
    return render(
        current,
        request,
        "workspaces.html",
        section="workspaces",
        rows=rows,
        filters=filters,
        after=after,
        next_after=next_after,
        partial=filters.active and next_after is not None and len(rows) < PAGE_SIZE,
        notice=NOTICES.get(request.query_params.get("notice", "")),
    )
