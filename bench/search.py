"""Search across workspaces: 20,000 workspaces x 20 instances (400,000 instances).

Bulk-loads the workspaces through the store API (append_version, 64 writes in flight: HTTP
writes would take far longer to set up and measure nothing search depends on), then times
SearchService.search (what GET /api/tofu/search runs, without HTTP) by type and by id, for an
all-seeing key and for a key scoped to half the workspaces, and duplicates. Also prints the
store's resident memory growth for the index and, on etcd, how long a second node takes to
load the index at open.

    .venv/bin/python bench/search.py --engine sqlite,etcd [--workspaces 20000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import mib, percentile  # type: ignore[import-not-found]

from blixard.domain.access import Actor, Role
from blixard.domain.models import NewVersion, StateMeta
from blixard.domain.resource_index import ResourceQuery
from blixard.domain.search import SearchService
from blixard.store.protocol import Store
from tests.etcd_cluster import EtcdCluster

TYPES = [f"aws_type_{i:02d}" for i in range(40)]


def body_of(ws: int, instances: int) -> bytes:
    resources = []
    for k in range(instances):
        # Every thousandth workspace also manages its neighbour's first object: duplicates.
        ident = f"id-{ws - 1:05d}-00" if ws % 1000 == 1 and k == 0 else f"id-{ws:05d}-{k:02d}"
        resources.append(
            {
                "mode": "managed",
                "type": TYPES[(ws + k) % len(TYPES)],
                "name": f"r{k}",
                "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
                "instances": [
                    {
                        "attributes": {
                            "id": ident,
                            "arn": f"arn:aws:svc:eu-west-1:123456789012:thing/{ident}",
                            "tags": {"Name": f"svc-{ws}-{k}", "Team": "platform"},
                        },
                        "sensitive_attributes": [],
                    }
                ],
            }
        )
    return orjson.dumps({"version": 4, "serial": 1, "lineage": f"l{ws}", "resources": resources})


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def load(store: Store, workspaces: int, instances: int) -> float:
    started = time.perf_counter()
    semaphore = asyncio.Semaphore(64)

    async def one(ws: int) -> None:
        body = body_of(ws, instances)
        version = NewVersion(
            meta=StateMeta(1, f"l{ws}", None, instances),
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            md5=hashlib.md5(body).hexdigest(),
            created_at=time.time(),
            lock_id=None,
            source="write",
        )
        async with semaphore:
            written = await store.append_version(
                f"team-{'ab'[ws % 2]}-{ws:05d}", body, version, expect_revision=None
            )
            assert written is not None

    await asyncio.gather(*(one(ws) for ws in range(workspaces)))
    return time.perf_counter() - started


async def timed(service: SearchService, queries: list[ResourceQuery], actor: Actor) -> list[float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        page = await service.search(query, actor=actor, limit=100)
        times.append((time.perf_counter() - started) * 1000)
        assert page.matches, query
    return sorted(times)


async def measure(store: Store, args: argparse.Namespace, reopen: Any) -> None:
    before = rss()
    seconds = await load(store, args.workspaces, args.instances)
    total = args.workspaces * args.instances
    print(f"  loaded {args.workspaces} workspaces x {args.instances} instances in {seconds:.1f} s")
    print(
        f"  resident memory growth while loading (index, caches, allocator): {mib(rss() - before)}"
    )
    service = SearchService(store)
    rng = random.Random(7)
    everyone = Actor("all", Role.reader)
    team_a = Actor("a", Role.reader, scopes=("team-a-*",))
    by_type = [ResourceQuery(type=rng.choice(TYPES)) for _ in range(args.queries)]
    ids = []
    for _ in range(args.queries):
        ws = rng.randrange(0, args.workspaces, 2)  # team-a workspaces: every key sees them
        ids.append(ResourceQuery(id=f"id-{ws:05d}-{rng.randrange(args.instances):02d}"))
    for label, queries in (("type", by_type), ("id", ids)):
        for who, actor in (("all workspaces", everyone), ("scoped team-a-*", team_a)):
            times = await timed(service, queries, actor)
            print(
                f"  search by {label:4} ({who:16}, limit 100): p50 {percentile(times, 0.5):6.2f} ms"
                f"  p90 {percentile(times, 0.9):6.2f} ms  max {times[-1]:6.2f} ms"
            )
    started = time.perf_counter()
    dupes = await service.duplicates(actor=everyone)
    elapsed = (time.perf_counter() - started) * 1000
    print(f"  duplicates over {total} instances: {elapsed:.0f} ms ({len(dupes)} found)")
    if reopen is not None:
        await reopen()


async def run_sqlite(args: argparse.Namespace) -> None:
    from blixard.store.sqlite import SQLiteStore

    print("sqlite:")
    with tempfile.TemporaryDirectory(prefix="blixard-bench-search-") as tmp:
        store = SQLiteStore(Path(tmp) / "b.db")
        await store.open()
        try:
            await measure(store, args, None)
        finally:
            await store.close()
        second = SQLiteStore(Path(tmp) / "b.db")
        started = time.perf_counter()
        await second.open()
        print(
            f"  reopen (loads every current index document): {time.perf_counter() - started:.2f} s"
        )
        await second.close()


async def run_etcd(args: argparse.Namespace) -> None:
    from blixard.store.etcd import EtcdStore

    print("etcd (3 members on this machine):")
    with (
        tempfile.TemporaryDirectory(prefix="blixard-bench-search-etcd-") as tmp,
        EtcdCluster(
            Path(tmp) / "etcd", 3, extra_args=["--quota-backend-bytes=8589934592"]
        ) as cluster,
    ):
        endpoints = [e.removeprefix("http://") for e in cluster.endpoints]
        store = EtcdStore(endpoints, "/bench-search/")
        await store.open()

        async def second_node() -> None:
            other = EtcdStore(endpoints, "/bench-search/")
            started = time.perf_counter()
            await other.open()
            print(
                f"  a second node's open (loads {len(other.resource_index)} current index "
                f"documents): {time.perf_counter() - started:.2f} s"
            )
            await other.close()

        try:
            await measure(store, args, second_node)
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="sqlite,etcd")
    parser.add_argument("--workspaces", type=int, default=20_000)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    for engine in args.engine.split(","):
        asyncio.run({"sqlite": run_sqlite, "etcd": run_etcd}[engine](args))


if __name__ == "__main__":
    main()
