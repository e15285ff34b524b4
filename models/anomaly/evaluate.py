"""SKAB's outlier-detection protocol: per file, fit and calibrate on the first 400 rows, score
the rest; F1, FAR and MAR over all scored points of all files. numpy and ONNX Runtime only.

A point counts as flagged while the device's alarm is active: the rows are fed one at a time
to the same `DeviceScorer` the gateway's bridge stage uses (default options), so the figures
are those of the alarm an operator would see.

The baseline is Hotelling's T² on the standardised sensors, fit on the same 400 rows, with its
threshold at the 99th percentile of its training scores (flagged point by point).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.anomaly.core import WindowModel
from gateway.anomaly.device import DeviceScorer
from gateway.config.anomaly import AnomalyOptions
from models.anomaly.data import CALIBRATION_ROWS, DataError, Series, csv_files, read_series

Pred = npt.NDArray[np.int8]


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    seconds: float = 0.0
    samples: int = 0
    per_file: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, pred: Pred, truth: Pred) -> None:
        tp = int(((pred == 1) & (truth == 1)).sum())
        fp = int(((pred == 1) & (truth == 0)).sum())
        fn = int(((pred == 0) & (truth == 1)).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        self.tn += int(((pred == 0) & (truth == 0)).sum())
        self.per_file[name] = 2 * tp / max(1, 2 * tp + fp + fn)

    def figures(self, size: int | None) -> dict[str, Any]:
        f1 = 2 * self.tp / max(1, 2 * self.tp + self.fp + self.fn)
        out: dict[str, Any] = {
            "f1": round(f1, 4),
            "far": round(self.fp / max(1, self.fp + self.tn), 4),
            "mar": round(self.fn / max(1, self.fn + self.tp), 4),
            "us_per_sample": round(1e6 * self.seconds / max(1, self.samples), 3),
        }
        if size is not None:
            out["size_bytes"] = size
        return out


def load_labelled(data: Path) -> list[Series]:
    series = [read_series(p, labelled=True) for p in csv_files(data)]
    for s in series:
        if len(s.values) <= CALIBRATION_ROWS + 1:
            raise DataError(f"{s.path}: {len(s.values)} rows; needs more than {CALIBRATION_ROWS}")
    return series


def evaluate_model(model: WindowModel, series: list[Series], **kw: Any) -> Tally:
    tally = Tally()
    for s in series:
        assert s.anomaly is not None
        start = time.perf_counter()
        pred = alarm_states(model, s.values, **kw)
        tally.seconds += time.perf_counter() - start
        tally.samples += s.values.size
        tally.add(s.path.name, pred, s.anomaly[CALIBRATION_ROWS:])
    return tally


def alarm_states(model: WindowModel, values: npt.NDArray[np.float64], **kw: Any) -> Pred:
    """Calibrate on the first rows, then 1 while the alarm is active, row by row."""
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
    return np.array([scorer.score(rows[i : i + 1])[0].active for i in range(len(rows))], np.int8)


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
        tally.add(s.path.name, pred, s.anomaly[CALIBRATION_ROWS:])
    return tally
