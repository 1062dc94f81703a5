"""Live change events as server-sent events, scoped by the key like every other route.

A stream outlives the request that checked its key, so it checks the key again (an in-memory
look-up) before every event and keep-alive: a revoked key, or an expired web UI session, ends
the stream before anything more is sent."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from blixard.api.security import authorize_key, presented_key
from blixard.auth.grants import StreamGrant
from blixard.auth.sessions import COOKIE_NAME
from blixard.domain.access import Action
from blixard.domain.errors import StorageUnavailable
from blixard.domain.events import EventBus

router = APIRouter(prefix="/api/tofu", tags=["events"])

#: Seconds between keep-alive comments, so proxies keep an idle stream open.
KEEPALIVE_SECONDS = 15.0


@router.get(
    "/events",
    summary="Live events: lock changes, new versions, deletes/restores, run status (SSE)",
    description=(
        "A `text/event-stream` of changes to the workspaces the key may see. Each event has "
        "`event:` lock, version, workspace or run, and `data:` one JSON object with `type`, "
        "`workspace`, `at` and per-type fields (lock: locked, lock_id, who, operation; "
        "version: version, serial, source; workspace: deleted; run: plan_id, status). On the "
        "SQLite engine a node streams the changes made through it; on etcd, the changes made "
        "through any node of the cluster (docs/ha.md). A first `ready` event says the stream "
        "is listening; a `lost` event that the client missed events (it fell more than 1000 "
        "behind, or the etcd watch had to skip some) and should re-read. The key is checked "
        "again before every event and keep-alive: the stream ends once it is revoked (or the "
        "web UI session it came from expires). The web UI's session cookie is accepted as "
        "well as the usual key headers."
    ),
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request) -> Response:
    secret = presented_key(request)
    expires_at = math.inf
    if secret is None:
        sessions = getattr(request.app.state, "sessions", None)
        session = sessions.codec().open(request.cookies.get(COOKIE_NAME)) if sessions else None
        secret = session.key if session else None
        expires_at = session.expires_at if session else math.inf
    actor = await authorize_key(request, secret, Action.workspace_list)
    bus: EventBus = request.app.state.events
    grant = StreamGrant(request.app.state.keyring, secret, actor, Action.workspace_list, expires_at)
    return StreamingResponse(
        _stream(bus, grant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(bus: EventBus, grant: StreamGrant) -> AsyncIterator[bytes]:
    # Subscribed here, not before the response: a generator that never starts (the client
    # left first) never runs its `finally`, and would keep its listener.
    try:
        listener = await bus.subscribe()
    except StorageUnavailable:  # etcd cannot be watched now: the client retries in 3 s
        yield b"retry: 3000\n\n"
        return
    try:
        # `ready` is sent once listening: every change acknowledged after it is delivered.
        yield b"retry: 3000\nevent: ready\ndata: {}\n\n"
        reported_lost = 0
        while True:
            event = await listener.next(KEEPALIVE_SECONDS)
            if listener.ended:
                return
            actor = await grant.current()
            if actor is None:  # revoked or expired: end the stream, deliver nothing more
                return
            if listener.lost > reported_lost:  # fell behind: the client should re-read
                reported_lost = listener.lost
                yield b"event: lost\ndata: " + orjson.dumps({"lost": reported_lost}) + b"\n\n"
            if event is None:
                yield b": keep-alive\n\n"
            elif not event.is_wake and actor.can_see(event.workspace):
                data = orjson.dumps(event.to_json())
                yield b"event: " + event.kind.encode() + b"\ndata: " + data + b"\n\n"
    finally:
        listener.close()
