"""Domain errors: what went wrong, in domain words. HTTP statuses live in api/errors.py."""

from __future__ import annotations

from typing import Any

from blixard.domain.models import Lock


class DomainError(Exception):
    """Base of every rule violation; `code` is the stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidInput(DomainError):
    code = "invalid_request"


class InvalidWorkspaceName(InvalidInput):
    code = "invalid_workspace_name"


class InvalidState(InvalidInput):
    code = "invalid_state"


class InvalidLockInfo(InvalidInput):
    code = "invalid_lock_info"


class ChecksumMismatch(InvalidInput):
    code = "md5_mismatch"


class PayloadTooLarge(DomainError):
    code = "payload_too_large"


class BodyTimeout(DomainError):
    """The request body stopped arriving: the client paused longer than the read timeout."""

    code = "body_timeout"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class LineageMismatch(Conflict):
    code = "lineage_mismatch"


class SerialRegression(Conflict):
    code = "serial_regression"


class SerialConflict(Conflict):
    code = "serial_conflict"


class WorkspaceDeleted(Conflict):
    code = "workspace_deleted"


class WorkspaceNotDeleted(Conflict):
    code = "workspace_not_deleted"


class HolderError(DomainError):
    """An error about someone else's lock: carries the holder so clients can name it."""

    def __init__(self, message: str, holder: Lock | None) -> None:
        super().__init__(message)
        self.holder = holder


class Locked(HolderError):
    """The workspace is locked by someone else (the stock clients expect 423 + LockInfo)."""

    code = "locked"


class LockConflict(HolderError):
    """UNLOCK with an ID that is not the holder's."""

    code = "lock_conflict"


class LockLost(HolderError):
    """A write names a lock ID that no longer holds the lock."""

    code = "lock_lost"


class VersionCorrupt(DomainError):
    """A stored version's bytes cannot be read back (damaged on disk, or altered): retrying
    will not help, restoring it from a backup will."""

    code = "version_corrupt"

    def __init__(self, workspace: str, version: int, reason: str) -> None:
        super().__init__(
            f"Version {version} of workspace '{workspace}' is corrupt in storage and cannot be "
            f"read ({reason}); restore it from a backup.",
            workspace=workspace,
            version=version,
        )


class StorageUnavailable(DomainError):
    """The store cannot serve right now; clients should retry."""

    code = "storage_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(DomainError):
    """No credentials, or credentials that match no active key."""

    code = "unauthorized"


class PermissionDenied(DomainError):
    """A valid key whose role does not allow the action."""

    code = "forbidden"


class RunnerUnavailable(DomainError):
    """No OpenTofu/Terraform binary to run plans with: the server needs configuring."""

    code = "runner_unavailable"
