"""The one module that reaches into etcd3aio's private parts: its protobuf messages (the
library builds Txns only from its own op objects, with checks we do not need on the hot
path) and the gRPC stub and auth metadata of its KV service (DirectKV in batch.py calls the
stub directly). An etcd3aio upgrade that moves them breaks here and nowhere else.

Imported lazily (inside functions), as etcd3aio is: gRPC reads its settings once, when it is
first imported, after conn.py has set them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

from etcd3aio._protobuf import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
    WatchRequest,
)

__all__ = [
    "Compare",
    "DeleteRangeRequest",
    "PutRequest",
    "RangeRequest",
    "RequestOp",
    "TxnRequest",
    "TxnResponse",
    "WatchCreateRequest",
    "WatchRequest",
    "stub_range",
    "stub_txn",
    "stub_watch",
]


def stub_txn(service: Any, request: Any, timeout: float) -> Awaitable[Any]:
    """Txn on the KV service's gRPC stub, with its current auth metadata (a renewed token
    replaces it, so it is read on every call)."""
    call: Awaitable[Any] = service._stub.Txn(
        request, metadata=service._metadata or None, timeout=timeout
    )
    return call


def stub_range(service: Any, request: Any, timeout: float) -> Awaitable[Any]:
    """Range on the KV service's gRPC stub, as stub_txn."""
    call: Awaitable[Any] = service._stub.Range(
        request, metadata=service._metadata or None, timeout=timeout
    )
    return call


def stub_watch(service: Any, requests: AsyncIterator[Any], *, require_leader: bool = False) -> Any:
    """A Watch stream on the watch service's gRPC stub, fed by `requests` (the caller ends
    the request side before cancelling the call, so gRPC has no waiting iterator to cancel).
    With `require_leader` (etcd's `hasleader` metadata, as clientv3.WithRequireLeader), a
    member that loses its leader cancels the stream instead of keeping it open and silent."""
    metadata = tuple(service._metadata) + ((("hasleader", "true"),) if require_leader else ())
    return service._stub.Watch(requests, metadata=metadata or None)
