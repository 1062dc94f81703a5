"""A minimal asyncio HTTP/1.1 client over keep-alive connections, for benchmarks only.

httpx.AsyncClient costs a few hundred microseconds of CPU per request, which on a
2-core machine is CPU taken from the server under test; this client costs a few tens.
It supports exactly what the benchmarks need: any method, a bytes body, Content-Length
and chunked responses, and reconnecting when the server closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpConnection:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self._host_header = f"{self.host}:{self.port}".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        for attempt in (1, 2):
            if self._writer is None:
                await self._connect()
            try:
                return await self._roundtrip(method, path, body, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection closed by the server: retry once on a new one.
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _roundtrip(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> Response:
        assert self._reader is not None and self._writer is not None
        head = [
            f"{method} {self.prefix}{path} HTTP/1.1".encode(),
            b"Host: " + self._host_header,
            b"Content-Length: " + str(len(body)).encode(),
        ]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}".encode())
        self._writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        if body:
            self._writer.write(body)
        await self._writer.drain()

        raw_head = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        resp_headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                resp_headers[name.strip().lower()] = value.strip()
        payload = b""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif "content-length" in resp_headers:
            payload = await self._reader.readexactly(int(resp_headers["content-length"]))
        elif resp_headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = await self._reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    # trailers until an empty line
                    while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            payload = b"".join(chunks)
        else:
            payload = await self._reader.read()
            resp_headers["connection"] = "close"
        if resp_headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, resp_headers, payload)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (a cheaper client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
