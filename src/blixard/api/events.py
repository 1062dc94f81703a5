"""Live change events as server-sent events, scoped by the key like every other route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from blixard.api.security import authorize_key, presented_key
from blixard.auth.sessions import COOKIE_NAME
from blixard.domain.access import Action, Actor
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
        "version: version, serial, source; workspace: deleted; run: plan_id, status). A "
        "node streams the changes made through that node (see docs/api.md). A first `ready` "
        "event says the stream is listening; a `lost` event that the client fell more than "
        "1000 events behind and should re-read. The web UI's "
        "session cookie is accepted as well as the usual key headers."
    ),
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request) -> Response:
    secret = presented_key(request)
    if secret is None:
        sessions = getattr(request.app.state, "sessions", None)
        session = sessions.codec().open(request.cookies.get(COOKIE_NAME)) if sessions else None
        secret = session.key if session else None
    actor = await authorize_key(request, secret, Action.workspace_list)
    bus: EventBus = request.app.state.events
    return StreamingResponse(
        _stream(bus, actor),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(bus: EventBus, actor: Actor) -> AsyncIterator[bytes]:
    listener = bus.listen()
    try:
        # `ready` is sent once listening: every change acknowledged after it is delivered.
        yield b"retry: 3000\nevent: ready\ndata: {}\n\n"
        reported_lost = 0
        while True:
            event = await listener.next(KEEPALIVE_SECONDS)
            if listener.ended:
                return
            if listener.lost > reported_lost:  # fell behind: the client should re-read
                reported_lost = listener.lost
                yield b"event: lost\ndata: " + orjson.dumps({"lost": reported_lost}) + b"\n\n"
            if event is None:
                yield b": keep-alive\n\n"
            elif actor.can_see(event.workspace):
                data = orjson.dumps(event.to_json())
                yield b"event: " + event.kind.encode() + b"\ndata: " + data + b"\n\n"
    finally:
        listener.close()
