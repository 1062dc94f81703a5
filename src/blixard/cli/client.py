"""The HTTP client of the commands that talk to a server: requests, TLS, and the server's
errors worded as one line (common.py has the options and formatting every command shares).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from blixard.cli.common import fail

API_PREFIX = "/api/tofu"


# --------------------------------------------------------------------------- errors


def _describe_holder(body: dict[str, Any]) -> str:
    """'locked by WHO (ID x, operation y, since t)' from LockInfo fields at the top level."""
    lock_id = body.get("ID")
    if not lock_id:
        return ""
    who = body.get("Who") or "unknown"
    parts = [f"ID {lock_id}"]
    if body.get("Operation"):
        parts.append(f"operation {body['Operation']}")
    if body.get("Created"):
        parts.append(f"since {body['Created']}")
    return f"locked by {who} ({', '.join(parts)})"


def _api_error_message(status: int, content: bytes) -> str:
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error") or f"http_{status}"
        message = body.get("message") or body.get("detail") or "request failed"
        if not isinstance(message, str):
            message = json.dumps(message)
        line = f"{message} ({code}, HTTP {status})"
        holder = _describe_holder(body)
        if holder and str(body.get("ID")) not in message:
            line += f"; {holder}"
    else:
        text = content.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        line = f"HTTP {status}" + (f": {text}" if text else "")
    if status in (401, 403):
        line += "; pass an API key with --api-key or BLIXARD_API_KEY"
    return line


# --------------------------------------------------------------------------- HTTP client


def _tls_context() -> ssl.SSLContext | bool:
    """HTTPS trust and mutual TLS from the environment: BLIXARD_CA_CERT (a PEM CA bundle),
    BLIXARD_CLIENT_CERT and BLIXARD_CLIENT_KEY (a client certificate for mTLS servers)."""
    ca = os.environ.get("BLIXARD_CA_CERT")
    cert = os.environ.get("BLIXARD_CLIENT_CERT")
    key = os.environ.get("BLIXARD_CLIENT_KEY")
    if not (ca or cert):
        return True  # the system's trust store (or SSL_CERT_FILE)
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            fail(f"cannot load BLIXARD_CLIENT_CERT/BLIXARD_CLIENT_KEY: {exc}")
    return context


class Client:
    """A thin synchronous client for the Blixard API; exits with a message on any failure."""

    def __init__(self, url: str, api_key: str | None) -> None:
        import httpx

        self.base = url.rstrip("/")
        headers = {"User-Agent": "blixard-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        #: The httpx client itself, for a caller that reads a raw answer or a stream and
        #: words its own errors (a backup download, a best-effort status poll).
        self.http = httpx.Client(
            base_url=self.base,
            headers=headers,
            timeout=httpx.Timeout(120.0, connect=5.0),
            verify=_tls_context(),
        )

    def close(self) -> None:
        self.http.close()

    def error_message(self, status: int, content: bytes) -> str:
        """The one-line message for an error answer (subclasses add context)."""
        return _api_error_message(status, content)

    def _unreachable(self, exc: Exception) -> NoReturn:
        detail = str(exc) or type(exc).__name__
        fail(f"cannot reach Blixard at {self.base}: {detail}")

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
    ) -> tuple[bytes, Any]:
        """Send a request; return (raw body, parsed JSON or None) of a 2xx answer."""
        import httpx

        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self.http.request(method, API_PREFIX + path, params=clean, json=json_body)
        except httpx.TransportError as exc:
            self._unreachable(exc)
        if resp.status_code >= 400:
            fail(self.error_message(resp.status_code, resp.content))
        try:
            parsed = json.loads(resp.content) if resp.content else None
        except ValueError:
            parsed = None
        return resp.content, parsed

    def stream_to(self, path: str, params: dict[str, Any], out: Any) -> None:
        """GET `path` and copy the body byte-for-byte to the binary stream `out`."""
        import httpx

        clean = {k: v for k, v in params.items() if v is not None}
        try:
            with self.http.stream("GET", API_PREFIX + path, params=clean) as resp:
                if resp.status_code >= 400:
                    fail(self.error_message(resp.status_code, resp.read()))
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                out.flush()
        except httpx.TransportError as exc:
            self._unreachable(exc)
        except BrokenPipeError:
            # The reader went away (`blixard show ws | head`): stop quietly, like cat does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(code=1) from None


@contextmanager
def open_client(url: str, api_key: str | None) -> Iterator[Client]:
    client = Client(url, api_key)
    try:
        yield client
    finally:
        client.close()
