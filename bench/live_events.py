"""What the etcd change feed (live events from every node, store/etcd/changes.py) costs a node.

In one process, on a fresh 1-member etcd cluster: `--cycles` Terraform-like cycles (LOCK,
write a small state, UNLOCK: three workspace record changes) through an EtcdStore, with no
feed, with the feed idle (nobody listens: no watch) and with one subscribed listener (the
watch running and publishing every change). Prints the process CPU (gRPC threads included)
and wall time per cycle, and checks that the listener got each change once. Figures only.

    python bench/live_events.py
    python bench/live_events.py --cycles 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (puts the repository on sys.path)

from blixard.domain.events import EventBus
from blixard.domain.models import Lock
from blixard.store.etcd.store import EtcdStore
from tests.etcd_cluster import private_cluster
from tests.store.test_engine_suite import new_version, state

MODES = ("no feed", "feed, nobody listening", "feed, one listener")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(endpoints: list[str], prefix: str, mode: str, cycles: int) -> tuple[float, float]:
    store = EtcdStore(endpoints, prefix)
    bus = EventBus()
    if mode != MODES[0]:
        store.feed_changes(bus)
    await store.open()
    listener = await bus.subscribe() if mode == MODES[2] else None
    received = 0

    async def consume() -> None:  # as a stream would
        nonlocal received
        while listener is not None and (event := await listener.next(5)) is not None:
            received += not event.is_wake
            if received == 3 * cycles:
                return

    consumer = asyncio.create_task(consume())
    try:
        ws = None
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for i in range(1, cycles + 1):
            lock = Lock(f"L{i}", {"ID": f"L{i}", "Who": "bench", "Operation": "apply"}, i)
            ws = await store.put_lock("w", lock, expect_revision=ws.revision if ws else None, now=i)
            assert ws is not None
            body = state(i)
            ws = await store.append_version(
                "w", body, new_version(body, i), expect_revision=ws.revision
            )
            assert ws is not None
            ws = await store.put_lock("w", None, expect_revision=ws.revision, now=i)
            assert ws is not None
        await consumer
        if listener is not None:
            assert received == 3 * cycles and listener.lost == 0, (received, listener.lost)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        return 1000 * cpu / cycles, 1000 * wall / cycles
    finally:
        if listener is not None:
            listener.close()
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with private_cluster(1) as cluster:
        for r in range(args.rounds):
            for mode in MODES:
                prefix = f"/bench-live-{r}-{MODES.index(mode)}/"
                figures[mode].append(await measure(cluster.endpoints, prefix, mode, args.cycles))
    print(f"{args.cycles} cycles (LOCK, write, UNLOCK) x {args.rounds} rounds, medians:")
    for mode, runs in figures.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"  {mode:<24} CPU {cpu:.3f} ms/cycle   wall {wall:.2f} ms/cycle")


if __name__ == "__main__":
    asyncio.run(main())
