"""The one place where domain errors become HTTP statuses and JSON error bodies."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from blixard.api.security import record_refusal, require_known_caller
from blixard.domain import errors as e

log = logging.getLogger("blixard.api")

STATUS_BY_ERROR: list[tuple[type[e.DomainError], int]] = [
    (e.Unauthenticated, 401),
    (e.PermissionDenied, 403),
    (e.PayloadTooLarge, 413),
    (e.BodyTimeout, 408),
    (e.InvalidInput, 400),
    (e.NotFound, 404),
    (e.Locked, 423),
    (e.LockConflict, 409),
    (e.LockLost, 409),
    (e.Conflict, 409),
    (e.StorageUnavailable, 503),
    (e.RunnerUnavailable, 503),
    (e.VersionCorrupt, 500),
]

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def status_for(error: e.DomainError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = {"error": code, "message": message, **extra}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def domain_error_response(error: e.DomainError) -> Response:
    if isinstance(error, e.StorageUnavailable):
        log.warning("storage unavailable: %s", error.message)
    if isinstance(error, e.VersionCorrupt):
        log.error("%s", error.message)
    status = status_for(error)
    extra: dict[str, Any] = dict(error.extra)
    headers: dict[str, str] = {}
    if isinstance(error, e.HolderError) and error.holder is not None:
        # The stock clients parse a conflict body as LockInfo to name the holder.
        extra.update(error.holder.holder_fields())
    if isinstance(error, e.StorageUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, e.Unauthenticated):
        headers["WWW-Authenticate"] = 'Basic realm="blixard", charset="UTF-8"'
    return error_response(status, error.code, error.message, headers, **extra)


def refusal_response(request: Request, error: e.DomainError) -> Response:
    """The response to a refused request, which is also recorded in the audit trail."""
    response = domain_error_response(error)
    record_refusal(request, error, response.status_code)
    return response


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:  # FastAPI wraps each included router
            yield from _leaf_routes(included)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (Starlette's 405 names only the first
    route that matched the path, and each protocol method is its own route here)."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in _leaf_routes(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> Response:
        return refusal_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        # Routes parse their input after `authorize`; should one declare a typed parameter,
        # a caller without a key still gets 401 rather than a description of its mistake.
        try:
            await require_known_caller(request)
        except e.Unauthenticated as refusal:
            return domain_error_response(refusal)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return error_response(400, "invalid_request", f"Invalid request: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "An internal error occurred; see server logs.")
