"""Shared helpers for the benchmarks: server lifecycle, CPU accounting, formatting."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.etcd_cluster import EtcdCluster  # noqa: E402
from tests.harness import ServerProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fresh_server(
    label: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, Path]]:
    """A `blixard serve` on a free 127.0.0.1 port with an empty temporary data dir."""
    with (
        tempfile.TemporaryDirectory(prefix=f"blixard-bench-{label}-") as tmp,
        _serve(Path(tmp), env) as server,
    ):
        yield server, Path(tmp) / "data"


@contextlib.contextmanager
def fresh_etcd_servers(
    label: str,
    env: dict[str, str] | None = None,
    members: int = 3,
    etcd_flags: list[str] | None = None,
    nodes: int = 1,
) -> Iterator[tuple[list[ServerProcess], EtcdCluster]]:
    """A fresh `members`-member etcd cluster on 127.0.0.1 (each member also given
    `etcd_flags`) and `nodes` Blixard nodes serving it (the etcd engine, one prefix, each
    node with its own data dir), all stopped on exit."""
    with (
        tempfile.TemporaryDirectory(prefix=f"blixard-bench-{label}-") as tmp,
        EtcdCluster(Path(tmp) / "etcd", members, extra_args=etcd_flags) as cluster,
        contextlib.ExitStack() as stack,
    ):
        hosts = ",".join(e.removeprefix("http://") for e in cluster.endpoints)
        url = {"BLIXARD_STORAGE_URL": f"etcd://{hosts}/blixard-bench"}
        servers = []
        for node in range(nodes):
            (Path(tmp) / f"node{node}").mkdir()
            servers.append(
                stack.enter_context(_serve(Path(tmp) / f"node{node}", {**(env or {}), **url}))
            )
        yield servers, cluster


def member_pids(cluster: EtcdCluster) -> list[int]:
    return [m.process.pid for m in cluster.members if m.process is not None]


def etcd_requests(cluster: EtcdCluster) -> dict[str, float]:
    """What the members have done so far, from their /metrics: client Txn and Range
    requests answered (all members); raft entries committed, WAL fsyncs, keys put and their
    size (the most of any member: the leader's, each member applies the same)."""
    import urllib.request

    totals = {
        "txn": 0.0,
        "range": 0.0,
        "raft entries": 0.0,
        "wal fsyncs": 0.0,
        "keys put": 0.0,
        "KiB put": 0.0,
    }
    for endpoint in cluster.endpoints:
        with urllib.request.urlopen(endpoint + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in line:
                for method in ("Txn", "Range"):
                    if f'grpc_method="{method}"' in line and "etcdserverpb.KV" in line:
                        totals[method.lower()] += float(line.rsplit(" ", 1)[1])
            for name, metric in (
                ("raft entries", "etcd_server_proposals_committed_total "),
                ("wal fsyncs", "etcd_disk_wal_fsync_duration_seconds_count "),
                ("keys put", "etcd_mvcc_put_total "),
                ("KiB put", "etcd_debugging_mvcc_total_put_size_in_bytes "),
            ):
                if line.startswith(metric):
                    value = float(line.rsplit(" ", 1)[1]) / (1024 if name == "KiB put" else 1)
                    totals[name] = max(totals[name], value)
    return totals


@contextlib.contextmanager
def _serve(tmp: Path, env: dict[str, str] | None) -> Iterator[ServerProcess]:
    """A `blixard serve` with its data dir and log in `tmp`; shows a traceback it logged."""
    server = ServerProcess(tmp / "data", env=env, log_path=tmp / "server.log")
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()
        log = tmp / "server.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Traceback" in text:
            print(f"  [server log had a traceback]\n{text[-3000:]}", file=sys.stderr)


def _descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for child in children:
                out.extend(_descendants(int(child)))
    except OSError:
        pass
    return out


def process_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its descendants."""
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p * (len(sorted_values) - 1))))
    return sorted_values[index]


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def dir_bytes(path: Path) -> dict[str, int]:
    """Size of every file under path, by relative name."""
    return {
        str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()
    }


async def open_twice(store: Any) -> tuple[float, float]:
    """Seconds to open a store the first time (with whatever one-time work it does at
    open: index backfills, id re-keying) and then again; it is left open."""
    import time

    started = time.perf_counter()
    await store.open()
    first = time.perf_counter() - started
    await store.close()
    started = time.perf_counter()
    await store.open()
    return first, time.perf_counter() - started
