"""Group commit for the etcd engine: requests that arrive while a call is in flight go
together as one etcd Txn.

Each etcd request costs the server a gRPC call (~0.3 ms of CPU here) and, for a write, the
members a raft entry and a WAL fsync. So, as the SQLite engine's writer thread commits what
queued behind the transaction in progress, `TxnBatcher` sends a request at once when a lane
is free (no timer, no waiting for company: a lone client's latency is unchanged), and
otherwise queues it; when a call returns, everything queued goes as ONE Txn whose success
ops are, per caller, a nested Txn (its own compares, success and failure ops: etcd decides
each nested Txn on its own) or, for a plain read, the range op itself. All of them share
the top-level header revision, which is the mod_revision of every key the batch puts.
A batch of reads only is a read-only Txn, which etcd answers through ReadIndex (no raft
entry), so reads stay linearizable.

What etcd refuses for the whole Txn, and how a batch avoids it (etcd 3.4,
`etcdserver/api/v3rpc/key.go`):

- a key put twice, or put and deleted, across the nested Txns ("duplicate key given in
  txn request", `checkIntervals`). And every compare of every nested Txn is evaluated
  against the state before the batch (`compareToPath`). So requests whose keys (compared,
  put or deleted) meet never share a batch; the later one waits for the next batch.
- more than `--max-txn-ops` (128) ops in one list (`checkTxnRequest`). A nested Txn is
  one op at its parent's level, and its own lists may hold at most 128 minus its parent's
  longest list (`checkRequestOp(u, maxTxnOps-opc)`; measured: beside 50 ops, a nested
  list of 78 is accepted, 79 refused). So a batch holds at most MAX_BATCH_OPS top-level
  ops, and its ops plus the longest list of any request in it stay within MAX_TXN_OPS
  (an audit append of 33 events with index copies is 99 puts: it shares a batch with at
  most 29 ops); each caller's own lists are valid alone.
- a request larger than `--max-request-bytes` (1.5 MiB): a batch stops at `max_bytes` of
  encoded ops, except that its first request always goes (it was valid alone).
- an op that fails at apply time (a put with a lease that is gone, `ignore_value` on a
  missing key, a range at a compacted revision) fails the whole Txn: callers send such
  requests straight to etcd (`EtcdStore._txn(batch=False)`), as they do leases, watches,
  compaction and snapshot traffic.

A batch that fails at the transport (deadline, UNAVAILABLE) fails every caller in it with
StorageUnavailable, as each would have failed alone; it is never resent, so an unknown
outcome stays unknown. A batch etcd refused as a whole before applying anything (an invalid
request, the NOSPACE alarm, a permission) is split: each request goes again alone, so a
read riding with writes still answers during NOSPACE and one bad request fails only its
caller. Each caller keeps its own deadline: a batch is sent with the
shortest one left, and a request whose deadline passed while queued fails unsent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from blixard.domain.errors import StorageUnavailable
from blixard.store.etcd.conn import grpc_detail

#: Calls in flight at once, each a lone request or a batch. Two made batches smaller and
#: cost more CPU per cycle for no more cycles/s (bench/cycle.py, docs/etcd-notes.md §12).
IN_FLIGHT = 1
#: Encoded bytes of one batch (etcd refuses requests over --max-request-bytes, 1.5 MiB).
MAX_BATCH_BYTES = 1024 * 1024
#: Top-level ops of one batch (etcd's --max-txn-ops is 128 per list).
MAX_BATCH_OPS = 100
#: etcd's --max-txn-ops: a batch's top-level ops plus the longest list of a nested Txn in it.
MAX_TXN_OPS = 128
#: Plain reads in one batch: a version record may be ~700 KiB, and the whole answer must
#: stay well below the client's 64 MiB receive limit.
MAX_BATCH_READS = 32


def unavailable(exc: BaseException) -> StorageUnavailable:
    """What a caller sees when etcd did not answer (the same for a lone call and a batch):
    a gRPC error as `CODE: details` (its str() is a multi-line debug dump)."""
    code, details = grpc_detail(exc)
    if code is None:
        return StorageUnavailable(f"etcd did not answer ({type(exc).__name__}: {exc}).")
    return StorageUnavailable(f"etcd did not answer ({code.name}: {details}).")


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> Any:
    """A put for a Txn's success or failure list (etcd3aio's builder, without its checks)."""
    from blixard.store.etcd.wire import PutRequest, RequestOp

    return RequestOp(request_put=PutRequest(key=key, value=value, lease=lease))


def delete_range_op(key: bytes, range_end: bytes) -> Any:
    """A delete of every key in [key, range_end) for a Txn's success or failure list."""
    from blixard.store.etcd.wire import DeleteRangeRequest, RequestOp

    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=range_end))


