"""What the resource index costs a write, by what the write changed.

Times `store.resource_index.build_doc` (what both engines run on each write, on the event loop
below 1 MiB) and, for scale, `parse_state` (which every write ran before the index existed)
over successive versions of realistic states (bench/_tfstate.py), in three cases: resources
unchanged (a serial bump, outputs, a state persisted again during an apply), 1 % of the
resources changed per version, and every resource new. Each case first builds the head's
document the way the previous write did, so reuse is what a server sees. Figures only.

    python bench/index_write.py                    # 100 KiB, 1 MiB and 10 MiB states
    python bench/index_write.py --sizes 100 --versions 400
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _tfstate

from blixard.domain.parsing import parse_state
from blixard.store.resource_index import build_doc


def versions(size_kib: int, count: int, changed_share: float) -> list[bytes]:
    """`count` successive states of about `size_kib` KiB whose resources change by
    `changed_share` per version (0: only the serial moves; 1: every resource is new)."""
    resources = _tfstate.resources_for_size(size_kib * 1024)
    lineage = _tfstate.new_lineage()
    states = []
    step = max(1, round(len(resources) * changed_share)) if changed_share else 0
    for serial in range(count):
        if changed_share >= 1:
            resources = [_tfstate.make_resource(i, serial) for i in range(len(resources))]
        elif step:
            for n in range(step):
                i = (serial * step + n) % len(resources)
                resources[i] = _tfstate.make_resource(i, serial)
        states.append(_tfstate.make_state(resources, serial, lineage))
    return states


def measure(states: list[bytes]) -> tuple[list[float], list[float]]:
    """Milliseconds of build_doc and of parse_state per version (the first, which has no
    head to reuse, is left out)."""
    index_ms, parse_ms = [], []
    previous = None
    for number, body in enumerate(states, start=1):
        start = time.perf_counter()
        meta = parse_state(body)
        parsed = time.perf_counter()
        packed, _, resources = build_doc(number, body, previous, meta.resources)
        built = time.perf_counter()
        previous = (resources, packed) if resources is not None else None
        if number > 1:
            parse_ms.append((parsed - start) * 1000)
            index_ms.append((built - parsed) * 1000)
    return index_ms, parse_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100,1024,10240", help="state sizes in KiB")
    ap.add_argument("--versions", type=int, default=0, help="versions per case (default: by size)")
    args = ap.parse_args()
    print("build_doc (the index's work per write) and parse_state, ms per version, p50 / p90")
    for size in (int(s) for s in args.sizes.split(",")):
        count = args.versions or max(20, min(400, 40_000 // size))
        for label, share in (("unchanged", 0.0), ("1 % changed", 0.01), ("all new", 1.0)):
            index_ms, parse_ms = measure(versions(size, count, share))
            index_ms.sort()
            parse_ms.sort()
            print(
                f"{size:>6} KiB  {label:<12} index {statistics.median(index_ms):8.3f} / "
                f"{index_ms[int(len(index_ms) * 0.9)]:8.3f}   parse "
                f"{statistics.median(parse_ms):8.3f} / {parse_ms[int(len(parse_ms) * 0.9)]:8.3f}"
                f"   ({count} versions)"
            )


if __name__ == "__main__":
    main()
