"""SKAB-format CSV files: ``;``-separated, a ``datetime`` column, sensor columns, and (in
labelled experiments) ``anomaly`` and ``changepoint`` columns.

Read with the standard library and numpy only: evaluation runs where torch is not installed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

LABELS = ("anomaly", "changepoint")
TIME = "datetime"
CALIBRATION_ROWS = 400  # SKAB's protocol: fit on the first 400 rows of each file


class DataError(Exception):
    """A file that is not a readable SKAB-format CSV; the message names the file."""


@dataclass(frozen=True)
class Series:
    path: Path
    sensors: tuple[str, ...]
    values: npt.NDArray[np.float64]  # [rows, sensors]
    anomaly: npt.NDArray[np.int8] | None  # [rows], None when unlabelled


def read_series(path: Path, *, labelled: bool) -> Series:
    """One CSV; ``labelled`` requires the ``anomaly`` and ``changepoint`` columns."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in (TIME, *LABELS) if c not in header and (labelled or c == TIME)]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(expected ';'-separated datetime, sensor columns, anomaly, changepoint)"
        )
    sensors = tuple(h for h in header if h not in (TIME, *LABELS))
    if not sensors:
        raise DataError(f"{path}: no sensor columns besides {', '.join(header)}")
    cols = [header.index(s) for s in sensors]
    body = rows[1:]
    try:
        values = np.array([[float(r[i]) for i in cols] for r in body], dtype=np.float64)
        anomaly = (
            np.array([float(r[header.index("anomaly")]) for r in body]).astype(np.int8)
            if "anomaly" in header
            else None
        )
    except (ValueError, IndexError) as exc:
        line = _bad_line(body, cols) + 2
        raise DataError(f"{path}: line {line}: not a number or a short row ({exc})") from None
    if values.ndim != 2 or not np.isfinite(values).all():
        raise DataError(f"{path}: sensor values must be finite numbers")
    return Series(path, sensors, values, anomaly)


def _bad_line(body: list[list[str]], cols: list[int]) -> int:
    for n, r in enumerate(body):
        try:
            [float(r[i]) for i in cols]
        except (ValueError, IndexError):
            return n
    return 0


def csv_files(root: Path) -> list[Path]:
    """The CSV files under ``root`` (a file or a folder, searched recursively), sorted."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    files = sorted(root.rglob("*.csv"))
    if not files:
        raise DataError(f"{root}: no .csv files")
    return files
