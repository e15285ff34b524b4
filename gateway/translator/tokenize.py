"""Point names to model inputs: word pieces, each a bag of hashed character n-grams.

Vendor names glue abbreviations together (``SODA1R405B_ART``, ``Sensordac1UIP36``), so a name is
split at separators, case changes and letter/digit boundaries into pieces, and each piece is
represented by the hashes of its character 2-, 3- and 4-grams plus the whole piece (fastText
style). Pieces the model never saw still share n-grams with ones it did (``tmp`` with ``temp``).
Numbers carry no meaning here (loop and room numbers), so every digit run is one ``#`` piece.

The same code builds the training batches and the run-time inputs, so the two cannot drift.
Pure Python + numpy; the per-piece features are cached because names repeat their pieces a lot.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BUCKETS = 8192  # hash buckets of the n-gram table; 0 is padding
GRAMS = 24  # n-gram ids kept per piece
NAME_PIECES = 16  # pieces kept from the name
EXTRA_PIECES = 8  # pieces kept from description, unit and datatype together

SEG_NAME, SEG_DESC, SEG_UNIT, SEG_TYPE = 1, 2, 3, 4

# Kept whole: splitting at the digit would lose what they mean.
_PROTECTED = re.compile(r"co2|h2o|no2|pm2\.5|pm10|1st|2nd|3rd|[4-9]th", re.IGNORECASE)
_CAMEL = re.compile(r"([a-z])([A-Z])|([A-Z]+)([A-Z][a-z])")
_PIECE = re.compile(r"[A-Za-z]+|\d+|%|°")


def pieces(text: str) -> list[str]:
    """``'SDH.PXCM-08.AH2.SF-VFD'`` -> ``['sdh', 'pxcm', '#', 'ah', '#', 'sf', 'vfd']``."""
    out: list[str] = []
    pos = 0
    for m in _PROTECTED.finditer(text):
        out.extend(_split(text[pos : m.start()]))
        out.append(m.group(0).lower())
        pos = m.end()
    out.extend(_split(text[pos:]))
    return out


def _split(text: str) -> list[str]:
    text = _CAMEL.sub(lambda m: f"{m.group(1) or m.group(3)} {m.group(2) or m.group(4)}", text)
    return ["#" if p[0].isdigit() else p.lower() for p in _PIECE.findall(text)]


def _hash(s: str) -> int:
    return zlib.crc32(s.encode()) % (BUCKETS - 1) + 1


_cache: dict[tuple[str, int], list[int]] = {}


def _grams(piece: str, seg: int) -> list[int]:
    key = (piece, seg)
    got = _cache.get(key)
    if got is not None:
        return got
    tag = "" if seg == SEG_NAME or seg == SEG_DESC else f"{seg}:"
    ids = [_hash(f"{tag}<{piece}>")]
    if not tag:
        w = f"<{piece}>"
        for n in (3, 4, 2):
            ids.extend(_hash(w[i : i + n]) for i in range(len(w) - n + 1))
    ids = ids[:GRAMS]
    if len(_cache) < 200_000:
        _cache[key] = ids
    return ids


@dataclass(frozen=True, slots=True)
class Point:
    """What the translator reads about a point; all but the name are optional."""

    name: str
    description: str = ""
    unit: str = ""
    datatype: str = ""
    address: str = ""  # where a browse found it (an OPC UA node id); not read by the model


FEEDS = ("ids", "seg", "pos", "rpos")  # the model's inputs, in Batch's order


@dataclass(frozen=True, slots=True)
class Batch:
    ids: npt.NDArray[np.int64]  # (B, T, GRAMS) n-gram ids, 0 = padding
    seg: npt.NDArray[np.int64]  # (B, T) 0 pad, else SEG_*
    pos: npt.NDArray[np.int64]  # (B, T) position from the start of its part
    rpos: npt.NDArray[np.int64]  # (B, T) position from the end of the name (0 elsewhere)

    def feeds(self) -> dict[str, npt.NDArray[np.int64]]:
        return dict(zip(FEEDS, (self.ids, self.seg, self.pos, self.rpos), strict=True))


def _name_pieces(name: str) -> list[str]:
    ps = pieces(name)
    if len(ps) > NAME_PIECES:
        # Building and controller prefixes come first; the point itself is at the end.
        ps = ps[:4] + ps[-(NAME_PIECES - 4) :]
    return ps


def _rows(p: Point) -> list[tuple[list[int], int, int, int]]:
    name = _name_pieces(p.name)
    n = len(name)
    rows = [(_grams(w, SEG_NAME), SEG_NAME, i, n - 1 - i) for i, w in enumerate(name)]
    extra: list[tuple[str, int]] = []
    if p.unit:
        extra.append((p.unit.strip().lower(), SEG_UNIT))
    if p.datatype:
        extra.append((p.datatype.strip().lower(), SEG_TYPE))
    if p.description:
        room = EXTRA_PIECES - len(extra)
        extra.extend((w, SEG_DESC) for w in pieces(p.description)[:room])
    rows.extend((_grams(w, s), s, i, 0) for i, (w, s) in enumerate(extra))
    if not rows:  # an empty name still gets one (padding-only) piece so shapes stay valid
        rows.append(([], SEG_NAME, 0, 0))
    return rows


def encode(points: Sequence[Point]) -> Batch:
    """Pad a list of points into one batch (T = the longest in the batch)."""
    all_rows = [_rows(p) for p in points]
    t = max((len(r) for r in all_rows), default=1)
    b = len(points)
    ids = np.zeros((b, t, GRAMS), dtype=np.int64)
    seg = np.zeros((b, t), dtype=np.int64)
    pos = np.zeros((b, t), dtype=np.int64)
    rpos = np.zeros((b, t), dtype=np.int64)
    for i, rows in enumerate(all_rows):
        for j, (g, s, p, r) in enumerate(rows):
            ids[i, j, : len(g)] = g
            seg[i, j] = s
            pos[i, j] = p
            rpos[i, j] = r
    return Batch(ids, seg, pos, rpos)
