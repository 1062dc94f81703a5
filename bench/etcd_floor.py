"""What one etcd request costs on this machine: the floor under the etcd engine's cycle.

Starts a fresh 3-member cluster on 127.0.0.1 and sends, one at a time through the engine's
own connection (EtcdStore), N single-put Txns (~200 B) and then N linearizable point reads,
printing requests/s and the members' CPU per request split into user and kernel time (fsync
and loopback networking are kernel time). A Terraform write cycle on etcd is 3 Txns + 1
read, so these figures bound the cycle rate whatever the server does. Figures only.

    python bench/etcd_floor.py            # 2000 of each
    python bench/etcd_floor.py --ops 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import member_pids

from blixard.store.etcd import EtcdStore
from tests.etcd_cluster import EtcdCluster

CLK_TCK = os.sysconf("SC_CLK_TCK")


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


async def measure(cluster: EtcdCluster, ops: int) -> None:
    store = EtcdStore([e.removeprefix("http://") for e in cluster.endpoints], "/floor/")
    await store.open()
    pids = member_pids(cluster)
    key = b"/floor/k"
    try:
        for kind in ("txn", "read"):
            before = [user_system(p) for p in pids]
            started = time.perf_counter()
            for _ in range(ops):
                if kind == "txn":
                    await store._txn([], [store._kv.txn_op_put(key, b"x" * 200)], [])
                else:
                    await store._get(key)
            elapsed = time.perf_counter() - started
            after = [user_system(p) for p in pids]
            user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
            print(
                f"{kind:5} {ops / elapsed:6.0f} /s   {1e3 * elapsed / ops:5.2f} ms each   "
                f"members' CPU per request: user {1e6 * user / ops:4.0f} us, "
                f"kernel {1e6 * system / ops:4.0f} us"
            )
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ops", type=int, default=2000, help="requests of each kind")
    args = ap.parse_args()
    print("3 etcd members on 127.0.0.1, one request at a time")
    with (
        tempfile.TemporaryDirectory(prefix="blixard-bench-floor-") as tmp,
        EtcdCluster(Path(tmp) / "etcd", 3) as cluster,
    ):
        asyncio.run(measure(cluster, args.ops))


if __name__ == "__main__":
    main()
