"""The run lifecycle rules and plan summaries."""

from __future__ import annotations

import pytest

from blixard.domain.runs import (
    PlanSummary,
    Run,
    RunConflict,
    RunStatus,
    StalePlan,
    new_run_id,
    summarize_plan,
)


def queued() -> Run:
    return Run("run-1", "w", RunStatus.queued, 1.0, created_by="ci")


def test_happy_path_plan_approve_apply() -> None:
    run = queued().start_planning("Terraform v1.15.5", 3, "L")
    assert run.status == RunStatus.planning and run.plan_serial == 3
    run = run.planned(PlanSummary(add=1))
    assert run.status == RunStatus.planned and run.finished_at is None
    run = run.approve("admin", "looks good", current_serial=3)
    assert run.approved_by == "admin" and run.approver_comment == "looks good"
    run = run.start_applying().applied(state_version=4)
    assert run.status == RunStatus.applied and run.state_version == 4 and run.finished_at


def test_no_changes_finishes_the_run() -> None:
    run = queued().start_planning("v", None, None).planned(PlanSummary())
    assert run.status == RunStatus.no_changes and run.finished_at is not None
    with pytest.raises(RunConflict):
        run.approve("x", None, None)


def test_stale_plans_are_refused() -> None:
    run = queued().start_planning("v", 3, "L").planned(PlanSummary(change=1))
    with pytest.raises(StalePlan, match=r"serial 3.*serial 4"):
        run.approve("x", None, current_serial=4)


def test_discard_and_cancel_rules() -> None:
    assert queued().discard("a").status == RunStatus.discarded
    planned = queued().start_planning("v", 1, "L").planned(PlanSummary(add=1))
    assert planned.discard("a").discarded_by == "a"
    with pytest.raises(RunConflict):
        queued().start_planning("v", 1, "L").discard("a")
    assert queued().request_cancel("b").status == RunStatus.cancelled
    planning = queued().start_planning("v", 1, "L").request_cancel("b")
    assert planning.status == RunStatus.planning and planning.cancel_requested
    assert planning.cancelled().status == RunStatus.cancelled
    with pytest.raises(RunConflict):
        planned.discard("a").request_cancel("b")


def test_document_round_trip() -> None:
    run = (
        queued()
        .start_planning("v", 1, "L")
        .planned(PlanSummary(1, 2, 3, ({"address": "a.b", "actions": ["create"]},)))
    )
    assert Run.from_document(run.to_document()) == run


def test_summary_counts_like_terraform() -> None:
    plan = {
        "resource_changes": [
            {"address": "a", "change": {"actions": ["create"]}},
            {"address": "b", "change": {"actions": ["update"]}},
            {"address": "c", "change": {"actions": ["delete"]}},
            {"address": "d", "change": {"actions": ["delete", "create"]}},
            {"address": "e", "change": {"actions": ["no-op"]}},
            {"address": "f", "change": {"actions": ["read"]}},
        ]
    }
    summary = summarize_plan(plan)
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 2)
    assert [c["address"] for c in summary.resource_changes] == ["a", "b", "c", "d"]
    assert not summarize_plan({}).has_changes


def test_run_ids_sort_by_time() -> None:
    assert new_run_id(1.0) < new_run_id(2.0)
