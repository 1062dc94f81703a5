"""What the CLI commands share: the common options, one-line failures, and the formatting
of listings (tables, times, sizes). The HTTP client is in client.py.

Errors go to stderr as one line, exit code 1 (`fail`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer

DEFAULT_URL = "http://127.0.0.1:8080"
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


def fail(message: str) -> NoReturn:
    """Report a failure as one line on stderr and exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def check_workspace(name: str) -> str:
    if not WORKSPACE_RE.match(name):
        fail(
            f"invalid workspace name {name!r}: use 1-128 characters of A-Z a-z 0-9 . _ - "
            "not starting with '.'"
        )
    return name


# --------------------------------------------------------------------------- formatting


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def relative_age(value: str | None, now: datetime | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago' for an ISO 8601 time; '-' when absent."""
    when = parse_time(value)
    if when is None:
        return value or "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    return format_duration(seconds) + " ago"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        # Piped or captured output: never truncate table cells to a guessed 80 columns.
        console.width = max(console.width, 240)
    return console


def text(value: Any) -> Any:
    """Plain (non-markup) text for a table cell."""
    from rich.text import Text

    return Text("-" if value is None or value == "" else str(value))


def print_json(raw: bytes) -> None:
    sys.stdout.write(raw.decode("utf-8", "replace").rstrip("\n") + "\n")
    sys.stdout.flush()


def listed(raw: bytes, body: Any, field: str, source: str | None = None) -> list[Any]:
    """The list under `field` of a listing answer; anything else means the server at `source`
    is not one this CLI understands."""
    items = body.get(field) if isinstance(body, dict) else None
    if not isinstance(items, list):
        where = f" from {source}" if source else ""
        fail(f"unexpected answer{where}: {raw[:200]!r}")
    return items


def table(columns: Sequence[str | tuple[str, str]]) -> Any:
    """The table every listing prints: bold header, no box; a column is a name or (name,
    justify)."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        name, justify = (column, "left") if isinstance(column, str) else column
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def print_older(console: Any, body: Any, what: str) -> None:
    """Tell how to page further back when the listing says there is more."""
    next_before = body.get("next_before") if isinstance(body, dict) else None
    if next_before:
        console.print(f"(older {what}: --before {next_before})", markup=False)
