"""The JSON shapes of domain objects, as the API answers them: one framework-free module
used by the HTTP handlers, the offline key and audit commands (auth/local.py) and anything
else that must answer exactly like the API. Times are ISO 8601 UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from blixard.domain.access import ApiKey, AuditEvent
from blixard.domain.models import Lock, VersionMeta, Workspace
from blixard.domain.runs import Run


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def human_size(value: int | None, missing: str = "-") -> str:
    """A byte count as people read it (`512 B`, `1.5 MiB`), for the CLI and the web UI."""
    if value is None:
        return missing
    amount = float(value)
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def version_json(meta: VersionMeta) -> dict[str, Any]:
    return {
        "workspace": meta.workspace,
        "version": meta.version,
        "serial": meta.serial,
        "lineage": meta.lineage,
        "size": meta.size,
        "sha256": meta.sha256,
        "md5": meta.md5,
        "created_at": iso(meta.created_at),
        "lock_id": meta.lock_id,
        "terraform_version": meta.terraform_version,
        "resource_count": meta.resource_count,
        "source": meta.source,
        "rolled_back_from": meta.rolled_back_from,
        "written_by": meta.written_by,
        "who": meta.lock_who,
    }


def lock_json(lock: Lock | None) -> dict[str, Any] | None:
    return None if lock is None else lock.holder_fields()


def workspace_json(ws: Workspace) -> dict[str, Any]:
    head = ws.head
    return {
        "name": ws.name,
        "serial": head.serial if head else None,
        "lineage": head.lineage if head else None,
        "version": head.version if head else None,
        "updated_at": iso(ws.updated_at),
        "created_at": iso(ws.created_at),
        "size": head.size if head else None,
        "resource_count": head.resource_count if head else None,
        "terraform_version": head.terraform_version if head else None,
        "locked": ws.lock is not None,
        "lock": lock_json(ws.lock),
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    """Everything about a key except its secret and hash."""
    return {
        "name": key.name,
        "role": key.role.name,
        "workspaces": list(key.scopes),
        "created_at": iso(key.created_at),
        "created_by": key.created_by,
        "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at),
    }


def audit_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "key": event.key_name,
        "role": event.role,
        "source": event.source,
        "action": event.action,
        "workspace": event.workspace,
        "version": event.version,
        "lock_id": event.lock_id,
        "outcome": event.outcome,
        "status": event.status,
        "detail": event.detail,
    }


def run_json(run: Run) -> dict[str, Any]:
    summary = run.summary
    return {
        "plan_id": run.id,
        "workspace": run.workspace,
        "status": run.status.value,
        "created_at": iso(run.created_at),
        "created_by": run.created_by,
        "auto_approve": run.auto_approve,
        "destroy": run.destroy,
        "targets": list(run.targets),
        "variables": sorted(run.variables),  # names only: values may be secrets
        "source": run.source,
        "config_dir": run.config_dir,
        "binary": run.binary,
        "executor": run.executor,  # the node that executes (or last executed) it
        "plan_serial": run.plan_serial,
        "summary": None
        if summary is None
        else {
            "add": summary.add,
            "change": summary.change,
            "destroy": summary.destroy,
            "resource_changes": list(summary.resource_changes),
        },
        "state_version": run.state_version,
        "error": run.error,
        "started_at": iso(run.started_at),
        "planned_at": iso(run.planned_at),
        "apply_started_at": iso(run.apply_started_at),
        "finished_at": iso(run.finished_at),
        "approved_at": iso(run.approved_at),
        "approved_by": run.approved_by,
        "approver_comment": run.approver_comment,
        "discarded_by": run.discarded_by,
        "cancelled_by": run.cancelled_by,
    }
