"""Benchmark the Terraform write cycle: LOCK -> GET -> POST ~100 KiB state -> UNLOCK.

Each client owns a workspace and runs the cycle back to back for --seconds, exactly as
`terraform apply` talks to the http backend (LOCK with a fresh LockInfo, GET the state,
POST it with serial+1, `?ID=` and `Content-MD5`, UNLOCK with the same LockInfo). Prints
cycles/s, p50/p99 cycle latency, per-step latencies and CPU (server, etcd members, this
client; also per cycle). Figures only; nothing asserted.

    python bench/cycle.py                      # fresh server per run, 1 and 8 clients, 15 s
    python bench/cycle.py --engine etcd        # the same on a fresh 3-member etcd cluster
    python bench/cycle.py --engine sqlite,etcd --rounds 3   # both, interleaved: medians, ratio
    GOMAXPROCS=1 python bench/cycle.py --engine etcd   # each member one core's worth
    python bench/cycle.py --clients 1,8,32 --seconds 5
    python bench/cycle.py --url http://127.0.0.1:8080   # an already-running server
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tfstate
from _common import (
    etcd_requests,
    fresh_etcd_servers,
    fresh_server,
    member_pids,
    percentile,
    process_cpu_seconds,
)
from _http import HttpConnection, Response, loop_name, run

STEPS = ("LOCK", "GET", "POST", "UNLOCK")
Requester = Callable[[str, str, bytes, dict[str, str] | None], Awaitable[Response]]


class HttpxConnection:
    """Same interface as HttpConnection, on httpx.AsyncClient (for comparison)."""

    def __init__(self, base_url: str) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=base_url, timeout=60.0)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        r = await self._client.request(method, path, content=body, headers=headers)
        return Response(r.status_code, dict(r.headers), r.content)

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class ClientStats:
    cycles: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""


class CycleClient:
    def __init__(self, conn: HttpConnection | HttpxConnection, workspace: str, state: bytes):
        self.conn = conn
        self.ws = workspace
        self.head, self.tail = _tfstate.serial_template(state)
        self.serial = 0
        self.stats = ClientStats()

    def state(self, serial: int) -> bytes:
        return self.head + str(serial).encode() + self.tail

    async def seed(self) -> None:
        self.serial = 1
        body = self.state(self.serial)
        r = await self.conn.request("POST", f"/api/tofu/state/{self.ws}", body, _post_headers(body))
        if r.status != 200:
            raise RuntimeError(f"seeding {self.ws}: HTTP {r.status} {r.body[:300]!r}")

    async def cycle(self, record: bool) -> None:
        lock_id = str(uuid.uuid4())
        info = json.dumps(
            {
                "ID": lock_id,
                "Operation": "OperationTypeApply",
                "Info": "",
                "Who": "bench@127.0.0.1",
                "Version": "1.9.5",
                "Created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "Path": "",
            }
        ).encode()
        json_ct = {"Content-Type": "application/json"}
        t0 = time.perf_counter()
        r_lock = await self.conn.request("LOCK", f"/api/tofu/lock/{self.ws}", info, json_ct)
        t1 = time.perf_counter()
        r_get = await self.conn.request("GET", f"/api/tofu/state/{self.ws}", b"", None)
        t2 = time.perf_counter()
        body = self.state(self.serial + 1)
        r_post = await self.conn.request(
            "POST", f"/api/tofu/state/{self.ws}?ID={lock_id}", body, _post_headers(body)
        )
        t3 = time.perf_counter()
        r_unlock = await self.conn.request("UNLOCK", f"/api/tofu/unlock/{self.ws}", info, json_ct)
        t4 = time.perf_counter()
        ok = True
        for step, r in zip(STEPS, (r_lock, r_get, r_post, r_unlock), strict=True):
            if r.status != 200:
                ok = False
                self.stats.errors[f"{step} {r.status}"] += 1
                if not self.stats.first_error:
                    self.stats.first_error = f"{step} -> {r.status}: {r.body[:300]!r}"
        if r_post.status == 200:
            self.serial += 1
        if record and ok:
            self.stats.cycles.append(t4 - t0)
            for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                self.stats.steps[step].append(dt)


def _post_headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
    }


async def run_level(
    urls: list[str], clients: int, seconds: float, warmup: float, state: bytes, client_kind: str
) -> tuple[list[CycleClient], float]:
    run_id = uuid.uuid4().hex[:8]
    conns: list[HttpConnection | HttpxConnection] = [
        HttpConnection(url) if client_kind == "raw" else HttpxConnection(url)
        for url in (urls[i % len(urls)] for i in range(clients))
    ]
    workers = [
        CycleClient(conn, f"bench-{run_id}-c{clients}-{i}", state) for i, conn in enumerate(conns)
    ]
    try:
        await asyncio.gather(*(w.seed() for w in workers))
        start = time.perf_counter()
        warm_end = start + warmup
        end = warm_end + seconds

        async def loop(w: CycleClient) -> None:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                await w.cycle(record=now >= warm_end)

        await asyncio.gather(*(loop(w) for w in workers))
        elapsed = time.perf_counter() - warm_end
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
    return workers, elapsed


def report(
    clients: int,
    workers: list[CycleClient],
    elapsed: float,
    server_cpu: float | None,
    client_cpu: float,
    etcd_cpu: float | None = None,
    etcd_work: dict[str, float] | None = None,
) -> float:
    """Print one level's figures; answers its cycles/s."""
    cycles = sorted(c for w in workers for c in w.stats.cycles)
    errors: Counter[str] = Counter()
    for w in workers:
        errors.update(w.stats.errors)
    rate = len(cycles) / elapsed if elapsed > 0 else 0.0
    p50, p99 = percentile(cycles, 0.50) * 1e3, percentile(cycles, 0.99) * 1e3
    print(
        f"clients={clients:<3} cycles={len(cycles):<6} {rate:7.1f} cycles/s   "
        f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {max(cycles, default=0.0) * 1e3:6.1f} ms"
    )
    parts = []
    for step in STEPS:
        values = sorted(v for w in workers for v in w.stats.steps[step])
        parts.append(
            f"{step} {percentile(values, 0.5) * 1e3:.2f}/{percentile(values, 0.99) * 1e3:.2f}"
        )
    print("    per step p50/p99 ms: " + "  ".join(parts))
    cpu = f"client CPU {100 * client_cpu / elapsed:.0f}%"
    if etcd_cpu is not None:
        cpu = f"etcd members CPU {100 * etcd_cpu / elapsed:.0f}%   " + cpu
    if server_cpu is not None:
        cpu = f"server CPU {100 * server_cpu / elapsed:.0f}%   " + cpu
    print(f"    {cpu}   (100% = one core; {os.cpu_count()} cores)")
    if cycles:
        # CPU per cycle moves less than cycles/s when other work shares the machine.
        per = [f"client {1e3 * client_cpu / len(cycles):.2f}"]
        if etcd_cpu is not None:
            per.insert(0, f"etcd members {1e3 * etcd_cpu / len(cycles):.2f}")
        if server_cpu is not None:
            per.insert(0, f"server {1e3 * server_cpu / len(cycles):.2f}")
        print(f"    CPU ms per cycle: {'  '.join(per)}")
        if etcd_work is not None:
            work = "  ".join(f"{k} {v / len(cycles):.2f}" for k, v in etcd_work.items())
            print(f"    etcd per cycle: {work}")
    if errors:
        print(f"    errors: {dict(errors)}")
        first = next(w.stats.first_error for w in workers if w.stats.first_error)
        print(f"    first error: {first}")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    ap.add_argument("--state-kib", type=int, default=100, help="state size in KiB")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw", help="HTTP client")
    ap.add_argument(
        "--engine",
        default="sqlite",
        help="storage of the fresh server: sqlite, or etcd (a fresh 3-member cluster here); "
        "sqlite,etcd benches both, alternating, and prints the ratio",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every engine and level this many times, interleaved; medians are reported",
    )
    ap.add_argument(
        "--etcd-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="an extra flag for every etcd member, e.g. --etcd-flag=--log-level=warn",
    )
    ap.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="etcd engine: Blixard nodes on the cluster, clients spread over them round robin",
    )
    ap.add_argument("--url", help="bench this running server instead of starting one")
    args = ap.parse_args()

    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if not engines or any(e not in ("sqlite", "etcd") for e in engines):
        ap.error("--engine takes sqlite, etcd or sqlite,etcd")
    resources = _tfstate.resources_for_size(args.state_kib * 1024)
    state = _tfstate.make_state(resources, 0, _tfstate.new_lineage())
    rates: dict[tuple[str, int], list[float]] = {}
    for round_number in range(args.rounds):
        for engine in engines:
            if args.rounds > 1:
                print(f"-- round {round_number + 1}/{args.rounds}")
            for clients in levels:
                first = clients == levels[0]
                rate = bench_level(args, engine, clients, state, len(resources), first)
                rates.setdefault((engine, clients), []).append(rate)
    if args.rounds > 1 or len(engines) > 1:
        summarize(engines, levels, rates)


