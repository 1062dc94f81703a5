"""What every page shares: the router, sessions, the signed-in actor, CSRF, rendering, errors.

Pages never decide who may do what: each asks `authorize_key` (the API's own check) for the
action it performs or shows, and `can()` only hides buttons the role could not use anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from fastapi import APIRouter
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blixard import __version__
from blixard.api.body import SMALL_BODY_LIMIT, read_body
from blixard.api.errors import status_for
from blixard.api.security import authorize_key, record_refusal
from blixard.auth.keyring import KeyRing
from blixard.auth.sessions import COOKIE_NAME, Session, SessionCodec, resolve_session_secret
from blixard.config import Settings
from blixard.domain.access import Action, Actor
from blixard.domain.diff import ABSENT
from blixard.domain.errors import DomainError, InvalidInput, PermissionDenied, Unauthenticated
from blixard.domain.resources import MASK, format_path
from blixard.domain.shapes import human_size

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: No inline script or style anywhere: everything comes from /ui/static.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class CsrfRefused(PermissionDenied):
    code = "csrf_refused"


class UiSessions:
    """The session codec, made on first use (resolving the secret may create its file)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._codec: SessionCodec | None = None

    def codec(self) -> SessionCodec:
        if self._codec is None:
            secret = resolve_session_secret(self.settings)
            self._codec = SessionCodec(secret.value, self.settings.session_hours * 3600)
        return self._codec


def _format_time(value: float | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def _age(value: float | None) -> str:
    if value is None:
        return "—"
    seconds = max(0, int(time.time() - value))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _size(value: int | None) -> str:
    return human_size(value, missing="—")


def _shown(value: Any) -> str:
    """A value as the diff and resource pages print it: JSON, or a dash where absent."""
    if value is ABSENT:
        return "—"
    if isinstance(value, str):
        return value if value == MASK else orjson.dumps(value).decode()
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _signed(value: int | None) -> str:
    if value is None:
        return ""
    return f"+{value}" if value > 0 else str(value) if value < 0 else "±0"


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(
    time=_format_time,
    iso=_iso,
    age=_age,
    size=_size,
    signed=_signed,
    shown=_shown,
    path=format_path,
    url=lambda v: quote(v, ""),
)


@dataclass
class Page:
    """The request's session and actor, and what the layout needs to know about them."""

    request: Request
    actor: Actor
    session: Session
    auth_enabled: bool
    new_cookie: bool = False
    navigation: bool = True  # False on the sign-in page: nothing to navigate to yet

    def can(self, action: Action) -> bool:
        return self.actor.allowed(action)

    @property
    def csrf(self) -> str:
        return sessions_of(self.request).codec().csrf_token(self.session)


def sessions_of(request: Request) -> UiSessions:
    sessions: UiSessions = request.app.state.sessions
    return sessions


def session_of(request: Request) -> tuple[Session, bool]:
    """The request's session, or a fresh anonymous one (then the response sets the cookie)."""
    codec = sessions_of(request).codec()
    found = codec.open(request.cookies.get(COOKIE_NAME))
    if found is not None:
        return found, False
    return Session.anonymous(codec.ttl), True


async def page(request: Request, action: Action, workspace: str | None = None) -> Page:
    """Authorise the page's action exactly as the API would for the session's key."""
    session, new = session_of(request)
    keyring: KeyRing = request.app.state.keyring
    enabled = await keyring.enabled()
    if enabled and session.key is None:
        raise Unauthenticated("Sign in with an API key.")
    actor = await authorize_key(request, session.key, action, workspace)
    return Page(request, actor, session, enabled, new_cookie=new)


async def form(request: Request, current: Page) -> dict[str, str]:
    """The posted form's fields; refused unless it carries this session's CSRF token."""
    body = await read_body(request, SMALL_BODY_LIMIT)
    if request.headers.get("content-type", "").split(";")[0].strip() not in (
        "application/x-www-form-urlencoded",
        "",
    ):
        raise InvalidInput("Forms are posted as application/x-www-form-urlencoded.")
    try:
        fields = {
            key: values[-1]
            for key, values in parse_qs(bytes(body).decode(), keep_blank_values=True).items()
        }
    except UnicodeDecodeError:
        raise InvalidInput("The form is not valid UTF-8.") from None
    codec = sessions_of(request).codec()
    if current.new_cookie or not codec.csrf_ok(current.session, fields.get("csrf")):
        raise CsrfRefused(
            "The form's security token is missing or stale; reload the page and try again."
        )
    return fields


def set_session_cookie(request: Request, response: Response, session: Session) -> None:
    codec = sessions_of(request).codec()
    response.set_cookie(
        COOKIE_NAME,
        codec.seal(session),
        max_age=max(1, int(session.expires_at - time.time())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def render(
    current: Page | None,
    request: Request,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> Response:
    html = templates.get_template(template).render(
        request=request,
        page=current,
        Action=Action,
        blixard_version=__version__,
        path=request.url.path,
        **context,
    )
    response = Response(html, status_code=status_code, media_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    if current is not None and current.new_cookie:
        set_session_cookie(request, response, current.session)
    return response


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    return render(None, request, "error.html", status, title=title, message=message)


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict"}


class UiRoute(APIRoute):
    """Domain errors become pages (and are audited like the API's), not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthenticated as exc:
                record_refusal(request, exc, 401)
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                if request.method != "GET":
                    target = "/ui/"
                return redirect("/ui/login?next=" + quote(target, ""))
            except DomainError as exc:
                status = status_for(exc)
                record_refusal(request, exc, status)
                title = _TITLES.get(status, "Something went wrong")
                return error_page(request, status, title, exc.message)

        return handle


router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


class SecurityHeaders:
    """The CSP and friends on every response under /ui (pages, errors and static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
