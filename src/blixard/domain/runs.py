"""Runs: a plan of a workspace's configuration, reviewed, then applied exactly as planned.

The lifecycle is  queued → planning → planned | no_changes | errored, and from planned,
applying → applied | errored (after approval, or at once with auto_approve). Queued and
planned runs may be discarded; queued, planning and applying runs may be cancelled.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from blixard.domain.errors import Conflict


class RunStatus(StrEnum):
    queued = "queued"
    planning = "planning"
    planned = "planned"
    no_changes = "no_changes"
    applying = "applying"
    applied = "applied"
    errored = "errored"
    discarded = "discarded"
    cancelled = "cancelled"


#: A process of ours is working on the run.
EXECUTING = frozenset({RunStatus.planning, RunStatus.applying})
#: Nothing more will happen to the run.
FINISHED = frozenset(
    {
        RunStatus.no_changes,
        RunStatus.applied,
        RunStatus.errored,
        RunStatus.discarded,
        RunStatus.cancelled,
    }
)
#: Waiting or executing: the runs a sweep looks at (the engines index them by status).
OPEN = frozenset(RunStatus) - FINISHED


class RunConflict(Conflict):
    code = "run_conflict"


class StalePlan(Conflict):
    code = "stale_plan"


@dataclass(frozen=True, slots=True)
class PlanSummary:
    add: int = 0
    change: int = 0
    destroy: int = 0
    resource_changes: tuple[dict[str, Any], ...] = ()

    @property
    def has_changes(self) -> bool:
        return bool(self.add or self.change or self.destroy)


def summarize_plan(plan_json: dict[str, Any]) -> PlanSummary:
    """Counts as Terraform prints them ("N to add, N to change, N to destroy")."""
    add = change = destroy = 0
    changes = []
    for resource in plan_json.get("resource_changes") or []:
        actions = list((resource.get("change") or {}).get("actions") or [])
        if actions in (["no-op"], ["read"], []):
            continue
        if "create" in actions:
            add += 1
        if "delete" in actions:
            destroy += 1
        if actions == ["update"]:
            change += 1
        changes.append({"address": resource.get("address"), "actions": actions})
    return PlanSummary(add, change, destroy, tuple(changes))


def new_run_id(now: float) -> str:
    """Sortable by creation time, unguessable: 'run-' + ms timestamp + 64 random bits."""
    return f"run-{int(now * 1000):012x}{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    workspace: str
    status: RunStatus
    created_at: float
    revision: int = 0
    created_by: str | None = None
    destroy: bool = False
    auto_approve: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    source: str = "archive"  # "archive" (uploaded) or "dir" (config_dir under a plan root)
    config_dir: str | None = None
    binary: str | None = None
    plan_serial: int | None = None  # the workspace's serial the plan was made against
    plan_lineage: str | None = None
    summary: PlanSummary | None = None
    state_version: int | None = None  # the version the apply wrote
    error: str | None = None
    started_at: float | None = None
    planned_at: float | None = None
    apply_started_at: float | None = None
    finished_at: float | None = None
    approved_at: float | None = None
    approved_by: str | None = None
    approver_comment: str | None = None
    discarded_by: str | None = None
    cancelled_by: str | None = None
    cancel_requested: bool = False
    process_group: str | None = None  # "<boot id>:<pgid>" of the step executing now
    executor: str | None = None  # the node executing (or last executing) the run

    @property
    def credential_name(self) -> str:
        """The name of the short-lived key the run's Terraform uses (seen in history/audit)."""
        return f"run:{self.id}"

    def to_document(self) -> dict[str, Any]:
        document = asdict(self)
        document["status"] = self.status.value
        document["targets"] = list(self.targets)
        if self.summary is not None:
            document["summary"]["resource_changes"] = list(self.summary.resource_changes)
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Run:
        values = dict(document)
        values["status"] = RunStatus(values["status"])
        values["targets"] = tuple(values.get("targets") or ())
        summary = values.get("summary")
        if summary is not None:
            values["summary"] = PlanSummary(
                summary["add"],
                summary["change"],
                summary["destroy"],
                tuple(summary.get("resource_changes") or ()),
            )
        return cls(**values)

    # -- transitions (each returns the next Run or raises RunConflict) ----------------

    def _expect(self, allowed: set[RunStatus] | frozenset[RunStatus], doing: str) -> None:
        if self.status not in allowed:
            raise RunConflict(f"Run {self.id} is {self.status.value}; cannot {doing} it.")

    def start_planning(self, binary: str, serial: int | None, lineage: str | None) -> Run:
        self._expect({RunStatus.queued}, "plan")
        return replace(
            self,
            status=RunStatus.planning,
            binary=binary,
            plan_serial=serial,
            plan_lineage=lineage,
            started_at=time.time(),
        )

    def planned(self, summary: PlanSummary) -> Run:
        self._expect({RunStatus.planning}, "finish planning")
        status = RunStatus.planned if summary.has_changes else RunStatus.no_changes
        finished = None if summary.has_changes else time.time()
        return replace(
            self, status=status, summary=summary, planned_at=time.time(), finished_at=finished
        )

    def approve(self, approver: str | None, comment: str | None, current_serial: int | None) -> Run:
        self._expect({RunStatus.planned}, "apply")
        if current_serial != self.plan_serial:
            raise StalePlan(
                f"Run {self.id} was planned against serial {self.plan_serial}, but workspace "
                f"'{self.workspace}' is now at serial {current_serial}: plan again."
            )
        return replace(
            self, approved_at=time.time(), approved_by=approver, approver_comment=comment
        )

    def start_applying(self) -> Run:
        self._expect({RunStatus.planned}, "apply")
        return replace(self, status=RunStatus.applying, apply_started_at=time.time())

    def applied(self, state_version: int | None) -> Run:
        self._expect({RunStatus.applying}, "finish applying")
        return replace(
            self, status=RunStatus.applied, state_version=state_version, finished_at=time.time()
        )

    def failed(self, reason: str) -> Run:
        self._expect(EXECUTING | {RunStatus.queued, RunStatus.planned}, "fail")
        return replace(self, status=RunStatus.errored, error=reason, finished_at=time.time())

    def discard(self, who: str | None) -> Run:
        self._expect({RunStatus.queued, RunStatus.planned}, "discard")
        return replace(self, status=RunStatus.discarded, discarded_by=who, finished_at=time.time())

    def request_cancel(self, who: str | None) -> Run:
        self._expect(EXECUTING | {RunStatus.queued}, "cancel")
        if self.status == RunStatus.queued:
            return replace(
                self, status=RunStatus.cancelled, cancelled_by=who, finished_at=time.time()
            )
        return replace(self, cancel_requested=True, cancelled_by=who)

    def cancelled(self) -> Run:
        self._expect(EXECUTING, "cancel")
        return replace(self, status=RunStatus.cancelled, finished_at=time.time())
