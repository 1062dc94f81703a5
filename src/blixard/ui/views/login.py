"""Sign in with an API key, and sign out."""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

from blixard.auth.keyring import KeyRing
from blixard.auth.sessions import COOKIE_NAME, Session
from blixard.domain.access import Actor, Role
from blixard.ui.web import (
    Page,
    form,
    redirect,
    render,
    router,
    session_of,
    sessions_of,
    set_session_cookie,
)


def _safe_next(target: str | None) -> str:
    """Only a path of this UI: never an open redirect to another site."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target
    return "/ui/"


def _login_page(request: Request) -> Page:
    session, new = session_of(request)
    if session.key is not None:  # signing in again replaces the key; keep the CSRF binding
        new = False
    return Page(request, Actor(None, Role.reader), session, True, new_cookie=new, navigation=False)


@router.get("/login")
async def login_form(request: Request) -> Response:
    keyring: KeyRing = request.app.state.keyring
    if not await keyring.enabled():
        return redirect("/ui/")
    current = _login_page(request)
    return render(current, request, "login.html", next=_safe_next(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    current = _login_page(request)
    fields = await form(request, current)
    target = _safe_next(fields.get("next"))
    keyring: KeyRing = request.app.state.keyring
    secret = fields.get("key", "").strip()
    key = await keyring.verify(secret) if secret else None
    if key is None:
        return render(
            current,
            request,
            "login.html",
            401,
            next=target,
            error="That API key is not valid (unknown or revoked).",
        )
    # A new session id on sign-in, so a token or cookie planted before it is worthless.
    codec = sessions_of(request).codec()
    session = Session(secrets.token_urlsafe(16), secret, time.time() + codec.ttl)
    response = redirect(target)
    set_session_cookie(request, response, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session, new = session_of(request)
    current = Page(request, Actor(None, Role.reader), session, True, new_cookie=new)
    await form(request, current)
    response = redirect("/ui/login")
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response
