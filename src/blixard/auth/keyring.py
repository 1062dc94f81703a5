"""The server's view of its API keys: issue, verify in constant time, revoke, bootstrap.

Secrets are `blx_` + 43 URL-safe characters (256 bits), so a leaked one is recognisable in
logs and scanners. Only a SHA-256 of the secret is stored: with that much entropy a slow
password hash adds nothing. Keys are looked up by an id derived from the hash and then
compared with `hmac.compare_digest`, so verification time does not depend on the secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable

from blixard.domain.access import (
    Action,
    ApiKey,
    AuditEvent,
    Role,
    audit_event,
    check_key_name,
    parse_scopes,
)
from blixard.domain.errors import Conflict, InvalidInput, NotFound, StorageUnavailable
from blixard.domain.roles import KeyStore

log = logging.getLogger("blixard.auth")

SECRET_PREFIX = "blx_"
#: How long a node trusts its cached key list (other nodes may have changed it).
REFRESH_SECONDS = 5.0
#: How often last-used times are written back (they are advisory; losing a few is fine).
TOUCH_SECONDS = 10.0
BOOTSTRAP_NAME = "admin"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id(hashed: str) -> str:
    return hashed[:16]


class KeyRing:
    def __init__(self, store: KeyStore, *, required: bool, clock: Callable[[], float] = time.time):
        self.store = store
        self.required = required
        self.clock = clock
        self._by_id: dict[str, ApiKey] = {}
        # Short-lived keys for the server's own runs: never stored, never turn auth on.
        self._ephemeral: dict[str, ApiKey] = {}
        self._loaded_at = 0.0
        self._used: dict[str, float] = {}
        self._refresh_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, admin_secret: str | None = None) -> None:
        await self.refresh()
        if admin_secret:
            await self.ensure_admin(admin_secret)
        self._flusher = asyncio.create_task(self._flush_loop(), name="blixard-key-touch")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    async def refresh(self) -> None:
        async with self._refresh_lock:
            keys = await self.store.list_keys()
            self._by_id = {key.id: key for key in keys}
            self._loaded_at = time.monotonic()

    async def _maybe_refresh(self) -> None:
        if time.monotonic() - self._loaded_at > REFRESH_SECONDS:
            await self.refresh()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(TOUCH_SECONDS)
            try:
                await self.flush()
            except Exception:  # advisory data; the next round retries
                log.warning("could not record API key usage", exc_info=True)

    async def flush(self) -> None:
        if self._used:
            used, self._used = self._used, {}
            await self.store.touch_keys(used)

    # -- verification --------------------------------------------------------------------

    async def enabled(self) -> bool:
        """Authentication is on when required, or as soon as any key exists."""
        if self.required:
            return True
        await self._maybe_refresh()
        return bool(self._by_id)

    def requires_keys(self) -> bool:
        """`enabled` by the cached key list, without re-reading it."""
        return self.required or bool(self._by_id)

    async def verify(self, presented: str) -> ApiKey | None:
        await self._maybe_refresh()
        key = self.lookup(presented)
        if key is not None and self._by_id.get(key.id) is key:  # stored keys only
            self._used[key.id] = self.clock()
        return key

    def lookup(self, presented: str) -> ApiKey | None:
        """The valid key `presented` is, by the cached key list (no I/O, not counted as a
        use): for what re-checks a key over and over, such as an open event stream, after
        `settle`."""
        hashed = secret_hash(presented)
        ephemeral = self._ephemeral.get(key_id(hashed))
        if ephemeral is not None and hmac.compare_digest(ephemeral.secret_hash, hashed):
            return ephemeral
        candidate = self._by_id.get(key_id(hashed))
        if candidate is None or not hmac.compare_digest(candidate.secret_hash, hashed):
            return None
        return candidate

    async def settle(self) -> None:
        """Re-read the key list if it is older than REFRESH_SECONDS (so a key revoked on
        another node counts as revoked here within that time; on this node it does at once).
        If the store cannot answer now, the cached list stays: a re-check of an open stream
        must not fail because etcd is electing a leader, nor wait for a re-read already
        under way."""
        if self._refresh_lock.locked():
            return
        try:
            await self._maybe_refresh()
        except StorageUnavailable:
            log.debug("key list not re-read (storage unavailable); using the cached one")

    def issue_ephemeral(self, name: str, role: Role, scopes: tuple[str, ...]) -> str:
        """A key that lives in this process only, until `drop_ephemeral` (a run's credential)."""
        secret = new_secret()
        hashed = secret_hash(secret)
        self._ephemeral[key_id(hashed)] = ApiKey(
            id=key_id(hashed),
            name=name,
            role=role,
            scopes=scopes,
            secret_hash=hashed,
            created_at=self.clock(),
            created_by="blixard",
        )
        return secret

    def drop_ephemeral(self, name: str) -> None:
        for found_id, key in list(self._ephemeral.items()):
            if key.name == name:
                del self._ephemeral[found_id]

    # -- management ----------------------------------------------------------------------

    async def create(
        self,
        name: str,
        role: Role,
        scopes: list[str] | tuple[str, ...],
        *,
        created_by: str | None = None,
        secret: str | None = None,
        audit: AuditEvent | None = None,
    ) -> tuple[ApiKey, str]:
        """Issue a key; the secret is returned once and never stored."""
        check_key_name(name)
        secret = secret or new_secret()
        hashed = secret_hash(secret)
        key = ApiKey(
            id=key_id(hashed),
            name=name,
            role=role,
            scopes=parse_scopes(scopes),
            secret_hash=hashed,
            created_at=self.clock(),
            created_by=created_by,
        )
        if not await self.store.create_key(key, audit=audit):
            raise Conflict(f"An active key named '{name}' already exists; revoke it first.")
        await self.refresh()
        return key, secret

    async def revoke(self, name: str, *, audit: AuditEvent | None = None) -> ApiKey:
        revoked = await self.store.revoke_key(name, self.clock(), audit=audit)
        if revoked is None:
            raise NotFound(f"No active key is named '{name}'.")
        await self.refresh()
        return revoked

    async def ensure_admin(self, secret: str) -> None:
        """BLIXARD_ADMIN_KEY: make sure an admin key with this secret exists."""
        if len(secret) < 16:
            raise InvalidInput("BLIXARD_ADMIN_KEY must be at least 16 characters long.")
        hashed = secret_hash(secret)
        if key_id(hashed) in self._by_id:
            return
        for key in await self.store.list_keys(include_revoked=True):
            if key.revoked_at is not None and hmac.compare_digest(key.secret_hash, hashed):
                revoked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.revoked_at))
                raise Conflict(
                    f"BLIXARD_ADMIN_KEY is the secret of key '{key.name}', which was revoked "
                    f"at {revoked}; a revoked secret is never accepted again. Set "
                    "BLIXARD_ADMIN_KEY to a new secret, or unset it."
                )
        names = {key.name for key in self._by_id.values()}
        name = BOOTSTRAP_NAME
        suffix = 1
        while name in names:
            suffix += 1
            name = f"{BOOTSTRAP_NAME}-{suffix}"
        await self.create(
            name,
            Role.admin,
            ["*"],
            created_by="BLIXARD_ADMIN_KEY",
            secret=secret,
            audit=audit_event(
                None,
                Action.keys_manage,
                self.clock(),
                detail=f"created key '{name}' from BLIXARD_ADMIN_KEY",
                source="BLIXARD_ADMIN_KEY",
            ),
        )
        log.info("created admin key '%s' from BLIXARD_ADMIN_KEY", name)
