"""Resources of a version: a module tree and type filter over the explorer's listing, and one
resource's page with its attributes (sensitive values masked) and its timeline."""

from __future__ import annotations

from collections import Counter

from starlette.requests import Request
from starlette.responses import Response

from blixard.domain.access import Action
from blixard.ui.views.diff import explorer_of, optional_version
from blixard.ui.web import page, render, router

PAGE_SIZE = 100
#: Instances read to draw the module tree and the type list (one parsed, cached version).
TREE_LIMIT = 20_000


def module_tree(modules: Counter[str]) -> list[tuple[str, int, int]]:
    """(module path, depth, instances in it and below), parents before children."""
    totals: Counter[str] = Counter()
    for module, count in modules.items():
        parts = module.split(".module.") if module else []
        for depth in range(len(parts) + 1):
            totals[".module.".join(parts[:depth])] += count
    return [
        (module, 0 if not module else module.count(".module.") + 1, totals[module])
        for module in sorted(totals)
    ]


@router.get("/workspaces/{workspace}/resources")
async def resources_page(request: Request, workspace: str) -> Response:
    current = await page(request, Action.state_read, workspace)
    query = request.query_params
    version = optional_version(request, "version")
    explorer = explorer_of(request)
    everything = await explorer.resources(workspace, version=version, limit=TREE_LIMIT)
    modules = Counter(instance.module for instance in everything.instances)
    types = sorted({instance.type for instance in everything.instances})
    chosen_type = query.get("type", "").strip() or None
    chosen_module = query.get("module", "").strip() or None
    text = query.get("q", "").strip()[:256] or None
    listing = await explorer.resources(
        workspace,
        version=version,
        type=chosen_type,
        module=chosen_module,
        query=text,
        after=query.get("after") or None,
        limit=PAGE_SIZE,
    )
    return render(
        current,
        request,
        "resources.html",
        section="workspaces",
        workspace=workspace,
        listing=listing,
        tree=module_tree(modules),
        types=types,
        chosen_type=chosen_type,
        chosen_module=chosen_module,
        text=text,
        version=version,
    )


@router.get("/workspaces/{workspace}/resource")
async def resource_page(request: Request, workspace: str) -> Response:
    current = await page(request, Action.state_read, workspace)
    address = request.query_params.get("address", "")
    version = optional_version(request, "version")
    explorer = explorer_of(request)
    found = await explorer.resource(workspace, address, version=version)
    timeline = await explorer.timeline(
        workspace, address, before=optional_version(request, "before"), limit=50
    )
    return render(
        current,
        request,
        "resource.html",
        section="workspaces",
        workspace=workspace,
        address=address,
        found=found,
        timeline=timeline,
        version=version,
    )
