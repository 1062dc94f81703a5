"""Roles: what each caller needs from a store, as small protocols.

Every caller depends on the one role it uses (the keyring on `KeyStore`, the audit sink on
`AuditStore`, node leases on `NodeLeases`, the state service on `StateStore`), not on the whole
engine; both engines satisfy every role (checked by mypy in store/conformance.py and by the
engine suite). This module imports only the domain, so the domain can name what it needs
from storage without importing a storage engine.

Every mutating operation is one atomic compare-and-set on the workspace's `revision`, the
token returned with every `Workspace`: it succeeds only if nothing changed the workspace since
the caller read it, and returns None otherwise (the caller re-reads and re-decides). That is a
SQLite transaction in one engine and an etcd transaction compared on mod_revision in another,
and it keeps every rule in the domain layer.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from blixard.domain.access import ApiKey, AuditEvent
from blixard.domain.events import EventBus
from blixard.domain.models import Body, Lock, NewVersion, VersionMeta, Workspace
from blixard.domain.runs import Run


@runtime_checkable
class StateStore(Protocol):
    """Workspaces, their locks and versions: what the state service (and HTTP views) need."""

    async def health(self) -> dict[str, Any]:
        """Health for /health/hiqlite: at least is_healthy, engine, node_count, has_leader."""
        ...

    async def get_workspace(self, name: str) -> Workspace | None:
        """The workspace as it is now (a linearizable read): what answers clients."""
        ...

    async def recent_workspace(self, name: str) -> tuple[Workspace | None, float]:
        """The workspace as this node last saw it, to base a compare-and-set on, and a
        `time.monotonic()` instant at or after which it was the current record.

        May be older than the caller (etcd answers from memory, no round trip), so only a
        decision that writes may rely on it alone (StateService._cas). After a compare-and-set
        on `name` failed, it is at least as new as the record that made it fail."""
        ...

    async def list_workspaces(
        self, *, after: str | None = None, limit: int = 1000, include_deleted: bool = False
    ) -> list[Workspace]:
        """Workspaces sorted by name, strictly after `after`."""
        ...

    async def put_lock(
        self,
        name: str,
        lock: Lock | None,
        *,
        expect_revision: int | None,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        """Set (or clear, with None) the lock. `expect_revision=None` means the workspace must
        not exist yet, and creates it. `audit` is recorded in the same transaction."""
        ...

    async def append_version(
        self,
        name: str,
        body: Body,
        version: NewVersion,
        *,
        expect_revision: int | None,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        """Append `body` as the next version number and make it the head (the audit event
        gets that number)."""
        ...

    async def set_deleted(
        self,
        name: str,
        deleted_at: float | None,
        *,
        expect_revision: int,
        now: float,
        audit: AuditEvent | None = None,
    ) -> Workspace | None:
        """Soft-delete (a time) or restore (None) a workspace; history is untouched."""
        ...

    async def read_version(self, name: str, version: int) -> tuple[VersionMeta, bytes] | None:
        """The exact bytes of one version, or None if there is no such version."""
        ...

    async def read_head(self, name: str) -> tuple[VersionMeta, bytes] | None:
        """The exact bytes of the workspace's current version."""
        ...

    async def list_versions(
        self, name: str, *, before: int | None = None, limit: int = 50
    ) -> list[VersionMeta]:
        """Version metadata newest first, strictly below `before`."""
        ...

    async def stats(self) -> dict[str, int]:
        """Counts for metrics: workspaces, versions, stored_bytes."""
        ...


@runtime_checkable
class KeyStore(Protocol):
    """API keys: what the keyring needs."""

    async def create_key(self, key: ApiKey, *, audit: AuditEvent | None = None) -> bool:
        """Store a key; False if an active key already has its name."""
        ...

    async def list_keys(self, *, include_revoked: bool = False) -> list[ApiKey]: ...

    async def revoke_key(
        self, name: str, at: float, *, audit: AuditEvent | None = None
    ) -> ApiKey | None:
        """Revoke the active key of that name; None if there is none."""
        ...

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record when keys (by id) were last used; never moves a time backwards."""
        ...


@runtime_checkable
class AuditStore(Protocol):
    """Where audit events go: what the buffered audit writer needs."""

    async def append_audit(self, events: list[AuditEvent]) -> None: ...


@runtime_checkable
class AuditTrail(AuditStore, Protocol):
    """The audit trail read back (the admin API and CLI)."""

    async def list_audit(
        self,
        *,
        workspace: str | None = None,
        key_name: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Audit events newest first (by id), filtered; `before_id` pages backwards."""
        ...


@runtime_checkable
class RunStore(Protocol):
    """Runs (server-side plans and applies), their blobs and logs."""

    async def create_run(self, run: Run) -> Run:
        """Store a new run; the returned copy carries its first revision."""
        ...

    async def update_run(
        self, run: Run, *, expect_revision: int, audit: AuditEvent | None = None
    ) -> Run | None:
        """Replace a run if its revision is still `expect_revision`; None otherwise."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(
        self,
        *,
        workspace: str | None = None,
        statuses: tuple[str, ...] = (),
        before: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Runs newest first (ids sort by creation time), filtered; `before` is a run id."""
        ...

    async def put_run_blob(self, run_id: str, kind: str, data: bytes) -> None:
        """A run's configuration archive or plan file (sealed when encryption is on)."""
        ...

    async def get_run_blob(self, run_id: str, kind: str) -> bytes | None: ...

    async def append_run_log(self, run_id: str, chunk: bytes) -> None: ...

    async def read_run_log(self, run_id: str) -> bytes: ...


@runtime_checkable
class NodeLeases(Protocol):
    """Node liveness: which Blixard nodes are up (runs across nodes)."""

    async def grant_node_lease(self, node_id: str, info: dict[str, Any], *, ttl: int) -> int:
        """List `node_id` (with `info`) as live under a new lease of `ttl` seconds; returns the
        lease id. It stays listed while renew_node_lease is called within every `ttl`; a
        node that dies drops out when its lease expires, and other nodes then take over its
        runs. A new lease for the same node id replaces the node's previous one."""
        ...

    async def renew_node_lease(self, lease_id: int) -> bool:
        """Another `ttl` for the lease; False if it already expired (its node has been seen
        dead by the others and must grant a new lease)."""
        ...

    async def revoke_node_lease(self, lease_id: int) -> None:
        """Drop the lease and its node from the live list now (clean shutdown)."""
        ...

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        """Node id → info of every node whose lease is live."""
        ...


@runtime_checkable
class ChangeSource(Protocol):
    """An engine that publishes every node's acknowledged changes itself (etcd, from a
    watch): the caller hands it the bus instead of wrapping it in an ObservedStore, so each
    change is published once."""

    def feed_changes(self, bus: EventBus) -> None:
        """Publish on `bus` while the store is open and the bus has subscribed listeners
        (`EventBus.subscribe`; the engine may watch only then)."""
        ...


@runtime_checkable
class ExplorerStore(StateStore, AuditStore, Protocol):
    """What the explorer reads (stored versions) and writes (the audit of a reveal)."""


class RunHost(StateStore, RunStore, AuditStore, NodeLeases, Protocol):
    """What the run service and executor need: runs, the workspaces they act on, their
    audit events and which nodes are live to take over a dead node's runs."""
