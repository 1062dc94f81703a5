"""A dispatch shortcut for the backend-protocol routes, the server's hot path.

Terraform's write cycle is four small requests; the framework's generic machinery (middleware
layers, route scanning, dependency resolution) costs as much as the work itself. This ASGI
layer matches the protocol addresses directly and calls the very same handlers that the
FastAPI routes register (backend.PROTOCOL_HANDLERS), so behaviour and docs stay single-sourced.
Everything else falls through to the FastAPI app.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from blixard.api.backend import PROTOCOL_HANDLERS, Handler
from blixard.api.errors import error_response, log, refusal_response
from blixard.domain.errors import DomainError

_PROTOCOL_PATH = re.compile(r"/api/tofu/(state|lock|unlock)/([^/]+)")


class _RouteLabel:
    """Stands in for a Starlette route in scope["route"], so metrics label the template."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_LABELS = {template: _RouteLabel(template) for template, _ in PROTOCOL_HANDLERS}


class ProtocolFastPath:
    def __init__(self, app: ASGIApp, root: ASGIApp) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = _PROTOCOL_PATH.fullmatch(scope["path"])
            if match is not None:
                template = f"/api/tofu/{match[1]}/{{workspace}}"
                handler = PROTOCOL_HANDLERS.get((template, scope["method"]))
                if handler is not None:
                    scope["app"] = self.root
                    scope["route"] = _LABELS[template]
                    response = await self._run(handler, Request(scope, receive), match[2])
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _run(handler: Handler, request: Request, workspace: str) -> Response:
        # scope["path"] is already percent-decoded by the server: decoding again would turn
        # %252F into '/' here but not in the framework's routes.
        try:
            return await handler(request, workspace)
        except DomainError as exc:
            return refusal_response(request, exc)
        except Exception:
            log.exception("unhandled error")
            return error_response(
                500, "internal_error", "An internal error occurred; see server logs."
            )
