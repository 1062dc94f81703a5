"""Change events (locks, versions, workspaces, runs) fanned out to live listeners.

One bus per process. On the embedded engine it hears what this node's store accepted; on
etcd, every node's changes as the cluster's watch reports them (store/etcd/changes.py).
Listeners get events in the order the store acknowledged them; a listener that falls behind by
more than its queue loses the oldest events and is told so (`lost`), so a slow browser can
never hold the server's memory. The bus can also declare events lost for everyone (`missed`:
the etcd watch resumed past a compaction), so pages re-read what they show.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    kind: str  # "lock", "version", "workspace" or "run"
    workspace: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "workspace": self.workspace, "at": self.at, **self.data}

    @property
    def is_wake(self) -> bool:
        """Only there to wake a listener (stopping, events lost): nothing to deliver."""
        return self.kind == _WAKE.kind


#: Wakes a listener waiting in `next` without anything to deliver.
_WAKE = ChangeEvent("", "", {}, 0.0)


class Feeder(Protocol):
    """What feeds a bus only while someone listens (the etcd watch): it costs every node
    some CPU per change anywhere in the cluster, which nobody needs while no stream is open."""

    async def acquire(self) -> None:
        """A listener arrived: from the return on, every change acknowledged is published
        (StorageUnavailable if the feed cannot start)."""
        ...

    def release(self) -> None:
        """A listener left."""
        ...


class Listener:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[ChangeEvent] = asyncio.Queue(QUEUE_SIZE)
        self.lost = 0
        self.ended = False  # the server is stopping: end the stream
        self._fed = False  # counted by the bus's feeder

    def _offer(self, event: ChangeEvent) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.lost += 1
        self._queue.put_nowait(event)

    def _miss(self) -> None:
        self.lost += 1
        self._offer(_WAKE)

    async def next(self, timeout: float) -> ChangeEvent | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        bus = self._bus
        bus._listeners.discard(self)
        if self._fed and bus.feeder is not None:
            self._fed = False
            bus.feeder.release()


class EventBus:
    def __init__(self) -> None:
        self._listeners: set[Listener] = set()
        self._closed = False
        #: Started and stopped by `subscribe` and `Listener.close` (None: always fed).
        self.feeder: Feeder | None = None

    @property
    def listened(self) -> bool:
        """Whether anyone would hear a publish now (publishers skip building events if not)."""
        return bool(self._listeners)

    def publish(self, event: ChangeEvent) -> None:
        for listener in list(self._listeners):
            listener._offer(event)

    def missed(self) -> None:
        """Some changes were never published (the etcd watch resumed past a compaction):
        every listener is told, as one that fell behind is."""
        for listener in list(self._listeners):
            listener._miss()

    def listen(self) -> Listener:
        """A listener of what is published from now on (whatever feeds the bus)."""
        listener = Listener(self)
        listener.ended = self._closed
        self._listeners.add(listener)
        return listener

    async def subscribe(self) -> Listener:
        """A listener of every change acknowledged from the return on: `listen`, with the
        feeder (if any) started for it. Close it when done."""
        listener = self.listen()
        if self.feeder is not None:
            try:
                await self.feeder.acquire()
            except BaseException:
                listener.close()
                raise
            listener._fed = True
        return listener

    def close(self) -> None:
        """The server is stopping: wake every listener with `ended` set, so open streams
        finish now instead of holding the shutdown until its timeout."""
        self._closed = True
        for listener in list(self._listeners):
            listener.ended = True
            listener._offer(_WAKE)
