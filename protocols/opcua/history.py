"""HistoryRead (OPC UA Part 11, 6.5): which stored values a request asks for, in which order,
a page at a time behind continuation points: raw values (6.5.3) with their bounding values,
processed values (6.5.4, Part 13's aggregates of `protocols.opcua.aggregates`) and the values
at given times (6.5.5).

The time domain (Part 11, 4.4 and 6.5.3.2): two of start, end and numValuesPerNode are given.
Forward (start before end, or start alone) reads ``start <= ts < end``; backward (end before
start, or end alone) reads ``end < ts <= start`` newest first, and end alone ``ts < end``. Start
equal to end reads the values at that time. With ``returnBounds`` the value just outside each
given end of the domain comes too (the last one at or before the start, going forward), or a
null with Bad_BoundNotFound at that time when there is none; bounds count in
numValuesPerNode. With both times, numValuesPerNode is the size of a page (the rest behind a
continuation point); with one time it is the total.

Processed: the intervals of ProcessingInterval from StartTime towards EndTime (going back when
EndTime is earlier; the last one shorter where the span is not a multiple; 0: one interval),
each over ``lo <= ts < hi``, reported at its start (its later end going back). A response
carries at most `MAX_VALUES` intervals of a node and folds at most `MAX_ROWS` stored rows (the
memory one response takes is a page of rows, whatever the span); the rest, even the middle of an
interval (the fold's state travels in the point, as does the request's AggregateConfiguration),
is behind a continuation point. Interpolative is the value at each interval's time, as at-time
reads give it: the row held then (one the AggregateConfiguration does not use, a bad one or an
uncertain one under TreatUncertainAsBad, passed over for the last one it uses among the
`_BOUND_SEARCH` before it).
At-time points hold the index of the next time and a digest of the times: Part 11 has the
client send the same request with them, and another one's is refused.

Continuation points carry the whole position (the request, the time of the last value given
and how many values at that time were given), signed with a key the server makes at start: no
state is kept per session, so there is nothing to leak or to limit, and a point made by another
server, or for another node, is refused (Bad_ContinuationPointInvalid). Values recorded while a
client pages through come in the pages still to be read where their time falls there.

No I/O here: `read_page`, `read_processed` and `read_at_times` ask a `Reader` (the shadow's
history, in the target's units).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from protocols.opcua.aggregates import (
    DEFAULT,
    SAME,
    Aggregate,
    Config,
    Fold,
    Result,
    Sample,
    value_at,
)

MAX_VALUES = 1000  # of one node in one response (advertised as MaxReturnDataValues)
MAX_RESPONSE_VALUES = 10_000  # of all the nodes of one response (about 0.3 MB of doubles)
MAX_ROWS = 100_000  # stored rows folded into aggregates for one response (about 0.5 s)
_PAGE_ROWS = 1000  # stored rows read at a time
# How far back a bad value held at a time is passed over for the last usable one
_BOUND_SEARCH = 100
_EPOCH_1601 = datetime(1601, 1, 1, tzinfo=UTC)
_MAC = 16  # bytes of HMAC-SHA256 kept


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


@dataclass(frozen=True)
class ProcessedQuery:
    """A ReadProcessedDetails for one node: its aggregate, intervals (times in seconds) and
    AggregateConfiguration."""

    aggregate: Aggregate
    start: float
    end: float
    step: float  # ProcessingInterval; 0: one interval over the whole span
    config: Config = DEFAULT

    @classmethod
    def of(
        cls,
        start: datetime | None,
        end: datetime | None,
        interval_ms: float,
        aggregate: Aggregate,
        config: Config = DEFAULT,
    ) -> ProcessedQuery:
        low, high = _time(start), _time(end)
        if low is None or high is None or abs(high - low) < SAME:
            raise InvalidQuery("a processed read needs different startTime and endTime")
        if not math.isfinite(interval_ms) or interval_ms < 0:
            raise InvalidQuery(f"processingInterval {interval_ms} is not a duration")
        return cls(aggregate, low, high, interval_ms / 1000, config)

    @property
    def span(self) -> float:
        return abs(self.end - self.start)

    @property
    def length(self) -> float:
        """An interval's full length (a shorter one is Partial)."""
        return self.step if 0 < self.step < self.span else self.span

    @property
    def intervals(self) -> int:
        # a span that is a multiple of the step, give or take the rounding of times (`SAME`),
        # has no remnant
        return max(1, math.ceil((self.span - SAME) / self.length))

    def interval(self, i: int) -> tuple[float, float, float]:
        """Interval ``i``: ``lo``, ``hi`` and the time it is reported at."""
        # both ends from the start, so that interval i ends exactly where i + 1 begins (lo +
        # length can differ from it by a float's last bit: a row there counted twice, or
        # never), and the last one at the end itself
        last = i + 1 >= self.intervals
        if self.end > self.start:
            lo = self.start + i * self.length
            return lo, self.end if last else self.start + (i + 1) * self.length, lo
        hi = self.start - i * self.length
        return self.end if last else self.start - (i + 1) * self.length, hi, hi


