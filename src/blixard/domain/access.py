"""Who may do what: API keys, roles, workspace scopes and the audit record of each action.

Pure rules. How a key is presented (HTTP headers) and where keys are kept (the store) live
elsewhere; this module decides what a verified key allows.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from blixard.domain.errors import InvalidInput


class Role(IntEnum):
    """Each role includes every power of the roles below it."""

    reader = 1
    writer = 2
    operator = 3
    admin = 4


class Action(StrEnum):
    """Everything a request can do, with the least role that may do it (REQUIRED_ROLE)."""

    state_read = "state.read"
    state_write = "state.write"
    lock_acquire = "lock.acquire"
    lock_release = "lock.release"
    lock_force = "lock.force_unlock"
    lock_status = "lock.status"
    workspace_list = "workspace.list"
    workspace_delete = "workspace.delete"
    workspace_restore = "workspace.restore"
    history_read = "history.read"
    sensitive_reveal = "sensitive.reveal"  # see sensitive values (outputs) unmasked
    rollback = "state.rollback"
    plan_read = "plan.read"
    plan_create = "plan.create"
    plan_apply = "plan.apply"
    keys_manage = "keys.manage"
    audit_read = "audit.read"
    admin = "admin"


REQUIRED_ROLE: dict[Action, Role] = {
    Action.state_read: Role.reader,
    Action.lock_status: Role.reader,
    Action.workspace_list: Role.reader,
    Action.history_read: Role.reader,
    Action.plan_read: Role.reader,
    Action.state_write: Role.writer,
    Action.lock_acquire: Role.writer,
    Action.lock_release: Role.writer,
    Action.plan_create: Role.operator,
    Action.sensitive_reveal: Role.operator,
    Action.plan_apply: Role.operator,
    Action.lock_force: Role.admin,
    Action.rollback: Role.admin,
    Action.workspace_delete: Role.admin,
    Action.workspace_restore: Role.admin,
    Action.keys_manage: Role.admin,
    Action.audit_read: Role.admin,
    Action.admin: Role.admin,
}

#: Actions that change something: recorded in the audit trail whatever their outcome.
MUTATIONS = frozenset(
    {
        Action.state_write,
        Action.lock_acquire,
        Action.lock_release,
        Action.lock_force,
        Action.rollback,
        Action.workspace_delete,
        Action.workspace_restore,
        Action.plan_create,
        Action.plan_apply,
        Action.keys_manage,
        Action.admin,
    }
)

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
SCOPE_GLOB = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,128}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never the secret, only its hash."""

    id: str
    name: str
    role: Role
    scopes: tuple[str, ...]
    secret_hash: str
    created_at: float
    created_by: str | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    def can_see(self, workspace: str) -> bool:
        return any(fnmatch.fnmatchcase(workspace, scope) for scope in self.scopes)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting, as the audit trail records it. `name` None: authentication is off."""

    name: str | None
    role: Role
    source: str | None = None
    scopes: tuple[str, ...] = ("*",)

    def allowed(self, action: Action) -> bool:
        return self.role >= REQUIRED_ROLE[action]

    def can_see(self, workspace: str) -> bool:
        return any(fnmatch.fnmatchcase(workspace, scope) for scope in self.scopes)


#: The actor when no API key exists and authentication is not required.
ANONYMOUS = Actor(name=None, role=Role.admin)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    at: float
    action: str
    outcome: str
    key_name: str | None = None
    role: str | None = None
    source: str | None = None
    workspace: str | None = None
    version: int | None = None
    lock_id: str | None = None
    status: int | None = None
    detail: str | None = None
    id: int | None = None


def audit_event(
    actor: Actor | None,
    action: Action | str,
    at: float,
    *,
    outcome: str = "ok",
    workspace: str | None = None,
    version: int | None = None,
    lock_id: str | None = None,
    status: int | None = None,
    detail: str | None = None,
    source: str | None = None,
) -> AuditEvent:
    """An audit record; `source` stands in when there is no actor (e.g. a request without a
    valid key)."""
    return AuditEvent(
        at=at,
        action=action.value if isinstance(action, Action) else action,
        outcome=outcome,
        key_name=actor.name if actor else None,
        role=actor.role.name if actor else None,
        source=actor.source if actor else source,
        workspace=workspace,
        version=version,
        lock_id=lock_id,
        status=status,
        detail=detail,
    )


def parse_role(value: str) -> Role:
    try:
        return Role[value]
    except KeyError:
        names = ", ".join(role.name for role in Role)
        raise InvalidInput(f"Unknown role '{value}'; roles are {names}.") from None


def check_key_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise InvalidInput(
            "Key names are 1-64 characters of letters, digits, '.', '_', '@' and '-', "
            "starting with a letter or digit."
        )
    return name


def parse_scopes(globs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Workspace globs (fnmatch: *, ?, [...]); at least one."""
    cleaned = tuple(glob.strip() for glob in globs if glob.strip())
    if not cleaned:
        raise InvalidInput("A key needs at least one workspace glob, e.g. '*' or 'team-a-*'.")
    for glob in cleaned:
        if not SCOPE_GLOB.fullmatch(glob):
            raise InvalidInput(f"Invalid workspace glob '{glob}'.")
    return cleaned
