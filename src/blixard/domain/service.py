"""StateService: every rule about locks, versions, serials and lineages, in one place.

Each mutation decides by the rules on the workspace as this node last saw it, then asks the
store for one atomic compare-and-set on that view's revision. If something else changed the
workspace in between, the store says so and the decision is made again on newer data. An
answer that changes nothing (a refusal, or a success with nothing to write) is only given on
a view known current during the request, so rules are never answered on a stale view,
whatever the engine or the number of server nodes (`StateService._cas`).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from blixard.domain.access import Action, Actor, Role, audit_event
from blixard.domain.errors import (
    ChecksumMismatch,
    DomainError,
    LineageMismatch,
    LockConflict,
    Locked,
    LockLost,
    NotFound,
    PermissionDenied,
    SerialConflict,
    SerialRegression,
    StorageUnavailable,
    WorkspaceDeleted,
    WorkspaceNotDeleted,
)
from blixard.domain.models import Body, Lock, NewVersion, VersionMeta, VersionSource, Workspace
from blixard.domain.parsing import check_workspace_name, parse_lock_info, parse_state, with_serial
from blixard.domain.roles import StateStore

T = TypeVar("T")

#: How often a decision is retried when the workspace keeps changing under it.
_CAS_ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class _Decision(Generic[T]):
    """What an attempt decided: the answer, and whether the store wrote it (a compare-and-set
    that succeeded) or nothing needed writing (only answered on a current view)."""

    value: T
    wrote: bool


def _wrote(value: T | None) -> _Decision[T] | None:
    """The store's answer to a compare-and-set: None when it lost (re-decide)."""
    return None if value is None else _Decision(value, wrote=True)


def _kept(value: T) -> _Decision[T]:
    return _Decision(value, wrote=False)


@dataclass(frozen=True, slots=True)
class WriteResult:
    meta: VersionMeta
    created: bool


@dataclass(frozen=True, slots=True)
class LockStatus:
    workspace: str
    lock: Lock | None


