"""Limits on what a client may make the server hold before any handler runs.

Two layers. `LimitedHttpToolsProtocol` is the HTTP protocol `blixard serve` gives uvicorn: it
counts the bytes of a request's head (request line and headers) as they come off the socket
and answers 431 once they pass MAX_HEADER_BYTES, so a megabyte of headers is never buffered
(httptools itself accumulates a header of any size). `RequestLimits` is the ASGI layer: the
header-count check for any server, and `Connection: close` on a response sent before the
request's body was read (a 401 to a 200 MiB upload), so the rest of that body is never read.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from blixard.api.errors import error_response

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024

_TOO_LARGE_MESSAGE = f"Request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes."


class _TooManyHeaders(Exception):
    """Raised from a parser callback; httptools turns it into a parser error."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head capped while it is received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0
        self._messages = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self._refused:
            room = MAX_HEADER_BYTES - self._head_bytes
            if len(data) > room:
                # Feed what the head may still use; the rest only if that ended the head.
                messages = self._messages
                self._head_bytes = MAX_HEADER_BYTES
                super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self._in_head and self._messages == messages:
                    self._refuse()
                    return
                self.data_received(data[room:])
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > MAX_HEADERS:
            self._refused = True
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._messages += 1
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        """431 as a JSON error, then close: the rest of this connection is never read."""
        self._refused = True
        body = orjson.dumps({"error": "headers_too_large", "message": _TOO_LARGE_MESSAGE})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class RequestLimits:
    """431 for too many or too large headers (any server), and no reading of unread bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > MAX_HEADERS or (
            sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES
        ):
            response = error_response(431, "headers_too_large", _TOO_LARGE_MESSAGE)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        if not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_tracked() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                # Answered before the body was read (refused, or too large): never read it.
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive_tracked, send_tracked)
