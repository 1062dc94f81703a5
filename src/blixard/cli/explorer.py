"""Explorer commands: resources, outputs and diff of stored versions (GET /resources, /outputs,
/diff). Output is coloured like Terraform's plan (`+` added, `-` removed, `~` changed) on a
terminal and plain when piped; `--json` prints the server's answer."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from blixard.cli.client import (
    DEFAULT_URL,
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    _check_workspace,
    _client,
    _console,
    _listed,
    _print_json,
    _table,
    _text,
)

VersionOpt = Annotated[
    int | None, typer.Option("--version", min=1, help="A past version (default: current).")
]
AsOfOpt = Annotated[
    str | None,
    typer.Option(
        "--as-of", help="The version current at this RFC 3339 time (2026-12-05T18:00:00Z)."
    ),
]

#: Longest value printed inline by `blixard diff` (the rest is elided; --json has it all).
_VALUE_WIDTH = 120


def resources(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    version: VersionOpt = None,
    as_of: AsOfOpt = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this resource type.")] = None,
    module: Annotated[
        str | None, typer.Option("--module", help="Only this module path, e.g. module.app.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Text in the address or an identity.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the resource instances of a workspace's state."""
    _check_workspace(workspace)
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {
        "version": version,
        "as_of": as_of,
        "type": type_,
        "module": module,
        "q": query,
        "limit": 1000,
    }
    with _client(url, api_key) as client:
        while True:
            raw, body = client.request("GET", f"/resources/{workspace}", params)
            items.extend(_listed(raw, body, "resources", client.base))
            params["after"] = body.get("next_after")
            if not params["after"]:
                break
    if as_json:
        answer = {**body, "resources": items, "next_after": None}
        _print_json(json.dumps(answer, indent=2).encode())
        return
    console = _console()
    shown = body.get("version") or {}
    if not body.get("readable", True):
        console.print(
            f"Version {shown.get('version')} of {workspace} cannot be read (encrypted by the "
            "client?).",
            markup=False,
        )
        return
    if not items:
        console.print(f"No resources in version {shown.get('version')} of {workspace}.")
        return
    table = _table(("ADDRESS", "STATUS", "ID"))
    for item in items:
        identity = item.get("identity") or {}
        table.add_row(
            _text(item.get("address")),
            _text(item.get("status")),
            _text(identity.get("id") or identity.get("arn") or identity.get("name")),
        )
    console.print(table)
    console.print(
        f"{len(items)} instance(s) in version {shown.get('version')} of {workspace}.",
        markup=False,
    )


