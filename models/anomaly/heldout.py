"""Held-out checks that do not touch valve1: false alarms on clean data, and injected faults.

``python -m models.anomaly.heldout --data ../shared/data/skab/anomaly-free``

The clean run is cut into pseudo-files of ``CALIBRATION_ROWS + SCORED`` rows, scored by the
same protocol as ``gateway anomaly evaluate`` (calibrate on the first 400 rows, alarm state per
row): every flagged row there is a false alarm. Each pseudo-file is then copied once per fault
kind with one fault injected in its scored part, at a random place and length (seeded):

- ``shift``: one sensor's level moves by 2-4 of its calibration standard deviations;
- ``drift``: one sensor ramps linearly to 3-6 standard deviations;
- ``oscillation``: one sensor gains a sine of 1.5-3 standard deviations (period 6-20 rows);
- ``relation``: one sensor's readings are replaced by its own readings from elsewhere in the
  run (same distribution, broken relation to the other sensors and to its own past).

The magnitudes are fixed by principle (a few calibration spreads), not tuned to any model.
Last line: one JSON object with F1, FAR, MAR per model and per fault kind.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.anomaly.data import CALIBRATION_ROWS, Series, csv_files, read_series
from models.anomaly.evaluate import Tally

SCORED = 1000
KINDS = ("shift", "drift", "oscillation", "relation")


@dataclass(frozen=True)
class Case:
    name: str
    values: npt.NDArray[np.float64]
    anomaly: npt.NDArray[np.int8]
    kind: str = "clean"


def pseudo_files(values: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
    n = CALIBRATION_ROWS + SCORED
    return [values[i : i + n] for i in range(0, len(values) - n + 1, n)]


def inject(
    x: npt.NDArray[np.float64], kind: str, rng: np.random.Generator, donor: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    x = x.copy()
    label = np.zeros(len(x), dtype=np.int8)
    length = int(rng.integers(150, 400))
    start = int(rng.integers(CALIBRATION_ROWS + 100, len(x) - length - 50))
    c = int(rng.integers(x.shape[1]))
    sd = float(x[:CALIBRATION_ROWS, c].std()) or 1.0
    seg = slice(start, start + length)
    if kind == "shift":
        x[seg, c] += rng.choice([-1, 1]) * rng.uniform(2, 4) * sd
    elif kind == "drift":
        x[seg, c] += rng.choice([-1, 1]) * np.linspace(0, rng.uniform(3, 6) * sd, length)
    elif kind == "oscillation":
        period = rng.uniform(6, 20)
        x[seg, c] += rng.uniform(1.5, 3) * sd * np.sin(2 * np.pi * np.arange(length) / period)
    elif kind == "relation":
        src = int(rng.integers(0, len(donor) - length))
        x[seg, c] = donor[src : src + length, c]
    else:
        raise ValueError(kind)
    label[seg] = 1
    return x, label


def cases(series: Series, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """(clean pseudo-files, faulty copies)."""
    rng = np.random.default_rng(seed)
    files = pseudo_files(series.values)
    clean = [Case(f"clean{i}", f, np.zeros(len(f), np.int8)) for i, f in enumerate(files)]
    faulty = []
    for i, f in enumerate(files):
        donor = files[(i + len(files) // 2) % len(files)]  # far away in time
        for kind in KINDS:
            x, label = inject(f, kind, rng, donor)
            faulty.append(Case(f"{kind}{i}", x, label, kind))
    return clean, faulty


def as_series(c: Case, sensors: tuple[str, ...]) -> Series:
    return Series(Path(c.name), sensors, c.values, c.anomaly)


def merged(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.tp, out.fp, out.fn, out.tn = out.tp + t.tp, out.fp + t.fp, out.fn + t.fn, out.tn + t.tn
    return out


def main() -> None:
    from gateway.anomaly.model import OnnxScorer, shipped
    from gateway.cliargs import nonnegative_float, nonnegative_int, positive_float, positive_int
    from models.anomaly.evaluate import evaluate_model, hotelling

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, metavar="DIR", help="clean SKAB CSVs")
    ap.add_argument("--models", type=Path, default=None, help="default: the shipped models")
    ap.add_argument("--seed", type=nonnegative_int, default=0)
    ap.add_argument(
        "--margin", type=positive_float, default=None, help="default: the anomaly: option's"
    )
    ap.add_argument(
        "--smooth", type=positive_int, default=None, help="default: the anomaly: option's"
    )
    ap.add_argument(
        "--refresh", type=nonnegative_float, default=None, help="0: off (default: the option's)"
    )
    ap.add_argument("--only", choices=("student", "teacher", "t2"), action="append")
    args = ap.parse_args()
    given = (("margin", args.margin), ("smooth", args.smooth), ("refresh", args.refresh))
    options = {k: v for k, v in given if v is not None}
    runs = [read_series(p, labelled=False) for p in csv_files(args.data)]
    clean: list[Case] = []
    faulty: list[Case] = []
    for r in runs:
        c, f = cases(r, args.seed)
        clean, faulty = clean + c, faulty + f
    sensors = runs[0].sensors
    result: dict[str, object] = {"clean_files": len(clean), "faulty_files": len(faulty)}
    for name in args.only or ("student", "teacher", "t2"):
        if name == "t2":
            run: Callable[[list[Series]], Tally] = hotelling
        else:
            path = args.models / f"{name}.onnx" if args.models else shipped(name)
            model = OnnxScorer(path)
            run = partial(evaluate_model, model, **options)
        far = run([as_series(c, sensors) for c in clean]).figures(None)["far"]
        kinds = {k: run([as_series(c, sensors) for c in faulty if c.kind == k]) for k in KINDS}
        total = merged(list(kinds.values())).figures(None)
        result[name] = {
            "clean_far": far,
            "faulty": {k: total[k] for k in ("f1", "far", "mar")},
            "kinds_f1": {k: t.figures(None)["f1"] for k, t in kinds.items()},
        }
        print(name, json.dumps(result[name]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
