"""Upgrade reindex: 1,000 versions of a 1 MiB state (1 % of the resources changed per version)
written, their index documents removed (as a store from before the index has none), then the
store opened: the time until the background reindex has built every (current) document, and
the peak resident memory it took (VmHWM, reset just before the open) against the largest
state. Then a `history=true` search walked to its end (one instance per version matches),
whose rows are built from the version bodies: pages and time per page.

    .venv/bin/python bench/reindex.py [--engine sqlite,etcd] [--versions 1000] [--mib 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import _tfstate
from _common import mib

from blixard.domain.models import NewVersion, StateMeta
from blixard.domain.resource_index import ResourceQuery
from blixard.store.protocol import Store
from blixard.store.search import SearchService
from tests.etcd_cluster import EtcdCluster


def status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def write_history(store: Store, versions: int, size: int) -> int:
    resources = _tfstate.resources_for_size(size)
    lineage = _tfstate.new_lineage()
    largest = 0
    ws = None
    for serial in range(1, versions + 1):
        for i in range(0, len(resources), 100):  # 1 % of the resources change
            index = (i + serial) % len(resources)
            resources[index] = _tfstate.make_resource(index, serial)
        body = _tfstate.make_state(resources, serial, lineage)
        largest = max(largest, len(body))
        version = NewVersion(
            meta=StateMeta(serial, lineage, "1.9.5", len(resources)),
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            md5=hashlib.md5(body).hexdigest(),
            created_at=time.time(),
            lock_id=None,
            source="write",
        )
        ws = await store.append_version(
            "big", body, version, expect_revision=ws.revision if ws else None
        )
        assert ws is not None
    return largest


async def measure(build: Any, drop: Any, args: argparse.Namespace) -> None:
    store = build()
    await store.open()
    started = time.perf_counter()
    largest = await write_history(store, args.versions, int(args.mib * 1024 * 1024))
    print(
        f"  wrote {args.versions} versions (largest state {mib(largest)}) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    await store.close()
    del store
    gc.collect()

    # The control: opening the same store with every document built (no reindex).
    control = build()
    before = status_bytes("VmRSS")
    reset_peak()
    await control.open()
    await control.reindexer.wait()
    control_peak = status_bytes("VmHWM") - before
    await drop(control)
    await control.close()
    del control
    gc.collect()

    fresh = build()
    before = status_bytes("VmRSS")
    peak_known = reset_peak()
    started = time.perf_counter()
    await fresh.open()
    opened = time.perf_counter() - started
    await fresh.reindexer.wait()
    took = time.perf_counter() - started
    status = fresh.reindexer.status
    peak = status_bytes("VmHWM") - before
    print(f"  open: {opened:.2f} s (the reindex runs in the background after it)")
    print(
        f"  reindex of {status.indexed} versions: {took:.1f} s "
        f"({took / max(1, status.indexed) * 1000:.1f} ms per version)"
    )
    if peak_known:
        print(
            f"  peak resident memory above the pre-open RSS: {mib(peak)} with the reindex, "
            f"{mib(control_peak)} for an open without it: the reindex's own "
            f"{mib(peak - control_peak)} = {(peak - control_peak) / largest:.1f}x the largest "
            "state"
        )
    assert status.complete and len(fresh.resource_index) == 1
    await history_search(fresh)
    await fresh.close()


async def history_search(store: Store) -> None:
    service = SearchService(store)
    query = ResourceQuery(name="svc_00007")
    after, matches, times = None, 0, []
    while True:
        started = time.perf_counter()
        page = await service.search(query, actor=None, history=True, after=after, limit=100)
        times.append(time.perf_counter() - started)
        matches += len(page.matches)
        after = page.next_after
        if after is None:
            break
    times.sort()
    print(
        f"  history search (name=, limit 100): {matches} matches in {len(times)} pages, "
        f"{sum(times):.1f} s; per page p50 {times[len(times) // 2] * 1000:.0f} ms, "
        f"max {times[-1] * 1000:.0f} ms"
    )


async def run_sqlite(args: argparse.Namespace) -> None:
    from blixard.store.sqlite import SQLiteStore

    print("sqlite:")
    with tempfile.TemporaryDirectory(prefix="blixard-bench-reindex-") as tmp:
        path = Path(tmp) / "r.db"

        async def drop(store: Store) -> None:
            conn = sqlite3.connect(path)
            docs, doc_bytes = conn.execute(
                "SELECT count(*), sum(length(doc)) FROM resource_index"
            ).fetchone()
            blobs = conn.execute("SELECT sum(length(blob)) FROM versions").fetchone()[0]
            print(
                f"  index documents: {docs}, {(doc_bytes or 0) / 1024:.1f} KiB stored "
                f"(the versions themselves: {mib(blobs)})"
            )
            conn.close()
            await store._write(lambda c: c.execute("DELETE FROM resource_index"))

        await measure(lambda: SQLiteStore(path), drop, args)


async def run_etcd(args: argparse.Namespace) -> None:
    from blixard.store.etcd import EtcdStore
    from blixard.store.etcd.keyspace import prefix_end

    print("etcd (3 members on this machine):")
    with (
        tempfile.TemporaryDirectory(prefix="blixard-bench-reindex-etcd-") as tmp,
        EtcdCluster(Path(tmp) / "etcd", 3) as cluster,
    ):
        endpoints = [e.removeprefix("http://") for e in cluster.endpoints]

        async def drop(store: EtcdStore) -> None:
            docs = doc_bytes = 0
            for family in ("rix/", "rixblob/"):
                key = store.keys.key(family)
                async for kv in store._scan(key, prefix_end(key)):
                    docs += family == "rix/"
                    doc_bytes += len(kv.value)
            print(f"  index documents: {docs}, {doc_bytes / 1024:.1f} KiB stored")
            for family in ("rix/", "rixhead/"):
                key = store.keys.key(family)
                await store._kv.delete(key, prefix_end(key))

        await measure(lambda: EtcdStore(endpoints, "/bench-reindex/"), drop, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="sqlite,etcd")
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--mib", type=float, default=1.0)
    args = parser.parse_args()
    for engine in args.engine.split(","):
        asyncio.run({"sqlite": run_sqlite, "etcd": run_etcd}[engine](args))


if __name__ == "__main__":
    main()
