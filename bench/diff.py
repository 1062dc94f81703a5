"""Benchmark the explorer: GET /diff and GET /resources on versions of a ~10 MiB state.

Builds a realistic state of about 10,000 resource instances (S3-bucket-like, ~1 KiB each), writes a
series of versions to a fresh server, each changing 1 % of the instances of the one before,
then times (client-side, over loopback keep-alive, so an upper bound on server time):

- diff, new pair: GET /diff?from=N-1&to=N for each successive pair; one side was parsed by
  the pair before, so each request parses one 10 MiB version (the cache's usual case);
- diff, both cold: pairs far apart whose versions have left the cache (two parses);
- diff, cached: the same pair again (both versions in the parsed-version cache);
- resources: GET /resources?limit=100 (the first page, then a page deep into the list)
  and a type-filtered page, on a cached version.

Figures only; nothing asserted.

    python bench/diff.py                  # SQLite, 10 MiB, 12 versions
    python bench/diff.py --mib 10 --versions 12 --repeat 30
    python bench/diff.py --engine etcd    # a fresh 3-member etcd cluster
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tfstate
from _common import fresh_etcd_servers, fresh_server, mib, percentile, process_cpu_seconds
from _http import HttpConnection, run


def bucket(i: int, rev: int) -> dict[str, Any]:
    """An S3-bucket-like resource of about 1 KiB as Terraform writes it (indented), so that a
    10 MiB state holds about 10,000 instances; `rev` changes its tags and versioning."""
    name = f"svc-{i:05d}-{_tfstate._hex(random.Random(i), 8)}"
    return {
        "mode": "managed",
        "type": ("aws_s3_bucket", "aws_sqs_queue", "aws_iam_role")[i % 3],
        "name": f"b_{i:05d}",
        "provider": _tfstate.AWS,
        "instances": [
            {
                "schema_version": 0,
                "attributes": {
                    "arn": f"arn:aws:s3:::{name}",
                    "bucket": name,
                    "bucket_domain_name": f"{name}.s3.amazonaws.com",
                    "bucket_regional_domain_name": f"{name}.s3.eu-west-1.amazonaws.com",
                    "id": name,
                    "tags": _tfstate._tags(i, rev),
                    "versioning": [{"enabled": rev % 2 == 1, "mfa_delete": False}],
                },
                "sensitive_attributes": [],
                "dependencies": [],
            }
        ],
    }


def build_versions(target_mib: float, count: int) -> tuple[list[bytes], int]:
    """`count` state bodies; each changes 1 % of the instances of the one before."""
    sample = len(_tfstate.make_state([bucket(i, 0) for i in range(100)], 1, "x")) / 100
    resources = [bucket(i, 0) for i in range(round(target_mib * (1 << 20) / sample))]
    lineage = _tfstate.new_lineage()
    bodies = [_tfstate.make_state(resources, 1, lineage)]
    for version in range(2, count + 1):
        for i in range(version % 100, len(resources), 100):
            resources[i] = bucket(i, rev=version)
        bodies.append(_tfstate.make_state(resources, version, lineage))
    return bodies, len(resources)


async def timed(conn: HttpConnection, path: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    response = await conn.request("GET", path)
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"GET {path}: HTTP {response.status}: {response.body[:300]!r}")
    body: dict[str, object] = json.loads(response.body)
    return elapsed, body


def report(label: str, samples: list[float], cpu: float) -> None:
    """Latency percentiles, and the server's CPU seconds per request (its process and
    threads), which a loaded machine inflates far less than wall-clock latency."""
    ordered = sorted(samples)
    print(
        f"  {label:<30} n={len(ordered):<3} p50 {percentile(ordered, 0.5) * 1000:7.1f} ms"
        f"   p95 {percentile(ordered, 0.95) * 1000:7.1f} ms"
        f"   server CPU {cpu / len(ordered) * 1000:6.1f} ms/request"
    )


async def exercise(url: str, pid: int, bodies: list[bytes], repeat: int) -> None:
    conn = HttpConnection(url)
    cpu: dict[str, float] = {}

    def cpu_since(label: str, started: float) -> None:
        cpu[label] = process_cpu_seconds(pid) - started

    ws = f"diff-{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        for body in bodies:
            response = await conn.request(
                "POST",
                f"/api/tofu/state/{ws}",
                body,
                {"Content-Type": "application/json"},
            )
            if response.status != 200:
                raise SystemExit(f"POST: HTTP {response.status}: {response.body[:300]!r}")
        print(f"  wrote {len(bodies)} versions in {time.perf_counter() - started:.1f} s")

        new_pairs: list[float] = []
        summary: dict[str, object] = {}
        cpu0 = process_cpu_seconds(pid)
        for version in range(2, len(bodies) + 1):
            elapsed, answer = await timed(
                conn, f"/api/tofu/diff/{ws}?from={version - 1}&to={version}"
            )
            new_pairs.append(elapsed)
            summary = answer["summary"]  # type: ignore[assignment]
        cpu_since("new", cpu0)
        print(f"  last pair's summary: {summary}")

        cold: list[float] = []
        cpu0 = process_cpu_seconds(pid)
        last = len(bodies)
        half = last // 2
        for version in range(1, min(half, 6) + 1):
            # Versions 1..6 and their partners half the series later: the cache (a few
            # 10 MiB versions) no longer holds them after the pass above, nor each other.
            elapsed, _ = await timed(
                conn, f"/api/tofu/diff/{ws}?from={version}&to={version + half}"
            )
            cold.append(elapsed)
        cpu_since("cold", cpu0)

        cached: list[float] = []
        cpu0 = process_cpu_seconds(pid)
        for _ in range(repeat):
            elapsed, _ = await timed(conn, f"/api/tofu/diff/{ws}?from={last - 1}&to={last}")
            cached.append(elapsed)
        cpu_since("cached", cpu0)

        first_page: list[float] = []
        deep_page: list[float] = []
        typed: list[float] = []
        _, page = await timed(conn, f"/api/tofu/resources/{ws}?limit=1000")
        middle = page["resources"][-1]["address"]  # type: ignore[index]
        pages = {
            "first": (first_page, f"/api/tofu/resources/{ws}?limit=100"),
            "deep": (deep_page, f"/api/tofu/resources/{ws}?limit=100&after={middle}"),
            "typed": (typed, f"/api/tofu/resources/{ws}?limit=100&type=aws_sqs_queue"),
        }
        for label, (samples, path) in pages.items():
            cpu0 = process_cpu_seconds(pid)
            for _ in range(repeat):
                samples.append((await timed(conn, path))[0])
            cpu_since(label, cpu0)
        report("diff, new pair (one parse)", new_pairs, cpu["new"])
        report("diff, both versions cold", cold, cpu["cold"])
        report("diff, cached pair", cached, cpu["cached"])
        report("resources, first page of 100", first_page, cpu["first"])
        report("resources, page after 1,000", deep_page, cpu["deep"])
        report("resources, type filter", typed, cpu["typed"])
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mib", type=float, default=10.0, help="state size in MiB")
    parser.add_argument("--versions", type=int, default=12, help="versions written")
    parser.add_argument("--repeat", type=int, default=30, help="samples of the cached cases")
    parser.add_argument("--engine", choices=("sqlite", "etcd"), default="sqlite")
    args = parser.parse_args()

    started = time.perf_counter()
    bodies, instances = build_versions(args.mib, max(args.versions, 4))
    print(
        f"state: {mib(len(bodies[0]))}, {instances:,} instances, 1 % changed per version; "
        f"built in {time.perf_counter() - started:.1f} s"
    )
    if args.engine == "sqlite":
        with fresh_server("diff") as (server, _):
            print(f"engine: sqlite ({server.url})")
            assert server.proc is not None
            run(exercise(server.url, server.proc.pid, bodies, args.repeat))
    else:
        with fresh_etcd_servers("diff") as (servers, _):
            print(f"engine: etcd, 3 members ({servers[0].url})")
            assert servers[0].proc is not None
            run(exercise(servers[0].url, servers[0].proc.pid, bodies, args.repeat))


if __name__ == "__main__":
    main()
