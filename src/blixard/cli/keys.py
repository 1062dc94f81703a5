"""`blixard keys ...` (API keys) and `blixard audit` (the audit trail)."""

from __future__ import annotations

import json
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from blixard.cli import common
from blixard.cli.client import open_client
from blixard.cli.common import DEFAULT_URL, ApiKeyOpt, JsonOpt, UrlOpt, relative_age

keys_app = typer.Typer(
    name="keys",
    help="Manage API keys: through the server's admin API, or with --data-dir directly on a "
    "stopped server's data directory (to bootstrap the first admin key).",
    no_args_is_help=True,
)


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
        common.fail(str(exc))
    except DomainError as exc:
        common.fail(exc.message)
    return result


def _split_globs(workspaces: str) -> list[str]:
    globs = [glob.strip() for glob in workspaces.split(",") if glob.strip()]
    if not globs:
        common.fail("--workspaces needs at least one workspace glob, e.g. '*' or 'team-a-*'")
    return globs


def _short_time(value: str | None) -> str:
    """'2026-11-25 10:00:00Z' for an ISO 8601 time; '-' when absent."""
    when = common.parse_time(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if when else (value or "-")


def _key_table(keys: list[dict[str, Any]], *, with_revoked: bool) -> Any:
    columns = ["NAME", "ROLE", "WORKSPACES", "CREATED", "CREATED BY", "LAST USED"]
    if with_revoked:
        columns.append("REVOKED")
    table = common.table(columns)
    for key in keys:
        row = [
            common.text(key.get("name")),
            common.text(key.get("role")),
            common.text(",".join(key.get("workspaces") or [])),
            common.text(_short_time(key.get("created_at"))),
            common.text(key.get("created_by")),
            relative_age(key.get("last_used_at"))
            if key.get("last_used_at")
            else common.text("never"),
        ]
        if with_revoked:
            row.append(common.text(_short_time(key.get("revoked_at"))))
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
        with open_client(url, api_key) as client:
            raw, body = client.request(
                "POST", "/keys", json_body={"name": name, "role": role.value, "workspaces": globs}
            )
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("key"), dict)
        or not body.get("secret")
    ):
        common.fail(f"unexpected answer: {raw[:200]!r}")
    if as_json:
        common.print_json(raw)
        return
    key = body["key"]
    console = common.console()
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
    table.add_row("Name", common.text(key.get("name")))
    table.add_row("Role", common.text(key.get("role")))
    table.add_row("Workspaces", common.text(",".join(key.get("workspaces") or [])))
    table.add_row("Created", common.text(key.get("created_at")))
    table.add_row("Created by", common.text(key.get("created_by")))
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
        with open_client(url, api_key) as client:
            raw, body = client.request(
                "GET", "/keys", {"include_revoked": "true" if show_all else None}
            )
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        common.fail(f"unexpected answer: {raw[:200]!r}")
    if as_json:
        common.print_json(raw)
        return
    console = common.console()
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
        with open_client(url, api_key) as client:
            raw, body = client.request("DELETE", f"/keys/{quote(name, safe='')}")
    if as_json:
        common.print_json(raw)
        return
    key = body.get("key") if isinstance(body, dict) else None
    revoked_at = key.get("revoked_at") if isinstance(key, dict) else None
    common.console().print(
        f"Revoked API key {name}" + (f" at {revoked_at}." if revoked_at else "."), markup=False
    )


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
        with open_client(url, api_key) as client:
            raw, body = client.request("GET", "/audit", filters)
    events = common.listed(raw, body, "events")
    if as_json:
        common.print_json(raw)
        return
    console = common.console()
    if not events:
        console.print("No audit events match.")
        return
    table = common.table(
        (
            ("ID", "right"),
            "TIME",
            "KEY",
            "ROLE",
            "SOURCE",
            "ACTION",
            "WORKSPACE",
            ("VERSION", "right"),
            "LOCK ID",
            "OUTCOME",
            ("STATUS", "right"),
            "DETAIL",
        )
    )
    for event in events:
        table.add_row(
            common.text(event.get("id")),
            common.text(_short_time(event.get("at"))),
            common.text(event.get("key")),
            common.text(event.get("role")),
            common.text(event.get("source")),
            common.text(event.get("action")),
            common.text(event.get("workspace")),
            common.text(event.get("version")),
            common.text(event.get("lock_id")),
            common.text(event.get("outcome")),
            common.text(event.get("status")),
            common.text(event.get("detail")),
        )
    console.print(table)
    common.print_older(console, body, "events")
