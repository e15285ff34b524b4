"""Generated SKAB-format series for the anomaly tests: four sensors, one of them slow (a
temperature that drifts), and faults that shift two sensors' levels."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

SENSORS = ("Flow", "Pressure", "Temperature", "Current")


def series(
    rows: int, seed: int, faults: Sequence[tuple[int, int]] = ()
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    flow = 30 + rng.normal(0, 0.5, rows)
    pressure = 2 + 0.1 * np.sin(t / 9.0) + rng.normal(0, 0.03, rows)
    temperature = 60 + 0.004 * t + np.cumsum(rng.normal(0, 0.002, rows))  # slow, drifts
    temperature += rng.normal(0, 0.02, rows)
    current = 1.5 + 0.02 * (flow - 30) + rng.normal(0, 0.01, rows)
    values = np.stack([flow, pressure, temperature, current], axis=1)
    label = np.zeros(rows, dtype=int)
    for start, end in faults:
        values[start:end, 0] -= 4.0  # a valve closes: less flow ...
        values[start:end, 1] += 0.3  # ... more pressure
        label[start:end] = 1
    return values, label


def write_csv(path: Path, values: np.ndarray, label: np.ndarray | None) -> Path:
    start = datetime(2024, 1, 1)
    head = ["datetime", *SENSORS] + (["anomaly", "changepoint"] if label is not None else [])
    lines = [";".join(head)]
    for i, row in enumerate(values):
        cells = [(start + timedelta(seconds=i)).isoformat(sep=" "), *(f"{v:.6g}" for v in row)]
        if label is not None:
            change = int(label[i] == 1 and (i == 0 or label[i - 1] == 0))
            cells += [f"{float(label[i])}", f"{float(change)}"]
        lines.append(";".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
