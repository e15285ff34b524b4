"""HistoryRead of raw values (OPC UA Part 11, 6.5.3): which stored values a request asks for,
in which order, with its bounding values, a page at a time behind continuation points.

The time domain (Part 11, 4.4 and 6.5.3.2): two of start, end and numValuesPerNode are given.
Forward (start before end, or start alone) reads ``start <= ts < end``; backward (end before
start, or end alone) reads ``end < ts <= start`` newest first, and end alone ``ts < end``. Start
equal to end reads the values at that time. With ``returnBounds`` the value just outside each
given end of the domain comes too (the last one at or before the start, going forward), or a
null with Bad_BoundNotFound at that time when there is none; bounds count in
numValuesPerNode. With both times, numValuesPerNode is the size of a page (the rest behind a
continuation point); with one time it is the total.

Continuation points carry the whole position (the request, the time of the last value given
and how many values at that time were given), signed with a key the server makes at start: no
state is kept per session, so there is nothing to leak or to limit, and a point made by another
server, or for another node, is refused (Bad_ContinuationPointInvalid). Values recorded while a
client pages through come in the pages still to be read where their time falls there.

No I/O here: `read_page` asks a `Reader` (the shadow's history, in the target's units).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

MAX_VALUES = 1000  # of one node in one response (advertised as MaxReturnDataValues)
MAX_RESPONSE_VALUES = 10_000  # of all the nodes of one response (about 0.3 MB of doubles)
_EPOCH_1601 = datetime(1601, 1, 1, tzinfo=UTC)
_MAC = 16  # bytes of HMAC-SHA256 kept
# A client sends back the times we gave it, rounded to the microsecond (datetime's resolution;
# OPC UA's is 100 ns); a stored time is any float. Times this close are the same time.
SAME = 0.5e-6


class Row(Protocol):
    """A stored value (`gateway.shadow.store.HistoryRow`)."""

    @property
    def ts(self) -> float: ...

    @property
    def value(self) -> Any: ...

    @property
    def quality(self) -> str: ...


@dataclass(frozen=True)
class NoBound:
    """A bounding value the history does not have: null, Bad_BoundNotFound, at ``ts``."""

    ts: float


Item = Row | NoBound
# rows by keyword: low, high, low_open, high_open, newest_first, limit (as
# `gateway.shadow.store.ShadowStore.history_page`)
Reader = Callable[..., Awaitable[list[Any]]]


class InvalidQuery(ValueError):
    """Fewer than two of start, end and numValuesPerNode (Bad_HistoryOperationInvalid)."""


class InvalidContinuation(ValueError):
    """A continuation point this server did not make for this node."""


def _time(value: datetime | None) -> float | None:
    """A request's UtcTime as POSIX seconds; None where it is DateTime.MinValue (not given)."""
    if value is None or value <= _EPOCH_1601:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(frozen=True)
class RawQuery:
    start: float | None
    end: float | None
    count: int  # numValuesPerNode; 0: no maximum
    bounds: bool

    @classmethod
    def of(cls, start: datetime | None, end: datetime | None, count: int, bounds: bool) -> RawQuery:
        query = cls(_time(start), _time(end), max(0, int(count)), bool(bounds))
        given = (query.start is not None) + (query.end is not None) + (query.count > 0)
        if given < 2:
            raise InvalidQuery("two of startTime, endTime and numValuesPerNode must be given")
        return query

    @property
    def backward(self) -> bool:
        if self.start is None:
            return True
        return self.end is not None and self.end < self.start

    @property
    def origin(self) -> float:
        """Where reading begins: the start, or the end when only it is given."""
        origin = self.start if self.start is not None else self.end
        assert origin is not None, "RawQuery.of has checked two are given"
        return origin

    @property
    def limit(self) -> float | None:
        """Where reading stops (exclusive), if anywhere."""
        return self.end if self.start is not None else None

    @property
    def total(self) -> int | None:
        """The most values of all pages: numValuesPerNode when only one time is given."""
        return self.count if self.count and (self.start is None or self.end is None) else None

    @property
    def page(self) -> int:
        if self.count and self.total is None:
            return min(self.count, MAX_VALUES)
        return MAX_VALUES


@dataclass(frozen=True)
class Position:
    """How far a read has come: ``phase`` 0 before the first bound, 1 in the values (from
    ``ts``, less ``skip`` values at exactly ``ts`` already given), 2 before the last bound."""

    phase: int = 0
    ts: float | None = None
    skip: int = 0
    given: int = 0


