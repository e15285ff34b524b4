"""Point lists the translator reads: CSV files (points, labeled examples) with one-line errors.

A user's file is checked up front (exists, UTF-8, has a header with the needed columns, has rows)
so the CLI can say what is wrong in one line instead of a traceback.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gateway.text import counted
from gateway.translator.tokenize import Point
from gateway.translator.vocab import brick_classes, canonical


class InputError(Exception):
    """A user's input file is unusable; the message is one line, fit for the CLI."""


def read_table(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The records of a CSV file with a header, each with the line it starts on; column names
    are matched case-insensitively; blank records (no field filled) are skipped. The delimiter
    is the header's: a comma, a semicolon or a tab."""
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
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        _check_header(path, header, required)
        rows = []
        line = reader.line_num + 1  # where the next record starts
        for fields in reader:
            row = _row(path, line, header, fields, required)
            if any(row.values()):
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}: bad CSV at line {reader.line_num}: {exc}") from None
    if not rows:
        raise InputError(f"{path}: no rows after the header")
    return rows


def _delimiter(text: str) -> str:
    """The header line's delimiter (comma unless it is clearly a semicolon or a tab, as
    spreadsheets in many locales and TSV exports write)."""
    header = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except csv.Error:  # one column: nothing to tell
        return ","


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
    return [p for _, p in read_point_rows(path) if p.name]


def read_point_rows(path: str | Path) -> list[tuple[int, Point]]:
    """Every record of a point list with the line it starts on, rows without a name too (a
    description or unit only): ``classify`` writes one output row per input row. Only blank
    lines are skipped."""
    rows = read_table(path, ("name",))
    out = [(line, point_of(r)) for line, r in rows]
    if not any(p.name for _, p in out):
        raise InputError(f"{path}: no row has a name")
    return out


@dataclass(frozen=True, slots=True)
class Labeled:
    """A labeled file's points with a known class, and the labels of those left out."""

    points: list[tuple[Point, str]]
    unknown: list[tuple[int, str]]  # (line, label as written) of each point left out

    def note(self, path: str | Path) -> str | None:
        """One line on the points left out, or None."""
        if not self.unknown:
            return None
        seen = Counter(label for _, label in self.unknown)
        shown = ", ".join(
            f"{label!r}" + (f" ({n})" if n > 1 else "") for label, n in seen.most_common(3)
        )
        more = f" and {counted(len(seen) - 3, 'other')}" if len(seen) > 3 else ""
        return (
            f"{path}: left out {counted(len(self.unknown), 'point')} whose brick_class is not a "
            f"Brick point class we know: {shown}{more}"
        )


def read_labeled(path: str | Path) -> list[tuple[Point, str]]:
    """``name,brick_class`` rows; classes must be Brick point classes (aliases are resolved,
    written in any case, with spaces or as a Brick URI; see `vocab.canonical`)."""
    labeled = _labeled(path)
    if labeled.unknown:
        line, label = labeled.unknown[0]
        raise InputError(f"{path}: line {line}: {label!r} is not a Brick point class")
    return labeled.points


def read_labeled_known(path: str | Path) -> Labeled:
    """``name,brick_class`` rows as `read_labeled` reads them, except that a point whose class
    is not a Brick point class we know (a class newer than our Brick, a typo) is left out and
    counted rather than an error. A file with no known class at all is an error."""
    labeled = _labeled(path)
    if not labeled.points:
        line, label = labeled.unknown[0]
        raise InputError(
            f"{path}: no point has a Brick point class we know (line {line}: {label!r})"
        )
    return labeled


def _labeled(path: str | Path) -> Labeled:
    rows = read_table(path, ("name", "brick_class"))
    known = {c.name for c in brick_classes()}
    out = []
    unknown = []
    for line, r in rows:
        if not r.get("name") and not r.get("brick_class"):
            continue  # another column only: not a point
        if not r.get("brick_class"):
            raise InputError(f"{path}: line {line}: empty brick_class (label the point or drop it)")
        if not r.get("name"):
            raise InputError(f"{path}: line {line}: empty name")
        cls = canonical(r["brick_class"])
        if cls in known:
            out.append((point_of(r), cls))
        else:
            unknown.append((line, r["brick_class"]))
    if not out and not unknown:
        raise InputError(f"{path}: no row has a name and a brick_class")
    return Labeled(out, unknown)
