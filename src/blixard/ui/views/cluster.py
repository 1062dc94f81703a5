"""The cluster: storage engine, members, leader, Blixard nodes, schema, encryption status."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blixard.api.views import iso, service_of, store_of
from blixard.domain.access import Action
from blixard.domain.errors import StorageUnavailable
from blixard.ui.web import page, render, router

#: Fields of the storage report shown as a list; members and nodes get tables of their own.
_HIDDEN = {"path", "members", "blixard_nodes"}


@router.get("/cluster")
async def cluster(request: Request) -> Response:
    current = await page(request, Action.workspace_list)
    store = store_of(request)
    report: dict[str, Any] = await service_of(request).health()
    try:
        nodes = await asyncio.wait_for(store.live_nodes(), 1.0)
    except (StorageUnavailable, TimeoutError):
        nodes = None
    encryption = None
    if current.can(Action.admin):
        encryption = (await store.encryption_status()).to_json()
    members = [
        {key: value for key, value in member.items() if key != "client_urls"}
        for member in report.get("members", [])
    ]
    return render(
        current,
        request,
        "cluster.html",
        section="cluster",
        facts=[(k, v) for k, v in report.items() if k not in _HIDDEN],
        members=members,
        nodes=[
            {
                "id": node_id,
                "version": info.get("version"),
                "started_at": iso(info.get("started_at")),
            }
            for node_id, info in sorted((nodes or {}).items())
        ],
        nodes_known=nodes is not None,
        encryption=encryption,
    )
