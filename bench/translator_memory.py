"""Translator memory: the peak resident memory (max RSS) of `gateway classify` (without and with
50 labeled examples), `gateway suggest` (the list against the same points named by another
site's convention) and `gateway translator evaluate`, each in its own process.

The list is a synthetic site (models/translator/sites.py: one naming convention, 60 classes,
Zipf-like frequencies), written as the CSV the commands read; nothing of a real building. The
floor is `classify` of a 10-point list: Python, numpy, ONNX Runtime and the model.
``python bench/translator_memory.py [--points N] [--shots 0,10,50] [--seeds S]``

One line per command, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, bench_folder, print_result, run_bench  # noqa: E402

from gateway.translator.tokenize import Point  # noqa: E402
from models.translator.sites import SiteRenderer, site  # noqa: E402

EXAMPLES = 50  # labeled points given to `classify --examples`


def write_lists(folder: Path, points: int) -> None:
    """``points.csv``: ``points`` named points of one synthetic site as ``name,description,
    unit,datatype,brick_class`` (the generator renders a few description-only points: those are
    drawn again); ``target.csv``: the same points named by a second site's convention (the
    building in another system); ``examples.csv``: the first points, labeled; ``small.csv``."""
    rows: list[tuple[Point, str]] = []
    extra = points // 50 + 10
    while len(rows) < points:
        rows = [(p, c) for p, c in site(1, points + extra, classes=60) if p.name][:points]
        extra *= 2
    other = SiteRenderer(2)
    index = {c.name: k for k, c in enumerate(other.classes)}
    renamed = []
    for _, c in rows:
        p = other.sample(index[c])
        while not p.name:
            p = other.sample(index[c])
        renamed.append((p, c))
    _write(folder / "points.csv", rows)
    _write(folder / "target.csv", renamed)
    _write(folder / "examples.csv", rows[:EXAMPLES])
    _write(folder / "small.csv", rows[:10])


def _write(path: Path, rows: list[tuple[Point, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "description", "unit", "datatype", "brick_class"])
        w.writerows([p.name, p.description, p.unit, p.datatype, c] for p, c in rows)


def peak(args: list[str], folder: Path, log: Path) -> tuple[float, float]:
    """Run ``gateway ARGS`` in its own process: its peak RSS in MB and its seconds. Its
    temporary files go to ``folder`` (ONNX Runtime leaves a ``.ses`` file in TMPDIR)."""
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(folder)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"gateway {' '.join(args)} exited with {proc.returncode}")
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * unit / 1e6, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=20000, help="points per list")
    parser.add_argument("--shots", default="0,10,50", help="evaluate --shots (%(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="evaluate --seeds (%(default)s)")
    args = parser.parse_args()
    with bench_folder("pb-bench-translator-") as folder:
        write_lists(folder, args.points)
        points, target = folder / "points.csv", folder / "target.csv"
        out = str(folder / "out")
        runs = {
            "floor": ["classify", str(folder / "small.csv"), "--out", f"{out}.csv"],
            "classify": ["classify", str(points), "--out", f"{out}.csv"],
            "classify_examples": [
                "classify",
                str(points),
                "--examples",
                str(folder / "examples.csv"),
                "--out",
                f"{out}.csv",
            ],
            "suggest": ["suggest", "--source", str(points), "--target", str(target)]
            + ["--out", f"{out}.yaml"],
            "evaluate": ["translator", "evaluate", "--data", str(points)]
            + ["--shots", args.shots, "--seeds", str(args.seeds)],
        }
        mb: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for name, command in runs.items():
            mb[name], seconds[name] = peak(command, folder, folder / f"{name}.log")
            print(f"{name:<18} peak {mb[name]:7.0f} MB  {seconds[name]:6.1f} s", flush=True)
    print_result(
        {
            "bench": "translator_memory",
            "points": args.points,
            "examples": min(EXAMPLES, args.points),
            "shots": args.shots,
            "seeds": args.seeds,
            "peak_rss_mb": {k: round(v) for k, v in mb.items()},
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        }
    )


if __name__ == "__main__":
    sys.exit(run_bench(main))
