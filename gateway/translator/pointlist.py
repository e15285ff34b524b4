"""Point lists the translator reads: CSV files (points, labeled examples) with one-line errors.

A user's file is checked up front (exists, UTF-8, has a header with the needed columns, has rows)
so the CLI can say what is wrong in one line instead of a traceback.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from gateway.text import counted
from gateway.translator.tokenize import Point
from gateway.translator.vocab import brick_classes, canonical


class InputError(Exception):
    """A user's input file is unusable; the message is one line, fit for the CLI."""


def read_table(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header; column names are matched case-insensitively."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    if not text.strip():
        raise InputError(f"{path}: empty file, expected a header with {', '.join(required)}")
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        _check_header(path, header, required)
        rows = []
        line = reader.line_num + 1  # where the next record starts
        for fields in reader:
            row = _row(path, line, header, fields, required)
            if any(row.get(c) for c in required):
                rows.append(row)
            line = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}: bad CSV at line {reader.line_num}: {exc}") from None
    if not rows:
        raise InputError(f"{path}: no rows after the header")
    return rows


def _check_header(path: Path, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(missing)} in the header "
            f"(found: {', '.join(header) or 'nothing'})"
        )
    named = [h for h in header if h]  # blank names: trailing commas, harmless
    twice = sorted({h for h in named if named.count(h) > 1})
    if twice:
        raise InputError(f"{path}: column {', '.join(twice)} appears twice in the header")


def _row(
    path: Path, line: int, header: list[str], fields: list[str], required: tuple[str, ...]
) -> dict[str, str]:
    """One record as {column: value}; a record that cannot be the row it looks like is an
    error naming its line, rather than a point with a shifted or merged name."""
    extra = fields[len(header) :]
    if any(f.strip() for f in extra):  # trailing empty fields are harmless
        raise InputError(
            f"{path}: line {line}: {counted(len(fields), 'field')}, the header has {len(header)} "
            "(a comma inside a value needs quotes)"
        )
    row = {h: f.strip() for h, f in zip(header, fields, strict=False) if h}
    for c in required:
        if "\n" in row.get(c, "") or "\r" in row.get(c, ""):
            raise InputError(
                f"{path}: line {line}: the {c} runs over several lines (a quote not closed?)"
            )
    return row


def point_of(row: dict[str, str]) -> Point:
    return Point(
        row.get("name", ""),
        row.get("description", ""),
        row.get("unit", ""),
        row.get("datatype", ""),
    )


def read_points(path: str | Path) -> list[Point]:
    """``name`` plus optional ``description``, ``unit``, ``datatype``; other columns ignored."""
    return [point_of(r) for r in read_table(path, ("name",))]


def read_labeled(path: str | Path) -> list[tuple[Point, str]]:
    """``name,brick_class`` rows; classes must be Brick point classes (aliases are resolved)."""
    rows = read_table(path, ("name", "brick_class"))
    known = {c.name for c in brick_classes()}
    out = []
    for i, r in enumerate(rows, start=2):
        if not r.get("brick_class"):
            raise InputError(f"{path}: row {i}: empty brick_class (label the point or drop it)")
        cls = canonical(r["brick_class"])
        if cls not in known:
            raise InputError(f"{path}: row {i}: {r['brick_class']!r} is not a Brick point class")
        if not r.get("name"):
            raise InputError(f"{path}: row {i}: empty name")
        out.append((point_of(r), cls))
    return out
