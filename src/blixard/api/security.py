"""Turning a request into an Actor: credentials, roles, workspace scopes, refusals audited.

Clients present a key as HTTP Basic password (what TF_HTTP_PASSWORD sends; any username),
`Authorization: Bearer`, or `X-API-Key`. A workspace outside a key's scopes answers exactly
like a workspace that does not exist, so names never leak.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from blixard.auth.audit import AuditSink
from blixard.auth.keyring import KeyRing
from blixard.config import Settings
from blixard.domain.access import (
    MUTATIONS,
    REQUIRED_ROLE,
    Action,
    Actor,
    Role,
    audit_event,
)
from blixard.domain.errors import (
    DomainError,
    HolderError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from blixard.domain.parsing import WORKSPACE_NAME, check_text, check_workspace_name


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and value.strip():
            return value.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("Malformed Basic credentials.") from None
            username, _, password = decoded.partition(":")
            return password or username or None
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _check_request_text(request: Request, workspace: str | None) -> None:
    """Input checks every route shares, made once the caller is known (so a caller without
    a key gets 401 whatever it sent): the workspace name, and no NUL in path or query."""
    if workspace is not None:
        check_workspace_name(workspace)
    check_text(request.scope["path"], "path")
    query: bytes = request.scope["query_string"]
    if b"%00" not in query and b"\x00" not in query:
        return  # a NUL reaches a query parameter only as %00 or as itself
    for name, value in request.query_params.multi_items():
        check_text(name, "query parameter name")
        check_text(value, name)


async def authorize(request: Request, action: Action, workspace: str | None = None) -> Actor:
    """The actor behind a request, if allowed to do `action` (on `workspace`).

    Order matters: credentials, then role, then the request's own input, then scope. A
    request without a valid key is refused (401, audited) before anything it sent is looked
    at, and no body is read before this returns.
    """
    return await authorize_key(request, presented_key(request), action, workspace)


async def authorize_key(
    request: Request, secret: str | None, action: Action, workspace: str | None = None
) -> Actor:
    """`authorize` for a key that came some other way (the web UI's session cookie)."""
    keyring: KeyRing = request.app.state.keyring
    state = request.state
    state.action = action
    # Audited by name only when it is a name: a hostile segment stays out of the trail.
    state.workspace = workspace if workspace and WORKSPACE_NAME.fullmatch(workspace) else None
    if not await keyring.enabled():
        # Open server: anyone may act, but a valid key (e.g. a run's) still names the actor.
        key = await keyring.verify(secret) if secret else None
        actor = Actor(
            name=key.name if key else None,
            role=Role.admin if key is None else key.role,
            source=_source(request),
            scopes=key.scopes if key else ("*",),
        )
        state.actor = actor
        if key is not None and not actor.allowed(action):
            raise PermissionDenied(f"Key '{key.name}' may not {action.value} here.")
        _check_request_text(request, workspace)
        if key is not None and workspace is not None and not actor.can_see(workspace):
            raise PermissionDenied(f"Key '{key.name}' may not {action.value} here.")
        return actor
    if secret is None:
        raise Unauthenticated(
            "This server requires an API key: send it as the HTTP Basic password "
            "(TF_HTTP_PASSWORD), a Bearer token or an X-API-Key header."
        )
    key = await keyring.verify(secret)
    if key is None:
        raise Unauthenticated("The API key is not valid (unknown or revoked).")
    actor = Actor(name=key.name, role=key.role, source=_source(request), scopes=key.scopes)
    state.actor = actor
    if not actor.allowed(action):
        needed = REQUIRED_ROLE[action].name
        raise PermissionDenied(
            f"Key '{key.name}' has role {key.role.name}; {action.value} needs {needed} or above."
        )
    _check_request_text(request, workspace)
    if workspace is not None and not actor.can_see(workspace):
        state.scope_denied = True
        raise NotFound(f"Workspace '{workspace}' does not exist.")
    return actor


async def require_known_caller(request: Request) -> None:
    """Unauthenticated unless the request carries a valid key (or authentication is off).

    For refusals made before a handler could call `authorize` (framework validation of a
    typed parameter): a caller without a key learns nothing about its input but the 401.
    """
    keyring: KeyRing = request.app.state.keyring
    if not await keyring.enabled():
        return
    secret = presented_key(request)
    if secret is None or await keyring.verify(secret) is None:
        raise Unauthenticated("This server requires a valid API key.")


def record_refusal(request: Request, error: DomainError, status: int) -> None:
    """Audit every denied request, and every refused attempt to change something."""
    state = request.state
    action: Action | None = getattr(state, "action", None)
    denied = status in (401, 403) or getattr(state, "scope_denied", False)
    if action is None or not (denied or action in MUTATIONS):
        return
    sink: AuditSink = request.app.state.audit
    sink.record(
        audit_event(
            getattr(state, "actor", None),
            action,
            request.app.state.service.clock(),
            outcome="denied" if denied else f"refused:{error.code}",
            workspace=getattr(state, "workspace", None),
            lock_id=request.query_params.get("ID"),
            status=status,
            detail=_audit_detail(error, request.app.state.settings)[:500],
            source=_source(request),
        )
    )


def _audit_detail(error: DomainError, settings: Settings) -> str:
    """The refusal's message, without the lock holder's `Who` when encryption at rest is on:
    lock payloads are sealed then, and the audit trail (stored in plaintext) must not hold a
    copy of what they seal."""
    holder = error.holder if isinstance(error, HolderError) else None
    encrypted = settings.encryption_key is not None or settings.encryption_key_file is not None
    who = holder.info.get("Who") if holder is not None else None
    if not encrypted or holder is None or not who:
        return error.message
    detail = error.message.replace(
        f" by {who} (lock ID {holder.id})", f" by another client (lock ID {holder.id})"
    )
    return detail if who not in detail else f"{error.code}: held by lock ID {holder.id}"
