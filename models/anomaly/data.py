"""SKAB-format CSV files: ``;``-separated, a ``datetime`` column, sensor columns, and (in
labelled experiments) ``anomaly`` and ``changepoint`` columns.

Read with the standard library and numpy only: evaluation runs where torch is not installed.
A missing reading (an empty cell, ``nan``, ``NA``) keeps the sensor's last value, as a point
missing from a message does in the gateway's anomaly stage; a gap at the start takes the first
reading.
"""

from __future__ import annotations

import csv
import math
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
    held: int = 0  # missing readings filled with the sensor's last value


def read_series(path: Path, *, labelled: bool) -> Series:
    """One CSV; ``labelled`` requires the ``anomaly`` and ``changepoint`` columns."""
    try:
        # utf-8-sig: spreadsheet exports start with a byte order mark that would hide "datetime"
        with open(path, encoding="utf-8-sig", newline="") as f:
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
    body = rows[1:]
    if not body:
        raise DataError(f"{path}: no data rows, only the header")
    cols = [header.index(s) for s in sensors]
    label = header.index("anomaly") if "anomaly" in header else None
    values = np.empty((len(body), len(cols)), dtype=np.float64)
    anomaly = np.zeros(len(body), dtype=np.int8)
    for n, r in enumerate(body):
        line = n + 2  # the header is line 1
        try:
            values[n] = [_reading(r[i]) for i in cols]
            if label is not None:
                anomaly[n] = _label(r[label], path, line)
        except (ValueError, IndexError) as exc:
            raise DataError(f"{path}: line {line}: not a number or a short row ({exc})") from None
    bad = np.flatnonzero(np.isinf(values).any(axis=1))
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 2}: sensor values must be finite numbers")
    held = _hold_last(values, sensors, path)
    return Series(path, sensors, values, anomaly if label is not None else None, held)


_MISSING = {"", "nan", "na", "n/a", "null", "none"}


def _reading(text: str) -> float:
    return math.nan if text.strip().lower() in _MISSING else float(text)


def _hold_last(values: npt.NDArray[np.float64], sensors: tuple[str, ...], path: Path) -> int:
    """Fill missing readings (NaN) in place with the sensor's last one; the count filled."""
    gaps = np.isnan(values)
    if not gaps.any():
        return 0
    for j in np.flatnonzero(gaps.all(axis=0)):
        raise DataError(f"{path}: column {sensors[j]!r} has no readings")
    rows = np.arange(len(values))[:, None]
    last = np.maximum.accumulate(np.where(gaps, -1, rows), axis=0)  # row of the last reading
    first = np.argmax(~gaps, axis=0)
    last = np.where(last < 0, first, last)
    values[:] = np.take_along_axis(values, last, axis=0)
    return int(gaps.sum())


def _label(text: str, path: Path, line: int) -> int:
    """An ``anomaly`` cell: 0 or 1 (SKAB writes 0.0 and 1.0); any other value would be scored
    as a wrong truth without a word."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise DataError(f"{path}: line {line}: anomaly must be 0 or 1, got {text!r}")
    return int(value)


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
