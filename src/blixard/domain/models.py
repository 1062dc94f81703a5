"""Value objects of the domain: workspaces, versions, locks. Immutable, storage-agnostic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

#: A state's resources, each the raw JSON slice of its body (zero-copy).
ResourceSlices = list[msgspec.Raw]

VersionSource = Literal["write", "rollback", "restore"]

#: A state body as received. Large bodies stay in the bytearray they were read into: copying a
#: 200 MiB state into an immutable bytes object would double the server's peak memory.
Body = bytes | bytearray

#: LockInfo fields the stock http backend clients send and parse back on conflicts.
LOCK_INFO_FIELDS = ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")


@dataclass(frozen=True, slots=True)
class Lock:
    """A held state lock: the client's LockInfo as sent, plus when the server granted it."""

    id: str
    info: dict[str, Any]
    locked_at: float
    owner: str | None = None  # the API key that took it; None while authentication is off

    def holder_fields(self) -> dict[str, Any]:
        """The LockInfo fields at top level, as the stock clients parse a conflict body."""
        fields = {name: self.info.get(name, "") for name in LOCK_INFO_FIELDS}
        fields["ID"] = self.id
        return fields


@dataclass(frozen=True, slots=True)
class StateMeta:
    """What the server reads out of a state body; the body itself is never rewritten."""

    serial: int
    lineage: str
    terraform_version: str | None
    resource_count: int | None
    #: The resources as slices of the body (parsing.resource_slices): two versions with equal
    #: slices have byte-identical resources, and the resource index reuses the head's rows.
    resources: ResourceSlices | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VersionMeta:
    workspace: str
    version: int
    serial: int
    lineage: str
    size: int
    sha256: str
    md5: str
    created_at: float
    lock_id: str | None
    terraform_version: str | None
    resource_count: int | None
    source: VersionSource
    rolled_back_from: int | None = None
    written_by: str | None = None  # the API key (or run) that wrote it
    lock_who: str | None = None  # LockInfo `Who` of the lock the write was made under


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version about to be appended: the domain computed everything but its number."""

    meta: StateMeta
    size: int
    sha256: str
    md5: str
    created_at: float
    lock_id: str | None
    source: VersionSource
    rolled_back_from: int | None = None
    written_by: str | None = None
    lock_who: str | None = None

    def numbered(self, workspace: str, version: int) -> VersionMeta:
        return VersionMeta(
            workspace=workspace,
            version=version,
            serial=self.meta.serial,
            lineage=self.meta.lineage,
            size=self.size,
            sha256=self.sha256,
            md5=self.md5,
            created_at=self.created_at,
            lock_id=self.lock_id,
            terraform_version=self.meta.terraform_version,
            resource_count=self.meta.resource_count,
            source=self.source,
            rolled_back_from=self.rolled_back_from,
            written_by=self.written_by,
            lock_who=self.lock_who,
        )


@dataclass(frozen=True, slots=True)
class Workspace:
    """One workspace as the store holds it. `revision` changes on every mutation (CAS token)."""

    name: str
    revision: int
    created_at: float
    updated_at: float
    head: VersionMeta | None = None
    lock: Lock | None = None
    deleted_at: float | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None
