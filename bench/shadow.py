"""Shadow store throughput: reported updates/s (one transaction per device poll), desired
updates/s, history queries. ``python bench/shadow.py [--devices N] [--points N] [--seconds S]``

Human-readable lines first, then the figures as one JSON object on the last line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_bench  # noqa: E402

from gateway.shadow.store import ShadowStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "devices": args.devices,
        "points": args.points,
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = ShadowStore(str(Path(tmp) / "bench.db"), max_rows=1000)
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            device = f"dev{n % args.devices}"
            now = time.time()
            store.report(device, {f"p{i}": (n + i, "good", now) for i in range(args.points)})
            n += 1
        elapsed = time.perf_counter() - start
        result["reported_polls_per_s"] = round(n / elapsed)
        result["reported_samples_per_s"] = round(n * args.points / elapsed)
        print(
            f"reported: {result['reported_polls_per_s']:,} polls/s, "
            f"{result['reported_samples_per_s']:,} samples/s "
            f"({args.points} changed points per poll)"
        )
        m = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds / 2:
            store.update(f"dev{m % args.devices}", desired={"p0": m})
            m += 1
        result["desired_updates_per_s"] = round(m / (time.perf_counter() - start))
        print(f"desired updates: {result['desired_updates_per_s']:,}/s")
        start = time.perf_counter()
        q = 0
        while time.perf_counter() - start < args.seconds / 2:
            store.history(f"dev{q % args.devices}", "p1", last=100)
            q += 1
        result["history_queries_per_s"] = round(q / (time.perf_counter() - start))
        print(f"history queries (last 100): {result['history_queries_per_s']:,}/s")
        result["pruned_rows"] = store.prune()
        print(f"pruned {result['pruned_rows']} rows")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
