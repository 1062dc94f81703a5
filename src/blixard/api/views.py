"""JSON shapes of the API: domain objects in, orjson bytes out (no pydantic on the hot path)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from blixard.domain.service import StateService
from blixard.domain.shapes import iso, lock_json, version_json, workspace_json
from blixard.store.protocol import Store

#: The shapes live in domain/shapes.py; the handlers import them from here with the rest.
__all__ = [
    "iso",
    "json_response",
    "lock_json",
    "service_of",
    "store_of",
    "version_json",
    "workspace_json",
]


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


def store_of(request: Request) -> Store:
    """The whole engine, for the handlers whose role is not the state service's (admin,
    encryption, health); everything else goes through a service."""
    store: Store = request.app.state.store
    return store
