"""Liveness, storage health and Prometheus metrics: no credentials, nothing sensitive."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from blixard import __version__
from blixard.api.views import iso, json_response, service_of, store_of
from blixard.domain.errors import StorageUnavailable
from blixard.domain.roles import NodeLeases
from blixard.runs.binary import BinaryNotFound, resolve_binary

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness, and the OpenTofu/Terraform that runs use")
async def health(request: Request) -> Response:
    settings = request.app.state.settings
    try:
        binary = await asyncio.to_thread(resolve_binary, settings.tofu_bin)
        runner: dict[str, str] = {"kind": binary.kind, "version": binary.version}
    except BinaryNotFound as exc:
        runner = {"error": str(exc)}
    return json_response({"status": "ok", "version": __version__, "runner": runner})


@router.get(
    "/health/hiqlite",
    summary="Storage engine health",
    description="Named for the seed document's troubleshooting command; reports whichever "
    "engine is configured. 503 when the store cannot serve.",
)
async def storage_health(request: Request) -> Response:
    service = service_of(request)
    report, nodes = await asyncio.gather(service.health(), _live_nodes(store_of(request)))
    if nodes is not None:
        report["blixard_nodes"] = nodes
    # Where data lives and how to reach the store is nobody's business but the operator's:
    # this endpoint needs no credentials.
    report = {key: value for key, value in report.items() if key != "path"}
    # Whether this node can execute runs (the sandbox is probed at start and after a failure).
    report["runner"] = request.app.state.runs.executor.sandbox.state.report()
    if "members" in report:  # copies: the engine may keep these dicts
        report["members"] = [
            {key: value for key, value in member.items() if key != "client_urls"}
            for member in report["members"]
        ]
    return json_response(report, status_code=200 if report.get("is_healthy") else 503)


async def _live_nodes(store: NodeLeases) -> list[dict[str, Any]] | None:
    """The Blixard nodes holding a lease (that execute runs), or None if the store cannot say
    within a second: the storage report is what a load balancer needs."""
    try:
        nodes = await asyncio.wait_for(store.live_nodes(), 1.0)
    except (StorageUnavailable, TimeoutError):
        return None
    return [
        {"id": node_id, "version": info.get("version"), "started_at": iso(info.get("started_at"))}
        for node_id, info in sorted(nodes.items())
    ]


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics
    stats = await store_of(request).stats()
    registry.versions_stored.set(stats["versions"])
    registry.workspaces.set(stats["workspaces"])
    registry.stored_bytes.set(stats["stored_bytes"])
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
