"""Outbox throughput: publishes stored and acknowledged per second, synchronous FULL and NORMAL.

    python bench/outbox.py [--messages 20000] [--batch 10]

Each append is one transaction of ``--batch`` publishes (a bus message with that many samples);
acknowledgements are committed every 100 publishes. Last line: one JSON object.
"""

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

from gateway.uplink.outbox import Outbox, OutboxConfig


def run(sync: str, messages: int, batch: int, directory: Path) -> dict[str, Any]:
    box = Outbox(directory / f"bench-{sync}.db", OutboxConfig(synchronous=sync))  # type: ignore[arg-type]
    payload = b'{"value":123.456,"quality":"good","ts":"2026-01-01T00:00:00.000Z"}'
    items = [("gw/dev/point", payload, 1, False)] * batch
    start = time.perf_counter()
    for _ in range(messages // batch):
        box.append(items)
    stored_s = time.perf_counter() - start
    start = time.perf_counter()
    while True:
        rows = box.take(100)
        if not rows:
            break
        box.ack(r.id for r in rows)
        box.commit()
    acked_s = time.perf_counter() - start
    box.close()
    return {
        "stored_per_s": round(messages / stored_s),
        "acknowledged_per_s": round(messages / acked_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    result: dict[str, Any] = {"messages": args.messages, "batch": args.batch}
    # In the working directory, not /tmp: fsync costs are those of a real disk, and /tmp
    # may be a RAM disk. Removed however the run ends (run_bench turns SIGTERM into Ctrl-C).
    with tempfile.TemporaryDirectory(dir=".") as d:
        for sync in ("FULL", "NORMAL"):
            result[sync] = run(sync, args.messages, args.batch, Path(d))
            print(f"{sync}: {result[sync]}")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
