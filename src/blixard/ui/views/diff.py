"""The diff page: any two versions of a workspace, or two workspaces, resources grouped by
change with attribute-level before/after (sensitive values masked by the explorer)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.domain.access import Action
from blixard.domain.diff import ResourceChange
from blixard.domain.errors import InvalidInput
from blixard.domain.explorer import ExplorerService
from blixard.domain.parsing import check_workspace_name
from blixard.ui.web import page, render, router

CHANGE_ORDER = ("added", "removed", "changed", "moved")
SYMBOLS = {"added": "+", "removed": "-", "changed": "~", "moved": "→"}
#: Above this many changed resources, their attribute tables start folded.
OPEN_LIMIT = 30


def explorer_of(request: Request) -> ExplorerService:
    explorer: ExplorerService = request.app.state.explorer
    return explorer


def optional_version(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) <= 2**53:
        raise InvalidInput(f"'{name}' must be a version number.")
    return int(raw)


def grouped(changes: tuple[ResourceChange, ...]) -> list[tuple[str, list[ResourceChange]]]:
    groups: dict[str, list[ResourceChange]] = {kind: [] for kind in CHANGE_ORDER}
    for change in changes:
        groups[change.change].append(change)
    return [(kind, groups[kind]) for kind in CHANGE_ORDER if groups[kind]]


@router.get("/workspaces/{workspace}/diff")
async def diff_page(request: Request, workspace: str) -> Response:
    current = await page(request, Action.state_read, workspace)
    other = request.query_params.get("from_workspace", "").strip() or None
    if other is not None and other != workspace:
        check_workspace_name(other)
        await page(request, Action.state_read, other)  # the same scope check as the API's
    view = await explorer_of(request).diff(
        workspace,
        to_version=optional_version(request, "to"),
        from_version=optional_version(request, "from"),
        from_workspace=other,
    )
    return render(
        current,
        request,
        "diff.html",
        section="workspaces",
        workspace=workspace,
        other=other,
        view=view,
        groups=grouped(view.diff.resources),
        symbols=SYMBOLS,
        fold=len(view.diff.resources) > OPEN_LIMIT,
    )
