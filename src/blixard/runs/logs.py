"""A run's log while it is being written: followers see every byte as it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable


class LiveLog:
    """The log of the phase executing now; flushed to the store in batches."""

    def __init__(self, persist: Callable[[bytes], Awaitable[None]]) -> None:
        self._persist = persist
        self.data = bytearray()
        self.flushed = 0
        self.done = False
        self.lock = asyncio.Lock()  # orders flushes against readers of "store + tail"
        self._changed = asyncio.Condition()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk
        async with self._changed:
            self._changed.notify_all()

    async def flush(self) -> None:
        async with self.lock:
            if self.flushed < len(self.data):
                end = len(self.data)
                await self._persist(bytes(self.data[self.flushed : end]))
                self.flushed = end

    async def close(self) -> None:
        await self.flush()
        self.done = True
        async with self._changed:
            self._changed.notify_all()

    async def follow(self, offset: int) -> AsyncIterator[bytes]:
        """Everything from `offset` on, as it arrives, until the phase ends."""
        while True:
            if offset < len(self.data):
                chunk = bytes(self.data[offset:])
                offset += len(chunk)
                yield chunk
                continue
            if self.done:
                return
            async with self._changed:
                await self._changed.wait_for(
                    lambda seen=offset: self.done or len(self.data) > seen  # type: ignore[misc]
                )
