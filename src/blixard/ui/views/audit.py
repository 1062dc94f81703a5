"""The audit trail (admin): filterable, paged, newest first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.api.views import store_of
from blixard.domain.access import Action
from blixard.domain.parsing import parse_time
from blixard.ui.web import page, render, router

PAGE_SIZE = 50
FILTERS = ("workspace", "key", "action", "since", "until")


@router.get("/audit")
async def audit(request: Request) -> Response:
    current = await page(request, Action.audit_read)
    query = request.query_params
    filters = {name: query.get(name, "").strip()[:200] for name in FILTERS}
    raw_before = query.get("before", "")
    events = await store_of(request).list_audit(
        workspace=filters["workspace"] or None,
        key_name=filters["key"] or None,
        action=filters["action"] or None,
        since=parse_time(filters["since"] or None, "since"),
        until=parse_time(filters["until"] or None, "until"),
        before_id=int(raw_before) if raw_before.isdigit() else None,
        limit=PAGE_SIZE + 1,
    )
    rows = events[:PAGE_SIZE]
    return render(
        current,
        request,
        "audit.html",
        section="audit",
        rows=rows,
        filters=filters,
        next_before=rows[-1].id if len(events) > PAGE_SIZE else None,
    )
