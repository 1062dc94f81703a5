"""Administration: API keys, the audit trail and backups (admin role)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from blixard.api.body import read_json_model
from blixard.api.params import count_param, query_bool, query_count, query_limit, string_param
from blixard.api.security import authorize
from blixard.api.views import json_response, store_of
from blixard.auth.keyring import KeyRing
from blixard.domain.access import Action, audit_event, parse_role
from blixard.domain.parsing import parse_time
from blixard.domain.shapes import audit_json, key_json
from blixard.store.snapshot import MEDIA_TYPE, SUFFIX, SnapshotWriter

log = logging.getLogger("blixard.admin")

router = APIRouter(prefix="/api/tofu", tags=["administration"])

_ERROR = {"description": "JSON error: `{error, message}`"}


class KeyRequest(BaseModel):
    name: str = Field(description="Unique among active keys, e.g. 'ci-team-a'.")
    role: str = Field(description="reader, writer, operator or admin.")
    workspaces: list[str] | str = Field(
        default="*", description="Workspace globs the key may see: a list or 'a-*,b'."
    )


def _keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


@router.get(
    "/keys",
    summary="List API keys (never their secrets)",
    openapi_extra={
        "parameters": [
            {
                "name": "include_revoked",
                "in": "query",
                "required": False,
                "description": "Also list revoked keys.",
                "schema": {"type": "boolean", "default": False},
            }
        ]
    },
)
async def list_keys(request: Request) -> Response:
    await authorize(request, Action.keys_manage)
    include_revoked = query_bool(request, "include_revoked")
    keys = await _keyring(request).store.list_keys(include_revoked=include_revoked)
    return json_response({"keys": [key_json(key) for key in keys]})


@router.post(
    "/keys",
    summary="Create an API key; the secret is shown once",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": KeyRequest.model_json_schema()}},
        }
    },
    responses={201: {"description": "The key and its secret"}, 400: _ERROR, 409: _ERROR},
)
async def create_key(request: Request) -> Response:
    actor = await authorize(request, Action.keys_manage)
    wanted = await read_json_model(request, KeyRequest, "key request")
    globs = (
        wanted.workspaces.split(",") if isinstance(wanted.workspaces, str) else wanted.workspaces
    )
    keyring = _keyring(request)
    key, secret = await keyring.create(
        wanted.name,
        parse_role(wanted.role),
        globs,
        created_by=actor.name,
        audit=audit_event(
            actor, Action.keys_manage, keyring.clock(), detail=f"created key '{wanted.name}'"
        ),
    )
    return json_response({"key": key_json(key), "secret": secret}, status_code=201)


@router.delete("/keys/{name}", summary="Revoke an API key", responses={404: _ERROR, 400: _ERROR})
async def revoke_key(request: Request, name: str) -> Response:
    actor = await authorize(request, Action.keys_manage)
    keyring = _keyring(request)
    revoked = await keyring.revoke(
        name,
        audit=audit_event(
            actor, Action.keys_manage, keyring.clock(), detail=f"revoked key '{name}'"
        ),
    )
    return json_response({"key": key_json(revoked)})


@router.get(
    "/audit",
    summary="The audit trail, newest first",
    openapi_extra={
        "parameters": [
            string_param("workspace", "Workspace name."),
            string_param("key", "Key name."),
            string_param("action", "e.g. state.write, lock.force_unlock."),
            string_param("since", "ISO 8601 time, inclusive."),
            string_param("until", "ISO 8601 time, exclusive."),
            count_param("before", "Events with a lower id."),
            count_param("limit", "Page size.", maximum=1000, default=100),
        ]
    },
)
async def audit(request: Request) -> Response:
    await authorize(request, Action.audit_read)
    query = request.query_params
    limit = query_limit(request, maximum=1000, default=100)
    events = await store_of(request).list_audit(
        workspace=query.get("workspace"),
        key_name=query.get("key"),
        action=query.get("action"),
        since=parse_time(query.get("since"), "since"),
        until=parse_time(query.get("until"), "until"),
        before_id=query_count(request, "before"),
        limit=limit + 1,
    )
    page = events[:limit]
    return json_response(
        {
            "events": [audit_json(event) for event in page],
            "next_before": page[-1].id if len(events) > limit else None,
        }
    )


@router.get(
    "/admin/backup",
    summary="Stream a consistent snapshot of everything (backup)",
    description=(
        "One consistent view of every workspace, version (exact bodies, in plaintext), lock, "
        "API key (hashes only), audit event and run, as a zstd-compressed Blixard snapshot "
        "with per-version SHA-256 and a manifest of counts and checksums at its end. A "
        "stream cut short has no manifest, so `blixard restore` refuses it. Writes go on "
        "meanwhile; they are not in this snapshot. `blixard backup FILE` calls this."
    ),
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The snapshot"}, 403: _ERROR},
)
async def backup(request: Request) -> Response:
    actor = await authorize(request, Action.admin)
    service = request.app.state.service
    store = store_of(request)
    # Recorded before the view is taken, so the backup holds the record of its own making.
    await store.append_audit(
        [audit_event(actor, Action.admin, service.clock(), detail="backup: snapshot started")]
    )
    writer = SnapshotWriter()

    async def body() -> AsyncIterator[bytes]:
        export = store.export_snapshot()
        try:
            async for chunk in writer.stream(export):
                yield chunk
        except BaseException as exc:
            request.app.state.audit.record(
                audit_event(
                    actor,
                    Action.admin,
                    service.clock(),
                    outcome="failed",
                    detail=f"backup: snapshot not finished ({type(exc).__name__}: {exc})"[:500],
                )
            )
            if isinstance(exc, Exception):
                log.warning("backup stream failed", exc_info=True)
            raise
        finally:
            await export.aclose()  # a client that hung up: let go of the view at once
        summary = writer.summary
        assert summary is not None
        counts = summary.counts
        request.app.state.audit.record(
            audit_event(
                actor,
                Action.admin,
                service.clock(),
                detail=(
                    f"backup: snapshot finished ({counts.workspaces} workspaces, "
                    f"{counts.versions} versions, {counts.api_keys} keys, {counts.audit_events} "
                    f"audit events, {counts.runs} runs; checksum {summary.checksum})"
                ),
            )
        )

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return StreamingResponse(
        body(),
        media_type=MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="blixard-{stamp}{SUFFIX}"',
            "Cache-Control": "no-store",
        },
    )