@dataclass(frozen=True)
class ProcessedPosition:
    """How far a processed read has come: the next interval, and within it (``fold`` not
    None) the rows folded so far, up to ``ts`` less ``skip`` rows at exactly ``ts``."""

    index: int = 0
    ts: float | None = None
    skip: int = 0
    fold: list[Any] | None = None


async def read_processed(
    query: ProcessedQuery, at: ProcessedPosition, room: int, read: Reader, now: float
) -> tuple[list[Result], ProcessedPosition | None]:
    """The next results of ``query`` from ``at``, at most ``room`` (and `MAX_VALUES`), having
    folded at most `MAX_ROWS` rows; with the position to go on from, None when complete."""
    room, budget, step, config = min(room, MAX_VALUES), MAX_ROWS, query.length, query.config
    out: list[Result] = []
    index = at.index
    fold = Fold.restore(at.fold) if at.fold is not None else None
    cursor, skip = at.ts, at.skip
    carried: tuple[float, Sample | None] | None = None  # the row held at a time, known
    while index < query.intervals and len(out) < room:
        lo, hi, stamp = query.interval(index)
        if query.aggregate is Aggregate.INTERPOLATIVE:
            held, good = await bound(read, stamp, config)
            out.append(value_at(held, good, stamp, now, False, config))
            index += 1
            continue
        if fold is None:
            if carried is not None and abs(carried[0] - lo) < SAME:
                held = carried[1]
            else:
                rows = await _read(read, None, lo, False, True, True, 1)
                held = _sample(rows[0]) if rows else None
            fold, cursor, skip = Fold(lo, hi, held), lo, 0
        while True:
            if budget <= 0:
                return out, ProcessedPosition(index, cursor, skip, fold.state())
            wanted = min(_PAGE_ROWS, budget)
            assert cursor is not None
            rows = await _read(read, cursor, hi, False, True, False, skip + wanted + 1)
            rows = _after_skip(rows, cursor, skip)
            taken = rows[:wanted]
            for row in taken:
                fold.add(_sample(row), config)
            budget -= len(taken)
            if len(rows) <= len(taken):
                break
            last = taken[-1].ts
            same = sum(1 for r in taken if abs(r.ts - last) < SAME)
            skip = same + (skip if abs(cursor - last) < SAME else 0)
            cursor = last
        out.append(fold.result(query.aggregate, stamp, now, step, config))
        carried, fold = (hi, fold.held), None
        index += 1
    return out, ProcessedPosition(index) if index < query.intervals else None


async def read_at_times(
    times: list[float], index: int, room: int, read: Reader, now: float, simple: bool
) -> tuple[list[Result], int | None]:
    """The values at ``times`` from ``index`` on, at most ``room`` (and `MAX_VALUES`); with
    the index to go on from, None when complete."""
    out: list[Result] = []
    for t in times[index : index + min(room, MAX_VALUES)]:
        held, good = await bound(read, t)
        out.append(value_at(held, good, t, now, simple))
    index += len(out)
    return out, index if index < len(times) else None


