"""Benchmark the web UI's workspaces page at 20,000 workspaces, and its diff page for two
10 MiB versions with 1 % of the resources changed (SQLite).

Fills a fresh data directory in process (StateService writes, 200 at a time so they share
commits), then starts `blixard serve` on it and times GET requests of the page over loopback
as a signed-in-less open server: the first page, a page deep in the list, a name filter and
"locked only" (both walk the store within the scan budget). Prints p50/p95 per request kind.
The diff page is timed
cold (the first request parses both versions) and warm (the explorer's parse cache).
Figures only; nothing asserted.

    python bench/ui_pages.py
    python bench/ui_pages.py --workspaces 5000 --rounds 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tfstate
import httpx
from _common import percentile

from blixard.domain.service import StateService
from blixard.store import open_store_from_url
from tests.harness import ServerProcess


def state(name: str) -> bytes:
    return json.dumps(
        {
            "version": 4,
            "terraform_version": "1.11.4",
            "serial": 1,
            "lineage": f"lin-{name}",
            "outputs": {},
            "resources": [
                {"mode": "managed", "type": "terraform_data", "name": f"r{i}", "instances": []}
                for i in range(5)
            ],
        }
    ).encode()


async def fill(data_dir: Path, count: int) -> float:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store_from_url(f"sqlite:///{data_dir / 'blixard.db'}")
    await store.open()
    service = StateService(store)
    started = time.perf_counter()
    try:
        names = [f"ws-{i:05d}" for i in range(count)]
        for offset in range(0, count, 200):
            await asyncio.gather(
                *(service.write_state(n, state(n)) for n in names[offset : offset + 200])
            )
        resources = _tfstate.resources_for_size(10 * 1024 * 1024)
        lineage = _tfstate.new_lineage()
        await service.write_state("big", _tfstate.make_state(resources, 1, lineage))
        for i in range(0, len(resources), 100):  # 1 % of the resources change
            resources[i] = _tfstate.make_resource(i, rev=1)
        await service.write_state("big", _tfstate.make_state(resources, 2, lineage))
        lock = json.dumps({"ID": "bench", "Who": "bench@host", "Operation": "x"}).encode()
        for name in names[:: max(1, count // 10)]:
            await service.lock(name, lock)
    finally:
        await store.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blixard-bench-ui-") as tmp:
        data = Path(tmp) / "data"
        seconds = asyncio.run(fill(data, args.workspaces))
        print(f"filled {args.workspaces} workspaces in {seconds:.1f} s")
        middle = f"ws-{args.workspaces // 2:05d}"
        kinds = {
            "first page": "/ui/",
            "deep page": f"/ui/?after={middle}",
            "name filter": "/ui/?q=ws-19",
            "locked only": "/ui/?locked=1",
            "diff 10 MiB": "/ui/workspaces/big/diff?from=1&to=2",
        }
        with (
            ServerProcess(data, log_path=Path(tmp) / "server.log") as server,
            httpx.Client(base_url=server.url, timeout=30.0) as client,
        ):
            client.get("/ui/")  # the session cookie, and warm caches
            started = time.perf_counter()
            assert client.get(kinds["diff 10 MiB"]).status_code == 200
            cold_ms = (time.perf_counter() - started) * 1000
            print(f"diff 10 MiB cold (parses both versions): {cold_ms:.0f} ms")
            for kind, path in kinds.items():
                timings = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    resp = client.get(path)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert resp.status_code == 200, resp.text[:300]
                rows = resp.text.count("<tr data-ws=")
                timings.sort()
                p50, p95 = percentile(timings, 0.5), percentile(timings, 0.95)
                print(f"{kind:12s} {path:38s} rows {rows:3d}  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")


if __name__ == "__main__":
    main()
