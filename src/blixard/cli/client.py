"""What the client commands share: the HTTP Client, error messages, common options and formatting.

Errors go to stderr as one line, exit code 1 (`_fail`).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/tofu"
WORKSPACE_RE = re.compile(r"^(?!\.)[A-Za-z0-9._-]{1,128}$")

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="BLIXARD_URL",
        show_envvar=True,
        help="Base URL of the Blixard server.",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="BLIXARD_API_KEY",
        show_envvar=True,
        help="API key, sent as 'Authorization: Bearer <key>'.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's raw JSON.")]


# --------------------------------------------------------------------------- errors


def _fail(message: str) -> NoReturn:
    """Report a failure as one line on stderr and exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


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
            _fail(f"cannot load BLIXARD_CLIENT_CERT/BLIXARD_CLIENT_KEY: {exc}")
    return context


class Client:
    """A thin synchronous client for the Blixard API; exits with a message on any failure."""

    def __init__(self, url: str, api_key: str | None) -> None:
        import httpx

        self.base = url.rstrip("/")
        headers = {"User-Agent": "blixard-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base,
            headers=headers,
            timeout=httpx.Timeout(120.0, connect=5.0),
            verify=_tls_context(),
        )

    def close(self) -> None:
        self._http.close()

    def error_message(self, status: int, content: bytes) -> str:
        """The one-line message for an error answer (subclasses add context)."""
        return _api_error_message(status, content)

    def _unreachable(self, exc: Exception) -> NoReturn:
        detail = str(exc) or type(exc).__name__
        _fail(f"cannot reach Blixard at {self.base}: {detail}")

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
            resp = self._http.request(method, API_PREFIX + path, params=clean, json=json_body)
        except httpx.TransportError as exc:
            self._unreachable(exc)
        if resp.status_code >= 400:
            _fail(self.error_message(resp.status_code, resp.content))
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
            with self._http.stream("GET", API_PREFIX + path, params=clean) as resp:
                if resp.status_code >= 400:
                    _fail(self.error_message(resp.status_code, resp.read()))
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
def _client(url: str, api_key: str | None) -> Iterator[Client]:
    client = Client(url, api_key)
    try:
        yield client
    finally:
        client.close()


def _check_workspace(name: str) -> str:
    if not WORKSPACE_RE.match(name):
        _fail(
            f"invalid workspace name {name!r}: use 1-128 characters of A-Z a-z 0-9 . _ - "
            "not starting with '.'"
        )
    return name


# --------------------------------------------------------------------------- formatting


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def relative_age(value: str | None, now: datetime | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago' for an ISO 8601 time; '-' when absent."""
    when = _parse_time(value)
    if when is None:
        return value or "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    return _format_duration(seconds) + " ago"


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        # Piped or captured output: never truncate table cells to a guessed 80 columns.
        console.width = max(console.width, 240)
    return console


def _text(value: Any) -> Any:
    """Plain (non-markup) text for a table cell."""
    from rich.text import Text

    return Text("-" if value is None or value == "" else str(value))


def _print_json(raw: bytes) -> None:
    sys.stdout.write(raw.decode("utf-8", "replace").rstrip("\n") + "\n")
    sys.stdout.flush()


def _listed(raw: bytes, body: Any, field: str, source: str | None = None) -> list[Any]:
    """The list under `field` of a listing answer; anything else means the server at `source`
    is not one this CLI understands."""
    items = body.get(field) if isinstance(body, dict) else None
    if not isinstance(items, list):
        where = f" from {source}" if source else ""
        _fail(f"unexpected answer{where}: {raw[:200]!r}")
    return items


def _table(columns: Sequence[str | tuple[str, str]]) -> Any:
    """The table every listing prints: bold header, no box; a column is a name or (name,
    justify)."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        name, justify = (column, "left") if isinstance(column, str) else column
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _print_older(console: Any, body: Any, what: str) -> None:
    """Tell how to page further back when the listing says there is more."""
    next_before = body.get("next_before") if isinstance(body, dict) else None
    if next_before:
        console.print(f"(older {what}: --before {next_before})", markup=False)
