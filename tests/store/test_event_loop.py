"""The loop async tests run on (tests/conftest.py) drops exactly gRPC's stale completions and
reports every other error. Here, not in unit/: the browser tests keep a loop running on the
main thread, and async tests after them cannot run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc._cython import cygrpc

from tests.conftest import GrpcAwareLoop


def _handled(context: dict[str, Any]) -> list[dict[str, Any]]:
    loop = GrpcAwareLoop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: seen.append(ctx))
    try:
        loop.call_exception_handler(context)
    finally:
        loop.close()
    return seen


class _Handle:
    def __init__(self, callback: Any) -> None:
        self._callback = callback


def test_a_stale_grpc_completion_is_dropped() -> None:
    stale = {
        "exception": RuntimeError("Event loop is closed"),
        "handle": _Handle(cygrpc.PollerCompletionQueue._handle_events),
    }
    assert _handled(stale) == []


def test_other_errors_reach_the_handler() -> None:
    def elsewhere() -> None: ...

    cases = [
        {"exception": RuntimeError("Event loop is closed"), "handle": _Handle(elsewhere)},
        {
            "exception": ValueError("Event loop is closed"),
            "handle": _Handle(cygrpc.PollerCompletionQueue._handle_events),
        },
        {
            "exception": RuntimeError("something else"),
            "handle": _Handle(cygrpc.PollerCompletionQueue._handle_events),
        },
        {"message": "no exception at all"},
    ]
    for context in cases:
        assert _handled(context) == [context]


@pytest.mark.anyio
async def test_async_tests_run_on_it() -> None:
    assert isinstance(asyncio.get_running_loop(), GrpcAwareLoop)
