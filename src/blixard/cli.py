"""The `blixard` command line: `serve` plus client commands that talk to a server over HTTP.

Client commands read the server address from `--url` or `BLIXARD_URL` (default
http://127.0.0.1:8080) and an optional API key from `--api-key` or `BLIXARD_API_KEY`
(sent as `Authorization: Bearer <key>`). Errors go to stderr as one line, exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from blixard.cli_backup import backup_app
from blixard.cli_encryption import encryption_app

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/tofu"
WORKSPACE_RE = re.compile(r"^(?!\.)[A-Za-z0-9._-]{1,128}$")
LOCK_FIELDS = ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")

app = typer.Typer(
    name="blixard",
    help="Blixard: a remote state server for OpenTofu and Terraform.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(encryption_app)
app.add_typer(backup_app)  # backup, restore, migrate

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


# --------------------------------------------------------------------------- commands


@app.callback()
def _root() -> None:
    """Blixard: a remote state server for OpenTofu and Terraform."""


@app.command()
def serve(
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT to listen on (env BLIXARD_LISTEN; 127.0.0.1:8080)."
    ),
    storage_url: str | None = typer.Option(
        None,
        "--storage-url",
        help="Storage URL, e.g. sqlite:///./data/blixard.db (env BLIXARD_STORAGE_URL).",
    ),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Data directory of the embedded store (env BLIXARD_DATA_DIR)."
    ),
    max_state_bytes: int | None = typer.Option(
        None,
        "--max-state-bytes",
        help="Largest accepted state body in bytes (env BLIXARD_MAX_STATE_BYTES).",
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", help="debug, info, warning or error (env BLIXARD_LOG_LEVEL)."
    ),
    tls_cert: str | None = typer.Option(
        None,
        "--tls-cert",
        help="PEM certificate chain: serve HTTPS (env BLIXARD_TLS_CERT; needs --tls-key).",
    ),
    tls_key: str | None = typer.Option(
        None, "--tls-key", help="PEM private key of --tls-cert (env BLIXARD_TLS_KEY)."
    ),
    tls_client_ca: str | None = typer.Option(
        None,
        "--tls-client-ca",
        help="PEM CA bundle: require client certificates signed by it, i.e. mutual TLS "
        "(env BLIXARD_TLS_CLIENT_CA).",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Allow listening beyond loopback with authentication off (env BLIXARD_INSECURE).",
    ),
) -> None:
    """Run the Blixard server."""
    from blixard.server import serve as run_server

    flags: dict[str, object | None] = {
        "listen": listen,
        "storage_url": storage_url,
        "data_dir": data_dir,
        "max_state_bytes": max_state_bytes,
        "log_level": log_level,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_client_ca": tls_client_ca,
        "insecure": True if insecure else None,
    }
    run_server({k: v for k, v in flags.items() if v is not None})


@app.command()
def workspaces(
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List workspaces with their current version, size and lock."""
    items: list[dict[str, Any]] = []
    with _client(url, api_key) as client:
        after: str | None = None
        while True:
            raw, body = client.request("GET", "/workspaces", {"limit": 1000, "after": after})
            if not isinstance(body, dict) or not isinstance(body.get("workspaces"), list):
                _fail(f"unexpected answer from {client.base}: {raw[:200]!r}")
            items.extend(body["workspaces"])
            after = body.get("next_after")
            if not after:
                break
    if as_json:
        _print_json(json.dumps({"workspaces": items, "next_after": None}, indent=2).encode())
        return
    console = _console()
    if not items:
        console.print("No workspaces yet.")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (
        ("WORKSPACE", "left"),
        ("VERSION", "right"),
        ("SERIAL", "right"),
        ("RESOURCES", "right"),
        ("SIZE", "right"),
        ("UPDATED", "left"),
        ("LOCK", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for ws in items:
        lock = ws.get("lock") or {}
        lock_text = "-"
        if ws.get("locked"):
            lock_text = f"locked by {lock.get('Who') or '?'} ({lock.get('ID') or '?'})"
        table.add_row(
            _text(ws.get("name")),
            _text(ws.get("version")),
            _text(ws.get("serial")),
            _text(ws.get("resource_count")),
            human_size(ws.get("size")),
            relative_age(ws.get("updated_at")),
            _text(lock_text),
        )
    console.print(table)


@app.command()
def history(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Versions to show (server default 50).")
    ] = None,
    before: Annotated[
        int | None, typer.Option("--before", min=1, help="Only versions older than this one.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a workspace's versions, newest first."""
    _check_workspace(workspace)
    with _client(url, api_key) as client:
        raw, body = client.request(
            "GET", f"/history/{workspace}", {"limit": limit, "before": before}
        )
    if as_json:
        _print_json(raw)
        return
    versions = body.get("versions") if isinstance(body, dict) else None
    if not isinstance(versions, list):
        _fail(f"unexpected answer from {url}: {raw[:200]!r}")
    console = _console()
    if not versions:
        console.print(f"No versions of {workspace}.", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (
        ("VERSION", "right"),
        ("SERIAL", "right"),
        ("RESOURCES", "right"),
        ("SIZE", "right"),
        ("CREATED", "left"),
        ("SOURCE", "left"),
        ("LOCK ID", "left"),
        ("TERRAFORM", "left"),
        ("SHA256", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for v in versions:
        source = v.get("source") or "-"
        if v.get("rolled_back_from") is not None:
            source = f"{source} from v{v['rolled_back_from']}"
        table.add_row(
            _text(v.get("version")),
            _text(v.get("serial")),
            _text(v.get("resource_count")),
            human_size(v.get("size")),
            relative_age(v.get("created_at")),
            _text(source),
            _text(v.get("lock_id")),
            _text(v.get("terraform_version")),
            _text((v.get("sha256") or "")[:12]),
        )
    console.print(table)
    next_before = body.get("next_before")
    if next_before:
        console.print(f"(older versions: --before {next_before})", markup=False)


@app.command()
def show(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A past version (default: current).")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a workspace's state to stdout exactly as stored."""
    _check_workspace(workspace)
    with _client(url, api_key) as client:
        client.stream_to(f"/state/{workspace}", {"version": version}, sys.stdout.buffer)


@app.command()
def rollback(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    version: Annotated[int, typer.Argument(min=1, help="Version to restore.")],
    lock_id: Annotated[
        str | None,
        typer.Option("--lock-id", help="ID of the lock you hold on the workspace, if any."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make version N the current state again (as a new version; history is kept)."""
    _check_workspace(workspace)
    with _client(url, api_key) as client:
        raw, body = client.request("POST", f"/rollback/{workspace}/{version}", {"ID": lock_id})
    if as_json:
        _print_json(raw)
        return
    meta = body if isinstance(body, dict) else {}
    _console().print(
        f"Rolled back {workspace} to version {version}: new version {meta.get('version', '?')} "
        f"(serial {meta.get('serial', '?')}, {human_size(meta.get('size'))}).",
        markup=False,
    )


@app.command()
def lock(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show whether a workspace is locked, and by whom."""
    _check_workspace(workspace)
    with _client(url, api_key) as client:
        raw, body = client.request("GET", f"/lock/{workspace}")
    if as_json:
        _print_json(raw)
        return
    status = body if isinstance(body, dict) else {}
    console = _console()
    info = status.get("lock")
    if not status.get("locked") or not isinstance(info, dict):
        console.print(f"{workspace} is not locked.", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Workspace", _text(workspace))
    table.add_row("Locked", "yes")
    for field in LOCK_FIELDS:
        table.add_row(field, _text(info.get(field)))
    age = status.get("age_seconds")
    table.add_row("Locked at", _text(status.get("locked_at")))
    table.add_row("Held for", _format_duration(float(age)) if age is not None else "-")
    console.print(table)


@app.command()
def unlock(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    force: Annotated[
        bool, typer.Option("--force", help="Really remove the lock, whoever holds it.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Force-unlock a workspace (like `terraform force-unlock`)."""
    _check_workspace(workspace)
    if not force:
        _fail(
            f"refusing to unlock {workspace} without --force: removing a lock that a running "
            f"terraform/tofu still holds lets two writers clobber the state; check "
            f"'blixard lock {workspace}' first, then rerun with --force"
        )
    with _client(url, api_key) as client:
        raw, body = client.request("DELETE", f"/lock/{workspace}")
    if as_json:
        _print_json(raw)
        return
    removed = body.get("lock") if isinstance(body, dict) else None
    console = _console()
    if isinstance(removed, dict):
        console.print(
            f"Unlocked {workspace}: removed lock {removed.get('ID') or '?'} held by "
            f"{removed.get('Who') or 'unknown'}"
            + (f" ({removed['Operation']})" if removed.get("Operation") else "")
            + ".",
            markup=False,
        )
    else:
        console.print(f"{workspace} was not locked.", markup=False)


class Style(StrEnum):
    post = "post"
    lock = "lock"


def render_backend_config(base_url: str, workspace: str, style: Style) -> str:
    base = base_url.rstrip("/") + API_PREFIX
    lines = [
        "terraform {",
        '  backend "http" {',
        f'    address        = "{base}/state/{workspace}"',
        f'    lock_address   = "{base}/lock/{workspace}"',
        f'    unlock_address = "{base}/unlock/{workspace}"',
    ]
    if style is Style.post:
        lines += [
            '    update_method  = "POST"',
            '    lock_method    = "POST"',
            '    unlock_method  = "POST"',
        ]
    else:
        lines += [
            '    update_method  = "POST"',
            '    lock_method    = "LOCK"',
            '    unlock_method  = "UNLOCK"',
        ]
    lines += [
        "",
        "    # Retries on connection errors, 429 and 5xx (Retry-After is honoured).",
        "    retry_max      = 5",
        "    retry_wait_min = 1",
        "    retry_wait_max = 3",
        "",
        "    # Credentials: keep them out of this file. Export",
        "    #   TF_HTTP_USERNAME=api",
        "    #   TF_HTTP_PASSWORD=<your Blixard API key>",
        "    # (or set username/password here) to send them as HTTP Basic auth.",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


@app.command("backend-config")
def backend_config(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    style: Annotated[
        Style,
        typer.Option(
            "--style",
            case_sensitive=False,
            help="post: lock/unlock with POST (as in the Blixard docs); "
            "lock: the stock LOCK/UNLOCK methods.",
        ),
    ] = Style.post,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Print a ready-to-paste `backend "http"` block for a workspace."""
    _check_workspace(workspace)
    sys.stdout.write(render_backend_config(url, workspace, style))
    sys.stdout.flush()


# --------------------------------------------------------------------------- keys and audit

keys_app = typer.Typer(
    name="keys",
    help="Manage API keys: through the server's admin API, or with --data-dir directly on a "
    "stopped server's data directory (to bootstrap the first admin key).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


class RoleName(StrEnum):
    reader = "reader"
    writer = "writer"
    operator = "operator"
    admin = "admin"


DataDirOpt = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        help="Work directly on this data directory instead of a server (only while no "
        "server runs on it): how the first admin key is created before the first start.",
    ),
]


def _local(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a blixard.auth.local function; its refusals become one-line errors."""
    from blixard.auth.local import DataDirInUse, NoDatabase
    from blixard.domain.errors import DomainError
    from blixard.store.crypto import EncryptionError

    try:
        result: dict[str, Any] = call(*args, **kwargs)
    except (DataDirInUse, NoDatabase, EncryptionError) as exc:
        _fail(str(exc))
    except DomainError as exc:
        _fail(exc.message)
    return result


def _split_globs(workspaces: str) -> list[str]:
    globs = [glob.strip() for glob in workspaces.split(",") if glob.strip()]
    if not globs:
        _fail("--workspaces needs at least one workspace glob, e.g. '*' or 'team-a-*'")
    return globs


def _short_time(value: str | None) -> str:
    """'2026-11-25 10:00:00Z' for an ISO 8601 time; '-' when absent."""
    when = _parse_time(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if when else (value or "-")


def _key_table(keys: list[dict[str, Any]], *, with_revoked: bool) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ["NAME", "ROLE", "WORKSPACES", "CREATED", "CREATED BY", "LAST USED"]
    if with_revoked:
        columns.append("REVOKED")
    for col in columns:
        table.add_column(col)
    for key in keys:
        row = [
            _text(key.get("name")),
            _text(key.get("role")),
            _text(",".join(key.get("workspaces") or [])),
            _text(_short_time(key.get("created_at"))),
            _text(key.get("created_by")),
            relative_age(key.get("last_used_at")) if key.get("last_used_at") else _text("never"),
        ]
        if with_revoked:
            row.append(_text(_short_time(key.get("revoked_at"))))
        table.add_row(*row)
    return table


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Argument(help="Key name, e.g. ci-team-a (unique among active keys).")
    ],
    role: Annotated[
        RoleName,
        typer.Option(
            "--role",
            case_sensitive=False,
            help="reader: read state/history/locks; writer: + write state and lock; "
            "operator: + plans and applies; admin: + force-unlock, rollback, delete, keys, audit.",
        ),
    ],
    workspaces: Annotated[
        str,
        typer.Option(
            "--workspaces",
            help="Comma-separated workspace globs the key may see, e.g. 'team-a-*,shared' "
            "or '*' for all.",
        ),
    ],
    data_dir: DataDirOpt = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the key and its secret as JSON.")
    ] = False,
) -> None:
    """Create an API key and print its secret (once: it cannot be shown again)."""
    globs = _split_globs(workspaces)
    if data_dir is not None:
        from blixard.auth import local

        body = _local(local.create_key, Path(data_dir), name, role.value, globs)
        raw = json.dumps(body, indent=2).encode()
    else:
        with _client(url, api_key) as client:
            raw, body = client.request(
                "POST", "/keys", json_body={"name": name, "role": role.value, "workspaces": globs}
            )
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("key"), dict)
        or not body.get("secret")
    ):
        _fail(f"unexpected answer: {raw[:200]!r}")
    if as_json:
        _print_json(raw)
        return
    key = body["key"]
    console = _console()
    console.print(f"Created API key {key.get('name')}.", markup=False)
    console.print()
    console.print(f"  {body['secret']}", markup=False, soft_wrap=True)
    console.print()
    console.print(
        "Store it now; it cannot be shown again (only a hash is kept).", style="bold", markup=False
    )
    console.print()
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Name", _text(key.get("name")))
    table.add_row("Role", _text(key.get("role")))
    table.add_row("Workspaces", _text(",".join(key.get("workspaces") or [])))
    table.add_row("Created", _text(key.get("created_at")))
    table.add_row("Created by", _text(key.get("created_by")))
    console.print(table)


@keys_app.command("list")
def keys_list(
    show_all: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    data_dir: DataDirOpt = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List API keys: name, role, workspaces, created, last used (never secrets)."""
    if data_dir is not None:
        from blixard.auth import local

        body = _local(local.list_keys, Path(data_dir), include_revoked=show_all)
        raw = json.dumps(body, indent=2).encode()
    else:
        with _client(url, api_key) as client:
            raw, body = client.request(
                "GET", "/keys", {"include_revoked": "true" if show_all else None}
            )
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        _fail(f"unexpected answer: {raw[:200]!r}")
    if as_json:
        _print_json(raw)
        return
    console = _console()
    if not keys:
        console.print("No API keys." + ("" if show_all else " (--all includes revoked keys)"))
        return
    console.print(_key_table(keys, with_revoked=show_all))


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Name of the active key to revoke.")],
    data_dir: DataDirOpt = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key: it stops working at once (within seconds on other nodes)."""
    if data_dir is not None:
        from blixard.auth import local

        body = _local(local.revoke_key, Path(data_dir), name)
        raw = json.dumps(body, indent=2).encode()
    else:
        with _client(url, api_key) as client:
            raw, body = client.request("DELETE", f"/keys/{quote(name, safe='')}")
    if as_json:
        _print_json(raw)
        return
    key = body.get("key") if isinstance(body, dict) else None
    revoked_at = key.get("revoked_at") if isinstance(key, dict) else None
    _console().print(
        f"Revoked API key {name}" + (f" at {revoked_at}." if revoked_at else "."), markup=False
    )


@app.command()
def audit(
    workspace: Annotated[
        str | None, typer.Option("--workspace", help="Only this workspace.")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key name.")] = None,
    action: Annotated[
        str | None,
        typer.Option(
            "--action", help="Only this action, e.g. state.write, lock.force_unlock, keys.manage."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="ISO 8601 time (inclusive), e.g. 2026-11-25T10:00Z."),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 time (exclusive).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Events to show.")] = 100,
    before: Annotated[
        int | None, typer.Option("--before", min=1, help="Only events older than this id.")
    ] = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the audit trail, newest first: every change and every denied request."""
    filters: dict[str, Any] = {
        "workspace": workspace,
        "key": key,
        "action": action,
        "since": since,
        "until": until,
        "before": before,
        "limit": limit,
    }
    if data_dir is not None:
        from blixard.auth import local

        body = _local(local.list_audit, Path(data_dir), **filters)
        raw = json.dumps(body, indent=2).encode()
    else:
        with _client(url, api_key) as client:
            raw, body = client.request("GET", "/audit", filters)
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        _fail(f"unexpected answer: {raw[:200]!r}")
    if as_json:
        _print_json(raw)
        return
    console = _console()
    if not events:
        console.print("No audit events match.")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (
        ("ID", "right"),
        ("TIME", "left"),
        ("KEY", "left"),
        ("ROLE", "left"),
        ("SOURCE", "left"),
        ("ACTION", "left"),
        ("WORKSPACE", "left"),
        ("VERSION", "right"),
        ("LOCK ID", "left"),
        ("OUTCOME", "left"),
        ("STATUS", "right"),
        ("DETAIL", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for event in events:
        table.add_row(
            _text(event.get("id")),
            _text(_short_time(event.get("at"))),
            _text(event.get("key")),
            _text(event.get("role")),
            _text(event.get("source")),
            _text(event.get("action")),
            _text(event.get("workspace")),
            _text(event.get("version")),
            _text(event.get("lock_id")),
            _text(event.get("outcome")),
            _text(event.get("status")),
            _text(event.get("detail")),
        )
    console.print(table)
    next_before = body.get("next_before")
    if next_before:
        console.print(f"(older events: --before {next_before})", markup=False)


def main() -> None:
    app()


# --------------------------------------------------------------------------- runs: plan and apply

#: Nothing more will happen to a run in these statuses.
RUN_FINISHED = frozenset({"no_changes", "applied", "errored", "discarded", "cancelled"})
PLAN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
FOLLOW_POLL_SECONDS = 0.5
STATUS_POLL_SECONDS = 1.0


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RunClient(Client):
    """The Client, plus archive uploads, log streams and run-specific error hints."""

    def error_message(self, status: int, content: bytes) -> str:
        body = _json_object(content)
        code, message = body.get("error"), body.get("message")
        if not isinstance(message, str) or not message:
            return super().error_message(status, content)
        if code == "stale_plan":
            return f"stale plan: {message} (stale_plan, HTTP {status})"
        if code == "runner_unavailable":
            return f"the server cannot run plans: {message} (runner_unavailable, HTTP {status})"
        if status == 403 and "BLIXARD_PLAN_ROOTS" in message:
            return f"{message} (forbidden, HTTP 403)"
        if status == 403:
            return (
                f"{message} (forbidden, HTTP 403); creating, applying, discarding and "
                "cancelling plans needs an operator key: pass it with --api-key or "
                "BLIXARD_API_KEY"
            )
        return super().error_message(status, content)

    def upload(self, path: str, params: list[tuple[str, str]], archive: bytes) -> dict[str, Any]:
        """POST a tar.gz body; return the JSON object of the 2xx answer."""
        import httpx

        try:
            resp = self._http.post(
                API_PREFIX + path,
                params=tuple(params),
                content=archive,
                headers={"Content-Type": "application/gzip"},
            )
        except httpx.TransportError as exc:
            self._unreachable(exc)
        if resp.status_code >= 400:
            _fail(self.error_message(resp.status_code, resp.content))
        body = _json_object(resp.content)
        if not body.get("plan_id"):
            _fail(f"unexpected answer from {self.base}: {resp.content[:200]!r}")
        return body

    def run(self, plan_id: str) -> dict[str, Any]:
        raw, body = self.request("GET", f"/plan/{quote(plan_id, safe='')}")
        if not isinstance(body, dict) or "status" not in body:
            _fail(f"unexpected answer from {self.base}: {raw[:200]!r}")
        return body

    def log_size(self, plan_id: str) -> int:
        raw, _ = self.request("GET", f"/plan/{quote(plan_id, safe='')}/logs")
        return len(raw)

    def follow_log(self, plan_id: str, skip: int, write: Any) -> int:
        """Stream the log (?follow=1) until the server ends it, passing every byte after the
        first `skip` to `write`; return how many bytes of the log have been seen."""
        import httpx

        seen = 0
        try:
            with self._http.stream(
                "GET",
                f"{API_PREFIX}/plan/{quote(plan_id, safe='')}/logs",
                params={"follow": "1"},
                timeout=httpx.Timeout(None, connect=5.0),  # a quiet run may say nothing for long
            ) as resp:
                if resp.status_code >= 400:
                    _fail(self.error_message(resp.status_code, resp.read()))
                for chunk in resp.iter_bytes():
                    start = max(0, skip - seen)
                    seen += len(chunk)
                    if start < len(chunk):
                        write(chunk[start:])
        except httpx.TransportError as exc:
            self._unreachable(exc)
        return max(seen, skip)


@contextmanager
def _run_client(url: str, api_key: str | None) -> Iterator[RunClient]:
    client = RunClient(url, api_key)
    try:
        yield client
    finally:
        client.close()


def _check_plan_id(plan_id: str) -> str:
    if not PLAN_ID_RE.match(plan_id):
        _fail(f"invalid plan id {plan_id!r}: expected something like run-0192a3b4c5d6e7f8a9b0")
    return plan_id


def _awaiting_approval(run: dict[str, Any]) -> bool:
    approval = ("auto_approve", "approved_at", "approved_by", "approver_comment")
    return run.get("status") == "planned" and not any(run.get(field) for field in approval)


class _LogSink:
    """Writes a run's log: raw bytes to stdout, or whole lines above a live status line."""

    def __init__(self, console: Any | None = None) -> None:
        import codecs

        self.console = console
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def write(self, chunk: bytes) -> None:
        if self.console is None:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            return
        *lines, self._pending = (self._pending + self._decoder.decode(chunk)).split("\n")
        for line in lines:
            self.console.out(line, highlight=False)

    def close(self) -> None:
        if self.console is not None:
            rest = self._pending + self._decoder.decode(b"", final=True)
            if rest:
                self.console.out(rest, highlight=False)
            self._pending = ""


def _follow_run(
    client: RunClient,
    plan_id: str,
    sink: _LogSink,
    settled: Any,
    skip: int = 0,
) -> dict[str, Any]:
    """Stream the run's log until `settled(run)`; return the run as last seen."""
    seen = skip
    while True:
        seen = client.follow_log(plan_id, seen, sink.write)
        run = client.run(plan_id)
        if settled(run):
            sink.close()
            return run
        time.sleep(FOLLOW_POLL_SECONDS)  # e.g. between the plan and its auto-approved apply


def _watch(url: str, api_key: str | None, plan_id: str, skip: int, settled: Any) -> dict[str, Any]:
    """Follow a run: its log, and on a terminal a live status line below it."""
    console = _console()
    with _run_client(url, api_key) as client:
        if not console.is_terminal:
            return _follow_run(client, plan_id, _LogSink(), settled, skip)
        import threading

        from rich.markup import escape

        started = time.monotonic()
        stop = threading.Event()
        with console.status(f"{escape(plan_id)}: ...", spinner="dots") as status:

            def poll() -> None:
                with _run_client(url, api_key) as poller:
                    current = "..."
                    while not stop.is_set():
                        try:
                            resp = poller._http.get(f"{API_PREFIX}/plan/{quote(plan_id, safe='')}")
                            current = str(_json_object(resp.content).get("status") or current)
                        except Exception:
                            pass  # the status line is a nicety; the log stream reports errors
                        elapsed = _format_duration(time.monotonic() - started)
                        status.update(f"{escape(plan_id)}: [bold]{escape(current)}[/] ({elapsed})")
                        stop.wait(STATUS_POLL_SECONDS)

            thread = threading.Thread(target=poll, name="blixard-status", daemon=True)
            thread.start()
            try:
                return _follow_run(client, plan_id, _LogSink(console), settled, skip)
            finally:
                stop.set()
                thread.join(5)


def _following(call: Any) -> dict[str, Any]:
    """Run a follow; Ctrl-C stops watching (the run goes on)."""
    try:
        run: dict[str, Any] = call()
    except KeyboardInterrupt:
        typer.echo("\nstopped following; the run goes on on the server.", err=True)
        raise typer.Exit(code=130) from None
    return run


def _counts(summary: dict[str, Any] | None) -> str:
    s = summary or {}
    return (
        f"{s.get('add', 0)} to add, {s.get('change', 0)} to change, "
        f"{s.get('destroy', 0)} to destroy"
    )


def _action_symbol(actions: list[str]) -> str:
    if "create" in actions and "delete" in actions:
        return "-/+"
    if "create" in actions:
        return "+"
    if "delete" in actions:
        return "-"
    return "~"


def _report_run(run: dict[str, Any]) -> None:
    """What became of a run, and what to do next; exit 1 unless it went well."""
    console = _console()
    plan_id, ws, status = run.get("plan_id"), run.get("workspace"), run.get("status")
    summary = run.get("summary")
    if status == "planned":
        console.print(f"Plan {plan_id} for {ws}: {_counts(summary)}.", markup=False)
        for change in (summary or {}).get("resource_changes") or []:
            actions = list(change.get("actions") or [])
            console.print(
                f"  {_action_symbol(actions)} {change.get('address')} ({', '.join(actions)})",
                markup=False,
            )
        console.print("Review it, then apply it with:", markup=False)
        console.print(f"  blixard apply {plan_id}", markup=False)
        console.print(f"or throw it away with: blixard discard {plan_id}", markup=False)
    elif status == "no_changes":
        console.print(
            f"No changes: {ws} already matches the configuration (plan {plan_id}).", markup=False
        )
    elif status == "applied":
        console.print(
            f"Applied {plan_id} to {ws}: {_counts(summary)}; "
            f"state version {run.get('state_version') or '-'}.",
            markup=False,
        )
    elif status == "errored":
        _fail(f"run {plan_id} errored: {run.get('error') or 'unknown error'}")
    elif status == "cancelled":
        _fail(f"run {plan_id} was cancelled by {run.get('cancelled_by') or 'an operator'}")
    elif status == "discarded":
        _fail(f"run {plan_id} was discarded by {run.get('discarded_by') or 'an operator'}")
    else:
        console.print(
            f"Run {plan_id} is {status}; follow it with: blixard logs {plan_id} --follow",
            markup=False,
        )


def _parse_vars(items: list[str]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not sep or not name.strip():
            _fail(f"invalid --var {item!r}: use NAME=VALUE")
        params.append(("var", item))
    return params


@app.command()
def plan(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="Configuration directory; uploaded as a tar.gz (.terraform and state files "
            "are left out).",
            exists=True,
            file_okay=False,
            dir_okay=True,
            resolve_path=True,
        ),
    ],
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply at once if the plan has changes.")
    ] = False,
    destroy: Annotated[
        bool, typer.Option("--destroy", help="Plan destroying every resource.")
    ] = False,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", metavar="NAME=VALUE", help="An input variable (repeatable)."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", metavar="ADDR", help="Limit the plan to ADDR (repeatable)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Stream the log until the plan is ready (or the run ends)."
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Have the server plan DIR against WORKSPACE's state (a run, reviewed before apply)."""
    _check_workspace(workspace)
    params = [
        ("workspace", workspace),
        ("auto_approve", "true" if auto_approve else "false"),
        ("destroy", "true" if destroy else "false"),
        *_parse_vars(var or []),
        *(("target", address) for address in target or []),
    ]
    from blixard.runs.archive import make_archive

    try:
        archive = make_archive(directory)
    except Exception as exc:  # unreadable files, a link pointing outside, ...
        _fail(f"cannot archive {directory}: {exc}")
    with _run_client(url, api_key) as client:
        run = client.upload("/plan", params, archive)
    plan_id = str(run["plan_id"])
    if not follow:
        if as_json:
            _print_json(json.dumps(run, indent=2).encode())
            return
        _console().print(
            f"Queued plan {plan_id} for {workspace} ({human_size(len(archive))} uploaded).\n"
            f"Follow it with: blixard logs {plan_id} --follow",
            markup=False,
        )
        return
    if not as_json:
        _console().print(f"Queued plan {plan_id} for {workspace}.", markup=False)
    final = _following(
        lambda: _watch(
            url,
            api_key,
            plan_id,
            0,
            lambda r: r.get("status") in RUN_FINISHED or _awaiting_approval(r),
        )
    )
    if as_json:
        _print_json(json.dumps(final, indent=2).encode())
        return
    _report_run(final)


@app.command()
def apply(
    plan_id: Annotated[str, typer.Argument(help="The plan to apply (from `blixard plan`).")],
    comment: Annotated[
        str | None,
        typer.Option("--comment", help="A note recorded with the approval (e.g. a ticket)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the apply's log until it ends.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a planned run and apply exactly that plan (refused if the state moved since)."""
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        skip = client.log_size(plan_id) if follow else 0  # the plan's log was seen already
        raw, body = client.request(
            "POST", f"/apply/{quote(plan_id, safe='')}", json_body={"approver": comment}
        )
    run = body if isinstance(body, dict) else {}
    if not follow:
        if as_json:
            _print_json(raw)
            return
        _console().print(
            f"Approved {plan_id} for {run.get('workspace')}"
            + (f" as {run['approved_by']}" if run.get("approved_by") else "")
            + f"; applying.\nFollow it with: blixard logs {plan_id} --follow",
            markup=False,
        )
        return
    final = _following(
        lambda: _watch(url, api_key, plan_id, skip, lambda r: r.get("status") in RUN_FINISHED)
    )
    if as_json:
        _print_json(json.dumps(final, indent=2).encode())
        return
    _report_run(final)


def _changes_cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return f"+{summary.get('add', 0)} ~{summary.get('change', 0)} -{summary.get('destroy', 0)}"


@app.command()
def plans(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=1000, help="Runs to show (default 50).")
    ] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Only runs older than this plan id.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's plans (runs), newest first."""
    _check_workspace(workspace)
    with _run_client(url, api_key) as client:
        raw, body = client.request("GET", f"/plans/{workspace}", {"limit": limit, "before": before})
    if as_json:
        _print_json(raw)
        return
    runs = body.get("plans") if isinstance(body, dict) else None
    if not isinstance(runs, list):
        _fail(f"unexpected answer from {url}: {raw[:200]!r}")
    console = _console()
    if not runs:
        console.print(f"No plans for {workspace}.", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("PLAN", "STATUS", "CHANGES", "CREATED", "BY", "APPROVED BY", "NOTE"):
        table.add_column(col)
    for run in runs:
        status = str(run.get("status") or "-")
        if run.get("destroy"):
            status += " (destroy)"
        note = run.get("error") or run.get("approver_comment")
        if run.get("status") == "discarded":
            note = f"discarded by {run.get('discarded_by') or '-'}"
        elif run.get("status") == "cancelled":
            note = f"cancelled by {run.get('cancelled_by') or '-'}"
        table.add_row(
            _text(run.get("plan_id")),
            _text(status),
            _text(_changes_cell(run.get("summary"))),
            relative_age(run.get("created_at")),
            _text(run.get("created_by")),
            _text(run.get("approved_by")),
            _text(note),
        )
    console.print(table)
    next_before = body.get("next_before")
    if next_before:
        console.print(f"(older plans: --before {next_before})", markup=False)


@app.command()
def logs(
    plan_id: Annotated[str, typer.Argument(help="The plan (run) id.")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep streaming until the run ends or awaits approval."
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a run's log (init, plan and apply output) to stdout."""
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        if not follow:
            client.stream_to(f"/plan/{quote(plan_id, safe='')}/logs", {}, sys.stdout.buffer)
            return
        _following(
            lambda: _follow_run(
                client,
                plan_id,
                _LogSink(),
                lambda r: r.get("status") in RUN_FINISHED or _awaiting_approval(r),
            )
        )


def _run_action(plan_id: str, action: str, url: str, api_key: str | None) -> dict[str, Any]:
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        raw, body = client.request("POST", f"/plans/{quote(plan_id, safe='')}/{action}")
    if not isinstance(body, dict) or "status" not in body:
        _fail(f"unexpected answer from {url}: {raw[:200]!r}")
    return body


@app.command()
def discard(
    plan_id: Annotated[str, typer.Argument(help="A queued or planned run.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Throw away a plan that is queued or awaiting approval."""
    run = _run_action(plan_id, "discard", url, api_key)
    if as_json:
        _print_json(json.dumps(run, indent=2).encode())
        return
    _console().print(f"Discarded {plan_id} ({run.get('workspace')}).", markup=False)


@app.command()
def cancel(
    plan_id: Annotated[str, typer.Argument(help="A queued, planning or applying run.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run: interrupt its plan or apply (its state lock is released)."""
    run = _run_action(plan_id, "cancel", url, api_key)
    if as_json:
        _print_json(json.dumps(run, indent=2).encode())
        return
    if run.get("status") == "cancelled":
        _console().print(f"Cancelled {plan_id} ({run.get('workspace')}).", markup=False)
    else:
        _console().print(
            f"Cancel requested for {plan_id}; it is still {run.get('status')} "
            f"(check with: blixard logs {plan_id}).",
            markup=False,
        )
