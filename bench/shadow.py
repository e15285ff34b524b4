"""Shadow store throughput: reported updates/s (one transaction per device poll), desired
updates/s, history queries. ``python bench/shadow.py [--devices N] [--points N] [--seconds S]``"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gateway.shadow.store import ShadowStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
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
        print(
            f"reported: {n / elapsed:,.0f} polls/s, {n * args.points / elapsed:,.0f} samples/s "
            f"({args.points} changed points per poll)"
        )
        m = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds / 2:
            store.update(f"dev{m % args.devices}", desired={"p0": m})
            m += 1
        print(f"desired updates: {m / (time.perf_counter() - start):,.0f}/s")
        start = time.perf_counter()
        q = 0
        while time.perf_counter() - start < args.seconds / 2:
            store.history(f"dev{q % args.devices}", "p1", last=100)
            q += 1
        print(f"history queries (last 100): {q / (time.perf_counter() - start):,.0f}/s")
        print(f"pruned {store.prune()} rows")


if __name__ == "__main__":
    main()
