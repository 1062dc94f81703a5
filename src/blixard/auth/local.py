"""API keys and the audit trail straight from a local data directory, with no server running.

This is how an operator bootstraps the first admin key before the first start
(`blixard keys create admin --role admin --workspaces '*' --data-dir ./data`). A running
server holds an exclusive lock on its database, so while it runs these functions raise
DataDirInUse and the operator uses the admin API instead.

Results have exactly the JSON shapes of the admin API (`/api/tofu/keys`, `/api/tofu/audit`), so
the CLI renders both the same way.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from blixard.auth.keyring import KeyRing
from blixard.domain.access import Action, Actor, Role, audit_event, parse_role
from blixard.domain.parsing import parse_time
from blixard.domain.roles import AuditTrail

T = TypeVar("T")


class DataDirInUse(RuntimeError):
    """A Blixard server is running on the data directory (it holds the database lock)."""


class NoDatabase(RuntimeError):
    """The data directory holds no Blixard database (yet)."""


def local_actor() -> Actor:
    """Who acts on the local store, as the audit trail records it: no key, the OS user."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (e.g. a bare container uid)
        user = "unknown"
    return Actor(name=None, role=Role.admin, source=f"local:{user}")


async def _with_keyring(
    data_dir: Path, create: bool, work: Callable[[KeyRing, AuditTrail], Awaitable[T]]
) -> T:
    from blixard.config import Settings, database_path
    from blixard.store.bootstrap import build_store, data_dir_url
    from blixard.store.errors import StoreInUse

    path = database_path(data_dir)
    if not create and not path.exists():
        raise NoDatabase(f"no Blixard database at {path} (is --data-dir the server's data dir?)")
    # An encrypted store opens only with its keys (BLIXARD_ENCRYPTION_KEY... as for serve).
    store = build_store(Settings.load(), url=data_dir_url(data_dir), serving=False, readers=1)
    try:
        await store.open()
    except StoreInUse:
        await store.close()
        raise DataDirInUse(
            f"a Blixard server is running on {data_dir}; manage keys through its API instead "
            "(drop --data-dir, pass --url and an admin --api-key)"
        ) from None
    try:
        keyring = KeyRing(store, required=False)
        await keyring.refresh()
        return await work(keyring, store)
    finally:
        await store.close()


def _run(
    data_dir: Path, work: Callable[[KeyRing, AuditTrail], Awaitable[T]], *, create: bool = False
) -> T:
    return asyncio.run(_with_keyring(data_dir, create, work))


def create_key(data_dir: Path, name: str, role: str, workspaces: list[str]) -> dict[str, Any]:
    """Issue a key in the local store: {"key": {...}, "secret": "blx_..."} (secret shown once)."""
    from blixard.domain.shapes import key_json

    parsed_role = parse_role(role)
    actor = local_actor()

    async def work(keyring: KeyRing, trail: AuditTrail) -> dict[str, Any]:
        key, secret = await keyring.create(
            name,
            parsed_role,
            workspaces,
            created_by=actor.source,
            audit=audit_event(
                actor,
                Action.keys_manage,
                keyring.clock(),
                detail=f"created key '{name}' (offline, --data-dir)",
            ),
        )
        return {"key": key_json(key), "secret": secret}

    return _run(data_dir, work, create=True)


def list_keys(data_dir: Path, *, include_revoked: bool = False) -> dict[str, Any]:
    """{"keys": [...]} as GET /api/tofu/keys answers it: never secrets or hashes."""
    from blixard.domain.shapes import key_json

    async def work(keyring: KeyRing, trail: AuditTrail) -> dict[str, Any]:
        keys = await keyring.store.list_keys(include_revoked=include_revoked)
        return {"keys": [key_json(key) for key in keys]}

    return _run(data_dir, work)


def revoke_key(data_dir: Path, name: str) -> dict[str, Any]:
    """Revoke the active key `name`: {"key": {...}} with its revocation time."""
    from blixard.domain.shapes import key_json

    actor = local_actor()

    async def work(keyring: KeyRing, trail: AuditTrail) -> dict[str, Any]:
        revoked = await keyring.revoke(
            name,
            audit=audit_event(
                actor,
                Action.keys_manage,
                keyring.clock(),
                detail=f"revoked key '{name}' (offline, --data-dir)",
            ),
        )
        return {"key": key_json(revoked)}

    return _run(data_dir, work)


def list_audit(
    data_dir: Path,
    *,
    workspace: str | None = None,
    key: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """{"events": [...], "next_before": id|None} as GET /api/tofu/audit answers it."""
    from blixard.domain.shapes import audit_json

    since_at = parse_time(since, "since")
    until_at = parse_time(until, "until")

    async def work(keyring: KeyRing, trail: AuditTrail) -> dict[str, Any]:
        events = await trail.list_audit(
            workspace=workspace,
            key_name=key,
            action=action,
            since=since_at,
            until=until_at,
            before_id=before,
            limit=limit + 1,
        )
        page = events[:limit]
        return {
            "events": [audit_json(event) for event in page],
            "next_before": page[-1].id if len(events) > limit else None,
        }

    return _run(data_dir, work)
