"""Compare etcd v3 clients for the etcd engine: features and latency on a 3-member cluster.

For each client, in its own subprocess (so that protobuf implementations and CPU figures
do not mix), against the same cluster:

  features  Txn compared on mod_revision (success and failure branch), lease grant +
            keep-alive + a key bound to it, a prefix watch delivering an event, a prefix
            range with a limit (`more` and `count`)
  cas       a compare-and-swap Txn: compare mod_revision(key) == expected, put ~200 B
  append    a Blixard-like append: compare one key's mod_revision, put four keys
            (~200 B record, ~200 B head, ~200 B audit, 100 KiB state chunk)
  put1m     a plain put of a 1 MiB value

each sequentially (1 in flight) and 8-way concurrent (8 in flight, each on its own keys),
printing p50/p99 latency, ops/s and the client's own CPU per operation (what an API node
would spend). Figures only; nothing is asserted.

    python bench/etcd_client.py                        # starts its own 3-member cluster
    python bench/etcd_client.py --clients gateway-httpx,etcd3aio --ops 500
    python bench/etcd_client.py --endpoints http://127.0.0.1:2379,...   # an existing one
    python bench/etcd_client.py --failover             # SIGKILL the leader under a CAS loop

--failover starts its own cluster, runs a sequential CAS loop through a client that knows
all three endpoints, SIGKILLs the leader after 2 s and prints how long writes stalled, how
many calls failed and the latency once the new leader serves (etcd3aio: gRPC round-robin
over the endpoints; gateway-httpx: moves to the next endpoint after a failed call).

Clients (each skipped with a note when its package is not installed; the gRPC ones need
`pip install etcd3aio etcd-sdk-python protobuf etcd3 etcd3gw`, the gateway ones only httpx):

  gateway-httpx   etcd's v3 JSON gateway (POST /v3/...) over httpx.AsyncClient, HTTP/1.1
                  keep-alive, orjson (HTTP/2 is not offered on a plain-text client port:
                  the gateway answers h2c with PROTOCOL_ERROR; over TLS it negotiates h2)
  gateway-raw     the same JSON over bench/_http.py's minimal asyncio HTTP/1.1 client
                  (shows what httpx itself costs)
  etcd3aio        grpc.aio, native asyncio
  etcd-sdk-python pyetcd, python-etcd3's maintained fork (sync gRPC, run in threads)
  etcd3           python-etcd3 0.12 (sync gRPC; imports only with the pure-Python protobuf,
                  PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python, which this script sets)
  etcd3gw         the JSON gateway through requests (sync, run in threads)

Every client talks to one member (by default a follower, the common case for a node in a
3-member cluster; --target leader to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(HERE), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

CLIENTS = ("gateway-httpx", "gateway-raw", "etcd3aio", "etcd-sdk-python", "etcd3", "etcd3gw")
SMALL = b"r" * 200
CHUNK = os.urandom(100 * 1024)
BIG = os.urandom(1 << 20)
CONCURRENCY = 8


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "127.0.0.1", parts.port or 2379


# -- adapters: one small async interface over every client ---------------------------------


class Adapter:
    """cas/append return the new mod_revision of the compared key, or None if the compare
    failed; put returns the store revision; modrev returns a key's mod_revision (0 if
    absent). `features` returns a verdict per feature."""

    name = ""
    mode = "asyncio"

    async def open(self, endpoint: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def cas(self, key: bytes, expect: int, value: bytes) -> int | None:
        raise NotImplementedError

    async def append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        raise NotImplementedError

    async def put(self, key: bytes, value: bytes) -> int:
        raise NotImplementedError

    async def modrev(self, key: bytes) -> int:
        raise NotImplementedError

    async def features(self, prefix: bytes) -> dict[str, str]:
        return {}


class GatewayAdapter(Adapter):
    """The v3 JSON gateway: int64 as strings, bytes as base64, false/zero fields omitted."""

    name = "gateway-httpx"

    async def open(self, endpoint: str) -> None:
        import httpx
        import orjson

        self._dumps = orjson.dumps
        self._loads = orjson.loads
        self.endpoint = endpoint
        self._client = httpx.AsyncClient(
            base_url=endpoint,
            timeout=10.0,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post(
            f"/v3/{path}",
            content=self._dumps(body),
            headers={"content-type": "application/json"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"/v3/{path}: {response.status_code} {response.text[:200]}")
        data: dict[str, Any] = self._loads(response.content)
        return data

    def _txn(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        return {
            "compare": [
                {"target": "MOD", "result": "EQUAL", "key": b64(key), "mod_revision": expect}
            ],
            "success": [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in puts],
            "failure": [{"request_range": {"key": b64(key)}}],
        }

    async def cas(self, key: bytes, expect: int, value: bytes) -> int | None:
        return await self.append(key, expect, [(key, value)])

    async def append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        data = await self.call("kv/txn", self._txn(key, expect, puts))
        if not data.get("succeeded"):
            return None
        return int(data["header"]["revision"])

    async def put(self, key: bytes, value: bytes) -> int:
        data = await self.call("kv/put", {"key": b64(key), "value": b64(value)})
        return int(data["header"]["revision"])

    async def modrev(self, key: bytes) -> int:
        kvs = (await self.call("kv/range", {"key": b64(key)})).get("kvs") or []
        return int(kvs[0]["mod_revision"]) if kvs else 0

    async def features(self, prefix: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        key = prefix + b"txn"
        rev = await self.put(key, b"1")
        ok = await self.cas(key, rev, b"2")
        stale = await self.cas(key, rev, b"3")
        out["txn_mod_revision"] = "yes" if ok and stale is None else f"NO ({ok}, {stale})"

        lease = await self.call("lease/grant", {"TTL": 5})
        lease_id = lease["ID"]
        kept = await self.call("lease/keepalive", {"ID": lease_id})
        await self.call("kv/put", {"key": b64(prefix + b"leased"), "value": "", "lease": lease_id})
        ttl = await self.call("lease/timetolive", {"ID": lease_id, "keys": True})
        ok_lease = int(kept["result"]["TTL"]) == 5 and len(ttl.get("keys") or []) == 1
        out["lease_keepalive"] = "yes (one POST per refresh)" if ok_lease else "NO"
        await self.call("lease/revoke", {"ID": lease_id})

        out["watch"] = await self._watch_probe(prefix)

        for i in range(5):
            await self.put(prefix + b"r/%d" % i, b"x")
        rng = await self.call(
            "kv/range",
            {"key": b64(prefix + b"r/"), "range_end": b64(prefix_end(prefix + b"r/")), "limit": 2},
        )
        ok_range = len(rng.get("kvs") or []) == 2 and rng.get("more") and rng["count"] == "5"
        out["range_prefix_limit"] = "yes" if ok_range else f"NO ({rng})"
        return out

    async def _watch_probe(self, prefix: bytes) -> str:
        import httpx

        body = {
            "create_request": {
                "key": b64(prefix + b"w/"),
                "range_end": b64(prefix_end(prefix + b"w/")),
            }
        }
        async with (
            httpx.AsyncClient(base_url=self.endpoint, timeout=10.0) as client,
            client.stream("POST", "/v3/watch", content=json.dumps(body)) as response,
        ):
            lines = response.aiter_lines()
            created = json.loads(await anext(lines))
            if not created["result"].get("created"):
                return f"NO ({created})"
            await self.put(prefix + b"w/x", b"1")
            async with asyncio.timeout(5):
                event = json.loads(await anext(lines))
        events = event["result"].get("events") or []
        return "yes (streamed JSON lines)" if events else f"NO ({event})"


class GatewayRawAdapter(GatewayAdapter):
    name = "gateway-raw"

    async def open(self, endpoint: str) -> None:
        import orjson
        from _http import HttpConnection

        self._dumps = orjson.dumps
        self._loads = orjson.loads
        self.endpoint = endpoint
        self._pool: list[Any] = [HttpConnection(endpoint) for _ in range(CONCURRENCY)]
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        for conn in self._pool:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._pool:
            await conn.close()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = await self._free.get()
        try:
            response = await conn.request(
                "POST", f"/v3/{path}", self._dumps(body), {"content-type": "application/json"}
            )
        finally:
            self._free.put_nowait(conn)
        if response.status != 200:
            raise RuntimeError(f"/v3/{path}: {response.status} {response.body[:200]!r}")
        data: dict[str, Any] = self._loads(response.body)
        return data

    async def features(self, prefix: bytes) -> dict[str, str]:
        return {"note": "same protocol as gateway-httpx"}


class Etcd3aioAdapter(Adapter):
    name = "etcd3aio"

    async def open(self, endpoint: str) -> None:
        from etcd3aio import Etcd3Client
        from etcd3aio._protobuf import Compare

        self._compare = Compare
        # Several comma-separated endpoints: gRPC round-robin over them.
        targets = ["{}:{}".format(*host_port(e)) for e in endpoint.split(",")]
        # rpc_max_attempts=1: the library retries UNAVAILABLE/DEADLINE_EXCEEDED by default,
        # which for a Txn can turn "applied but the answer was lost" into a false conflict.
        self._client = Etcd3Client(targets, rpc_max_attempts=1)
        await self._client.connect()
        assert self._client.kv is not None
        self.kv = self._client.kv

    async def close(self) -> None:
        await self._client.close()

    async def cas(self, key: bytes, expect: int, value: bytes) -> int | None:
        return await self.append(key, expect, [(key, value)])

    async def append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        compare = self._compare(
            result=self._compare.EQUAL, target=self._compare.MOD, key=key, mod_revision=expect
        )
        resp = await self.kv.txn(
            [compare],
            [self.kv.txn_op_put(k, v) for k, v in puts],
            [self.kv.txn_op_get(key)],
            timeout=10,
        )
        return int(resp.header.revision) if resp.succeeded else None

    async def put(self, key: bytes, value: bytes) -> int:
        return int((await self.kv.put(key, value, timeout=10)).header.revision)

    async def modrev(self, key: bytes) -> int:
        resp = await self.kv.get(key, timeout=10)
        return int(resp.kvs[0].mod_revision) if resp.kvs else 0

    async def features(self, prefix: bytes) -> dict[str, str]:
        from etcd3aio import prefix_range_end

        out: dict[str, str] = {}
        key = prefix + b"txn"
        rev = await self.put(key, b"1")
        ok = await self.cas(key, rev, b"2")
        stale = await self.cas(key, rev, b"3")
        out["txn_mod_revision"] = (
            "yes (Compare built by hand: no mod_revision helper)" if ok and stale is None else "NO"
        )
        lease_api = self._client.lease
        assert lease_api is not None
        grant = await lease_api.grant(5)
        call = lease_api.keep_alive(grant.ID)
        first = None
        async for reply in call:
            first = reply
            break
        call.cancel()
        await self.kv.put(prefix + b"leased", b"", lease=grant.ID)
        ttl = await lease_api.time_to_live(grant.ID, keys=True)
        ok_lease = first is not None and first.TTL == 5 and len(ttl.keys) == 1
        out["lease_keepalive"] = "yes (stream + keep_alive_context)" if ok_lease else "NO"
        await lease_api.revoke(grant.ID)

        watch_api = self._client.watch
        assert watch_api is not None
        stream = watch_api.watch(prefix + b"w/", prefix_range_end(prefix + b"w/"))
        got = "NO"

        async def consume() -> None:
            nonlocal got
            async for response in stream:
                if response.events:
                    got = "yes (auto-reconnect; a compacted start is a canceled response to handle)"
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        await self.put(prefix + b"w/x", b"1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)
        out["watch"] = got

        for i in range(5):
            await self.put(prefix + b"r/%d" % i, b"x")
        rng = await self.kv.get(prefix + b"r/", prefix_range_end(prefix + b"r/"), limit=2)
        ok_range = len(rng.kvs) == 2 and rng.more and rng.count == 5
        out["range_prefix_limit"] = "yes" if ok_range else "NO"
        return out


class ThreadedAdapter(Adapter):
    """Sync clients: each call runs in a thread pool of CONCURRENCY threads."""

    mode = "threads"

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(CONCURRENCY)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)


class Python3EtcdAdapter(ThreadedAdapter):
    """python-etcd3's API (etcd3 and its fork pyetcd / etcd-sdk-python)."""

    name = "etcd3"

    def _make(self, host: str, port: int) -> Any:
        import etcd3

        return etcd3.client(host=host, port=port, timeout=10)

    async def open(self, endpoint: str) -> None:
        host, port = host_port(endpoint)
        self.client = self._make(host, port)

    async def close(self) -> None:
        self.client.close()
        await super().close()

    def _append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        t = self.client.transactions
        # The Python API hides the Txn header: a get of the key at the end of the success
        # branch brings its new mod_revision back in the same round trip.
        ok, responses = self.client.transaction(
            compare=[t.mod(key) == expect],
            success=[*(t.put(k, v) for k, v in puts), t.get(key)],
            failure=[],
        )
        if not ok:
            return None
        _value, meta = responses[-1][0]
        return int(meta.mod_revision)

    def modrev_sync(self, key: bytes) -> int:
        _value, meta = self.client.get(key)
        return int(meta.mod_revision) if meta is not None else 0

    async def cas(self, key: bytes, expect: int, value: bytes) -> int | None:
        result: int | None = await self.run(self._append, key, expect, [(key, value)])
        return result

    async def append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        result: int | None = await self.run(self._append, key, expect, puts)
        return result

    async def put(self, key: bytes, value: bytes) -> int:
        resp = await self.run(self.client.put, key, value)
        return int(resp.header.revision)

    async def modrev(self, key: bytes) -> int:
        result: int = await self.run(self.modrev_sync, key)
        return result

    def _features(self, prefix: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        key = prefix + b"txn"
        rev = int(self.client.put(key, b"1").header.revision)
        ok = self._append(key, rev, [(key, b"2")])
        stale = self._append(key, rev, [(key, b"3")])
        out["txn_mod_revision"] = (
            "yes (header hidden: a get in the success branch returns the revision)"
            if ok and stale is None
            else "NO"
        )
        lease = self.client.lease(5)
        refreshed = list(lease.refresh())
        self.client.put(prefix + b"leased", b"", lease=lease)
        ok_lease = bool(refreshed) and int(refreshed[0].TTL) == 5 and len(lease.keys) == 1
        out["lease_keepalive"] = "yes (refresh(); no background keep-alive)" if ok_lease else "NO"
        lease.revoke()

        events, cancel = self.client.watch_prefix(prefix + b"w/")
        time.sleep(0.3)
        self.client.put(prefix + b"w/x", b"1")
        first = next(iter(events), None)
        cancel()
        out["watch"] = "yes (callback thread)" if first is not None else "NO"

        for i in range(5):
            self.client.put(prefix + b"r/%d" % i, b"x")
        rng = self.client.get_prefix_response(prefix + b"r/", limit=2)
        keys = [kv.key for kv in rng.kvs]
        if len(keys) == 2 and rng.more and rng.count == 5:
            out["range_prefix_limit"] = "yes (get_prefix_response)"
        else:
            # python-etcd3 0.12 builds RangeRequest without `limit` and `revision`: both are
            # accepted and silently dropped.
            out["range_prefix_limit"] = (
                f"NO: limit/revision silently ignored ({len(keys)} keys, more={rng.more})"
            )
        return out

    async def features(self, prefix: bytes) -> dict[str, str]:
        result: dict[str, str] = await self.run(self._features, prefix)
        return result


class PyetcdAdapter(Python3EtcdAdapter):
    name = "etcd-sdk-python"

    def _make(self, host: str, port: int) -> Any:
        import pyetcd

        return pyetcd.Etcd3Client(host=host, port=port, timeout=10)


class Etcd3gwAdapter(ThreadedAdapter):
    name = "etcd3gw"

    async def open(self, endpoint: str) -> None:
        from etcd3gw.client import Etcd3Client

        host, port = host_port(endpoint)
        self.client = Etcd3Client(host=host, port=port, timeout=10, api_path="/v3/")
        # requests' default pool keeps 10 connections per host: enough for 8 threads.

    def _append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        txn = {
            "compare": [
                {"target": "MOD", "result": "EQUAL", "key": b64(key), "mod_revision": expect}
            ],
            "success": [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in puts],
            "failure": [],
        }
        resp = self.client.transaction(txn)
        if not resp.get("succeeded"):
            return None
        return int(resp["header"]["revision"])

    def _put(self, key: bytes, value: bytes) -> int:
        resp = self.client.post(
            self.client.get_url("/kv/put"), json={"key": b64(key), "value": b64(value)}
        )
        return int(resp["header"]["revision"])

    def _modrev(self, key: bytes) -> int:
        resp = self.client.post(self.client.get_url("/kv/range"), json={"key": b64(key)})
        kvs = resp.get("kvs") or []
        return int(kvs[0]["mod_revision"]) if kvs else 0

    async def cas(self, key: bytes, expect: int, value: bytes) -> int | None:
        result: int | None = await self.run(self._append, key, expect, [(key, value)])
        return result

    async def append(self, key: bytes, expect: int, puts: list[tuple[bytes, bytes]]) -> int | None:
        result: int | None = await self.run(self._append, key, expect, puts)
        return result

    async def put(self, key: bytes, value: bytes) -> int:
        result: int = await self.run(self._put, key, value)
        return result

    async def modrev(self, key: bytes) -> int:
        result: int = await self.run(self._modrev, key)
        return result

    def _features(self, prefix: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        key = prefix + b"txn"
        rev = self._put(key, b"1")
        ok = self._append(key, rev, [(key, b"2")])
        stale = self._append(key, rev, [(key, b"3")])
        out["txn_mod_revision"] = "yes (raw gateway JSON dict)" if ok and stale is None else "NO"
        lease = self.client.lease(5)
        ttl = lease.refresh()
        self.client.put(prefix + b"leased", b"", lease=lease)
        out["lease_keepalive"] = "yes (refresh())" if ttl == 5 and len(lease.keys()) == 1 else "NO"
        lease.revoke()
        events, cancel = self.client.watch_prefix(prefix + b"w/")
        time.sleep(0.3)
        self._put(prefix + b"w/x", b"1")
        first = next(iter(events), None)
        cancel()
        out["watch"] = "yes (callback thread)" if first is not None else "NO"
        for i in range(5):
            self._put(prefix + b"r/%d" % i, b"x")
        resp = self.client.post(
            self.client.get_url("/kv/range"),
            json={
                "key": b64(prefix + b"r/"),
                "range_end": b64(prefix_end(prefix + b"r/")),
                "limit": 2,
            },
        )
        ok_range = len(resp.get("kvs") or []) == 2 and resp.get("more")
        out["range_prefix_limit"] = "yes (raw post; get_prefix has no limit)" if ok_range else "NO"
        return out

    async def features(self, prefix: bytes) -> dict[str, str]:
        result: dict[str, str] = await self.run(self._features, prefix)
        return result


ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "gateway-httpx": GatewayAdapter,
    "gateway-raw": GatewayRawAdapter,
    "etcd3aio": Etcd3aioAdapter,
    "etcd-sdk-python": PyetcdAdapter,
    "etcd3": Python3EtcdAdapter,
    "etcd3gw": Etcd3gwAdapter,
}


# -- measurement -------------------------------------------------------------------------------


def summary(latencies: list[float], wall: float, cpu: float) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(ordered) * 1000,
        "ops_s": len(ordered) / wall if wall > 0 else 0.0,
        "cpu_us_op": cpu / len(ordered) * 1e6,
    }


