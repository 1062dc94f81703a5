"""Search commands: `blixard search`, `blixard duplicates`, `blixard reindex` (over HTTP)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from blixard.cli import common
from blixard.cli.client import open_client
from blixard.cli.common import (
    DEFAULT_URL,
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    listed,
    print_json,
    text,
)


def search(
    type_: Annotated[str | None, typer.Option("--type", help="Resource type.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Instance address (* wildcards).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Resource name.")] = None,
    ident: Annotated[
        str | None, typer.Option("--id", help="An identity value: id, arn or self_link.")
    ] = None,
    attr: Annotated[
        str | None, typer.Option("--attr", help="PATH=VALUE, e.g. tags.Name=web.")
    ] = None,
    module: Annotated[str | None, typer.Option("--module", help='Module ("" = root).')] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Part of the provider address.")
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Every version, not only the current.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Most matches to show (all pages).")
    ] = 1000,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find resource instances across the workspaces your key can see."""
    params: dict[str, Any] = {
        "type": type_,
        "address": address,
        "name": name,
        "id": ident,
        "attr": attr,
        "module": module,
        "provider": provider,
        "history": "true" if history else None,
    }
    matches: list[dict[str, Any]] = []
    complete = True
    with open_client(url, api_key) as client:
        after: str | None = None
        while len(matches) < limit:
            page_size = min(1000, limit - len(matches))
            raw, body = client.request(
                "GET", "/search", {**params, "limit": page_size, "after": after}
            )
            matches += listed(raw, body, "matches", client.base)
            complete = complete and bool(body.get("complete", True))
            after = body.get("next_after")
            if not after:
                break
    if as_json:
        out = {"matches": matches, "next_after": after, "complete": complete}
        print_json(json.dumps(out, indent=2).encode())
        return
    console = common.console()
    if not matches:
        console.print("No matches.")
    else:
        table = common.table(("WORKSPACE", ("VERSION", "right"), "ADDRESS", "TYPE", "ID", "STATUS"))
        for m in matches:
            table.add_row(
                text(m.get("workspace")),
                text(m.get("version")),
                text(m.get("address")),
                text(m.get("type")),
                text(m.get("id") or m.get("arn") or m.get("self_link")),
                text(m.get("status")),
            )
        console.print(table)
    if after:
        console.print(f"(more matches: raise --limit above {limit})", markup=False)
    if not complete:
        console.print("(the index of older versions is still being built)", markup=False)


def duplicates(
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Identity values (id, arn, self_link) managed by two or more workspaces."""
    with open_client(url, api_key) as client:
        raw, body = client.request("GET", "/search/duplicates")
    if as_json:
        print_json(raw)
        return
    found = listed(raw, body, "duplicates", url)
    console = common.console()
    if not found:
        console.print("No identity value is managed by more than one workspace.")
        return
    table = common.table(("KIND", "VALUE", "WORKSPACE", "ADDRESS"))
    for duplicate in found:
        for instance in duplicate.get("instances", []):
            table.add_row(
                text(duplicate.get("kind")),
                text(duplicate.get("value")),
                text(instance.get("workspace")),
                text(instance.get("address")),
            )
    console.print(table)


def reindex(
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the rebuild is done.")
    ] = True,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the resource index of every workspace from the stored states (admin key)."""
    with open_client(url, api_key) as client:
        raw, status = client.request("POST", "/admin/reindex")
        while wait and (status.get("running") or not status.get("complete")):
            if status.get("error"):
                break
            time.sleep(0.5)
            raw, status = client.request("GET", "/admin/reindex")
    if as_json:
        print_json(raw)
        return
    console = common.console()
    if status.get("error"):
        console.print(f"Reindex stopped: {status['error']}", markup=False)
        raise typer.Exit(code=1)
    if status.get("complete") and not status.get("running"):
        console.print(f"Resource index rebuilt: {status.get('indexed')} versions.", markup=False)
    else:
        console.print("Resource index rebuild started (blixard reindex to follow).")
