"""Benchmark history storage: 1,000 successive versions of a ~1 MB state.

Each version changes one resource's attributes and bumps the serial, as a small
`terraform apply` does. Prints the write rate, then (after a clean server stop, so the
WAL is checkpointed) the bytes on disk against the raw bytes written, and the cost of
reading old versions back. Figures only; nothing asserted.

    python bench/history.py
    python bench/history.py --versions 300 --state-kib 4096
    python bench/history.py --encrypt          # encryption at rest on (a fresh random key)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tfstate
from _common import dir_bytes, fresh_server, mib, percentile, process_cpu_seconds
from _http import HttpConnection, run


async def write_versions(
    url: str, ws: str, versions: int, state_kib: int
) -> tuple[int, list[float], dict[int, str], float]:
    """POST `versions` states; return raw bytes, per-POST latencies, sha256 by version, wall s."""
    resources = _tfstate.resources_for_size(state_kib * 1024)
    lineage = _tfstate.new_lineage()
    conn = HttpConnection(url)
    raw = 0
    latencies: list[float] = []
    hashes: dict[int, str] = {}
    start = time.perf_counter()
    try:
        for v in range(1, versions + 1):
            if v > 1:
                idx = (v * 7919) % len(resources)
                resources[idx] = _tfstate.make_resource(idx, rev=v)
            body = _tfstate.make_state(resources, v, lineage)
            headers = {
                "Content-Type": "application/json",
                "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
            }
            t0 = time.perf_counter()
            r = await conn.request("POST", f"/api/tofu/state/{ws}", body, headers)
            latencies.append(time.perf_counter() - t0)
            if r.status != 200:
                raise SystemExit(f"version {v}: HTTP {r.status} {r.body[:300]!r}")
            raw += len(body)
            hashes[v] = hashlib.sha256(body).hexdigest()
            if v % 250 == 0:
                print(f"  ... {v} versions written", flush=True)
    finally:
        await conn.close()
    return raw, latencies, hashes, time.perf_counter() - start


async def read_back(url: str, ws: str, hashes: dict[int, str]) -> list[tuple[int, float, bool]]:
    conn = HttpConnection(url)
    n = len(hashes)
    picks = sorted({1, 2, n // 4, n // 2, n - 1, n} & set(hashes))
    out = []
    try:
        for v in picks:
            t0 = time.perf_counter()
            r = await conn.request("GET", f"/api/tofu/state/{ws}?version={v}")
            dt = time.perf_counter() - t0
            out.append((v, dt, r.status == 200 and hashlib.sha256(r.body).hexdigest() == hashes[v]))
    finally:
        await conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--state-kib", type=int, default=1024, help="state size in KiB (~1 MB)")
    ap.add_argument(
        "--encrypt",
        action="store_true",
        help="run the server with BLIXARD_ENCRYPTION_KEY set (AES-256-GCM at rest)",
    )
    args = ap.parse_args()

    env = {"BLIXARD_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
    print(f"encryption at rest: {'on' if args.encrypt else 'off'}")
    ws = f"history-{uuid.uuid4().hex[:8]}"
    with fresh_server("history", env=env if args.encrypt else None) as (server, data_dir):
        assert server.proc is not None
        cpu0 = process_cpu_seconds(server.proc.pid)
        raw, lat, hashes, wall = run(write_versions(server.url, ws, args.versions, args.state_kib))
        server_cpu = process_cpu_seconds(server.proc.pid) - cpu0
        lat.sort()
        print(
            f"wrote {args.versions} versions of ~{raw / args.versions / 1e6:.2f} MB "
            f"({mib(raw)} raw) in {wall:.1f} s wall "
            f"(incl. client-side JSON generation): {args.versions / wall:.1f} versions/s"
        )
        print(
            f"POST latency p50 {percentile(lat, 0.5) * 1e3:.1f} ms  "
            f"p99 {percentile(lat, 0.99) * 1e3:.1f} ms  max {lat[-1] * 1e3:.1f} ms; "
            f"server-side rate {args.versions / sum(lat):.1f} versions/s "
            f"({raw / sum(lat) / (1 << 20):.1f} MiB/s); server CPU {server_cpu:.1f} s"
        )
        for v, dt, ok in run(read_back(server.url, ws, hashes)):
            print(f"  GET ?version={v:<5} {dt * 1e3:7.1f} ms  {'ok' if ok else 'MISMATCH'}")
        running = dir_bytes(data_dir)
        server.stop()
        stopped = dir_bytes(data_dir)

    def line(label: str, files: dict[str, int]) -> None:
        total = sum(files.values())
        detail = ", ".join(f"{name} {mib(size)}" for name, size in files.items())
        print(f"{label}: {mib(total)} = {100 * total / raw:.2f}% of {mib(raw)} raw   [{detail}]")

    line("on disk while running", running)
    line("on disk after clean stop", stopped)


if __name__ == "__main__":
    main()
