"""SKAB's outlier-detection protocol: per file, fit and calibrate on the first 400 rows, score
the rest; F1, FAR and MAR over all scored points of all files. numpy and ONNX Runtime only.

A point counts as flagged while the device's alarm is active: the rows go through the same
`DeviceScorer` the gateway's bridge stage uses (default options), so the figures are those of
the alarm an operator would see. The rows are scored in batches (``BATCH`` rows, one model call
each) and the alarm's state machine runs row by row over the batch's scores, which gives the
scores of one row at a time exactly: the windows are the same, and the model's error of a
window does not depend on the other windows of its call (checked per model on each file's
first rows; a model for which it does, such as one quantized with per-call activation
scales, is called once per row as before). With the level refresh on, batches are at most
`refresh.BLOCK` rows, the longest for which the refresh gives the scores of one row at a time.

The baseline is Hotelling's T² on the standardised sensors, fit on the same 400 rows, with its
threshold at the 99th percentile of its training scores (flagged point by point).

Files that cannot be scored by the protocol are left out with a note on stderr (`Loaded`):
files without an ``anomaly`` column (SKAB's ``anomaly-free.csv``) and files too short to have
a scored row. A malformed file (text where a number belongs) stops the run with its error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.anomaly.core import Array, WindowModel
from gateway.anomaly.device import DeviceScorer
from gateway.anomaly.refresh import BLOCK
from gateway.config.anomaly import AnomalyOptions
from models.anomaly.data import CALIBRATION_ROWS, DataError, Series, csv_files, read_series

Pred = npt.NDArray[np.int8]
Note = Callable[[str], None]

BATCH = 1024  # rows per model call
PROBE = 16  # rows whose errors are compared with one call per row, per file and model
PROGRESS_ROWS = 20_000  # a run over more rows than this says how far it is, file by file
MIN_ROWS = CALIBRATION_ROWS + 1  # a file needs a scored row


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    seconds: float = 0.0
    samples: int = 0  # sensor readings, calibration rows included
    rows: int = 0  # rows, calibration rows included
    per_file: dict[str, float] = field(default_factory=dict)  # path -> F1 (0.0: none to find)

    def add(self, name: str, pred: Pred, truth: Pred) -> None:
        tp = int(((pred == 1) & (truth == 1)).sum())
        fp = int(((pred == 1) & (truth == 0)).sum())
        fn = int(((pred == 0) & (truth == 1)).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        self.tn += int(((pred == 0) & (truth == 0)).sum())
        self.per_file[name] = 2 * tp / max(1, 2 * tp + fp + fn)

    @property
    def f1(self) -> float | None:
        """None when undefined: no labelled anomaly among the scored rows and no alarm."""
        flagged_or_true = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / flagged_or_true if flagged_or_true else None

    def figures(self, size: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            # null where F1 is undefined: no anomaly labelled among the scored rows, no alarm
            "f1": None if self.f1 is None else round(self.f1, 4),
            "far": round(self.fp / max(1, self.fp + self.tn), 4),
            "mar": round(self.fn / max(1, self.fn + self.tp), 4),
            # per sensor reading, calibration rows included (see docs/anomaly.md)
            "us_per_sample": round(1e6 * self.seconds / max(1, self.samples), 3),
            "us_per_row": round(1e6 * self.seconds / max(1, self.rows), 3),
        }
        if size is not None:
            out["size_bytes"] = size
        return out


@dataclass
class Loaded:
    series: list[Series]
    left_out: dict[str, list[str]]  # reason ("unlabelled", "short") -> file names


def load(data: Path, note: Note = stderr) -> Loaded:
    """The files under ``data`` that the protocol can score; the others are left out with a
    note, unless none is left (then the one file's reason, or a summary, is the error)."""
    series: list[Series] = []
    left_out: dict[str, list[str]] = {}
    reasons: list[str] = []
    for path in csv_files(data):
        s = read_series(path, labelled=False)
        if s.anomaly is None:
            why, reason = "unlabelled", f"{path}: missing column anomaly (nothing to score)"
        elif len(s.values) < MIN_ROWS:
            why = "short"
            reason = f"{path}: {len(s.values)} rows; needs more than {CALIBRATION_ROWS}"
        else:
            series.append(s)
            continue
        left_out.setdefault(why, []).append(_name(path, data))
        reasons.append(reason)
    if not series:
        if len(reasons) == 1:
            raise DataError(reasons[0])
        counts = ", ".join(f"{len(v)} {k}" for k, v in left_out.items())
        raise DataError(f"{data}: no file to score ({counts}; e.g. {reasons[0]})")
    for reason in reasons:
        note(f"left out: {reason}")
    _describe(series, data, note)
    return Loaded(series, left_out)


def _name(path: Path, root: Path) -> str:
    return path.name if path == root else str(path.relative_to(root))


def _describe(series: list[Series], root: Path, note: Note) -> None:
    """Which columns are scored (once per distinct set), and labels the protocol ignores."""
    sets: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    for s in series:
        key = (s.sensors, s.ignored)
        sets[key] = sets.get(key, 0) + 1
        assert s.anomaly is not None
        early = int(s.anomaly[:CALIBRATION_ROWS].sum())
        if early:
            note(
                f"warning: {_name(s.path, root)}: {early} of the first {CALIBRATION_ROWS} rows "
                "are labelled anomalous; they calibrate as normal and are not scored"
            )
    for (sensors, ignored), files in sets.items():
        aside = f"; left aside: {', '.join(ignored)} (blank or a row index)" if ignored else ""
        note(
            f"{files} file{'s' if files > 1 else ''}: {len(sensors)} sensor columns scored: "
            f"{', '.join(sensors)}{aside}"
        )


def evaluate_model(
    model: WindowModel, series: list[Series], *, note: Note = stderr, **kw: Any
) -> Tally:
    tally = Tally()
    total = sum(len(s.values) for s in series)
    for n, s in enumerate(series, 1):
        assert s.anomaly is not None
        start = time.perf_counter()
        pred = alarm_states(model, s.values, **kw)
        seconds = time.perf_counter() - start
        tally.seconds += seconds
        tally.samples += s.values.size
        tally.rows += len(s.values)
        tally.add(str(s.path), pred, s.anomaly[CALIBRATION_ROWS:])
        if total > PROGRESS_ROWS:
            name = getattr(model, "path", type(model).__name__)
            note(
                f"{Path(str(name)).stem} {n}/{len(series)} {s.path.name}: "
                f"{len(s.values):,} rows in {seconds:.1f} s"
            )
    return tally


def alarm_states(
    model: WindowModel, values: npt.NDArray[np.float64], *, batch: int = BATCH, **kw: Any
) -> Pred:
    """Calibrate on the first rows, then 1 while the alarm is active, row by row."""
    return scored(model, values, batch=batch, **kw)[1]


def scored(
    model: WindowModel, values: npt.NDArray[np.float64], *, batch: int = BATCH, **kw: Any
) -> tuple[npt.NDArray[np.float64], Pred]:
    """(smoothed device score, alarm state) of each row after the calibration rows, scored
    ``batch`` rows per model call (1: one call per row, as a trickle of messages is)."""
    o = AnomalyOptions()
    options = {
        "smooth": o.smooth,
        "margin": o.margin,
        "clear_ratio": o.clear_ratio,
        "hold": o.hold,
        "refresh": o.refresh,
    }
    scorer = DeviceScorer(model, **{**options, **kw})
    scorer.calibrate(values[:CALIBRATION_ROWS])
    rows = values[CALIBRATION_ROWS:]
    step = max(1, batch if scorer.refresh is None else min(batch, BLOCK))
    points = values.shape[1]
    per_row = step == 1
    scores = np.empty(len(rows), dtype=np.float64)
    states = np.empty(len(rows), dtype=np.int8)
    for lo in range(0, len(rows), step):
        windows = np.ascontiguousarray(scorer.windows(rows[lo : lo + step]))
        if per_row:
            errors = _one_call_per_row(model, windows, points)
        else:
            errors = model.errors(windows)
            if lo == 0:  # is a batch's error that of its rows alone? (else: per row, exact)
                probe = min(PROBE, len(windows) // points) * points
                alone = _one_call_per_row(model, windows[:probe], points)
                if not np.array_equal(errors[:probe], alone):
                    per_row = True
                    errors = _one_call_per_row(model, windows, points)
        for i, r in enumerate(scorer.finish(errors)):
            scores[lo + i], states[lo + i] = r.score, r.active
    return scores, states


def _one_call_per_row(model: WindowModel, windows: Array, points: int) -> Array:
    return np.concatenate(
        [model.errors(windows[i : i + points]) for i in range(0, len(windows), points)]
    )


def hotelling(series: list[Series], quantile: float = 0.99) -> Tally:
    tally = Tally()
    for s in series:
        assert s.anomaly is not None
        start = time.perf_counter()
        train = s.values[:CALIBRATION_ROWS]
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        z = (s.values - mean) / std
        # atleast_2d: with one sensor np.cov gives a scalar, which pinv refuses
        inv = np.linalg.pinv(np.atleast_2d(np.cov(z[:CALIBRATION_ROWS].T)))
        t2 = np.einsum("ij,jk,ik->i", z, inv, z)
        threshold = np.quantile(t2[:CALIBRATION_ROWS], quantile)
        pred = (t2[CALIBRATION_ROWS:] > threshold).astype(np.int8)
        tally.seconds += time.perf_counter() - start
        tally.samples += s.values.size
        tally.rows += len(s.values)
        tally.add(str(s.path), pred, s.anomaly[CALIBRATION_ROWS:])
    return tally
