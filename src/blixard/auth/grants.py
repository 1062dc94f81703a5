"""What an open stream was granted, checked again while it runs.

A server-sent event stream outlives the request that checked its key: without a re-check it
would keep the rights its key had when it connected. `StreamGrant.current` is that re-check,
cheap enough for every event and keep-alive (a look-up in the keyring's cached key list)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from blixard.auth.keyring import KeyRing
from blixard.domain.access import Action, Actor


@dataclass(frozen=True, slots=True)
class StreamGrant:
    keyring: KeyRing
    #: The key the stream was opened with (None: an open server, no key presented).
    secret: str | None
    actor: Actor
    #: What the stream needs its key to allow, checked again each time.
    action: Action
    #: When the web UI session the key came from ends (inf: a key header).
    expires_at: float = math.inf

    async def current(self) -> Actor | None:
        """Who the stream still serves; None once its key was revoked, its session expired,
        or (no key) authentication was turned on. The keyring re-reads its key list at most
        every few seconds and keeps it while the store cannot answer."""
        if time.time() >= self.expires_at:
            return None
        await self.keyring.settle()
        if self.secret is None:
            return None if self.keyring.requires_keys() else self.actor
        key = self.keyring.lookup(self.secret)
        if key is None:
            return None
        actor = replace(self.actor, role=key.role, scopes=key.scopes)
        return actor if actor.allowed(self.action) else None
