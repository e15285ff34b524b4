"""Translator speed: points per second that `gateway classify` labels on one core, and the
seconds `gateway translator pick` takes to choose 50 of them (after the model pass).

Fresh generated names (so nothing is cached from an earlier run), tokenization included, ONNX
Runtime with one intra-op thread, the process pinned to one CPU where the OS allows it.
``python bench/translator.py [--points N] [--repeat R] [--model PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

from gateway.translator.model import DEFAULT_MODEL, Translator
from gateway.translator.pick import pick
from models.translator.corpus import Renderer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    translator = Translator(args.model, threads=1)
    translator.predict([p for p, _ in Renderer(seed=1).stream(512)])  # warm-up
    rates, picks = [], []
    for r in range(args.repeat):
        points = [p for p, _ in Renderer(seed=100 + r).stream(args.points)]
        from gateway.translator import tokenize

        tokenize._cache.clear()  # each run pays for its own tokenization
        start = time.perf_counter()
        pred = translator.predict(points)
        rates.append(args.points / (time.perf_counter() - start))
        start = time.perf_counter()
        pick(pred, 50)
        picks.append(time.perf_counter() - start)
        print(f"run {r + 1}: {rates[-1]:,.0f} points/s; pick 50 in {picks[-1]:.2f} s")
    size = os.path.getsize(args.model)
    print(
        json.dumps(
            {
                "bench": "translator_classify",
                "points": args.points,
                "points_per_s": round(max(rates)),
                "points_per_s_median": round(sorted(rates)[len(rates) // 2]),
                "pick_50_s": round(min(picks), 2),
                "threads": 1,
                "model_bytes": size,
                "members": [m.get("weights") for m in translator.meta.get("members", [])],
            }
        )
    )


if __name__ == "__main__":
    main()
