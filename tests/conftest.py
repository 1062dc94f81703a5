"""What every test shares: the event loop async tests run on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


def stale_grpc_completion(context: dict[str, Any]) -> bool:
    """A gRPC completion for a loop an earlier test closed, reaching this test's loop.

    gRPC's asyncio layer hands each completion to the loop that started the call. A call
    cancelled as a store closed (its watch, say) can complete in gRPC's core after that
    test's loop is gone; the next loop to poll gRPC then fails to forward it ("Event loop
    is closed"). Only a process that runs loops one after another sees this, as pytest does
    with a loop per test; the server runs one loop for its life (the preflight included).
    The completion belongs to a call nobody waits for, so nothing of this test is lost."""
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    exception = context.get("exception")
    return (
        isinstance(exception, RuntimeError)
        and str(exception) == "Event loop is closed"
        and getattr(callback, "__qualname__", "") == "PollerCompletionQueue._handle_events"
    )


class GrpcAwareLoop(asyncio.SelectorEventLoop):
    """The default loop, which does not count a stale gRPC completion as this test's error
    (anyio's runner fails a test on any exception raised in a callback of its loop)."""

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if stale_grpc_completion(context):
            return
        super().call_exception_handler(context)


@pytest.fixture(scope="module")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"loop_factory": GrpcAwareLoop}
