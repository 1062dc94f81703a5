"""Encryption at rest: key ids in use and online rotation (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from blixard.api.params import query_seconds
from blixard.api.security import authorize
from blixard.api.views import json_response, store_of
from blixard.domain.access import Action, audit_event

router = APIRouter(prefix="/api/tofu/admin/encryption", tags=["admin"])

_ERROR = {"description": "JSON error: `{error, message}`"}


@router.get(
    "",
    summary="Encryption status: key ids in use, versions and locks per key id",
)
async def encryption_status(request: Request) -> Response:
    await authorize(request, Action.admin)
    return json_response((await store_of(request).encryption_status()).to_json())


@router.post(
    "/rotate",
    summary="Re-encrypt old blobs under the current key (one step; call until done)",
    description=(
        "Re-seals versions and lock payloads that an old key sealed, in small batches between "
        "ordinary writes, for about `max_seconds`, and reports progress. Call again until "
        "`done` is true; then old key ids no longer in use are listed in `retired_key_ids` "
        "and may be removed from BLIXARD_ENCRYPTION_OLD_KEYS. 409 when encryption is off."
    ),
    openapi_extra={
        "parameters": [
            {
                "name": "max_seconds",
                "in": "query",
                "required": False,
                "description": "Work budget (seconds, more than 0, at most 30).",
                "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 30, "default": 1},
            }
        ]
    },
    responses={409: _ERROR},
)
async def rotate(request: Request) -> Response:
    actor = await authorize(request, Action.admin)  # before looking at the query
    max_seconds = query_seconds(request, "max_seconds", default=1.0, maximum=30.0)
    progress = await store_of(request).rotate_encryption(max_seconds=max_seconds)
    if progress.rotated_versions or progress.rotated_locks or progress.retired_key_ids:
        request.app.state.audit.record(
            audit_event(
                actor,
                Action.admin,
                request.app.state.service.clock(),
                detail=(
                    f"encryption rotate to key id {progress.current_key_id}: "
                    f"{progress.rotated_versions} versions, {progress.rotated_locks} locks"
                    + (
                        f"; retired key ids {', '.join(progress.retired_key_ids)}"
                        if progress.retired_key_ids
                        else ""
                    )
                ),
            )
        )
    return json_response(progress.to_json())
