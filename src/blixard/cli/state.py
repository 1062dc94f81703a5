"""State commands: workspaces, history, show, rollback, lock, unlock, backend-config."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from blixard.cli import common
from blixard.cli.client import API_PREFIX, open_client
from blixard.cli.common import DEFAULT_URL, ApiKeyOpt, JsonOpt, UrlOpt, relative_age
from blixard.domain.shapes import human_size

LOCK_FIELDS = ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")


def workspaces(
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List workspaces with their current version, size and lock."""
    items: list[dict[str, Any]] = []
    with open_client(url, api_key) as client:
        after: str | None = None
        while True:
            raw, body = client.request("GET", "/workspaces", {"limit": 1000, "after": after})
            items.extend(common.listed(raw, body, "workspaces", client.base))
            after = body.get("next_after")
            if not after:
                break
    if as_json:
        common.print_json(json.dumps({"workspaces": items, "next_after": None}, indent=2).encode())
        return
    console = common.console()
    if not items:
        console.print("No workspaces yet.")
        return
    table = common.table(
        (
            "WORKSPACE",
            ("VERSION", "right"),
            ("SERIAL", "right"),
            ("RESOURCES", "right"),
            ("SIZE", "right"),
            "UPDATED",
            "LOCK",
        )
    )
    for ws in items:
        lock = ws.get("lock") or {}
        lock_text = "-"
        if ws.get("locked"):
            lock_text = f"locked by {lock.get('Who') or '?'} ({lock.get('ID') or '?'})"
        table.add_row(
            common.text(ws.get("name")),
            common.text(ws.get("version")),
            common.text(ws.get("serial")),
            common.text(ws.get("resource_count")),
            human_size(ws.get("size")),
            relative_age(ws.get("updated_at")),
            common.text(lock_text),
        )
    console.print(table)


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
    common.check_workspace(workspace)
    with open_client(url, api_key) as client:
        raw, body = client.request(
            "GET", f"/history/{workspace}", {"limit": limit, "before": before}
        )
    if as_json:
        common.print_json(raw)
        return
    versions = common.listed(raw, body, "versions", url)
    console = common.console()
    if not versions:
        console.print(f"No versions of {workspace}.", markup=False)
        return
    table = common.table(
        (
            ("VERSION", "right"),
            ("SERIAL", "right"),
            ("RESOURCES", "right"),
            ("SIZE", "right"),
            "CREATED",
            "SOURCE",
            "LOCK ID",
            "TERRAFORM",
            "SHA256",
        )
    )
    for v in versions:
        source = v.get("source") or "-"
        if v.get("rolled_back_from") is not None:
            source = f"{source} from v{v['rolled_back_from']}"
        table.add_row(
            common.text(v.get("version")),
            common.text(v.get("serial")),
            common.text(v.get("resource_count")),
            human_size(v.get("size")),
            relative_age(v.get("created_at")),
            common.text(source),
            common.text(v.get("lock_id")),
            common.text(v.get("terraform_version")),
            common.text((v.get("sha256") or "")[:12]),
        )
    console.print(table)
    common.print_older(console, body, "versions")


def show(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A past version (default: current).")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="The version current at this RFC 3339 time."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a workspace's state to stdout exactly as stored."""
    common.check_workspace(workspace)
    params = {"version": version, "as_of": as_of}
    with open_client(url, api_key) as client:
        client.stream_to(f"/state/{workspace}", params, sys.stdout.buffer)


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
    common.check_workspace(workspace)
    with open_client(url, api_key) as client:
        raw, body = client.request("POST", f"/rollback/{workspace}/{version}", {"ID": lock_id})
    if as_json:
        common.print_json(raw)
        return
    meta = body if isinstance(body, dict) else {}
    common.console().print(
        f"Rolled back {workspace} to version {version}: new version {meta.get('version', '?')} "
        f"(serial {meta.get('serial', '?')}, {human_size(meta.get('size'))}).",
        markup=False,
    )


def lock(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show whether a workspace is locked, and by whom."""
    common.check_workspace(workspace)
    with open_client(url, api_key) as client:
        raw, body = client.request("GET", f"/lock/{workspace}")
    if as_json:
        common.print_json(raw)
        return
    status = body if isinstance(body, dict) else {}
    console = common.console()
    info = status.get("lock")
    if not status.get("locked") or not isinstance(info, dict):
        console.print(f"{workspace} is not locked.", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Workspace", common.text(workspace))
    table.add_row("Locked", "yes")
    for field in LOCK_FIELDS:
        table.add_row(field, common.text(info.get(field)))
    age = status.get("age_seconds")
    table.add_row("Locked at", common.text(status.get("locked_at")))
    table.add_row("Held for", common.format_duration(float(age)) if age is not None else "-")
    console.print(table)


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
    common.check_workspace(workspace)
    if not force:
        common.fail(
            f"refusing to unlock {workspace} without --force: removing a lock that a running "
            f"terraform/tofu still holds lets two writers clobber the state; check "
            f"'blixard lock {workspace}' first, then rerun with --force"
        )
    with open_client(url, api_key) as client:
        raw, body = client.request("DELETE", f"/lock/{workspace}")
    if as_json:
        common.print_json(raw)
        return
    removed = body.get("lock") if isinstance(body, dict) else None
    console = common.console()
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
    common.check_workspace(workspace)
    sys.stdout.write(render_backend_config(url, workspace, style))
    sys.stdout.flush()
