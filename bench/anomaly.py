"""Anomaly scoring throughput on one core: samples scored per second by the bridge stage alone
(one message per model call, and a queue's worth per call) and inside a running bridge (bus ->
bridge pump -> stage -> target), which scores what queued up in one call. A sample is one numeric
value; a message of a device with ``--points`` points is scored in one window evaluation.

``python bench/anomaly.py [--model student|teacher|PATH] [--points 8] [--devices 4]
[--messages 20000] [--refresh TAU]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.anomaly.stage import AnomalyStage
from gateway.bridge import ANOMALY_BATCH, Bridge
from gateway.bus import Bus
from gateway.config.anomaly import AnomalyOptions
from gateway.config.model import BridgeConfig
from gateway.paths import STATE_ENV
from gateway.types import Message, Sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_folder, run_bench  # noqa: E402

CALIBRATION = 400


def make_messages(devices: int, points: int, rows: int, seed: int = 0) -> list[Message]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(1, 100, (devices, points))
    out = []
    for i in range(rows):
        for d in range(devices):
            values = base[d] + rng.normal(0, 1, points)
            samples = tuple(
                Sample(f"p{j}", float(v), source_ts=1000.0 + i) for j, v in enumerate(values)
            )
            out.append(Message.telemetry(f"dev{d}", samples))
    return out


class NullTarget:
    name = "null"

    def __init__(self) -> None:
        self.sent = 0
        self.expect = 0
        self.done = asyncio.Event()

    async def send(self, message: Message, route: Any) -> None:
        self.sent += 1
        if self.sent >= self.expect:
            self.done.set()

    def attach(self, bridge: Any) -> None:
        pass


def bench_stage(
    options: AnomalyOptions, calib: list[Message], run: list[Message], batch: int
) -> float:
    """The stage alone: ``batch`` messages per model call (1: one message at a time)."""
    stage = AnomalyStage(options, Bus(), "bench")
    for m in calib:
        stage.process(m)
    start = time.perf_counter()
    for i in range(0, len(run), batch):
        stage.process_batch(run[i : i + batch])
    elapsed = time.perf_counter() - start
    return stage.samples / elapsed


async def bench_bridge(options: AnomalyOptions, calib: list[Message], run: list[Message]) -> float:
    bus = Bus()
    devices = tuple(sorted({m.device or "" for m in run}))
    config = BridgeConfig("bench", devices, ("*",), "null", {}, None, anomaly=options)
    target = NullTarget()
    bridge = Bridge(config, bus, target, queue_size=len(calib) + len(run) + 10)  # type: ignore[arg-type]
    bridge.subscribe()
    task = asyncio.create_task(bridge.run())
    target.expect = len(calib)
    for m in calib:
        await bus.publish(m)
    await target.done.wait()
    assert bridge.anomaly is not None
    before = bridge.anomaly.samples
    target.done.clear()
    target.expect = len(calib) + len(run)  # alarm events would come on top: none expected
    start = time.perf_counter()
    for m in run:
        bus.publish_nowait(m)
    await target.done.wait()
    elapsed = time.perf_counter() - start
    task.cancel()
    return (bridge.anomaly.samples - before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="student")
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--refresh", type=float, default=None, help="level refresh time constant")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    # The stage keeps calibrations in the state folder (.protocol-brain in the current one by
    # default): the bench's are throwaway, so they go to a folder removed at the end.
    with bench_folder("pb-bench-anomaly-") as folder:
        os.environ.setdefault(STATE_ENV, str(folder))
        extra = {} if args.refresh is None else {"refresh": args.refresh}
        options = AnomalyOptions(model=args.model, calibration=CALIBRATION, **extra)
        rows = CALIBRATION + args.messages // args.devices
        messages = make_messages(args.devices, args.points, rows)
        calib, run = messages[: CALIBRATION * args.devices], messages[CALIBRATION * args.devices :]
        stage = bench_stage(options, calib, run, 1)
        print(f"stage, one message per call: {stage:,.0f} samples/s")
        batched = bench_stage(options, calib, run, ANOMALY_BATCH)
        print(f"stage, {ANOMALY_BATCH} messages per call: {batched:,.0f} samples/s")
        bridged = asyncio.run(bench_bridge(options, calib, run))
        print(f"inside a bridge (bus -> stage -> target): {bridged:,.0f} samples/s")
        result = {
            "model": args.model,
            "points_per_message": args.points,
            "devices": args.devices,
            "messages": len(run),
            "stage_samples_per_s": round(stage),
            "stage_batched_samples_per_s": round(batched),
            "bridge_samples_per_s": round(bridged),
            "target_samples_per_s": 20000,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
