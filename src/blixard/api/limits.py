"""Request-header limits, enforced before any handler runs."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from blixard.api.errors import error_response

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024


class HeaderLimits:
    """431 for requests with too many or too large headers (state lives in bodies, not here)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if len(headers) > MAX_HEADERS or (
                sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES
            ):
                response = error_response(
                    431,
                    "headers_too_large",
                    f"Request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes.",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
