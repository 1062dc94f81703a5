"""JSON shapes of the API: domain objects in, orjson bytes out (no pydantic on the hot path)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from blixard.domain.models import Lock, VersionMeta, Workspace
from blixard.domain.service import StateService


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def version_json(meta: VersionMeta) -> dict[str, Any]:
    return {
        "workspace": meta.workspace,
        "version": meta.version,
        "serial": meta.serial,
        "lineage": meta.lineage,
        "size": meta.size,
        "sha256": meta.sha256,
        "md5": meta.md5,
        "created_at": iso(meta.created_at),
        "lock_id": meta.lock_id,
        "terraform_version": meta.terraform_version,
        "resource_count": meta.resource_count,
        "source": meta.source,
        "rolled_back_from": meta.rolled_back_from,
        "written_by": meta.written_by,
        "who": meta.lock_who,
    }


def lock_json(lock: Lock | None) -> dict[str, Any] | None:
    return None if lock is None else lock.holder_fields()


def workspace_json(ws: Workspace) -> dict[str, Any]:
    head = ws.head
    return {
        "name": ws.name,
        "serial": head.serial if head else None,
        "lineage": head.lineage if head else None,
        "version": head.version if head else None,
        "updated_at": iso(ws.updated_at),
        "created_at": iso(ws.created_at),
        "size": head.size if head else None,
        "resource_count": head.resource_count if head else None,
        "terraform_version": head.terraform_version if head else None,
        "locked": ws.lock is not None,
        "lock": lock_json(ws.lock),
    }


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def service_of(request: Request) -> StateService:
    service: StateService = request.app.state.service
    return service
