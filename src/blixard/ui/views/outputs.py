"""Outputs of a version, masked; operators and admins may reveal them (audited)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.domain.access import Action
from blixard.ui.views.diff import explorer_of, optional_version
from blixard.ui.web import form, page, render, router


@router.get("/workspaces/{workspace}/outputs")
async def outputs_page(request: Request, workspace: str) -> Response:
    current = await page(request, Action.state_read, workspace)
    view = await explorer_of(request).outputs(
        workspace, version=optional_version(request, "version")
    )
    return render(
        current, request, "outputs.html", section="workspaces", workspace=workspace, view=view
    )


@router.post("/workspaces/{workspace}/outputs")
async def reveal_outputs(request: Request, workspace: str) -> Response:
    """A POST: revealing is an audited act, never a link a crawler or preloader could follow."""
    current = await page(request, Action.sensitive_reveal, workspace)
    fields = await form(request, current)
    raw = fields.get("version", "")
    version = int(raw) if raw.isdigit() and 0 < int(raw) <= 2**53 else None
    view = await explorer_of(request).outputs(workspace, version=version, reveal_to=current.actor)
    return render(
        current, request, "outputs.html", section="workspaces", workspace=workspace, view=view
    )
