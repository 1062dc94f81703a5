"""Benchmark a large state: POST then GET a realistic ~50 MiB tfstate.

Prints seconds for each request and the server's peak RSS growth (VmHWM after the
requests minus RSS before them) against the state size. Figures only; nothing asserted.

    python bench/large_state.py              # fresh server, 50 MiB
    python bench/large_state.py --mib 200
    python bench/large_state.py --url http://127.0.0.1:8080   # no RSS figures then
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tfstate
from _common import fresh_server, mib
from _http import HttpConnection, run


def _headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
    }


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs 5), if permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def exercise(
    url: str, ws: str, state1: bytes, state2: bytes, gets: int, pid: int | None = None
) -> list[tuple[str, float, str]]:
    """POST state1, GET it `gets` times, POST state2 (serial+1), GET it once.

    With the server's pid, each step's note also carries that step's own peak RSS growth
    (VmHWM reset before the step, read after it).
    """
    conn = HttpConnection(url)
    results: list[tuple[str, float, str]] = []

    def before() -> int | None:
        if pid is None:
            return None
        rss = _status_kib(pid, "VmRSS")
        return rss if _reset_peak(pid) else None

    def after(note: str, rss0: int | None) -> str:
        if pid is None or rss0 is None:
            return note
        growth = _status_kib(pid, "VmHWM") - rss0
        return f"{note}; step peak RSS +{mib(growth)} ({growth / len(state1):.2f}x)"

    async def post(label: str, body: bytes) -> None:
        rss0 = before()
        t0 = time.perf_counter()
        r = await conn.request("POST", f"/api/tofu/state/{ws}", body, _headers(body))
        dt = time.perf_counter() - t0
        note = "200" if r.status == 200 else f"HTTP {r.status}: {r.body[:300]!r}"
        results.append((label, dt, after(note, rss0)))

    async def get(label: str, expected: bytes) -> None:
        rss0 = before()
        t0 = time.perf_counter()
        r = await conn.request("GET", f"/api/tofu/state/{ws}")
        dt = time.perf_counter() - t0
        if r.status != 200:
            note = f"HTTP {r.status}: {r.body[:300]!r}"
        elif r.body == expected:
            note = "bytes identical"
        else:
            note = f"BYTES DIFFER ({len(r.body)} vs {len(expected)} bytes)"
        results.append((label, dt, after(note, rss0)))

    try:
        await conn.request("GET", "/health")
        await post("POST", state1)
        for i in range(gets):
            await get(f"GET #{i + 1}", state1)
        await post("POST serial+1", state2)
        await get("GET serial+1", state2)
    finally:
        await conn.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=float, default=50.0, help="state size in MiB")
    ap.add_argument("--gets", type=int, default=3, help="GETs of the first version")
    ap.add_argument("--url", help="bench this running server instead of starting one")
    args = ap.parse_args()

    t0 = time.perf_counter()
    resources = _tfstate.resources_for_size(int(args.mib * (1 << 20)))
    lineage = _tfstate.new_lineage()
    state1 = _tfstate.make_state(resources, 1, lineage)
    resources[len(resources) // 2] = _tfstate.make_resource(len(resources) // 2, rev=1)
    state2 = _tfstate.make_state(resources, 2, lineage)
    print(
        f"state: {mib(len(state1))} ({len(state1):,} bytes, {len(resources):,} resources), "
        f"generated in {time.perf_counter() - t0:.1f} s"
    )
    ws = f"large-{uuid.uuid4().hex[:8]}"

    def show(results: list[tuple[str, float, str]]) -> None:
        for label, dt, note in results:
            rate = len(state1) / dt / (1 << 20) if dt > 0 else 0.0
            print(f"  {label:<16} {dt:7.3f} s   {rate:7.1f} MiB/s   {note}")

    if args.url:
        show(run(exercise(args.url, ws, state1, state2, args.gets)))
        return

    with fresh_server("large") as (server, data_dir):
        # Let the server settle so RSS before reflects an idle, warmed-up process.
        run(_idle_requests(server.url))
        assert server.proc is not None
        rss_before = server.rss_bytes()
        hwm_before = server.peak_rss_bytes()
        # First pass: the overall peak, VmHWM untouched from before the first request.
        results = run(exercise(server.url, ws, state1, state2, args.gets))
        hwm_after = server.peak_rss_bytes()
        rss_after = server.rss_bytes()
        show(results)
        growth = hwm_after - rss_before
        print(
            f"server RSS before {mib(rss_before)} (peak so far {mib(hwm_before)}), "
            f"peak after {mib(hwm_after)}, RSS now {mib(rss_after)}"
        )
        print(f"peak RSS growth {mib(growth)} = {growth / len(state1):.2f}x the state size")
        # Second pass on a new workspace: where the peak comes from, step by step.
        print("per-step peak RSS (second workspace, VmHWM reset before each step):")
        show(run(exercise(server.url, ws + "-b", state1, state2, 1, pid=server.proc.pid)))
        server.stop()
        on_disk = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
        raw = 2 * (len(state1) + len(state2))
        print(
            f"data dir after 4 versions (2 workspaces x 2) and a clean stop: {mib(on_disk)} "
            f"({100 * on_disk / raw:.1f}% of the {mib(raw)} raw)"
        )


async def _idle_requests(url: str) -> None:
    conn = HttpConnection(url)
    try:
        for _ in range(20):
            await conn.request("GET", "/health")
            await conn.request("GET", "/api/tofu/workspaces")
        await asyncio.sleep(0.2)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
