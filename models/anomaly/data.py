"""SKAB-format CSV files: ``;``-separated, a ``datetime`` column, sensor columns, and (in
labelled experiments) an ``anomaly`` column; SKAB's ``changepoint`` column is read past.

Read with the standard library and numpy only: evaluation runs where torch is not installed.
A missing reading (an empty cell, ``nan``, ``NA``) keeps the sensor's last value, as a point
missing from a message does in the gateway's anomaly stage; a gap at the start takes the first
reading.

What is tolerated, because exports produce it and nothing is lost by reading past it: blank
lines, header names in any case (``Datetime``, ``Anomaly``), and columns that are no sensor
(`index_column`): a column named ``""``, ``Unnamed: N`` (pandas' name for an unnamed header)
or ``index`` that is blank on every row (a ``;`` at the end of each line) or holds a row index
(whole numbers, increasing) is left aside, and named in ``Series.ignored``. Such a column with
readings of another kind is scored as a sensor. Anything else that is not a number (text, a
decimal comma) is refused with the file, line and column, and so are a column named twice and
a row with values past the header's columns.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.files import data_files

LABELS = ("anomaly", "changepoint")
TIME = "datetime"
CALIBRATION_ROWS = 400  # SKAB's protocol: fit on the first 400 rows of each file
_INDEX_NAME = re.compile(r"(unnamed: \d+|index|)")  # lower-cased, stripped


class DataError(Exception):
    """A file that is not a readable SKAB-format CSV; the message names the file."""


@dataclass(frozen=True)
class Series:
    path: Path
    sensors: tuple[str, ...]
    values: npt.NDArray[np.float64]  # [rows, sensors]
    anomaly: npt.NDArray[np.int8] | None  # [rows], None when unlabelled
    held: int = 0  # missing readings filled with the sensor's last value
    ignored: tuple[str, ...] = ()  # columns left aside: blank or a row index


def read_series(path: Path, *, labelled: bool) -> Series:
    """One CSV; ``labelled`` requires the ``anomaly`` column."""
    try:
        # utf-8-sig: spreadsheet exports start with a byte order mark that would hide "datetime"
        with open(path, encoding="utf-8-sig", newline="") as f:
            # (line number, cells); blank lines (one at the end, say) carry nothing
            rows = [(n, r) for n, r in enumerate(csv.reader(f, delimiter=";"), 1) if _filled(r)]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    seen: set[str] = set()
    for h in header:
        if h and h.lower() in seen:  # which of the two would be the sensor?
            raise DataError(f"{path}: column {h!r} appears twice in the header")
        seen.add(h.lower())
    where = {h.lower(): i for i, h in enumerate(header)}
    required = (TIME, "anomaly") if labelled else (TIME,)
    missing = [c for c in required if c not in where]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(expected ';'-separated datetime, sensor columns, anomaly; changepoint optional)"
        )
    body = rows[1:]
    if not body:
        raise DataError(f"{path}: no data rows, only the header")
    others = [i for i, h in enumerate(header) if h.lower() not in (TIME, *LABELS)]
    ignored = [i for i in others if index_column(header[i], [_cell(r, i) for _, r in body])]
    cols = [i for i in others if i not in ignored]
    sensors = tuple(header[i] for i in cols)
    if not sensors:
        raise DataError(f"{path}: no sensor columns besides {', '.join(header)}")
    label = where.get("anomaly")
    values = np.empty((len(body), len(cols)), dtype=np.float64)
    anomaly = np.zeros(len(body), dtype=np.int8)
    last = max(cols if label is None else [*cols, label])  # the last cell read on a row
    for n, (line, r) in enumerate(body):
        # Empty cells past the header's (a trailing ';') are harmless; values there are not.
        if last >= len(r) or any(c.strip() for c in r[len(header) :]):
            raise DataError(f"{path}: line {line}: {len(r)} cells, the header has {len(header)}")
        for j, i in enumerate(cols):
            values[n, j] = _reading(r[i], path, line, header[i])
        if label is not None:
            anomaly[n] = _label(r[label], path, line)
    bad = np.flatnonzero(np.isinf(values).any(axis=1))
    if len(bad):
        raise DataError(f"{path}: line {body[bad[0]][0]}: sensor values must be finite numbers")
    held = _hold_last(values, sensors, path)
    labels = anomaly if label is not None else None
    return Series(path, sensors, values, labels, held, tuple(repr(header[i]) for i in ignored))


def index_column(name: str, cells: list[str]) -> bool:
    """Whether a column is no sensor: named ``""``, ``Unnamed: N`` or ``index`` (any case) and
    blank on every row, or holding whole numbers that increase from row to row (a row index,
    as pandas writes one). A column of another name is always a sensor."""
    if not _INDEX_NAME.fullmatch(name.strip().lower()):
        return False
    if all(not c.strip() for c in cells):
        return True
    try:
        numbers = [int(c) for c in cells]
    except ValueError:
        return False
    return all(b > a for a, b in zip(numbers, numbers[1:], strict=False))


def _filled(row: list[str]) -> bool:
    return any(c.strip() for c in row)


def _cell(row: list[str], i: int) -> str:
    return row[i] if i < len(row) else ""


_MISSING = {"", "nan", "na", "n/a", "null", "none"}
_DECIMAL_COMMA = re.compile(r"\s*[-+]?\d*,\d+\s*")


def _reading(text: str, path: Path, line: int, column: str) -> float:
    if text.strip().lower() in _MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        hint = " (a decimal comma? write 0.5, not 0,5)" if _DECIMAL_COMMA.fullmatch(text) else ""
        raise DataError(
            f"{path}: line {line}: column {column!r}: {text!r} is not a number{hint}"
        ) from None


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
    """The CSV files under ``root`` (a file or a folder, searched recursively; ``.csv`` in any
    case; hidden files and folders left out, as `data_files` says), sorted."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    files = [p for _, p in data_files(root) if p.suffix.lower() == ".csv"]
    if not files:
        raise DataError(f"{root}: no .csv files")
    return files