def get_op(key: bytes) -> Any:
    """A point read for a Txn's success or failure list."""
    from blixard.store.etcd.wire import RangeRequest, RequestOp

    return RequestOp(request_range=RangeRequest(key=key))


class DirectKV:
    """Txn and point Range sent straight on the gRPC stub of etcd3aio's KV service, with its
    auth metadata. The library's wrapper adds, on every call, an `asyncio.timeout`, a retry
    loop (set to one attempt here), list copies and a request built from parts: 40-100 us of
    CPU and up to 0.1-0.3 ms of latency per call at one call in flight, on the path of every
    LOCK, GET, POST and UNLOCK. Errors are raw `grpc.aio.AioRpcError`s, which every caller
    maps (`unavailable`, `_refused`)."""

    __slots__ = ("_range", "_service", "_txn")

    def __init__(self, service: Any) -> None:
        from blixard.store.etcd.wire import stub_range, stub_txn

        self._service = service
        self._txn = stub_txn
        self._range = stub_range

    def txn(self, request: Any, timeout: float) -> Awaitable[Any]:
        return self._txn(self._service, request, timeout)

    def range(self, request: Any, timeout: float) -> Awaitable[Any]:
        return self._range(self._service, request, timeout)


def _transport_errors() -> tuple[type[BaseException], ...]:
    import grpc
    from etcd3aio.errors import EtcdError

    # etcd3aio re-raises the gRPC codes it does not map (e.g. a request too large).
    return (TimeoutError, EtcdError, grpc.aio.AioRpcError)


def _refused(exc: BaseException) -> bool:
    """Did etcd refuse the request as a whole, before applying any of it?

    Validation (too many ops, duplicate keys, too large), the NOSPACE alarm and the checks a
    Txn passes before its first write (a lease or key that is gone, a compacted revision)
    answer these codes; a deadline or UNAVAILABLE leaves the outcome unknown."""
    import grpc
    from etcd3aio.errors import EtcdPermissionDeniedError

    if isinstance(exc, EtcdPermissionDeniedError):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
    )


#: How a caller's part of a batch answer becomes what its lone call would have returned.
_NESTED, _RANGE, _READS = 0, 1, 2


@dataclass(eq=False, slots=True)
class _Waiter:
    """One queued request."""

    alone: Callable[[float], Awaitable[Any]]
    ops: list[Any]
    kind: int
    size: int
    deadline: float
    future: asyncio.Future[Any]
    #: The longest list (compare, success, failure) of its nested Txn; 0 for reads.
    width: int = 0
    points: set[bytes] = field(default_factory=set)
    spans: list[tuple[bytes, bytes]] = field(default_factory=list)


def _end(range_end: bytes) -> bytes | None:
    """A range end as an exclusive bound; None = no bound (etcd's b"\\x00": every key after)."""
    return None if range_end == b"\x00" else range_end


