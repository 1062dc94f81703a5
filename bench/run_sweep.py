"""What one run sweep costs on the etcd engine: the `list_runs` calls a node makes every TTL/3.

Fills a fresh prefix with FINISHED finished runs and 3 open ones (a queued, a planned and an
applying run) spread over 20 workspaces, then times, sequentially:

  sweep   list_runs(statuses=queued/planned/planning/applying, limit=10_000), what
          RunExecutor.sweep reads every TTL/3 on every node
  claim   list_runs(workspace=…, statuses=planning/applying, limit=2), read before each phase
  page    list_runs(workspace=…, limit=50), the API's first page of a workspace's runs
          (through `runs-ws/`)

and, with --backfill, the first open of a prefix holding runs but no `runopen/` or `runs-ws/`
index (both and their `meta/runindex*` markers deleted, as on a prefix written by an older
version).
Figures only; nothing is asserted.

    python bench/run_sweep.py                       # starts its own 3-member cluster
    python bench/run_sweep.py --finished 5000 --encrypted --backfill
    python bench/run_sweep.py --endpoints http://127.0.0.1:2379,...
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.etcd_cluster; blixard comes from PYTHONPATH

from _common import open_twice  # noqa: E402

from blixard.domain.runs import PlanSummary, Run, RunStatus  # noqa: E402
from blixard.store.crypto import Cipher  # noqa: E402
from blixard.store.etcd.keyspace import prefix_end  # noqa: E402
from blixard.store.etcd.store import EtcdStore  # noqa: E402

WORKSPACES = 20
OPEN = ("queued", "planned", "planning", "applying")
EXECUTING = ("planning", "applying")


def a_run(number: int, status: RunStatus) -> Run:
    """A run document of a realistic size (~1.5 KB: variables and a 20-resource summary)."""
    changes = tuple({"address": f"aws_instance.web[{i}]", "actions": ["update"]} for i in range(20))
    return Run(
        id=f"run-{number:012x}{secrets.token_hex(8)}",
        workspace=f"ws-{number % WORKSPACES:02d}",
        status=status,
        created_at=1_700_000_000.0 + number,
        created_by="ci",
        variables={"region": "eu-west-1", "image": "ami-0123456789abcdef0"},
        summary=PlanSummary(0, 20, 0, changes),
        executor="node-a" if status == RunStatus.applying else None,
    )


async def fill(store: EtcdStore, finished: int) -> None:
    statuses = [RunStatus.applied, RunStatus.errored, RunStatus.discarded, RunStatus.no_changes]
    runs = [a_run(n, statuses[n % len(statuses)]) for n in range(finished)]
    runs += [
        a_run(finished + i, status)
        for i, status in enumerate((RunStatus.queued, RunStatus.planned, RunStatus.applying))
    ]
    for i in range(0, len(runs), 64):
        await asyncio.gather(*(store.create_run(run) for run in runs[i : i + 64]))


async def timed(label: str, call: Callable[[], Awaitable[list[Run]]], repeat: int) -> None:
    found = await call()  # warm the connection
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    p50 = statistics.median(seconds) * 1000
    p90 = seconds[int(len(seconds) * 0.9) - 1] * 1000
    print(f"  {label:<6} {len(found):>3} runs  p50 {p50:8.2f} ms  p90 {p90:8.2f} ms")


async def measure(endpoints: list[str], args: argparse.Namespace) -> None:
    cipher = Cipher(b"b" * 32) if args.encrypted else None
    prefix = f"/blixard-bench/sweep-{secrets.token_hex(4)}/"
    store = EtcdStore(endpoints, prefix, cipher=cipher)
    await store.open()
    try:
        started = time.perf_counter()
        await fill(store, args.finished)
        print(
            f"{args.finished} finished + 3 open runs written in "
            f"{time.perf_counter() - started:.1f} s ({'encrypted' if cipher else 'plaintext'})"
        )
        await timed("sweep", lambda: store.list_runs(statuses=OPEN, limit=10_000), args.repeat)
        await timed(
            "claim",
            lambda: store.list_runs(workspace="ws-01", statuses=EXECUTING, limit=2),
            args.repeat,
        )
        await timed("page", lambda: store.list_runs(workspace="ws-01", limit=50), args.repeat)
        if args.backfill:
            await backfill(store, endpoints, prefix, cipher)
    finally:
        everything = store.keys.key("")
        await store._kv.delete(everything, prefix_end(everything))
        await store.close()


async def backfill(
    store: EtcdStore, endpoints: list[str], prefix: str, cipher: Cipher | None
) -> None:
    for index, marker in (("runopen/", "meta/runindex"), ("runs-ws/", "meta/runindex-ws")):
        await store._kv.delete(store.keys.key(index), prefix_end(store.keys.key(index)))
        await store._kv.delete(store.keys.key(marker))
    reopened = EtcdStore(endpoints, prefix, cipher=cipher)
    first, again = await open_twice(reopened)
    try:
        found = await reopened.list_runs(statuses=OPEN, limit=10_000)
        page = await reopened.list_runs(workspace="ws-01", limit=50)
    finally:
        await reopened.close()
    print(
        f"  open of a prefix without the indexes (backfill): {first * 1000:.0f} ms, "
        f"next open {again * 1000:.0f} ms; {len(found)} open runs and a page of "
        f"{len(page)} runs listed after it"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--endpoints", help="comma-separated client URLs of an existing cluster")
    ap.add_argument("--finished", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--encrypted", action="store_true", help="seal run documents")
    ap.add_argument("--backfill", action="store_true", help="also time the one-off backfill")
    args = ap.parse_args()
    if args.endpoints:
        asyncio.run(measure(args.endpoints.split(","), args))
        return
    from tests.etcd_cluster import EtcdCluster

    with (
        tempfile.TemporaryDirectory(prefix="blixard-bench-sweep-") as tmp,
        EtcdCluster(Path(tmp) / "etcd", 3) as cluster,
    ):
        asyncio.run(measure(cluster.endpoints, args))


if __name__ == "__main__":
    main()
