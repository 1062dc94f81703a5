"""This node's presence in the store: a lease granted at start, renewed every TTL/3, revoked
at a clean stop. Other nodes treat a node without a live lease as dead and take over its
runs (executor.py), so a node that cannot renew in time must act as if it were dead too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from blixard.domain.errors import StorageUnavailable
from blixard.domain.roles import NodeLeases

log = logging.getLogger("blixard.runs")


class NodePresence:
    """Holds this node's lease; `held` is set while the node may consider itself live."""

    def __init__(
        self,
        store: NodeLeases,
        node_id: str,
        ttl: int,
        info: dict[str, Any],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl = ttl
        self.info = info
        self.on_lost = on_lost
        self.held = asyncio.Event()
        self._lease: int | None = None
        #: When the last renewal that etcd accepted was sent: the lease lives at least
        #: `ttl` seconds from then, and possibly no longer.
        self._renewed = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._grant()
        self._task = asyncio.create_task(self._heartbeat(), name="blixard-node-lease")

    async def stop(self) -> None:
        """Revoke the lease: the other nodes see this one gone at once, not after the TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.held.clear()
        if self._lease is not None:
            with contextlib.suppress(StorageUnavailable):
                await self.store.revoke_node_lease(self._lease)
            self._lease = None

    async def _grant(self) -> None:
        sent = time.monotonic()
        self._lease = await self.store.grant_node_lease(self.node_id, self.info, ttl=self.ttl)
        self._renewed = sent
        self.held.set()

    async def _heartbeat(self) -> None:
        ok = True
        while True:
            # After a failed renewal, retry sooner: the lease is running out.
            await asyncio.sleep(self.ttl / 3 if ok else min(1.0, self.ttl / 6))
            if self.held.is_set():
                ok = await self._renew()
                continue
            try:
                await self._grant()
                ok = True
                log.warning("node %s holds a new lease: it takes runs again", self.node_id)
            except StorageUnavailable as exc:
                ok = False
                log.warning("node %s: no new lease yet: %s", self.node_id, exc)

    async def _renew(self) -> bool:
        assert self._lease is not None
        sent = time.monotonic()
        # Bounded by what is left of the lease: a renewal that hangs must not keep the node
        # believing it is live after the others have stopped believing it.
        left = self._renewed + self.ttl - sent
        alive: bool | None
        try:
            alive = await asyncio.wait_for(
                self.store.renew_node_lease(self._lease), max(0.5, min(self.ttl / 3, left))
            )
        except (StorageUnavailable, TimeoutError) as exc:
            alive = None
            log.warning("node %s: lease renewal failed: %s", self.node_id, str(exc) or "timed out")
        if alive:
            self._renewed = sent
            return True
        if alive is None and time.monotonic() - self._renewed < self.ttl:
            return False  # not expired yet: try again soon
        self.held.clear()
        log.error(
            "node %s lost its lease (%s): the other nodes now treat its runs as interrupted, "
            "so it stops them",
            self.node_id,
            "expired" if alive is False else f"not renewed within {self.ttl} s",
        )
        await self.on_lost()
        return False
