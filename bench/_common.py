"""Shared helpers for the benchmarks: server lifecycle, CPU accounting, formatting."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import ServerProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fresh_server(
    label: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, Path]]:
    """A `blixard serve` on a free 127.0.0.1 port with an empty temporary data dir."""
    with tempfile.TemporaryDirectory(prefix=f"blixard-bench-{label}-") as tmp:
        data_dir = Path(tmp) / "data"
        server = ServerProcess(data_dir, env=env, log_path=Path(tmp) / "server.log")
        server.start(timeout=60)
        try:
            yield server, data_dir
        finally:
            server.stop()
            log = Path(tmp) / "server.log"
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