def bench_level(
    args: argparse.Namespace,
    engine_name: str,
    clients: int,
    state: bytes,
    resource_count: int,
    header: bool,
) -> float:
    """One level on a fresh server (and cluster): prints its figures, answers cycles/s."""
    engine = "server at " + args.url if args.url else f"{engine_name} engine"
    if engine_name == "etcd" and not args.url:
        engine += " (3 members on 127.0.0.1"
        # The members inherit the environment: GOMAXPROCS=1 gives each one core's worth.
        if os.environ.get("GOMAXPROCS"):
            engine += f", GOMAXPROCS={os.environ['GOMAXPROCS']}"
        engine += "".join(f" {flag}" for flag in args.etcd_flag) + ")"
        if args.nodes > 1:
            engine += f", {args.nodes} Blixard nodes"
    if header:
        print(
            f"{engine}: Terraform write cycle LOCK->GET->POST->UNLOCK, "
            f"state {len(state) / 1024:.0f} KiB "
            f"({resource_count} resources), {args.seconds:g} s per level after "
            f"{args.warmup:g} s warm-up, client={args.client} on {loop_name()}"
        )
    if args.url:
        cpu0 = time.process_time()
        workers, elapsed = run(
            run_level([args.url], clients, args.seconds, args.warmup, state, args.client)
        )
        return report(clients, workers, elapsed, None, time.process_time() - cpu0)
    with contextlib.ExitStack() as stack:
        members: list[int] = []
        if engine_name == "etcd":
            servers, cluster = stack.enter_context(
                fresh_etcd_servers(f"cycle{clients}", etcd_flags=args.etcd_flag, nodes=args.nodes)
            )
            members = member_pids(cluster)
        else:
            server, _ = stack.enter_context(fresh_server(f"cycle{clients}"))
            servers = [server]
        pids = [server.proc.pid for server in servers if server.proc is not None]
        cpu0 = time.process_time()
        scpu0 = sum(process_cpu_seconds(p) for p in pids)
        ecpu0 = sum(process_cpu_seconds(p) for p in members)
        work0 = etcd_requests(cluster) if members else {}
        workers, elapsed = run(
            run_level(
                [s.url for s in servers], clients, args.seconds, args.warmup, state, args.client
            )
        )
        # CPU is measured over warm-up + run; scale to the measured window.
        share = elapsed / (elapsed + args.warmup)
        etcd_cpu = sum(process_cpu_seconds(p) for p in members) - ecpu0
        work = (
            {k: (v - work0[k]) * share for k, v in etcd_requests(cluster).items()}
            if members
            else None
        )
        return report(
            clients,
            workers,
            elapsed,
            (sum(process_cpu_seconds(p) for p in pids) - scpu0) * share,
            (time.process_time() - cpu0) * share,
            etcd_cpu * share if members else None,
            work,
        )


def summarize(
    engines: list[str], levels: list[int], rates: dict[tuple[str, int], list[float]]
) -> None:
    """Median cycles/s per engine and level over the rounds, and etcd's share of SQLite's."""
    print("\nsummary (median of rounds; min-max):")
    medians: dict[tuple[str, int], float] = {}
    for engine in engines:
        for clients in levels:
            values = sorted(rates[engine, clients])
            medians[engine, clients] = statistics.median(values)
            print(
                f"  {engine:6} clients={clients:<3} {medians[engine, clients]:7.1f} cycles/s   "
                f"({values[0]:.1f}-{values[-1]:.1f}, {len(values)} rounds)"
            )
    if "sqlite" in engines and "etcd" in engines:
        for clients in levels:
            share = medians["etcd", clients] / medians["sqlite", clients]
            print(f"  etcd / sqlite at clients={clients}: {100 * share:.0f}%")


if __name__ == "__main__":
    main()
