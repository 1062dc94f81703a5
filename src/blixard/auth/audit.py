"""The audit trail's writer for events that do not ride in a mutation's own transaction.

Successful mutations are recorded by the store in the same transaction as the change. Refused
and denied requests change nothing, so their events are queued here and written in batches,
off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from blixard.domain.access import AuditEvent
from blixard.domain.roles import AuditStore

log = logging.getLogger("blixard.audit")

FLUSH_SECONDS = 0.25
MAX_PENDING = 10_000


class AuditSink:
    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._pending: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, event: AuditEvent) -> None:
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1  # a flood of denied requests must not exhaust memory
            return
        self._pending.append(event)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="blixard-audit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            try:
                await self.store.append_audit(events)
            except Exception:
                self._pending[:0] = events  # keep them, in order, for the next attempt
                raise

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_SECONDS)  # let a burst gather into one commit
            try:
                await self.flush()
            except Exception as exc:
                log.warning("could not write audit events (%s); will retry", exc)
                await asyncio.sleep(1.0)
                self._wake.set()
