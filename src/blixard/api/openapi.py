"""The OpenAPI document, made to say what the server actually answers.

FastAPI documents a 422 for every route with parameters; Blixard answers malformed input with
400 (handlers parse after authentication, see api/params.py). Every route under /api/tofu
checks a key (401, 403), reads the store (503 with Retry-After) and may refuse its input
(400); routes that name a workspace or an object answer 404 for one that does not exist (or
is out of the key's scope); routes that read a body answer 408 and 413; any request may be
refused 431 for its headers. Those are added here once instead of on every route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code."},
        "message": {"type": "string", "description": "One human sentence."},
    },
    "additionalProperties": True,
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}

_DESCRIPTIONS = {
    400: "Malformed input (JSON error)",
    401: "No valid API key (JSON error, `WWW-Authenticate: Basic`)",
    403: "The key's role does not allow this (JSON error)",
    404: "No such workspace or object, or outside the key's scopes (JSON error)",
    408: "The request body stopped arriving (JSON error)",
    413: "The request body is larger than the limit (JSON error)",
    431: "Too many or too large request headers (JSON error)",
    503: "Storage temporarily unavailable; retry after `Retry-After` seconds (JSON error)",
}
_OBJECT_ROUTES = ("/api/tofu/plan", "/api/tofu/destroy")  # the workspace is in body or query


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {431}
    if path.startswith("/api/tofu/"):
        statuses |= {400, 401, 403, 503}
        if "{" in path or path in _OBJECT_ROUTES:
            statuses.add(404)
        if "requestBody" in operation:
            statuses |= {408, 413}
    elif operation.get("parameters"):
        statuses.add(400)
    return statuses


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated schema with 422 replaced by 400 and the shared error statuses added."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in sorted(_statuses(path, method, operation)):
                responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400 and "content" not in response:
                    response["content"] = _ERROR_CONTENT
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = _ERROR_SCHEMA
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