def _overlap(a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> bool:
    a_end, b_end = _end(a[1]), _end(b[1])
    return (b_end is None or a[0] < b_end) and (a_end is None or b[0] < a_end)


def _in(point: bytes, span: tuple[bytes, bytes]) -> bool:
    end = _end(span[1])
    return span[0] <= point and (end is None or point < end)


def _touched(compare: Iterable[Any], ops: Iterable[Any], waiter: _Waiter) -> None:
    """Collect the keys a request compares, puts or deletes (reads never conflict)."""
    for c in compare:
        if c.range_end:
            waiter.spans.append((bytes(c.key), bytes(c.range_end)))
        else:
            waiter.points.add(bytes(c.key))
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_put":
            waiter.points.add(bytes(op.request_put.key))
        elif which == "request_delete_range":
            d = op.request_delete_range
            if d.range_end:
                waiter.spans.append((bytes(d.key), bytes(d.range_end)))
            else:
                waiter.points.add(bytes(d.key))
        elif which == "request_txn":
            t = op.request_txn
            _touched(t.compare, t.success, waiter)
            _touched((), t.failure, waiter)


class _Batch:
    """The requests gathered for one Txn, and the keys they touch."""

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []
        self.points: set[bytes] = set()
        self.spans: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.ops = 0
        self.reads = 0
        self.width = 0

    def conflicts(self, w: _Waiter) -> bool:
        if not self.points.isdisjoint(w.points):
            return True
        if not self.spans and not w.spans:
            return False
        return (
            any(_in(p, s) for p in w.points for s in self.spans)
            or any(_in(p, s) for p in self.points for s in w.spans)
            or any(_overlap(a, b) for a in w.spans for b in self.spans)
        )

    def fits(self, w: _Waiter) -> bool:
        if not self.waiters:
            return True
        reads = self.reads + (w.kind != _NESTED) * len(w.ops)
        ops = self.ops + len(w.ops)
        return (
            ops <= MAX_BATCH_OPS
            and ops + max(self.width, w.width) <= MAX_TXN_OPS
            and self.size + w.size <= MAX_BATCH_BYTES
            and reads <= MAX_BATCH_READS
            and not self.conflicts(w)
        )

    def add(self, w: _Waiter) -> None:
        self.waiters.append(w)
        self.points |= w.points
        self.spans += w.spans
        self.size += w.size
        self.ops += len(w.ops)
        self.width = max(self.width, w.width)
        if w.kind != _NESTED:
            self.reads += len(w.ops)


class TxnBatcher:
    """Sends Txns and point reads to etcd, batching those that queue behind calls in flight."""

    def __init__(self, kv: DirectKV, *, timeout: float) -> None:
        self._kv = kv
        self.timeout = timeout
        self._busy = 0
        self._queue: deque[_Waiter] = deque()
        self._drains: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Batches of more than one request sent, and the requests in them (for tests/bench).
        self.batches = 0
        self.batched = 0
        #: Batches etcd refused as a whole, whose requests were then sent alone.
        self.refused = 0

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]
    ) -> Any:
        """What a Txn of (compare, success, failure) answers, possibly as part of a batch."""
        from blixard.store.etcd.wire import RequestOp, TxnRequest

        kv = self._kv
        request = TxnRequest(compare=compare, success=success, failure=failure)
        if self._free():
            return await self._lone(kv.txn(request, self.timeout))
        if not compare and all(op.WhichOneof("request") == "request_range" for op in success):
            ops, kind = list(success), _READS
        else:
            ops, kind = [RequestOp(request_txn=request)], _NESTED

        def alone(timeout: float) -> Awaitable[Any]:
            return kv.txn(request, timeout)

        waiter = self._waiter(alone, ops, kind)
        if kind == _NESTED:
            waiter.width = max(len(compare), len(success), len(failure))
            _touched(compare, success, waiter)
            _touched((), failure, waiter)
        return await self._queued(waiter)

    async def get(self, key: bytes) -> Any:
        """What a linearizable point read of `key` answers, possibly batched."""
        from blixard.store.etcd.wire import RangeRequest

        kv = self._kv
        request = RangeRequest(key=key)
        if self._free():
            return await self._lone(kv.range(request, self.timeout))

        def alone(timeout: float) -> Awaitable[Any]:
            return kv.range(request, timeout)

        return await self._queued(self._waiter(alone, [get_op(key)], _RANGE))

    def close(self) -> None:
        """Fail what is queued and stop the drains (the store is closing)."""
        self._closed = True
        while self._queue:
            w = self._queue.popleft()
            if not w.future.done():
                w.future.set_exception(StorageUnavailable("The store is not open."))
        for task in list(self._drains):
            task.cancel()

    # -- internals -----------------------------------------------------------------------

    def _free(self) -> bool:
        """Take a lane for a lone call if one is free and nothing waits before this one."""
        if self._busy < IN_FLIGHT and not self._queue:
            self._busy += 1
            return True
        return False

    async def _lone(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        finally:
            self._release()

    def _release(self) -> None:
        """A lane is free: hand it to a drain if requests are queued."""
        if self._queue and not self._closed:
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:
            self._busy -= 1

    def _waiter(
        self, alone: Callable[[float], Awaitable[Any]], ops: list[Any], kind: int
    ) -> _Waiter:
        loop = asyncio.get_running_loop()
        return _Waiter(
            alone,
            ops,
            kind,
            sum(op.ByteSize() for op in ops),
            loop.time() + self.timeout,
            loop.create_future(),
        )

    async def _queued(self, waiter: _Waiter) -> Any:
        if self._closed:
            raise StorageUnavailable("The store is not open.")
        self._queue.append(waiter)
        return await waiter.future

    async def _drain(self) -> None:
        """Send what is queued, batch after batch, then give the lane back."""
        try:
            while self._queue and not self._closed:
                batch = self._take()
                if batch.waiters:
                    await self._send(batch.waiters)
        finally:
            self._busy -= 1

    def _take(self) -> _Batch:
        """The next batch, in queue order; requests that do not fit keep their place."""
        now = asyncio.get_running_loop().time()
        batch, kept = _Batch(), deque[_Waiter]()
        while self._queue:
            w = self._queue.popleft()
            if w.future.done():  # its caller was cancelled while it waited
                continue
            if w.deadline <= now:
                w.future.set_exception(
                    StorageUnavailable("etcd did not answer in time (the request was not sent).")
                )
                continue
            if batch.fits(w):
                batch.add(w)
            else:
                kept.append(w)
        self._queue = kept
        return batch

    async def _send(self, waiters: list[_Waiter]) -> None:
        timeout = min(w.deadline for w in waiters) - asyncio.get_running_loop().time()
        if timeout <= 0:  # only after a refused batch: the lone resend has no time left
            for w in waiters:
                if not w.future.done():
                    w.future.set_exception(StorageUnavailable("etcd did not answer in time."))
            return
        try:
            if len(waiters) == 1:
                answers = [await waiters[0].alone(timeout)]
            else:
                self.batches += 1
                self.batched += len(waiters)
                from blixard.store.etcd.wire import TxnRequest

                request = TxnRequest(success=[op for w in waiters for op in w.ops])
                answers = self._split(waiters, await self._kv.txn(request, timeout))
        except BaseException as exc:
            if len(waiters) > 1 and _refused(exc):
                # Nothing of the batch applied: each request again alone, so each caller
                # gets what it would have got alone (a read during NOSPACE still answers).
                self.refused += 1
                await asyncio.gather(*(self._send([w]) for w in waiters))
                return
            transport = isinstance(exc, _transport_errors())
            closing = isinstance(exc, asyncio.CancelledError)
            for w in waiters:
                if not w.future.done():
                    if closing:
                        w.future.set_exception(StorageUnavailable("The store is not open."))
                    else:  # each caller its own exception, as its lone call would raise
                        w.future.set_exception(unavailable(exc) if transport else exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for w, answer in zip(waiters, answers, strict=True):
            if not w.future.done():
                w.future.set_result(answer)

    @staticmethod
    def _split(waiters: list[_Waiter], resp: Any) -> list[Any]:
        """Each caller's answer from a batch's, shaped as its lone call's would be."""
        from blixard.store.etcd.wire import TxnResponse

        answers: list[Any] = []
        header, responses, i = resp.header, resp.responses, 0
        for w in waiters:
            n = len(w.ops)
            if w.kind == _NESTED:
                answer = responses[i].response_txn
                answer.header.CopyFrom(header)
            elif w.kind == _RANGE:
                answer = responses[i].response_range
                answer.header.CopyFrom(header)
            else:
                answer = TxnResponse(header=header, succeeded=True, responses=responses[i : i + n])
            answers.append(answer)
            i += n
        return answers