async def bound(
    read: Reader, t: float, config: Config = DEFAULT
) -> tuple[Sample | None, Sample | None]:
    """The row held at ``t`` (the last at or before it) and the last one ``config`` uses
    (looked for among the `_BOUND_SEARCH` rows before one it does not)."""
    rows = await _read(read, None, t, False, False, True, 1)
    if not rows:
        return None, None
    held = _sample(rows[0])
    if config.used(held[2]):
        return held, held
    rows = await _read(read, None, held[0], False, True, True, _BOUND_SEARCH)
    good = next((_sample(r) for r in rows if config.used(r.quality)), None)
    return held, good


def _sample(row: Row) -> Sample:
    return (row.ts, row.value, row.quality)


def request_times(times: list[datetime]) -> list[float]:
    """ReadAtTimeDetails' ReqTimes in seconds; InvalidQuery where one is not given."""
    out = [_time(t) for t in times]
    if not out or any(t is None for t in out):
        raise InvalidQuery("reqTimes must be given, each a time")
    return [t for t in out if t is not None]


class Continuations:
    """Makes and checks the continuation points of one server (a key of its own)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, node: str, body: bytes) -> bytes:
        return hmac.new(self._key, node.encode() + b"\0" + body, hashlib.sha256).digest()[:_MAC]

    def seal(self, node: str, payload: list[Any]) -> bytes:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return self._mac(node, body) + body

    def unseal(self, node: str, point: bytes, kind: str) -> list[Any]:
        """The payload of a point of ``kind`` made by `seal` for ``node``."""
        mac, body = point[:_MAC], point[_MAC:]
        if len(mac) != _MAC or not hmac.compare_digest(mac, self._mac(node, body)):
            raise InvalidContinuation("not a continuation point of this server for this node")
        payload = json.loads(body)
        if not isinstance(payload, list) or not payload or payload[0] != kind:
            raise InvalidContinuation("a continuation point of another kind of read")
        return payload[1:]

    def make(self, node: str, query: RawQuery, at: Position) -> bytes:
        q = query
        return self.seal(
            node, ["raw", q.start, q.end, q.count, q.bounds, at.phase, at.ts, at.skip, at.given]
        )

    def open(self, node: str, point: bytes) -> tuple[RawQuery, Position]:
        start, end, count, bounds, phase, ts, skip, given = self.unseal(node, point, "raw")
        return RawQuery(start, end, count, bounds), Position(phase, ts, skip, given)

    def make_processed(self, node: str, query: ProcessedQuery, at: ProcessedPosition) -> bytes:
        q, c = query, query.config
        return self.seal(
            node,
            ["processed", q.aggregate.name, q.start, q.end, q.step, at.index, at.ts, at.skip]
            + [at.fold, [c.uncertain_bad, c.percent_bad, c.percent_good, c.sloped]],
        )

    def open_processed(self, node: str, point: bytes) -> tuple[ProcessedQuery, ProcessedPosition]:
        name, start, end, step, index, ts, skip, fold, config = self.unseal(
            node, point, "processed"
        )
        query = ProcessedQuery(Aggregate[name], start, end, step, Config(*config))
        return query, ProcessedPosition(index, ts, skip, fold)

    def make_at_times(self, node: str, times: list[float], simple: bool, index: int) -> bytes:
        return self.seal(node, ["at", _digest(times, simple), index])

    def open_at_times(self, node: str, point: bytes, times: list[float], simple: bool) -> int:
        """The index a point goes on from; InvalidContinuation where the request resent with
        it is not the one it was made for (Part 11: the same details come back with it)."""
        digest, index = self.unseal(node, point, "at")
        if digest != _digest(times, simple):
            raise InvalidContinuation("the continuation point of another request")
        return int(index)


def _digest(times: list[float], simple: bool) -> str:
    return hashlib.sha256(json.dumps([times, simple]).encode()).hexdigest()[:32]
