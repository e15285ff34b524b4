"""The gateway's OPC UA client under many monitored items: does lag build up?

    python bench/opcua_client_items.py [--items 3000,6000,10000] [--duration 120]

For each size, a node-opcua server (not our stack) changes N variables every second; the
gateway, in this process, subscribes to all of them through its OPC UA client adapter and
publishes them on its bus. The age of each sample when it reaches the bus (now minus the
server's SourceTimestamp) is taken over the first and the last 10 s of the run (of each half,
in a run shorter than 20 s): if the client cannot keep up, the age grows over the run (asyncua
users report that at 6,000 items).

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    bench_folder,
    free_port,
    node_binary,
    percentile,
    run_bench,
)

WINDOW = 10.0
# The server changes its values once a second: a shorter window may hold no sample at all.
MIN_DURATION = 2.0


def config_text(url: str, items: int, pki: Path) -> str:
    points = "\n".join(
        f"      - {{name: v{i}, node_id: 'ns=1;s=v{i}', sampling_interval: 0}}"
        for i in range(items)
    )
    return f"""
gateway: {{name: bench, status_interval: 0}}
devices:
  peer:
    protocol: opcua
    url: {url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}"}}
    subscription: {{publishing_interval: 0.1, batch_size: 1000, queue_size: 2}}
    points:
{points}
"""


async def measure(url: str, items: int, duration: float, pki: Path) -> dict[str, float | None]:
    from gateway.config import load_config_text
    from gateway.runtime import Gateway

    gateway = Gateway(load_config_text(config_text(url, items, pki), "<bench>"))
    sub = gateway.bus.subscribe("telemetry/#", maxsize=100_000, name="bench")
    stop = asyncio.Event()
    runner = asyncio.create_task(gateway.run(stop))
    first: list[float] = []
    last: list[float] = []
    count = 0
    loop = asyncio.get_running_loop()
    # Wait for the initial values of every item, then measure.
    seen: set[str] = set()
    deadline = loop.time() + 120
    while len(seen) < items and loop.time() < deadline:
        message = await asyncio.wait_for(sub.get(), 60)
        seen.update(s.point for s in message.samples)
    window = min(WINDOW, duration / 2)  # the two windows never overlap
    start = loop.time()
    cpu0 = time.process_time()
    while (elapsed := loop.time() - start) < duration:
        try:
            message = await asyncio.wait_for(sub.get(), 5)
        except TimeoutError:
            continue
        now = time.time()
        ages = [now - s.source_ts for s in message.samples]
        count += len(ages)
        if elapsed < window:
            first.extend(ages)
        elif elapsed >= duration - window:
            last.extend(ages)
    cpu = time.process_time() - cpu0
    wall = loop.time() - start
    stop.set()
    await runner
    return {
        "items": items,
        "initial_values": len(seen),
        "samples_per_s": round(count / wall),
        "window_s": window,
        "age_p50_ms_start": _ms(first, 0.5),
        "age_p99_ms_start": _ms(first, 0.99),
        "age_p50_ms_end": _ms(last, 0.5),
        "age_p99_ms_end": _ms(last, 0.99),
        "gateway_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
        "dropped_on_bus": sub.counters.dropped,
    }


def _ms(ages: list[float], q: float) -> float | None:
    """A percentile in ms; None (JSON null, never NaN) for a window that got no sample."""
    return round(1000 * percentile(ages, q), 1) if ages else None


def run_size(items: int, duration: float) -> dict[str, float | None]:
    port = free_port()
    server = subprocess.Popen(
        [
            node_binary(),
            "opcua_server.js",
            "--port",
            str(port),
            "--variables",
            str(items),
            "--period",
            "1000",
        ],
        cwd=ROOT / "tests" / "interop" / "node",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("{") and json.loads(line).get("ready"):
                url = json.loads(line)["url"]
                break
        else:
            raise SystemExit("node-opcua server did not start")
        with bench_folder("pb-bench-items-") as pki:
            return asyncio.run(measure(url, items, duration, pki))
    finally:
        server.terminate()
        server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", default="3000,6000,10000")
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    if args.duration < MIN_DURATION:
        parser.error(
            f"--duration must be at least {MIN_DURATION:g} s: the ages are taken over the first "
            "and the last part of the run, and the server changes its values once a second"
        )
    results = []
    for n in (int(x) for x in args.items.split(",")):
        r = run_size(n, args.duration)
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()), file=sys.stderr)
        results.append(r)
    print(json.dumps({"opcua_client_items": results, "cores": os.cpu_count()}))


if __name__ == "__main__":
    sys.exit(run_bench(main))
