"""Checks that need the store, run before the server listens, so refusals are one line.

Inside uvicorn a failing startup prints a traceback; here the operator gets a sentence and
exit status 2 instead.
"""

from __future__ import annotations

from blixard.auth.keyring import KeyRing
from blixard.config import Settings
from blixard.domain.errors import DomainError, StorageUnavailable
from blixard.store.bootstrap import build_store
from blixard.store.errors import StoreError


class StartupRefused(RuntimeError):
    """The server must not start; the message says why and what to do."""


async def preflight(settings: Settings) -> None:
    try:
        store = build_store(settings, serving=False)
    except ValueError as exc:  # a bad URL, or a bad key (KeyConfigError is a ValueError)
        raise StartupRefused(str(exc)) from None
    try:
        await store.open()
    except (StoreError, StorageUnavailable) as exc:  # every engine's "cannot open", as one line
        raise StartupRefused(f"cannot open the store: {exc}") from None
    try:
        keyring = KeyRing(store, required=settings.auth == "required")
        await keyring.refresh()
        if settings.admin_key is not None:
            try:
                await keyring.ensure_admin(settings.admin_key.get_secret_value())
            except DomainError as exc:
                raise StartupRefused(exc.message) from None
        if not settings.is_loopback and not settings.insecure and not await keyring.enabled():
            raise StartupRefused(
                f"refusing to listen on {settings.listen} with authentication off (no API key "
                "exists): create one with `blixard keys create NAME --role admin --data-dir DIR` "
                "or set BLIXARD_ADMIN_KEY, or pass --insecure"
            )
    finally:
        await store.close()
