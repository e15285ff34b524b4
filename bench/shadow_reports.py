"""CPU cost of one reading in the shadow store: microseconds per `ShadowStore.report` of one
device, ~10 % of its points changed per reading, one transaction each (``write_delay`` 0).
``python bench/shadow_reports.py [--points 250 2000] [--readings N] [--change 0.1]``

Each device first reports all its points (numbers), then ``--readings`` readings each carry a
random tenth of them with new values. Merges of staged history rows are left out (``merge_rows``
and ``merge_interval`` out of reach: a merge is a cost of its own, once a minute), so the figure
is the document (load, merge the readings, save) plus the staged history rows. ``encode`` and
``decode`` are what ``json.dumps`` / ``json.loads`` of the device's whole body take alone, for
comparison (CPU time). Times are medians, wall clock and the thread's CPU time (a shared
machine: the CPU time leaves out the time the thread waited for a core). The file lives in a
temporary folder (the CPU's cost, not the disk's: synchronous is NORMAL, so a commit in WAL mode
does not sync).

Human-readable lines first, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_bench  # noqa: E402

from gateway.shadow.store import ShadowStore

START = 1_700_000_000.0


def one(folder: str, points: int, readings: int, change: float, seed: int) -> dict[str, Any]:
    """The figures of one device of ``points`` points."""
    rng = random.Random(seed)
    clock = [START]
    store = ShadowStore(
        str(Path(folder) / f"reports-{points}.db"),
        clock=lambda: clock[0],
        merge_rows=1 << 62,
        merge_interval=float("inf"),
    )
    names = [f"point_{i:04d}" for i in range(points)]
    store.report("dev", {n: (rng.uniform(0, 1000), "good", START) for n in names})
    per = max(1, round(points * change))
    times: list[float] = []
    cpu: list[float] = []
    for i in range(readings):
        clock[0] = ts = START + 1 + i
        samples = {n: (rng.uniform(0, 1000), "good", ts) for n in rng.sample(names, per)}
        start, start_cpu = time.perf_counter(), time.thread_time()
        store.report("dev", samples)
        cpu.append(time.thread_time() - start_cpu)
        times.append(time.perf_counter() - start)
    doc = store.get("dev")
    body = doc._body()
    start = time.thread_time()
    for _ in range(20):
        json.loads(body)
    decode = (time.thread_time() - start) / 20
    start = time.thread_time()
    for _ in range(20):
        doc._body()
    encode = (time.thread_time() - start) / 20
    store.close()
    return {
        "points": points,
        "changed_per_reading": per,
        "readings": readings,
        "body_bytes": len(body),
        "us_per_report_median": round(statistics.median(times) * 1e6),
        "us_per_report_mean": round(statistics.fmean(times) * 1e6),
        "us_cpu_per_report_median": round(statistics.median(cpu) * 1e6),
        "us_decode_body": round(decode * 1e6),
        "us_encode_body": round(encode * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, nargs="+", default=[250, 2000])
    parser.add_argument("--readings", type=int, default=1000)
    parser.add_argument("--change", type=float, default=0.1, help="share of points per reading")
    args = parser.parse_args()
    result: dict[str, Any] = {"change": args.change}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, points in enumerate(args.points):
            figures = one(tmp, points, args.readings, args.change, seed)
            result[f"p{points}"] = figures
            print(
                f"{points} points, {figures['changed_per_reading']} changed per reading: "
                f"{figures['us_per_report_median']} us per report (median; mean "
                f"{figures['us_per_report_mean']}; CPU {figures['us_cpu_per_report_median']}); "
                f"body {figures['body_bytes']:,} bytes, "
                f"json.loads {figures['us_decode_body']} us, dumps {figures['us_encode_body']} us"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
