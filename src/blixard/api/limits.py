"""Limits on what a client may make the server hold before any handler runs.

`LimitedHttpToolsProtocol` is the HTTP protocol `blixard serve` gives uvicorn: it counts the
bytes of a request's head (request line and headers) as they come off the socket and answers
431 once they pass MAX_HEADER_BYTES, so a megabyte of headers is never buffered (httptools
itself accumulates a header of any size), 408 when a head takes longer than the body timeout
to arrive, and `Connection: close` on a response sent before the request's body has all
arrived (a 401 to a 200 MiB upload), so the rest of that body is never read. `RequestLimits`
does the same at the ASGI layer for an app served any other way.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from blixard.api.errors import error_response

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024

_TOO_LARGE_MESSAGE = f"Request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes."


class _TooManyHeaders(Exception):
    """Raised from a parser callback; httptools turns it into a parser error."""


def _malformed_message() -> str:
    """What was wrong with a request httptools refused: uvicorn calls send_400_response while
    it handles the parser's error, whose reason is one of llhttp's fixed texts ("Duplicate
    Content-Length"), never the client's bytes."""
    error = sys.exc_info()[1]
    if isinstance(error, httptools.HttpParserError) and str(error):
        return f"The request is not valid HTTP/1.1: {str(error)[:200]}."
    return "The request is not valid HTTP/1.1."


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head capped while it is received, in
    size and in time: a head (or a new connection's first one) that has not arrived within
    `head_timeout` seconds answers 408 and the connection closes (uvicorn has no such
    timeout, so a client sending a header byte at a time held a connection forever)."""

    head_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._messages = 0
        self._refused = False
        #: When the head being received is due (None between heads), and the one timer that
        #: checks it: a request only stamps the time, so no timer is made per request.
        self._head_due: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        #: The request whose keep-alive waits for its body (on_headers_complete).
        self._keep_alive_after_body: RequestResponseCycle | None = None
        self._shutting_down = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_due = self.loop.time() + self.head_timeout
        self._watchdog = self.loop.call_at(self._head_due, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_watchdog()
        super().connection_lost(exc)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_head(self) -> None:
        self._watchdog = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        due = self._head_due
        if due is not None and now >= due:
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy:
                self._answer_and_close(
                    408,
                    "Request Timeout",
                    "head_timeout",
                    "The request head did not arrive in time.",
                )
                return
        # Between heads (or the previous response still going), look again a timeout later.
        when = due if due is not None and due > now else now + self.head_timeout
        self._watchdog = self.loop.call_at(when, self._check_head)

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
        self._head_due = self.loop.time() + self.head_timeout
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # Counted once the head is in: its bytes are capped, so its fields are too.
        if len(self.headers) > MAX_HEADERS:
            self._refused = True
            raise _TooManyHeaders
        self._in_head = False
        self._head_due = None
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.keep_alive and not cycle.response_complete:
            # Until the whole body has arrived, a response (a 401 to a 200 MiB upload) says
            # `Connection: close` and closes: the rest of that body is never read.
            cycle.keep_alive = False
            self._keep_alive_after_body = cycle

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._messages += 1
        self._in_head = True
        self._head_bytes = 0
        cycle, self._keep_alive_after_body = self._keep_alive_after_body, None
        if cycle is not None and cycle is self.cycle and not self._shutting_down:
            cycle.keep_alive = True

    def shutdown(self) -> None:
        self._shutting_down = True  # uvicorn ends keep-alive for good: never turn it back on
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (a malformed or repeated Content-Length, a bad
        request line): a JSON 400 like every other error, then close."""
        if self._refused:
            self._refuse()
        else:
            self._answer_and_close(400, "Bad Request", "invalid_request", _malformed_message())

    def _refuse(self) -> None:
        """431 as a JSON error, then close: the rest of this connection is never read."""
        self._refused = True
        self._answer_and_close(
            431, "Request Header Fields Too Large", "headers_too_large", _TOO_LARGE_MESSAGE
        )

    def _answer_and_close(self, status: int, reason: str, code: str, message: str) -> None:
        self._disarm_watchdog()
        body = orjson.dumps({"error": code, "message": message})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


def http_protocol(head_timeout: float) -> type[LimitedHttpToolsProtocol]:
    """The protocol class `blixard serve` hands uvicorn, with the configured head timeout."""
    return type("BlixardHttpProtocol", (LimitedHttpToolsProtocol,), {"head_timeout": head_timeout})


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class RequestLimits:
    """What LimitedHttpToolsProtocol does, for an app served another way (tests' clients,
    another ASGI server): 431 for too many or too large headers, and `Connection: close` on
    a response sent before the request's body was read."""

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
