"""Memory and event-loop stalls of anomaly calibration: ``--bridges`` stages (one per bridge, as a
gateway run builds them), each with one device of ``--points`` points, calibrate on
``--calibration`` messages and then score ``--messages`` more, fed from an event loop with a
heartbeat task that should tick every 10 ms. Prints the process's RSS after building the stages,
after calibration and after scoring, the longest heartbeat gap (how long the loop was blocked)
and the calibration time per device.

``python bench/anomaly_memory.py [--model student|teacher|PATH] [--bridges 4] [--points 250]
[--calibration 400] [--messages 200]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from gateway.anomaly.stage import AnomalyStage
from gateway.bus import Bus
from gateway.config.anomaly import AnomalyOptions
from gateway.paths import STATE_ENV
from gateway.types import Message, Sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_folder, run_bench  # noqa: E402

TICK = 0.01


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def device_messages(device: str, points: int, rows: int, seed: int) -> list[Message]:
    """Noisy levels, a quarter of the points slow (a drifting temperature)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1, 100, points)
    values = base + rng.normal(0, 1, (rows, points))
    slow = points // 4
    values[:, :slow] += np.cumsum(rng.normal(0, 0.3, (rows, slow)), axis=0)
    return [
        Message.telemetry(
            device,
            tuple(Sample(f"p{j}", float(v), source_ts=1000.0 + i) for j, v in enumerate(row)),
        )
        for i, row in enumerate(values)
    ]


async def feed(stages: list[AnomalyStage], streams: list[list[Message]], upto: int) -> float:
    """One message per device per step, as the bridges' pumps get them; the longest gap
    between heartbeat ticks."""
    gaps = [0.0]

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            gaps.append(now - last - TICK)
            last = now

    async def pump(stage: AnomalyStage, stream: list[Message]) -> None:
        for message in stream[:upto]:
            batch = getattr(stage, "process_batch_async", None)
            if batch is not None:
                await batch([message])
            else:  # the stage before calibration left the loop
                stage.process_batch([message])
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(TICK * 2)
    await asyncio.gather(*(pump(s, m) for s, m in zip(stages, streams, strict=True)))
    beat.cancel()
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="student")
    parser.add_argument("--bridges", type=int, default=4)
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--calibration", type=int, default=400)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the gateway box
    with bench_folder("pb-bench-anomaly-memory-") as folder:
        os.environ.setdefault(STATE_ENV, str(folder))
        rows = args.calibration + args.messages
        streams = [
            device_messages(f"dev{b}", args.points, rows, seed=b) for b in range(args.bridges)
        ]
        gc.collect()
        start_rss = rss_mb()
        options = AnomalyOptions(model=args.model, calibration=args.calibration)
        stages = [
            AnomalyStage(options, Bus(), f"bridge{b}", store=folder / f"bridge{b}.json")
            for b in range(args.bridges)
        ]
        built = rss_mb()
        began = time.perf_counter()
        stall = asyncio.run(feed(stages, streams, args.calibration))
        calibrating = time.perf_counter() - began
        calibrated = rss_mb()
        scored_stall = asyncio.run(feed(stages, [s[args.calibration :] for s in streams], rows))
        scored = rss_mb()
        assert all(s.samples == args.messages * args.points for s in stages)
        for stage in stages:
            stage.close()
        result = {
            "model": args.model,
            "bridges": args.bridges,
            "points": args.points,
            "rss_start_mb": round(start_rss),
            "rss_built_mb": round(built),
            "rss_calibrated_mb": round(calibrated),
            "rss_scored_mb": round(scored),
            "calibration_s": round(calibrating, 3),
            "loop_stall_calibrating_ms": round(stall * 1000, 1),
            "loop_stall_scoring_ms": round(scored_stall * 1000, 1),
        }
        print(
            f"RSS {result['rss_start_mb']} MB at start, {result['rss_built_mb']} MB with the"
            f" stages built, {result['rss_calibrated_mb']} MB calibrated,"
            f" {result['rss_scored_mb']} MB after scoring; longest loop stall"
            f" {result['loop_stall_calibrating_ms']} ms calibrating,"
            f" {result['loop_stall_scoring_ms']} ms scoring"
        )
        print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_bench(main))
