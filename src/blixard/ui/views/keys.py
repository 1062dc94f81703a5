"""API keys (admin): list, create (the secret is shown once), revoke."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.auth.keyring import KeyRing
from blixard.domain.access import Action, Role, audit_event, parse_role
from blixard.ui.web import Page, form, page, redirect, render, router


def _keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


async def _render(request: Request, current: Page, status: int = 200, **extra: object) -> Response:
    include_revoked = request.query_params.get("revoked") == "1"
    keys = await _keyring(request).store.list_keys(include_revoked=include_revoked)
    return render(
        current,
        request,
        "keys.html",
        status,
        section="keys",
        keys=keys,
        roles=[role.name for role in Role],
        include_revoked=include_revoked,
        **extra,
    )


@router.get("/keys")
async def keys(request: Request) -> Response:
    current = await page(request, Action.keys_manage)
    notice = "The key was revoked." if request.query_params.get("notice") == "revoked" else None
    return await _render(request, current, notice=notice)


@router.post("/keys")
async def create_key(request: Request) -> Response:
    current = await page(request, Action.keys_manage)
    fields = await form(request, current)
    name = fields.get("name", "").strip()
    keyring = _keyring(request)
    key, secret = await keyring.create(
        name,
        parse_role(fields.get("role", "")),
        fields.get("workspaces", "*").split(","),
        created_by=current.actor.name,
        audit=audit_event(
            current.actor, Action.keys_manage, keyring.clock(), detail=f"created key '{name}'"
        ),
    )
    # Shown in this one response only (no-store), never again.
    return await _render(request, current, 201, created=key, secret=secret)


@router.post("/keys/{name}/revoke")
async def revoke_key(request: Request, name: str) -> Response:
    current = await page(request, Action.keys_manage)
    await form(request, current)
    keyring = _keyring(request)
    await keyring.revoke(
        name,
        audit=audit_event(
            current.actor, Action.keys_manage, keyring.clock(), detail=f"revoked key '{name}'"
        ),
    )
    return redirect("/ui/keys?notice=revoked")