def outputs(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    version: VersionOpt = None,
    as_of: AsOfOpt = None,
    reveal: Annotated[
        bool,
        typer.Option("--reveal", help="Show sensitive values (operator/admin keys; audited)."),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a workspace's outputs (sensitive ones masked unless --reveal)."""
    _check_workspace(workspace)
    params = {"version": version, "as_of": as_of, "reveal": "true" if reveal else None}
    with _client(url, api_key) as client:
        raw, body = client.request("GET", f"/outputs/{workspace}", params)
    if as_json:
        _print_json(raw)
        return
    items = _listed(raw, body, "outputs", url)
    console = _console()
    if not items:
        console.print(f"No outputs in version {body['version']['version']} of {workspace}.")
        return
    for item in items:
        value = item.get("value")
        text = value if isinstance(value, str) and value == "(sensitive)" else _value(value, 0)
        marker = " (sensitive)" if item.get("sensitive") and value != "(sensitive)" else ""
        console.print(f"{item.get('name')} = {text}{marker}", markup=False)


def diff(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    from_version: Annotated[
        int | None,
        typer.Argument(min=1, help="From this version (default: the one before TO)."),
    ] = None,
    to_version: Annotated[
        int | None, typer.Argument(min=1, help="To this version (default: current).")
    ] = None,
    other: Annotated[
        str | None,
        typer.Option(
            "--workspace",
            help="Compare with this workspace (FROM then names one of its versions).",
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what changed between two versions, like a Terraform plan (+ - ~)."""
    _check_workspace(workspace)
    if other is not None:
        _check_workspace(other)
    params = {"from": from_version, "to": to_version, "from_workspace": other}
    with _client(url, api_key) as client:
        raw, body = client.request("GET", f"/diff/{workspace}", params)
    if as_json:
        _print_json(raw)
        return
    print_diff(body)


def print_diff(body: dict[str, Any]) -> None:
    """A diff answer in Terraform's plan style."""
    from rich.text import Text

    console = _console()
    old, new = body.get("from"), body.get("to") or {}
    console.print(Text(f"{_side(old)} -> {_side(new)}", style="bold"))
    readable = body.get("readable") or {}
    if readable.get("from") is False or readable.get("to") is False:
        console.print("(a side's resources cannot be read: encrypted by the client?)")
    for field, change in (body.get("top_level") or {}).items():
        console.print(
            Text(f"  ~ {field}: {_value(change.get('before'), 0)} -> "),
            Text(_value(change.get("after"), 0)),
            sep="",
        )
    console.print()
    for item in body.get("resources") or []:
        for line in _resource_lines(item):
            console.print(line)
    outputs = body.get("outputs") or []
    if outputs:
        console.print(Text("Outputs:", style="bold"))
        for change in outputs:
            console.print(_value_line(change["name"], change, indent=2))
        console.print()
    summary = body.get("summary") or {}
    parts = ", ".join(
        f"{summary.get(kind, 0)} {kind}"
        for kind in ("added", "removed", "changed", "moved", "unchanged")
    )
    console.print(Text(f"Summary: {parts}.", style="bold"))


_SIGNS = {
    "added": ("+", "green"),
    "removed": ("-", "red"),
    "changed": ("~", "yellow"),
    "moved": ("~", "cyan"),
}


def _resource_lines(item: dict[str, Any]) -> list[Any]:
    from rich.text import Text

    sign, colour = _SIGNS.get(item.get("change", ""), ("?", "white"))
    title = Text(f"  {sign} ", style=f"bold {colour}")
    title.append(item.get("address", "?"), style="bold")
    if item.get("deposed_key"):
        title.append(f" (deposed object {item['deposed_key']})")
    if item.get("change") == "moved":
        title.append(f" (moved from {item.get('previous_address')})", style=colour)
    before, after = item.get("status_before"), item.get("status_after")
    if item.get("change") in ("changed", "moved") and before != after:
        title.append(f" [status {before or 'ok'} -> {after or 'ok'}]")
    lines: list[Any] = [title]
    for change in item.get("attributes") or []:
        lines.append(_value_line(change.get("attribute", "?"), change, indent=6))
    return lines


def _value_line(name: str, change: dict[str, Any], indent: int) -> Any:
    from rich.text import Text

    kind = change.get("kind", "changed")
    sign, colour = _SIGNS.get(kind, ("~", "yellow"))
    line = Text(" " * indent)
    line.append(f"{sign} ", style=f"bold {colour}")
    line.append(f"{name} = ")
    if kind == "added":
        line.append(_value(change.get("after"), indent))
    elif kind == "removed":
        line.append(_value(change.get("before"), indent))
    else:
        line.append(_value(change.get("before"), indent))
        line.append(" -> ", style=colour)
        line.append(_value(change.get("after"), indent))
    return line


def _value(value: Any, indent: int) -> str:
    text = value if value == "(sensitive)" else json.dumps(value, ensure_ascii=False)
    width = max(_VALUE_WIDTH - indent, 20)
    return text if len(text) <= width else text[: width - 1] + "…"


def _side(side: dict[str, Any] | None) -> str:
    if not side:
        return "(no state)"
    return f"{side.get('workspace')} version {side.get('version')} (serial {side.get('serial')})"
