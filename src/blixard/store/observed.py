"""A store that tells an EventBus about every change it acknowledged.

It wraps an engine (every call passes straight through) and publishes after the engine
answered with success, so listeners never hear of a change that did not happen. It sees the
changes made through this process only, which on the embedded engine is all of them. An
engine shared by several nodes (etcd) publishes every node's changes itself, from a watch
(store/etcd/changes.py): `observed` then hands it the bus and does not wrap it, so this
node's own writes are not published twice. Dropping the wrapper there is simpler than tagging
writes with the node that made them and skipping those in the watch: one path, one order
(etcd's), and nothing published that etcd did not commit.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from blixard.domain.events import ChangeEvent, EventBus
from blixard.domain.models import Body, Lock, NewVersion, Workspace
from blixard.domain.roles import ChangeSource
from blixard.domain.runs import Run
from blixard.store.protocol import Store


class ObservedStore:
    def __init__(self, inner: Store, bus: EventBus) -> None:
        self._inner = inner
        self._bus = bus

    def __getattr__(self, name: str) -> Any:
        """Everything else is the engine's own. Its methods are bound here on first use, so
        later calls cost a plain attribute look-up (~1 us less each); values (properties such
        as progress reports) are read afresh every time."""
        value = getattr(self._inner, name)
        if inspect.ismethod(value):
            setattr(self, name, value)
        return value

    async def put_lock(self, name: str, lock: Lock | None, **options: Any) -> Workspace | None:
        updated = await self._inner.put_lock(name, lock, **options)
        if updated is not None and self._bus.listened:
            info = lock.info if lock else {}
            self._bus.publish(
                ChangeEvent(
                    "lock",
                    name,
                    {
                        "locked": lock is not None,
                        "lock_id": lock.id if lock else None,
                        "who": info.get("Who"),
                        "operation": info.get("Operation"),
                    },
                )
            )
        return updated

    async def append_version(
        self, name: str, body: Body, new: NewVersion, **options: Any
    ) -> Workspace | None:
        updated = await self._inner.append_version(name, body, new, **options)
        if updated is not None and updated.head is not None and self._bus.listened:
            head = updated.head
            self._bus.publish(
                ChangeEvent(
                    "version",
                    name,
                    {"version": head.version, "serial": head.serial, "source": head.source},
                )
            )
        return updated

    async def set_deleted(
        self, name: str, deleted_at: float | None, **options: Any
    ) -> Workspace | None:
        updated = await self._inner.set_deleted(name, deleted_at, **options)
        if updated is not None:
            self._bus.publish(ChangeEvent("workspace", name, {"deleted": deleted_at is not None}))
        return updated

    async def create_run(self, run: Run) -> Run:
        created = await self._inner.create_run(run)
        self._publish_run(created)
        return created

    async def update_run(self, run: Run, **options: Any) -> Run | None:
        updated = await self._inner.update_run(run, **options)
        if updated is not None:
            self._publish_run(updated)
        return updated

    def _publish_run(self, run: Run) -> None:
        self._bus.publish(
            ChangeEvent("run", run.workspace, {"plan_id": run.id, "status": run.status.value})
        )


def observed(store: Store, bus: EventBus) -> Store:
    """`store`, publishing its acknowledged changes on `bus` (itself, if it can)."""
    if isinstance(store, ChangeSource):
        store.feed_changes(bus)
        return store
    return cast(Store, ObservedStore(store, bus))
