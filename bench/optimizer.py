"""Uplink optimizer decision latency: the shipped ONNX policy and the AIMD heuristic.

    python bench/optimizer.py [--decisions 20000] [--model builtin]

Each decision is what the uplink does every interval: features from `LinkStats`, one ONNX
Runtime call (one thread), argmax per knob. Stats vary between calls so nothing is cached.
Last line: one JSON object (microseconds per decision, p50 / p99 / max).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from _common import percentile

from gateway.optimizer.features import LinkStats
from gateway.optimizer.heuristic import AimdPolicy, Policy
from gateway.optimizer.policy import load_policy


def measure(policy: Policy, n: int) -> dict[str, float]:
    rng = random.Random(0)
    stats = [
        LinkStats(
            backlog=rng.randint(0, 5000),
            backlog_age=rng.uniform(0, 10),
            goodput=rng.uniform(0, 1e6),
            rtt=rng.uniform(0.01, 5),
            timeouts=rng.randint(0, 5),
            arrival_rate=rng.uniform(0, 500),
            inflight=rng.randint(0, 64),
        )
        for _ in range(256)
    ]
    for s in stats[:50]:
        policy.decide(s)  # warm-up
    times = []
    for i in range(n):
        s = stats[i % len(stats)]
        t0 = time.perf_counter()
        policy.decide(s)
        times.append((time.perf_counter() - t0) * 1e6)
    return {
        "p50_us": round(percentile(times, 0.5), 1),
        "p99_us": round(percentile(times, 0.99), 1),
        "max_us": round(max(times), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--model", default="builtin")
    args = ap.parse_args()
    learned = measure(load_policy(args.model), args.decisions)
    heuristic = measure(AimdPolicy(), args.decisions)
    print(f"learned (ONNX Runtime, 1 thread): {learned}")
    print(f"heuristic (AIMD): {heuristic}")
    print(
        json.dumps(
            {
                "bench": "optimizer_decision",
                "decisions": args.decisions,
                "learned": learned,
                "heuristic": heuristic,
            }
        )
    )


if __name__ == "__main__":
    main()