async def measure(
    workers: int, per_worker: int, op: Callable[[int, int], Awaitable[None]]
) -> dict[str, float]:
    latencies: list[float] = []

    async def worker(w: int) -> None:
        for i in range(per_worker):
            start = time.perf_counter()
            await op(w, i)
            latencies.append(time.perf_counter() - start)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return summary(latencies, time.perf_counter() - wall0, time.process_time() - cpu0)


async def run_client(name: str, endpoint: str, ops: int, big_ops: int) -> dict[str, Any]:
    adapter = ADAPTERS[name]()
    await adapter.open(endpoint)
    result: dict[str, Any] = {"client": name, "mode": adapter.mode}
    prefix = f"/bench/{name}/{os.getpid()}/".encode()
    try:
        result["features"] = await adapter.features(prefix + b"f/")

        for workers in (1, CONCURRENCY):
            revs: dict[int, int] = {}
            for w in range(workers):
                key = prefix + b"cas/%d" % w
                revs[w] = await adapter.put(key, SMALL)

            async def cas(w: int, _i: int, revs: dict[int, int] = revs) -> None:
                new = await adapter.cas(prefix + b"cas/%d" % w, revs[w], SMALL)
                if new is None:
                    raise RuntimeError("unexpected compare failure")
                revs[w] = new

            per = max(1, ops // workers) if workers > 1 else ops
            await cas(0, -1)  # warm-up (connection, first call)
            result[f"cas_x{workers}"] = await measure(workers, per, cas)

            arevs: dict[int, int] = {}
            for w in range(workers):
                arevs[w] = await adapter.put(prefix + b"ws/%d" % w, SMALL)

            async def append(w: int, i: int, arevs: dict[int, int] = arevs) -> None:
                ws = prefix + b"ws/%d" % w
                puts = [
                    (ws, SMALL),
                    (prefix + b"v/%d/%08d" % (w, i), SMALL),
                    (prefix + b"c/%d/%08d/0" % (w, i), CHUNK),
                    (prefix + b"a/%d/%08d" % (w, i), SMALL),
                ]
                new = await adapter.append(ws, arevs[w], puts)
                if new is None:
                    raise RuntimeError("unexpected compare failure")
                arevs[w] = new

            per = max(1, ops // workers // 2) if workers > 1 else ops // 2
            result[f"append_x{workers}"] = await measure(workers, per, append)

            async def put1m(w: int, i: int) -> None:
                await adapter.put(prefix + b"big/%d/%d" % (w, i % 4), BIG)

            per = max(1, big_ops // workers) if workers > 1 else big_ops
            result[f"put1m_x{workers}"] = await measure(workers, per, put1m)
    finally:
        await adapter.close()
    return result


# -- failover ------------------------------------------------------------------------------


async def failover_loop(
    name: str,
    endpoints: list[str],
    kill_leader: Callable[[], None],
    seconds: float,
    call_timeout: float,
) -> dict[str, Any]:
    """Sequential CAS through all endpoints; the leader is SIGKILLed after 2 s. A call that
    takes longer than `call_timeout` is abandoned (as the engine would answer 503)."""
    adapter: Adapter
    if name == "etcd3aio":
        adapter = Etcd3aioAdapter()
        await adapter.open(",".join(endpoints))
    else:
        adapter = GatewayAdapter()
        await adapter.open(endpoints[0])
    current = 0

    async def rotate() -> None:
        nonlocal current
        if isinstance(adapter, GatewayAdapter):
            await adapter.close()
            current = (current + 1) % len(endpoints)
            await adapter.open(endpoints[current])

    key = f"/bench/failover/{name}".encode()
    rev = await adapter.put(key, SMALL)
    ok_times: list[tuple[float, float]] = []
    errors: list[str] = []
    start = time.perf_counter()
    killed_at: float | None = None
    while time.perf_counter() - start < seconds:
        if killed_at is None and time.perf_counter() - start >= 2.0:
            kill_leader()
            killed_at = time.perf_counter()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(call_timeout):
                new = await adapter.cas(key, rev, SMALL)
            if new is None:  # an earlier call committed although its answer was lost
                rev = await adapter.modrev(key)
                errors.append("conflict after an unknown outcome")
                continue
            rev = new
            ok_times.append((t0, time.perf_counter() - t0))
        except Exception as exc:
            errors.append(type(exc).__name__)
            await rotate()
    await adapter.close()
    assert killed_at is not None
    after = [(t, lat) for t, lat in ok_times if t >= killed_at]
    before = [t for t, _ in ok_times if t < killed_at]
    last_before = max(before) if before else killed_at
    first_after = min(t + lat for t, lat in after) if after else float("nan")
    settled = sorted(lat for t, lat in after if t >= first_after + 0.5)
    return {
        "client": name,
        "stall_s": first_after - killed_at,
        "gap_s": first_after - last_before,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "ok": len(ok_times),
        "p50_after_ms": settled[len(settled) // 2] * 1000 if settled else float("nan"),
    }


def failover_main(names: list[str], seconds: float, call_timeout: float) -> int:
    from tests.etcd_cluster import EtcdCluster

    print(
        f"SIGKILL of the leader under a sequential CAS loop ({seconds:.0f} s per client, "
        f"calls abandoned after {call_timeout:.1f} s)"
    )
    for name in names:
        if name not in ("etcd3aio", "gateway-httpx"):
            continue
        with (
            tempfile.TemporaryDirectory(prefix="blixard-etcd-failover-") as tmp,
            EtcdCluster(Path(tmp), 3) as cluster,
        ):

            def kill_leader(cluster: EtcdCluster = cluster) -> None:
                cluster.kill(cluster.leader())

            try:
                res = asyncio.run(
                    failover_loop(name, cluster.endpoints, kill_leader, seconds, call_timeout)
                )
            except ImportError as exc:
                print(f"  {name}: not installed ({exc})")
                continue
        print(
            f"  {name:14} writes resumed {res['stall_s']:.2f} s after the kill "
            f"(gap between acknowledged writes {res['gap_s']:.2f} s); "
            f"{res['errors']} failed calls {res['error_kinds']}; "
            f"{res['ok']} CAS ok; p50 afterwards {res['p50_after_ms']:.2f} ms"
        )
    return 0


# -- orchestration -----------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(run_client(args.child, args.endpoint, args.ops, args.big_ops))
    except ImportError as exc:
        result = {"client": args.child, "skipped": f"not installed ({exc})"}
    except Exception as exc:
        result = {"client": args.child, "error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result))
    return 0


def gateway_post(endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    response = httpx.post(f"{endpoint}/v3/{path}", json=body, timeout=120)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def compact_and_defrag(endpoints: list[str]) -> None:
    """Keep every client's run on a small database: compact history, defragment members."""
    rev = int(gateway_post(endpoints[0], "maintenance/status", {})["header"]["revision"])
    import httpx

    try:
        gateway_post(endpoints[0], "kv/compaction", {"revision": rev, "physical": True})
    except httpx.HTTPStatusError as exc:  # nothing written since the last compaction
        if "compacted" not in exc.response.text:
            raise
    for endpoint in endpoints:
        gateway_post(endpoint, "maintenance/defragment", {})


def pick_target(endpoints: list[str], role: str) -> str:
    for endpoint in endpoints:
        status = gateway_post(endpoint, "maintenance/status", {})
        is_leader = status["leader"] == status["header"]["member_id"]
        if is_leader == (role == "leader"):
            return endpoint
    return endpoints[0]


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print("Features (probed against the cluster):")
    for res in results:
        if "skipped" in res or "error" in res:
            print(f"  {res['client']:16} {res.get('skipped') or res.get('error')}")
            continue
        print(f"  {res['client']:16} [{res['mode']}]")
        for feature, verdict in res["features"].items():
            print(f"      {feature:20} {verdict}")
    print()
    header = f"  {'client':16} {'op':10} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8}"
    print("Latency (own CPU = this client process's CPU per op, all threads):")
    print(header + f" {'CPU us/op':>10}")
    for res in results:
        if "skipped" in res or "error" in res:
            continue
        for op in ("cas", "append", "put1m"):
            for workers in (1, CONCURRENCY):
                s = res[f"{op}_x{workers}"]
                print(
                    f"  {res['client']:16} {op + f' x{workers}':10} {s['n']:>5} "
                    f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['ops_s']:>8.0f} "
                    f"{s['cpu_us_op']:>10.0f}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--endpoints", help="comma-separated client URLs of a running cluster")
    parser.add_argument("--target", choices=("follower", "leader"), default="follower")
    parser.add_argument("--ops", type=int, default=400, help="small Txns per measurement")
    parser.add_argument("--big-ops", type=int, default=40, help="1 MiB puts per measurement")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--failover", action="store_true", help="measure a leader SIGKILL")
    parser.add_argument("--seconds", type=float, default=8.0, help="failover loop length")
    parser.add_argument("--call-timeout", type=float, default=0.5, help="failover deadline")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    names = [n.strip() for n in args.clients.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        parser.error(f"unknown clients {unknown}; choose from {list(CLIENTS)}")
    if args.failover:
        return failover_main(names, args.seconds, args.call_timeout)

    with contextlib.ExitStack() as stack:
        if args.endpoints:
            endpoints = args.endpoints.split(",")
        else:
            from tests.etcd_cluster import EtcdCluster

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="blixard-etcd-bench-"))
            cluster = stack.enter_context(EtcdCluster(Path(tmp), 3))
            endpoints = cluster.endpoints
            version = gateway_post(endpoints[0], "maintenance/status", {})["version"]
            print(f"etcd {version}: 3 members on {', '.join(endpoints)} (data in {tmp})")
        target = pick_target(endpoints, args.target)
        print(f"clients talk to the {args.target} at {target}; python {sys.version.split()[0]}")
        results: list[dict[str, Any]] = []
        for name in names:
            compact_and_defrag(endpoints)
            env = dict(os.environ)
            if name == "etcd3":
                env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
            cmd = [sys.executable, __file__, "--child", name, "--endpoint", target]
            cmd += ["--ops", str(args.ops), "--big-ops", str(args.big_ops)]
            started = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                res = json.loads(lines[-1][len("RESULT ") :])
            else:
                res = {"client": name, "error": f"exit {proc.returncode}: {proc.stderr[-500:]}"}
            print(f"  {name}: done in {time.monotonic() - started:.1f} s", flush=True)
            results.append(res)
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
