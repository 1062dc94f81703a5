"""The reindex runner both engines share: its status through a pass that completes, one that
fails part-way, and a forced pass that replaces one in progress. The engines' own plans (what
is stale, how a document is built) run in tests/store/test_engine_suite.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from blixard.store.resource_index import Reindexer, ReindexPlan

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: the browser tests' Playwright keeps an event loop
    running on the main thread for the whole session, and asyncio.run refuses to start there."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Plans:
    """Plans over the workspaces `names`, recording what each pass built; building `fail_on`
    raises, and building anything waits for `gate` when one is set."""

    def __init__(self, names: list[str], fail_on: str | None = None) -> None:
        self.names, self.fail_on = names, fail_on
        self.passes = 0
        self.built: list[tuple[bool, str]] = []
        self.completed: list[bool] = []
        self.gate: asyncio.Event | None = None

    async def plan(self, force: bool) -> ReindexPlan[str]:
        self.passes += 1

        async def listed() -> AsyncIterator[str]:
            for name in self.names:
                yield name

        async def index_one(name: str) -> None:
            if self.gate is not None:
                await self.gate.wait()
            if name == self.fail_on:
                raise OSError(f"cannot read {name}")
            self.built.append((force, name))

        async def on_complete() -> None:
            self.completed.append(force)

        return ReindexPlan(len(self.names), listed(), index_one, on_complete)


def test_a_pass_builds_every_listed_document_and_reports_it() -> None:
    async def scenario() -> None:
        plans = Plans(["a", "b", "c"])
        reindexer = Reindexer("test", plans.plan)
        reindexer.start()
        assert reindexer.status.running and not reindexer.status.complete
        await reindexer.wait()
        status = reindexer.status
        assert status.complete and not status.running and status.error is None
        assert (status.indexed, status.remaining) == (3, 0)
        assert plans.built == [(False, "a"), (False, "b"), (False, "c")]
        assert plans.completed == [False]

    run(scenario())


def test_a_failed_pass_reports_its_error_and_is_not_complete() -> None:
    """In the background the error is logged and reported, never raised; awaited, it raises."""

    async def scenario() -> None:
        plans = Plans(["a", "b", "c"], fail_on="b")
        reindexer = Reindexer("test", plans.plan)
        reindexer.start()
        await reindexer.wait()
        status = reindexer.status
        assert not status.complete and not status.running
        assert status.error == "cannot read b"
        assert (status.indexed, status.remaining) == (1, 2)
        assert plans.built == [(False, "a")] and plans.completed == []
        with pytest.raises(OSError, match="cannot read b"):
            await reindexer.run()
        assert reindexer.status.error == "cannot read b"
        plans.fail_on = None
        assert (await reindexer.run()).complete
        assert reindexer.status.error is None

    run(scenario())


async def start_twice(force: bool) -> tuple[Plans, Reindexer]:
    """A pass started, then another (forced or not) while the first waits on a document."""
    plans = Plans(["a", "b"])
    plans.gate = asyncio.Event()
    reindexer = Reindexer("test", plans.plan)
    reindexer.start()
    await asyncio.sleep(0)
    reindexer.start(force=force)
    plans.gate.set()
    await reindexer.wait()
    await reindexer.stop()
    return plans, reindexer


@pytest.mark.parametrize("force", [False, True])
def test_a_start_during_a_pass_replaces_it_only_when_forced(force: bool) -> None:
    plans, reindexer = run(start_twice(force))
    assert plans.passes == (2 if force else 1)
    assert plans.built == [(force, "a"), (force, "b")] and plans.completed == [force]
    assert reindexer.status.complete and reindexer.status.indexed == 2
