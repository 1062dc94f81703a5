"""Every node's changes, from an etcd watch, published on this process's EventBus.

On etcd several nodes write the same keyspace, so what one node's store accepted is not what a
browser connected to it needs to hear. Each node therefore watches the two families the events
come from (docs/ha.md, "Live events"):

- `ws/NAME`, the workspace record: a change of its lock id is a `lock` event, of its head
  version a `version` event, of its deleted_at a `workspace` event (diffed against the previous
  value, which the watch sends along: a rotation re-sealing the lock payload, or an audit id
  bump, changes none of them and publishes nothing);
- `runs/ID`, the run document: a `run` event when its content changed.

The events carry exactly the fields the SQLite engine's ObservedStore publishes, read from the
same records; the lock's `Who` and `Operation` come from the lock payload, opened with the
store's cipher as every read of the lock is. The store does not also publish its own writes
(store/observed.py leaves an engine with a change feed alone), so each change reaches each
node's bus once, in etcd's order per family.

A watch broken by a member restart or a leader change is opened again from the revision after
the last event handled (etcd replays what happened meanwhile); the call asks for a leader
(`hasleader`), so a member cut off from the cluster cancels it instead of going quiet. If the
revision was compacted meanwhile, the missed changes cannot be replayed: the watch restarts
from now and the bus tells every listener it lost events, so pages re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from blixard.domain.events import ChangeEvent, EventBus
from blixard.store.etcd.conn import grpc_detail
from blixard.store.etcd.keyspace import RUNS, WORKSPACES, prefix_end

if TYPE_CHECKING:
    from blixard.store.etcd.door import EtcdDoor

log = logging.getLogger(__name__)

#: Seconds between two attempts to open a watch that failed.
RETRY_SECONDS = 0.5
#: Seconds the watches stay open after the last listener left: a browser moving from page to
#: page closes its stream and opens the next one at once.
LINGER_SECONDS = 60.0


class ChangeFeed:
    """Two watches (workspace records, run documents) publishing on `bus`, open while the
    bus has listeners (and LINGER_SECONDS after): a watch costs each node CPU for every
    change anywhere in the cluster (~0.2 ms per change), which a node nobody listens to
    need not pay. The store stops it when it closes."""

    def __init__(self, store: EtcdDoor, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        bus.feeder = self
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners = 0
        self._starting = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def acquire(self) -> None:
        self._listeners += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            async with self._starting:
                if self._stopping is not None:  # an idle stop in progress: let it finish
                    await asyncio.shield(self._stopping)
                if not self._tasks:
                    self.start(await self._current_revision())
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self._listeners -= 1
        if self._listeners == 0 and self._tasks and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._stop_idle)

    def _stop_idle(self) -> None:
        self._idle = None
        if self._listeners == 0 and self._tasks:
            self._stopping = asyncio.create_task(self.stop())

    def start(self, revision: int) -> None:
        """Publish every change after `revision` (a revision the store has read at)."""
        stop = self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow(WORKSPACES, self._workspace_events, revision, stop)),
            asyncio.create_task(self._follow(RUNS, self._run_events, revision, stop)),
        ]

    async def stop(self) -> None:
        """End the watches (the store closes, or nobody listened for LINGER_SECONDS)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        tasks, self._tasks = self._tasks, []
        # The request streams end first, so cancelling the calls then cancels no request
        # iterator (gRPC logs a traceback for that), as the resource index watch does.
        self._stop.set()
        await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping = None

    async def _current_revision(self) -> int:
        """The cluster's revision now (StorageUnavailable if etcd does not answer)."""
        key = self.store.keys.key(WORKSPACES)
        found = await self.store.read_range(key, prefix_end(key), limit=1)
        return int(found.header.revision)

    async def _follow(
        self,
        family: str,
        events_of: Callable[[str, Any], list[ChangeEvent]],
        revision: int,
        stop: asyncio.Event,
    ) -> None:
        """Watch one family from `revision` + 1 until `stop`."""
        from blixard.store.etcd.wire import WatchCreateRequest, WatchRequest, stub_watch

        start = self.store.keys.key(family)

        async def requests(after: int) -> AsyncIterator[Any]:
            create = WatchCreateRequest(
                key=start, range_end=prefix_end(start), start_revision=after + 1, prev_kv=True
            )
            yield WatchRequest(create_request=create)
            await stop.wait()

        failing = False
        renewed = False  # reopened with a fresh token and no answer since: no second at once
        while not stop.is_set():
            call = stub_watch(self.store.client.watch, requests(revision), require_leader=True)
            try:
                async for response in call:
                    if failing:
                        log.info("live events: etcd watch resumed")
                        failing = False
                    if response.compact_revision > 0:
                        revision = await self._now(stop)
                        log.warning(
                            "live events: the etcd watch fell behind a compaction; clients "
                            "are told to re-read"
                        )
                        self.bus.missed()
                        call.cancel()
                        break
                    if response.canceled:
                        raise ConnectionError(response.cancel_reason or "watch cancelled")
                    renewed = False
                    for event in response.events:
                        if event.type == 0:  # PUT; the engine never deletes these records
                            name = bytes(event.kv.key)[len(start) :].decode()
                            for change in events_of(name, event):
                                self.bus.publish(change)
                        # Resume after the last event handled: never after the header's
                        # revision, which may run ahead of a watch still catching up.
                        revision = max(revision, int(event.kv.mod_revision))
                else:  # the member ended the stream: open it again, unhurried
                    if not stop.is_set():
                        await asyncio.sleep(RETRY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a member restarted, the leader moved: resume
                if stop.is_set():
                    return
                if not renewed and await self.store.renew_stale_token(exc):
                    renewed = True
                    continue  # reopened at once with the fresh token
                if not failing:  # once per outage, not at every attempt
                    detail = grpc_detail(exc)[1]
                    log.warning("live events: etcd watch interrupted (%s); resuming", detail)
                    failing = True
                await asyncio.sleep(RETRY_SECONDS)

    async def _now(self, stop: asyncio.Event) -> int:
        """The cluster's current revision, retried until etcd answers (or `stop`)."""
        while True:
            try:
                return await self._current_revision()
            except Exception as exc:
                if stop.is_set():
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(RETRY_SECONDS)

    def _workspace_events(self, name: str, event: Any) -> list[ChangeEvent]:
        after = orjson.loads(event.kv.value)
        before = orjson.loads(event.prev_kv.value) if event.prev_kv.value else None
        was_deleted = bool(before and before["deleted_at"])
        old_lock = before["lock"]["id"] if before and before["lock"] else None
        old_head = before["head"]["version"] if before and before["head"] else None
        changes: list[ChangeEvent] = []
        if bool(after["deleted_at"]) != was_deleted:
            changes.append(ChangeEvent("workspace", name, {"deleted": bool(after["deleted_at"])}))
        lock = after["lock"]
        if (lock["id"] if lock else None) != old_lock:
            info = self._lock_info(name, event.kv) if lock else {}
            changes.append(
                ChangeEvent(
                    "lock",
                    name,
                    {
                        "locked": lock is not None,
                        "lock_id": lock["id"] if lock else None,
                        "who": info.get("Who"),
                        "operation": info.get("Operation"),
                    },
                )
            )
        head = after["head"]
        if head is not None and head["version"] != old_head:
            changes.append(
                ChangeEvent(
                    "version",
                    name,
                    {
                        "version": head["version"],
                        "serial": head["serial"],
                        "source": head["source"],
                    },
                )
            )
        return changes

    def _lock_info(self, name: str, kv: Any) -> dict[str, Any]:
        """The new lock's LockInfo, opened as any read of the record opens it; empty if no
        configured key opens it (the event then names no holder)."""
        try:
            lock = self.store.decode_record(name, kv).ws.lock
        except Exception:
            log.warning("live events: cannot open the lock payload of a workspace record")
            return {}
        return lock.info if lock is not None else {}

    def _run_events(self, run_id: str, event: Any) -> list[ChangeEvent]:
        store = self.store
        value = bytes(event.kv.value)
        try:
            run = store.run_from_document(run_id, value, None)
        except Exception:
            log.warning("live events: cannot open a run document")
            return []
        if event.prev_kv.value:
            with contextlib.suppress(Exception):  # unreadable before: published as changed
                before = store.open_run(run_id, "document", bytes(event.prev_kv.value))
                if before == store.open_run(run_id, "document", value):
                    return []  # re-sealed by a key rotation: nothing changed
        return [ChangeEvent("run", run.workspace, {"plan_id": run.id, "status": run.status.value})]