async def read_page(
    query: RawQuery, at: Position, room: int, read: Reader
) -> tuple[list[Item], Position | None]:
    """The next values of ``query`` from ``at``, at most ``room`` (and a page); with the
    position to go on from, None when the read is complete."""
    back, origin, limit = query.backward, query.origin, query.limit
    exact = limit is not None and limit == origin  # start == end: the values at that time
    room = min(room, query.page)
    if query.total is not None:
        room = min(room, query.total - at.given)
    out: list[Item] = []

    def here(phase: int, ts: float | None = None, skip: int = 0) -> Position:
        return Position(phase, ts, skip, at.given + len(out))

    def done() -> bool:
        return query.total is not None and at.given + len(out) >= query.total

    phase, cursor, skip = at.phase, at.ts, at.skip
    if phase == 0:
        if len(out) >= room:
            return out, here(0)
        if query.bounds:
            bound = await _nearest(read, origin, after=back)
            if bound is None:
                out.append(NoBound(origin))
            elif abs(bound.ts - origin) >= SAME or query.start is None:
                out.append(bound)  # one at the start itself is the domain's first value
        if done():
            return out, None
        phase = 1
    if phase == 1:
        wanted = room - len(out)
        if wanted <= 0:
            return out, here(1, cursor, skip)
        # from the origin (exclusive for end alone), then from the last time given
        low = origin if cursor is None else cursor
        rows = await _rows(
            read, low, cursor is None and query.start is None, limit, exact, back, skip + wanted + 1
        )
        rows = _after_skip(rows, low, skip)
        taken = rows[:wanted]
        out.extend(taken)
        if done():
            return out, None
        if len(rows) > len(taken):
            last = taken[-1].ts
            same = sum(1 for r in taken if abs(r.ts - last) < SAME)
            again = cursor is not None and abs(cursor - last) < SAME
            return out, here(1, last, same + (skip if again else 0))
        phase = 2
    if query.bounds and limit is not None and not exact:
        if len(out) >= room:
            return out, here(2)
        bound = await _nearest(read, limit, after=not back)
        out.append(bound if bound is not None else NoBound(limit))
    return out, None


async def _nearest(read: Reader, t: float, *, after: bool) -> Any | None:
    """The value at ``t``, or else the nearest before it (``after``: after it)."""
    if after:
        rows = await _read(read, t, None, False, False, False, 1)
    else:
        rows = await _read(read, None, t, False, False, True, 1)
    return rows[0] if rows else None


async def _read(
    read: Reader,
    low: float | None,
    high: float | None,
    low_open: bool,
    high_open: bool,
    newest_first: bool,
    limit: int,
) -> list[Any]:
    """``read`` with times within `SAME` of a limit counted as at it."""
    if low is not None:
        low = low + SAME if low_open else low - SAME
    if high is not None:
        high = high - SAME if high_open else high + SAME
    return await read(
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        newest_first=newest_first,
        limit=limit,
    )


async def _rows(
    read: Reader,
    cursor: float,
    cursor_open: bool,
    limit: float | None,
    exact: bool,
    back: bool,
    count: int,
) -> list[Any]:
    """Values from ``cursor`` towards ``limit`` (exclusive, or inclusive when ``exact``)."""
    if back:
        return await _read(read, limit, cursor, not exact, cursor_open, True, count)
    return await _read(read, cursor, limit, cursor_open, not exact, False, count)


def _after_skip(rows: list[Any], cursor: float, skip: int) -> list[Any]:
    """``rows`` less the first ``skip`` at exactly ``cursor`` (given on an earlier page)."""
    dropped = 0
    while dropped < skip and dropped < len(rows) and abs(rows[dropped].ts - cursor) < SAME:
        dropped += 1
    return rows[dropped:]


class Continuations:
    """Makes and checks the continuation points of one server (a key of its own)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, node: str, body: bytes) -> bytes:
        return hmac.new(self._key, node.encode() + b"\0" + body, hashlib.sha256).digest()[:_MAC]

    def make(self, node: str, query: RawQuery, at: Position) -> bytes:
        body = json.dumps(
            [query.start, query.end, query.count, query.bounds, at.phase, at.ts, at.skip, at.given],
            separators=(",", ":"),
        ).encode()
        return self._mac(node, body) + body

    def open(self, node: str, point: bytes) -> tuple[RawQuery, Position]:
        mac, body = point[:_MAC], point[_MAC:]
        if len(mac) != _MAC or not hmac.compare_digest(mac, self._mac(node, body)):
            raise InvalidContinuation("not a continuation point of this server for this node")
        start, end, count, bounds, phase, ts, skip, given = json.loads(body)
        return RawQuery(start, end, count, bounds), Position(phase, ts, skip, given)