class StateService:
    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # -- helpers -------------------------------------------------------------------------

    async def _cas(
        self, name: str, attempt: Callable[[Workspace | None], Awaitable[_Decision[T] | None]]
    ) -> T:
        """Run `attempt` until it decides on a view it may answer on.

        The first view is the store's `recent_workspace`, which may be older than this call
        (etcd: the record this node last saw, no round trip). A decision that writes is safe on
        any view: the store compares the exact revision the view had, and a lost compare comes
        back as None, after which the store's view is the record the compare found. A decision
        that writes nothing (a refusal, a retried LOCK, an identical re-POST, an unlock of no
        lock) is answered only if the view was current at some instant during this call;
        otherwise it is made again on a linearizable read. SQLite's views are always current,
        so there nothing is ever decided twice.
        """
        started = time.monotonic()
        ws, as_of = await self.store.recent_workspace(name)
        for _ in range(_CAS_ATTEMPTS):
            current = as_of >= started
            try:
                decision = await attempt(ws)
            except StorageUnavailable:
                raise
            except DomainError:
                if current:
                    raise
            else:
                if decision is None:
                    # The compare-and-set lost; the store now holds the record it lost to.
                    ws, as_of = await self.store.recent_workspace(name)
                    continue
                if decision.wrote or current:
                    return decision.value
            # Decided without writing on a view that may predate this call: look again.
            as_of = time.monotonic()
            ws = await self.store.get_workspace(name)
        raise StorageUnavailable("The workspace is changing too fast to apply this operation.")

    async def _existing(self, name: str) -> Workspace:
        check_workspace_name(name)
        ws = await self.store.get_workspace(name)
        if ws is None or ws.deleted:
            raise NotFound(f"Workspace '{name}' does not exist.")
        return ws

    @staticmethod
    def _check_writer(
        ws: Workspace | None, lock_id: str | None, action: str, actor: Actor | None = None
    ) -> None:
        """A write is allowed to the lock holder, or to anyone while nothing is locked.

        Holding the lock means knowing its ID *and* being the key that took it (or an admin),
        exactly as for UNLOCK: a lock ID read from a conflict body is not a credential.
        """
        lock = ws.lock if ws else None
        if lock is not None and lock.id != lock_id:
            raise Locked(
                f"Cannot {action}: the workspace is locked by {lock.info.get('Who') or 'someone'} "
                f"(lock ID {lock.id}).",
                lock,
            )
        if lock is not None:
            _check_lock_owner(lock, actor)
        if lock is None and lock_id is not None:
            raise LockLost(
                f"Cannot {action}: lock {lock_id} is not held (it was released or broken).",
                None,
            )

    # -- state ---------------------------------------------------------------------------

    async def read_state(self, name: str, version: int | None = None) -> tuple[VersionMeta, bytes]:
        ws = await self._existing(name)
        if version is None:
            if ws.head is None:
                raise NotFound(f"Workspace '{name}' has no state yet.")
            # The head as of the workspace just read: no second look-up of the workspace.
            found = await self.store.read_version(name, ws.head.version)
        else:
            found = await self.store.read_version(name, version)
        if found is None:
            if version is None or ws.head is None:
                raise NotFound(f"Workspace '{name}' has no state yet.")
            raise NotFound(f"Workspace '{name}' has no version {version}.")
        return found

    async def write_state(
        self,
        name: str,
        body: Body,
        *,
        lock_id: str | None = None,
        content_md5: str | None = None,
        source: VersionSource = "write",
        rolled_back_from: int | None = None,
        actor: Actor | None = None,
    ) -> WriteResult:
        check_workspace_name(name)
        md5 = hashlib.md5(body)
        if content_md5 is not None:
            verify_content_md5(md5.digest(), content_md5)
        meta = parse_state(body)
        sha256 = hashlib.sha256(body).hexdigest()
        new = NewVersion(
            meta=meta,
            size=len(body),
            sha256=sha256,
            md5=md5.hexdigest(),
            created_at=self.clock(),
            lock_id=lock_id,
            source=source,
            rolled_back_from=rolled_back_from,
            written_by=actor.name if actor else None,
        )
        audit = audit_event(
            actor,
            Action.rollback if source == "rollback" else Action.state_write,
            new.created_at,
            workspace=name,
            lock_id=lock_id,
            detail=f"serial {meta.serial}"
            + (f", rolled back from version {rolled_back_from}" if rolled_back_from else ""),
        )

        async def attempt(ws: Workspace | None) -> _Decision[WriteResult] | None:
            if ws is not None and ws.deleted:
                raise WorkspaceDeleted(
                    f"Workspace '{name}' is deleted; restore it before writing to it."
                )
            self._check_writer(ws, lock_id, "write state", actor)
            write = new if ws is None or ws.lock is None else with_lock_who(new, ws.lock)
            head = ws.head if ws else None
            if head is not None:
                if head.sha256 == sha256 and source == "write":
                    return _kept(WriteResult(head, created=False))
                if meta.lineage != head.lineage:
                    raise LineageMismatch(
                        f"State lineage {meta.lineage} does not match the workspace's lineage "
                        f"{head.lineage}."
                    )
                if meta.serial < head.serial:
                    raise SerialRegression(
                        f"State serial {meta.serial} is older than the current serial "
                        f"{head.serial}."
                    )
                if meta.serial == head.serial:
                    raise SerialConflict(
                        f"State serial {meta.serial} is already stored with different content; "
                        "a changed state needs a higher serial."
                    )
            updated = await self.store.append_version(
                name, body, write, expect_revision=ws.revision if ws else None, audit=audit
            )
            if updated is None or updated.head is None:
                return None
            return _wrote(WriteResult(updated.head, created=True))

        return await self._cas(name, attempt)

    async def rollback(
        self, name: str, version: int, *, lock_id: str | None = None, actor: Actor | None = None
    ) -> VersionMeta:
        """Make version N current again, as a new version with serial = current + 1."""
        ws = await self._existing(name)
        self._check_writer(ws, lock_id, "roll back", actor)
        _, old_body = await self.read_state(name, version)
        for _ in range(_CAS_ATTEMPTS):
            ws = await self._existing(name)
            assert ws.head is not None  # read_state found a version
            body = with_serial(old_body, ws.head.serial + 1)
            try:
                result = await self.write_state(
                    name,
                    body,
                    lock_id=lock_id,
                    source="rollback",
                    rolled_back_from=version,
                    actor=actor,
                )
            except (SerialConflict, SerialRegression):
                continue  # someone wrote in between: recompute the serial
            return result.meta
        raise StorageUnavailable("The workspace is changing too fast to roll back.")

    # -- locks ---------------------------------------------------------------------------

    async def lock(self, name: str, body: Body, *, actor: Actor | None = None) -> Lock:
        check_workspace_name(name)
        info = parse_lock_info(body)
        assert info is not None
        lock = Lock(
            id=info["ID"], info=info, locked_at=self.clock(), owner=actor.name if actor else None
        )
        audit = audit_event(
            actor, Action.lock_acquire, lock.locked_at, workspace=name, lock_id=lock.id
        )

        async def attempt(ws: Workspace | None) -> _Decision[Lock] | None:
            if ws is not None and ws.deleted:
                raise WorkspaceDeleted(f"Workspace '{name}' is deleted; restore it first.")
            if ws is not None and ws.lock is not None:
                if ws.lock.id == lock.id:
                    return _kept(ws.lock)  # a client retry of the LOCK it already won
                who = ws.lock.info.get("Who") or "someone"
                raise Locked(
                    f"Workspace '{name}' is already locked by {who} (lock ID {ws.lock.id}).",
                    ws.lock,
                )
            updated = await self.store.put_lock(
                name,
                lock,
                expect_revision=ws.revision if ws else None,
                now=lock.locked_at,
                audit=audit,
            )
            return _wrote(updated.lock if updated else None)

        return await self._cas(name, attempt)

    async def unlock(self, name: str, body: Body, *, actor: Actor | None = None) -> Lock | None:
        """Release a lock by ID; an empty body (terraform force-unlock) releases any lock."""
        check_workspace_name(name)
        info = parse_lock_info(body, allow_empty=True)
        if info is None:
            return await self.force_unlock(name, actor=actor)
        lock_id = info["ID"]

        async def attempt(ws: Workspace | None) -> _Decision[Lock | None] | None:
            if ws is None or ws.lock is None:
                return _kept(None)
            if ws.lock.id != lock_id:
                raise LockConflict(
                    f"Lock ID {lock_id} does not hold workspace '{name}'; it is held by "
                    f"{ws.lock.info.get('Who') or 'someone'} (lock ID {ws.lock.id}).",
                    ws.lock,
                )
            _check_lock_owner(ws.lock, actor)
            return await self._release(ws, Action.lock_release, actor)

        return await self._cas(name, attempt)

    async def force_unlock(self, name: str, *, actor: Actor | None = None) -> Lock | None:
        """Break whatever lock is held; answers with the lock that was removed."""
        check_workspace_name(name)

        async def attempt(ws: Workspace | None) -> _Decision[Lock | None] | None:
            if ws is None or ws.lock is None:
                return _kept(None)
            return await self._release(ws, Action.lock_force, actor)

        return await self._cas(name, attempt)

    async def _release(
        self, ws: Workspace, action: Action, actor: Actor | None
    ) -> _Decision[Lock | None] | None:
        assert ws.lock is not None
        now = self.clock()
        audit = audit_event(actor, action, now, workspace=ws.name, lock_id=ws.lock.id)
        updated = await self.store.put_lock(
            ws.name, None, expect_revision=ws.revision, now=now, audit=audit
        )
        if updated is None:
            return None
        released: Lock | None = ws.lock
        return _Decision(released, wrote=True)

    async def lock_status(self, name: str) -> LockStatus:
        ws = await self._existing(name)
        return LockStatus(name, ws.lock)

    # -- workspaces ----------------------------------------------------------------------

    async def list_workspaces(
        self, *, after: str | None, limit: int, actor: Actor | None = None
    ) -> list[Workspace]:
        """Workspaces by name; only those the actor's scopes can see."""
        if actor is None or actor.scopes == ("*",):
            return await self.store.list_workspaces(after=after, limit=limit)
        visible: list[Workspace] = []
        while len(visible) < limit:
            page = await self.store.list_workspaces(after=after, limit=max(limit, 100))
            visible.extend(ws for ws in page if actor.can_see(ws.name))
            if len(page) < max(limit, 100):
                break
            after = page[-1].name
        return visible[:limit]

    async def history(self, name: str, *, before: int | None, limit: int) -> list[VersionMeta]:
        await self._existing(name)
        return await self.store.list_versions(name, before=before, limit=limit)

    async def delete_workspace(self, name: str, *, actor: Actor | None = None) -> Workspace:
        """Soft delete: hidden from lists and reads, every version kept for restore."""
        check_workspace_name(name)

        async def attempt(ws: Workspace | None) -> _Decision[Workspace] | None:
            if ws is None or ws.deleted:
                raise NotFound(f"Workspace '{name}' does not exist.")
            if ws.lock is not None:
                raise Locked(
                    f"Workspace '{name}' is locked (lock ID {ws.lock.id}); unlock it before "
                    "deleting it.",
                    ws.lock,
                )
            now = self.clock()
            audit = audit_event(actor, Action.workspace_delete, now, workspace=name)
            return _wrote(
                await self.store.set_deleted(
                    name, now, expect_revision=ws.revision, now=now, audit=audit
                )
            )

        return await self._cas(name, attempt)

    async def restore_workspace(self, name: str, *, actor: Actor | None = None) -> Workspace:
        check_workspace_name(name)

        async def attempt(ws: Workspace | None) -> _Decision[Workspace] | None:
            if ws is None:
                raise NotFound(f"Workspace '{name}' does not exist.")
            if not ws.deleted:
                raise WorkspaceNotDeleted(f"Workspace '{name}' is not deleted.")
            now = self.clock()
            audit = audit_event(actor, Action.workspace_restore, now, workspace=name)
            return _wrote(
                await self.store.set_deleted(
                    name, None, expect_revision=ws.revision, now=now, audit=audit
                )
            )

        return await self._cas(name, attempt)

    async def health(self) -> dict[str, Any]:
        return await self.store.health()

    async def release_lock_of(
        self, name: str, owner: str, *, actor: Actor | None = None
    ) -> Lock | None:
        """Break the lock only while the key `owner` holds it (a run's lock once its process
        is gone), never a lock someone took since; answers with the lock removed."""
        check_workspace_name(name)

        async def attempt(ws: Workspace | None) -> _Decision[Lock | None] | None:
            if ws is None or ws.lock is None or ws.lock.owner != owner:
                return _kept(None)
            return await self._release(ws, Action.lock_force, actor)

        return await self._cas(name, attempt)


def _check_lock_owner(lock: Lock, actor: Actor | None) -> None:
    """Only the key that took a lock (or an admin) may use it, to write or to release."""
    owner = lock.owner
    if actor is not None and actor.role < Role.admin and owner not in (None, actor.name):
        raise PermissionDenied(
            f"Lock {lock.id} was taken by key '{owner}'; only that key or an admin may use it."
        )


def with_lock_who(new: NewVersion, lock: Lock) -> NewVersion:
    """The version as written under `lock`: it records the holder's LockInfo `Who`, so history
    says who applied it even after the lock is gone."""
    who = lock.info.get("Who")
    return replace(new, lock_who=who if isinstance(who, str) and who else None)


def verify_content_md5(digest: bytes, header: str) -> None:
    """Check a Content-MD5 header (base64 of the body's MD5, RFC 1864)."""
    try:
        expected = base64.b64decode(header.strip(), validate=True)
    except ValueError:
        raise ChecksumMismatch("Content-MD5 is not valid base64.") from None
    if expected != digest:
        raise ChecksumMismatch("Content-MD5 does not match the body: it was corrupted in transit.")
