"""What the one-off re-keying of audit ids costs when a prefix written before ids were kept
below 2**53 is first opened (EtcdStore._upgrade_audit_ids, docs/etcd-notes.md §12).

Writes EVENTS events with ids of the earlier scheme ((µs << 8) | slot, a third of them with
a workspace index copy, a quarter with a key index copy) and no `meta/auditids` marker, then
times the first open (which re-keys them) and the next one (marker only). Figures only.

    python bench/audit_rekey.py                     # starts its own 3-member cluster
    python bench/audit_rekey.py --events 10000
    python bench/audit_rekey.py --endpoints http://127.0.0.1:2379,...
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.etcd_cluster; blixard comes from PYTHONPATH

from _common import open_twice  # noqa: E402

from blixard.domain.access import AuditEvent  # noqa: E402
from blixard.store.etcd.keyspace import prefix_end  # noqa: E402
from blixard.store.etcd.store import OLD_AUDIT_IDS, EtcdStore  # noqa: E402


async def measure(endpoints: list[str], events: int) -> None:
    prefix = f"/blixard-bench/rekey-{secrets.token_hex(4)}/"
    store = EtcdStore(endpoints, prefix)
    await store.open()
    try:
        start = time.time() - events * 0.01
        old = [
            AuditEvent(
                at=start + i * 0.01,
                action="state.write",
                outcome="ok",
                workspace=f"ws-{i % 20}" if i % 3 == 0 else None,
                key_name=f"key-{i % 5}" if i % 4 == 0 else None,
                detail=f"serial {i}",
                id=(round((start + i * 0.01) * 1_000_000) << 8) | secrets.randbelow(256),
            )
            for i in range(events)
        ]
        for i in range(0, events, 30):
            await store._txn([], [op for e in old[i : i + 30] for op in store._audit_ops(e)], [])
        await store._kv.delete(store.keys.key("meta/auditids"))
        reopened = EtcdStore(endpoints, prefix)
        first, again = await open_twice(reopened)
        try:
            listed = await reopened.list_audit(limit=events)
        finally:
            await reopened.close()
        below = sum(1 for e in listed if e.id is not None and e.id < OLD_AUDIT_IDS)
        print(
            f"{events} old-style events: first open (re-keying) {first * 1000:.0f} ms, "
            f"next open {again * 1000:.0f} ms; {below}/{len(listed)} listed with ids < 2**53"
        )
    finally:
        everything = store.keys.key("")
        await store._kv.delete(everything, prefix_end(everything))
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--endpoints", help="comma-separated client URLs of an existing cluster")
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()
    if args.endpoints:
        asyncio.run(measure(args.endpoints.split(","), args.events))
        return
    from tests.etcd_cluster import EtcdCluster

    with (
        tempfile.TemporaryDirectory(prefix="blixard-bench-rekey-") as tmp,
        EtcdCluster(Path(tmp) / "etcd", 3) as cluster,
    ):
        asyncio.run(measure(cluster.endpoints, args.events))


if __name__ == "__main__":
    main()
