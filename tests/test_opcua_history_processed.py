"""HistoryRead of processed values (OPC UA Part 13 aggregates) and of values at given times.

The aggregates are checked against figures worked out by hand on a stepped series with a bad
row, an uncertain one and a gap (on a real shadow store); the service end to end with asyncua's
client (requests built by hand) and node-opcua's (which builds its own ReadProcessedDetails and
follows the continuation points), against what the raw rows give."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from asyncua import Client, ua
from conftest import wait_for
from test_opcua_history import history_gateway
from test_opcua_server import run_node

from gateway.shadow.store import ShadowStore
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator
from protocols.opcua import history
from protocols.opcua.aggregates import (
    CALCULATED,
    INTERPOLATED,
    MULTI_VALUE,
    PARTIAL,
    SAME,
    Aggregate,
    Fold,
    code,
    value_at,
)
from protocols.opcua.historian import Historian
from protocols.opcua.history import (
    MAX_VALUES,
    Continuations,
    InvalidContinuation,
    InvalidQuery,
    ProcessedPosition,
    ProcessedQuery,
    read_at_times,
    read_processed,
    request_times,
)

S = ua.StatusCodes
T0 = 1_700_000_000.0
# A stepped series (seconds after T0): each row holds until the next. 20 s of bad data, an
# uncertain value, 30 s without a change (one row: the value held), then "now" at 100.
SERIES = [
    (0, 10.0, "good"),
    (10, 20.0, "good"),
    (20, None, "bad"),
    (30, 40.0, "uncertain"),
    (40, 50.0, "good"),
    (70, 30.0, "good"),
]
NOW = T0 + 100
GOOD, SUB = S.Good, S.UncertainDataSubNormal
CALC = CALCULATED
# Intervals of 20 s from 0 to 90: [0,20) [20,40) [40,60) [60,80) [80,90) (short: Partial).
# Per aggregate: (value, status) per interval, worked out by hand.
EXPECTED: dict[Aggregate, list[tuple[Any, int]]] = {
    Aggregate.COUNT: [
        (2, code(GOOD, CALC)),
        (1, code(SUB, CALC)),  # a bad row and an uncertain one (used, not Good): not all bad
        (1, code(GOOD, CALC)),
        (1, code(GOOD, CALC)),
        (0, code(GOOD, CALC | PARTIAL)),
    ],
    Aggregate.MINIMUM: [
        (10.0, code(GOOD, CALC)),
        (40.0, code(SUB, CALC)),
        (50.0, code(GOOD, CALC)),
        (30.0, code(GOOD, CALC)),
        (None, S.BadNoData),
    ],
    Aggregate.MAXIMUM: [
        (20.0, code(GOOD, CALC)),
        (40.0, code(SUB, CALC)),
        (50.0, code(GOOD, CALC)),
        (30.0, code(GOOD, CALC)),
        (None, S.BadNoData),
    ],
    Aggregate.AVERAGE: [
        (15.0, code(GOOD, CALC)),
        (40.0, code(SUB, CALC)),
        (50.0, code(GOOD, CALC)),
        (30.0, code(GOOD, CALC)),
        (None, S.BadNoData),
    ],
    Aggregate.START: [
        (10.0, GOOD),
        (None, S.Bad),  # the bad row at 20 is the first raw value
        (50.0, GOOD),
        (30.0, GOOD),
        (None, S.BadNoData),
    ],
    Aggregate.END: [
        (20.0, GOOD),
        (40.0, S.Uncertain),
        (50.0, GOOD),
        (30.0, GOOD),
        (None, S.BadNoData),
    ],
    Aggregate.DELTA: [
        (10.0, code(GOOD, CALC)),
        (0.0, code(SUB, CALC)),
        (0.0, code(GOOD, CALC)),
        (0.0, code(GOOD, CALC)),
        (None, S.BadNoData),
    ],
    Aggregate.RANGE: [
        (10.0, code(GOOD, CALC)),
        (0.0, code(SUB, CALC)),
        (0.0, code(GOOD, CALC)),
        (0.0, code(GOOD, CALC)),
        (None, S.BadNoData),
    ],
    # stepped: the value held before an interval counts from its start
    Aggregate.TIME_AVERAGE: [
        ((10 * 10 + 20 * 10) / 20, code(GOOD, CALC)),
        (40.0, code(SUB, CALC)),  # 10 s bad left out, 10 s of uncertain 40
        (50.0, code(GOOD, CALC)),  # 40 held from 30 to 40, then 50: only 50 inside
        ((50 * 10 + 30 * 10) / 20, code(GOOD, CALC)),  # 50 held from 40 until 70
        (30.0, code(GOOD, CALC | PARTIAL)),
    ],
    Aggregate.INTERPOLATIVE: [
        (10.0, GOOD),  # a raw value at the interval's start
        (20.0, code(SUB, INTERPOLATED)),  # bad at 20: the last good value before it
        (50.0, GOOD),
        (50.0, code(GOOD, INTERPOLATED)),  # held since 40
        (30.0, code(GOOD, INTERPOLATED)),
    ],
}
# Start and End give the raw value's own time; the others the interval's start
STARTS = [0, 20, 40, 70, 80]
ENDS = [10, 30, 40, 70, 80]


def _store(path: Path, series: Sequence[tuple[float, Any, str]] = SERIES) -> ShadowStore:
    store = ShadowStore(str(path))
    for ts, value, quality in series:
        store.report("pump", {"temp": (value, quality, T0 + ts)})
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShadowStore]:
    s = _store(tmp_path / "shadow.db")
    yield s
    s.close()


def _reader(store: ShadowStore, log: list[int] | None = None) -> Any:
    async def rows(**query: Any) -> list[Any]:
        found = store.history_page("pump", "temp", **query)
        if log is not None:
            log.append(len(found))
        return found

    return rows


def _query(aggregate: Aggregate, start: float, end: float, step_s: float) -> ProcessedQuery:
    return ProcessedQuery.of(
        datetime.fromtimestamp(T0 + start, UTC),
        datetime.fromtimestamp(T0 + end, UTC),
        step_s * 1000,
        aggregate,
    )


async def _all(store: ShadowStore, query: ProcessedQuery, room: int = MAX_VALUES) -> list[Any]:
    """Every result of ``query``, following (sealed) continuation points."""
    keys, node = Continuations(), "ns=2;s=pump.temp"
    out: list[Any] = []
    at: ProcessedPosition | None = ProcessedPosition()
    for _ in range(200):
        assert at is not None
        page, at = await read_processed(query, at, room, _reader(store), NOW)
        out.extend(page)
        if at is None:
            return out
        query, at = keys.open_processed(node, keys.make_processed(node, query, at))
    raise AssertionError("no progress in 200 pages")


@pytest.mark.parametrize("aggregate", list(Aggregate), ids=lambda a: a.name)
async def test_each_aggregate_of_a_stepped_series(store: ShadowStore, aggregate: Aggregate) -> None:
    got = await _all(store, _query(aggregate, 0, 90, 20))
    assert [(r.value, r.status) for r in got] == EXPECTED[aggregate]
    stamps = {Aggregate.START: STARTS, Aggregate.END: ENDS}.get(aggregate, [0, 20, 40, 60, 80])
    assert [r.ts - T0 for r in got] == stamps
    # one interval a page, and one row a page of rows (the fold travels in the points): the same
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "MAX_ROWS", 1)
        assert await _all(store, _query(aggregate, 0, 90, 20), room=1) == got


async def test_backwards_intervals_and_time_without_data(store: ShadowStore) -> None:
    # end before start: intervals from 90 back, each reported at its later end
    back = await _all(store, _query(Aggregate.AVERAGE, 90, 0, 20))
    assert [r.ts - T0 for r in back] == [90, 70, 50, 30, 10]
    # [70,90) 30; [50,70) none; [30,50) 40u and 50; [10,30) 20 (bad left out); [0,10) 10
    assert [r.value for r in back] == [30.0, None, 45.0, 20.0, 10.0]
    assert back[-1].status == code(GOOD, CALC | PARTIAL)  # the short one
    # before the first row and after now there is no data: left out and Partial
    before = await _all(store, _query(Aggregate.TIME_AVERAGE, -20, 0, 0))
    assert [(r.value, r.status) for r in before] == [(None, S.BadNoData)]
    count = await _all(store, _query(Aggregate.COUNT, -20, 0, 0))
    assert [(r.value, r.status) for r in count] == [(0, code(GOOD, CALC | PARTIAL))]
    late = await _all(store, _query(Aggregate.TIME_AVERAGE, 60, 140, 0))
    # 50 from 60 to 70, 30 from 70 until now (100); 100..140 is the future
    assert [(r.value, r.status) for r in late] == [
        ((50 * 10 + 30 * 30) / 40, code(GOOD, CALC | PARTIAL))
    ]
    # one interval over the whole span (ProcessingInterval 0): TimeAverage of 0..100
    whole = await _all(store, _query(Aggregate.TIME_AVERAGE, 0, 100, 0))
    area = 10 * 10 + 20 * 10 + 40 * 10 + 50 * 30 + 30 * 30  # 10 s bad left out
    assert len(whole) == 1 and whole[0].value == pytest.approx(area / 90)
    assert whole[0].status == code(SUB, CALC)


async def test_all_bad_non_numeric_and_repeated_extremes(tmp_path: Path) -> None:
    bad = _store(tmp_path / "bad.db", [(0, 1.0, "good"), (10, None, "bad")])
    try:
        for aggregate, status in (
            (Aggregate.COUNT, S.Bad),
            (Aggregate.AVERAGE, S.Bad),
            (Aggregate.TIME_AVERAGE, S.Bad),
        ):
            got = await _all(bad, _query(aggregate, 10, 20, 0))
            assert [(r.value, r.status) for r in got] == [(None, status)], aggregate
    finally:
        bad.close()
    text = _store(tmp_path / "text.db", [(0, "run", "good"), (5, "stop", "good")])
    try:
        count = await _all(text, _query(Aggregate.COUNT, 0, 10, 0))
        assert count[0].value == 2
        end = await _all(text, _query(Aggregate.END, 0, 10, 0))
        assert end[0].value == "stop"
        for aggregate in (Aggregate.AVERAGE, Aggregate.MINIMUM, Aggregate.TIME_AVERAGE):
            got = await _all(text, _query(aggregate, 0, 10, 0))
            assert got[0].status == S.BadAggregateInvalidInputs
    finally:
        text.close()
    twice = _store(tmp_path / "twice.db", [(0, 5.0, "good"), (1, 7.0, "good"), (2, 5.0, "good")])
    try:
        low = await _all(twice, _query(Aggregate.MINIMUM, 0, 10, 0))
        assert (low[0].value, low[0].status) == (5.0, code(GOOD, CALC | MULTI_VALUE))
        high = await _all(twice, _query(Aggregate.MAXIMUM, 0, 10, 0))
        assert (high[0].value, high[0].status) == (7.0, code(GOOD, CALC))
    finally:
        twice.close()


async def test_rows_at_one_time_across_pages(tmp_path: Path) -> None:
    # five rows at one time (a quality change is a row of its own), folded a row a response
    series = [(0, float(n), "good" if n % 2 else "uncertain") for n in range(5)]
    store = _store(tmp_path / "same.db", [*series, (1, 9.0, "good")])
    try:
        for aggregate in (Aggregate.COUNT, Aggregate.AVERAGE, Aggregate.END):
            whole = await _all(store, _query(aggregate, 0, 2, 0))
            for rows in (1, 2, 3):
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(history, "MAX_ROWS", rows)
                    assert await _all(store, _query(aggregate, 0, 2, 0)) == whole, rows
        assert [r.value for r in await _all(store, _query(Aggregate.COUNT, 0, 2, 0))] == [6]
        average = await _all(store, _query(Aggregate.AVERAGE, 0, 2, 0))
        assert average[0].value == pytest.approx((0 + 1 + 2 + 3 + 4 + 9) / 6)
    finally:
        store.close()


async def test_values_at_times(store: ShadowStore) -> None:
    times = [T0 + t for t in (-5, 0, 5, 20, 25, 35, 150)]
    got, after = await read_at_times(times, 0, 100, _reader(store), NOW, simple=False)
    assert after is None
    assert [(r.ts, r.value, r.status) for r in got] == [
        (times[0], None, S.BadNoData),  # before the history
        (times[1], 10.0, GOOD),  # raw
        (times[2], 10.0, code(GOOD, INTERPOLATED)),
        (times[3], 20.0, code(SUB, INTERPOLATED)),  # bad there: the last good value
        (times[4], 20.0, code(SUB, INTERPOLATED)),
        (times[5], 40.0, code(S.Uncertain, INTERPOLATED)),
        (times[6], 30.0, code(SUB, INTERPOLATED)),  # after now: extrapolated
    ]
    simple, _ = await read_at_times(times[3:5], 0, 100, _reader(store), NOW, simple=True)
    assert [(r.value, r.status) for r in simple] == [
        (None, S.Bad),
        (None, code(S.Bad, INTERPOLATED)),
    ]
    # a page at a time
    first, after = await read_at_times(times, 0, 3, _reader(store), NOW, simple=False)
    rest, done = await read_at_times(times, 3, 100, _reader(store), NOW, simple=False)
    assert after == 3 and done is None and first + rest == got
    # a bad value held with no usable one before it
    assert value_at((T0, None, "bad"), None, T0 + 1, NOW, simple=False).status == S.BadNoData
    with pytest.raises(InvalidQuery):
        request_times([])


def test_queries_and_their_points() -> None:
    at = datetime.fromtimestamp(T0, UTC)
    for start, end, interval in ((at, at, 1000), (at, None, 1000), (at, at + timedelta(1), -1)):
        with pytest.raises(InvalidQuery):
            ProcessedQuery.of(start, end, interval, Aggregate.COUNT)
    tenth = ProcessedQuery.of(at, at + timedelta(seconds=10), 100, Aggregate.COUNT)
    assert tenth.intervals == 100
    # times as a client sends them (whole microseconds) are floats a little off: 1 ms apart,
    # ten intervals, not eleven with a sliver
    late = datetime.fromtimestamp(T0 + 0.1, UTC)
    assert (
        ProcessedQuery.of(late, late + timedelta(milliseconds=10), 1, Aggregate.COUNT).intervals
        == 10
    )
    assert _query(Aggregate.COUNT, 0, 95, 10).intervals == 10
    assert _query(Aggregate.COUNT, 0, 95, 0).intervals == 1
    assert _query(Aggregate.COUNT, 0, 5, 10).interval(0) == (T0, T0 + 5, T0)
    keys, node = Continuations(), "ns=2;s=pump.temp"
    fold = Fold(T0, T0 + 1, (T0 - 1, 3.0, "good"))
    fold.add((T0, 4.0, "uncertain"))
    query = _query(Aggregate.TIME_AVERAGE, 0, 10, 1)
    point = keys.make_processed(node, query, ProcessedPosition(3, T0, 1, fold.state()))
    again, position = keys.open_processed(node, point)
    assert again == query and Fold.restore(position.fold or []) == fold
    forged_body = point[:-3] + bytes([point[-3] ^ 1]) + point[-2:]
    for forged in (forged_body, keys.make_at_times(node, [T0], False, 1)):
        with pytest.raises(InvalidContinuation):
            keys.open_processed(node, forged)
    times_point = keys.make_at_times(node, [T0, T0 + 1], True, 1)
    assert keys.open_at_times(node, times_point, [T0, T0 + 1], True) == 1
    with pytest.raises(InvalidContinuation):
        keys.open_at_times(node, times_point, [T0, T0 + 2], True)  # another request's


def test_intervals_tile_without_gap_or_overlap() -> None:
    # start + i x interval, then + interval, lands a float's last bit off start + (i + 1) x
    # interval about one time in seven at 0.2 ms: each end is counted from the start instead
    for n in range(1_763_000_000_000, 1_763_000_000_000 + 40 * 7_919, 7_919):
        at = datetime.fromtimestamp(n / 1000, UTC)
        for end in (at + timedelta(milliseconds=100), at - timedelta(milliseconds=100)):
            query = ProcessedQuery.of(at, end, 0.2, Aggregate.COUNT)
            spans = [query.interval(i)[:2] for i in range(query.intervals)]
            assert len(spans) == 500
            if end < at:
                spans.reverse()
            assert spans[0][0] == min(query.start, query.end)
            assert spans[-1][1] == max(query.start, query.end)
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


async def test_rows_about_every_boundary_are_counted_once(tmp_path: Path) -> None:
    # every float from 5 of its last bits before each boundary to 5 after (rows within
    # `SAME` of a limit count as at it): each row counted in one interval, none twice or never
    at = datetime.fromtimestamp(1_763_000_000.123, UTC)
    query = ProcessedQuery.of(at, at + timedelta(milliseconds=60), 0.2, Aggregate.COUNT)
    start, step = query.start, query.step
    tick = math.ulp(start)
    assert 2 * tick < SAME < 3 * tick
    times = sorted({start + k * step + j * tick for k in range(1, 300) for j in range(-5, 6)})
    store = ShadowStore(str(tmp_path / "shadow.db"))
    try:
        for k, t in enumerate([start, *times]):
            store.report("pump", {"temp": (float(k % 2), "good", t)})
        got = await _all(store, query)
    finally:
        store.close()
    assert len(got) == 300 and all(r.value >= 1 for r in got)
    assert sum(r.value for r in got) == len(times) + 1


async def test_work_is_bounded(tmp_path: Path) -> None:
    # a year at a 1 s ProcessingInterval: a page of intervals, the rest behind a point
    store = _store(tmp_path / "year.db", [(n, float(n % 7), "good") for n in range(2500)])
    try:
        year = _query(Aggregate.COUNT, 0, 365 * 86400, 1)
        assert year.intervals == 365 * 86400
        page, at = await read_processed(year, ProcessedPosition(), 10**6, _reader(store), NOW)
        assert len(page) == MAX_VALUES and at == ProcessedPosition(MAX_VALUES)
        assert [r.value for r in page[:3]] == [1, 1, 1]
        # one interval of 2,500 rows, 1,000 rows a response: the fold goes on in the next
        log: list[int] = []
        whole = _query(Aggregate.AVERAGE, 0, 2500, 0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(history, "MAX_ROWS", 1000)
            position: ProcessedPosition | None = ProcessedPosition()
            responses, results = 0, []
            while position is not None:
                before = len(log)
                assert responses < 10
                got, position = await read_processed(whole, position, 10, _reader(store, log), NOW)
                results.extend(got)
                responses += 1
                assert sum(log[before:]) <= 1000 + 2 * 3  # a page of rows, give or take
        assert responses == 3
        assert [r.value for r in results] == [pytest.approx(sum(n % 7 for n in range(2500)) / 2500)]
    finally:
        store.close()


class _Bridge:
    """What the historian asks of a bridge, on a store of device ``pump``."""

    def __init__(self, store: ShadowStore) -> None:
        self.store = store

    def historized(self, device: str, point: str) -> bool:
        return True

    async def history(self, device: str, point: str, **query: Any) -> list[Any]:
        return self.store.history_page(device, point, **query)


@dataclass
class _Var:
    bridge: Any
    device: str = "pump"
    vtype: ua.VariantType = ua.VariantType.Double
    coerce: Any = float
    historized: bool = True
    spec: Any = field(default_factory=lambda: SimpleNamespace(name="temp"))


async def test_the_service_on_a_store(store: ShadowStore) -> None:
    temp = ua.NodeId("pump.temp", 2)
    historian = Historian("opcua", {temp: cast(Any, _Var(_Bridge(store)))})

    async def read(details: Any, nodes: int = 1, point: bytes | None = None) -> list[Any]:
        item = ua.HistoryReadValueId(NodeId=temp, ContinuationPoint=point)
        params = ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Source,
            ReleaseContinuationPoints=False,
            NodesToRead=[item] * nodes,
        )
        return list(await historian.read(params, lambda n: n == temp))

    # a bad value held at 25: the last good one, or with simple bounds Bad
    for simple, status in ((False, code(SUB, INTERPOLATED)), (True, code(S.Bad, INTERPOLATED))):
        details = ua.ReadAtTimeDetails(
            ReqTimes=[datetime.fromtimestamp(T0 + 25, UTC)], UseSimpleBounds=simple
        )
        (result,) = await read(details)
        assert [v.StatusCode.value for v in result.HistoryData.DataValues] == [status]
    # one AggregateType per node: not fewer, not more
    count = ua.NodeId(ua.ObjectIds.AggregateFunction_Count)
    for kinds in ([count], [count] * 3):
        processed = ua.ReadProcessedDetails(
            StartTime=datetime.fromtimestamp(T0, UTC),
            EndTime=datetime.fromtimestamp(T0 + 90, UTC),
            ProcessingInterval=20_000,
            AggregateType=kinds,
        )
        results = await read(processed, nodes=2)
        assert [r.StatusCode.value for r in results] == [S.BadAggregateListMismatch] * 2
    # a page of intervals at a time through the service's points: what one read gives
    processed.AggregateType = [ua.NodeId(ua.ObjectIds.AggregateFunction_TimeAverage)]
    (whole,) = await read(processed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "MAX_VALUES", 2)
        pages, point = [], None
        for _ in range(5):
            (page,) = await read(processed, point=point)
            pages.extend(page.HistoryData.DataValues)
            point = page.ContinuationPoint
            if not point:
                break
        assert len(pages) == 5 and pages == whole.HistoryData.DataValues
        (refused,) = await read(processed, point=b"not ours")
        assert refused.StatusCode.value == S.BadContinuationPointInvalid
    assert [v.Value.Value for v in whole.HistoryData.DataValues] == [
        v for v, _ in EXPECTED[Aggregate.TIME_AVERAGE]
    ]


# -- the service, end to end ------------------------------------------------------------------


async def _recorded(shadow: Any, value: float) -> bool:
    rows = await shadow.history_page("pump", "temp", newest_first=True, limit=1)
    return bool(rows) and rows[0].value == pytest.approx(value)


def _fn(name: str) -> ua.NodeId:
    return ua.NodeId(getattr(ua.ObjectIds, f"AggregateFunction_{name}"))


async def test_processed_and_at_time_reads_by_asyncua_and_node_opcua(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with history_gateway(simulator, tmp_path) as (gateway, server, device):
        shadow = gateway.shadow
        assert shadow is not None
        temp = f"ns={server.namespace_index};s=pump.temp"
        for n in range(5):  # 20.0 .. 24.0 degC, each held until the shadow has recorded it
            device.set_value("input", 0, 200 + 10 * n, DataType.INT16)
            await wait_for(partial(_recorded, shadow, 20.0 + n), timeout=10, message="kept")
        kept = [r for r in await shadow.history_page("pump", "temp") if r.quality == "good"]
        ts = [r.ts for r in kept]
        degf = [r.value * 9 / 5 + 32 for r in kept]
        start = datetime.fromtimestamp(ts[0], UTC)
        end = datetime.fromtimestamp(ts[-1], UTC) + timedelta(milliseconds=1)
        span = ts[-1] + 0.001 - ts[0]
        area = sum(v * (b - a) for v, a, b in zip(degf, ts, [*ts[1:], ts[-1] + 0.001], strict=True))
        expected = {
            "Count": len(degf),
            "Minimum": min(degf),
            "Maximum": max(degf),
            "Average": sum(degf) / len(degf),
            "Start": degf[0],
            "End": degf[-1],
            "Delta": degf[-1] - degf[0],
            "Range": max(degf) - min(degf),
            "Interpolative": degf[0],
            "TimeAverage": area / span,
        }
        names = list(expected)

        async with Client(server.endpoint_url) as client:
            # one node read with each aggregate, over one interval (ProcessingInterval 0)
            details = ua.ReadProcessedDetails(
                StartTime=start,
                EndTime=end,
                ProcessingInterval=0,
                AggregateType=[_fn(n) for n in names] + [_fn("Total")],
            )
            nodes = [ua.HistoryReadValueId(NodeId=ua.NodeId.from_string(temp))] * (len(names) + 1)
            results = await history_read(client, details, nodes)
            for name, result in zip(names, results[:-1], strict=True):
                assert result.StatusCode.is_good(), name
                (value,) = result.HistoryData.DataValues
                assert value.Value.Value == pytest.approx(expected[name]), name
            counted = results[0].HistoryData.DataValues[0]
            assert counted.Value.VariantType == ua.VariantType.Int32
            assert counted.StatusCode.value == code(GOOD, CALC)
            assert counted.SourceTimestamp == start
            assert results[-1].StatusCode.value == S.BadAggregateNotSupported
            # an AggregateType per node, or none of them is read
            details.AggregateType = [_fn("Count")]
            mismatch = await history_read(client, details, nodes[:2])
            assert [r.StatusCode.value for r in mismatch] == [S.BadAggregateListMismatch] * 2
            # values at times: a raw one, one between two rows, one before the history
            between = datetime.fromtimestamp((ts[1] + ts[2]) / 2, UTC)
            at_time = ua.ReadAtTimeDetails(
                ReqTimes=[datetime.fromtimestamp(ts[1], UTC), between, start - timedelta(days=1)]
            )
            (result,) = await history_read(client, at_time, nodes[:1])
            got = [(v.Value.Value, v.StatusCode.value) for v in result.HistoryData.DataValues]
            assert got[0] == (pytest.approx(degf[1]), GOOD)
            assert got[1] == (pytest.approx(degf[1]), code(GOOD, INTERPOLATED))
            assert got[2] == (None, S.BadNoData)
            # the server lists what it aggregates
            folder = client.get_node(
                ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_AggregateFunctions)
            )
            listed = {(await c.read_browse_name()).Name for c in await folder.get_children()}
            assert set(names) <= listed and "Total" not in listed

        # node-opcua, its own requests: 0.2 ms intervals (some thousands: it follows the
        # continuation points) and 100 ms ones, from and to whole milliseconds (JavaScript's)
        first, last = math.floor(ts[0] * 1000) / 1000, math.ceil(ts[-1] * 1000 + 1) / 1000
        reads = [("Count", 0.2), ("Maximum", 100), ("TimeAverage", 100)]
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": server.endpoint_url,
            "node": temp,
            "folder": f"i={ua.ObjectIds.HistoryServerCapabilities_AggregateFunctions}",
            "start": _iso(first),
            "end": _iso(last),
            "reads": [{"aggregate": name, "interval": ms} for name, ms in reads],
        }
        rc, lines, err = await run_node(("opcua_history.js",), plan, limit=60)
        assert rc == 0, (lines, err.decode(errors="replace")[-2000:])
        functions = next(line["functions"] for line in lines if "functions" in line)
        assert set(names) <= set(functions)
        processed = next(line["processed"] for line in lines if "processed" in line)
        for name, ms in reads:
            got, step = processed[name], ms / 1000
            # the server's float arithmetic (start + k x interval): a row stored within a
            # float's last bit of a boundary is on the side these same floats put it
            cuts = [first + k * step for k in range(math.ceil((last - first - 1e-6) / step))]
            grid = list(zip(cuts, [*cuts[1:], last], strict=True))
            assert got["status"] == "Good" and len(got["values"]) == len(grid), name
            want = [_figure(name, ts, degf, lo, hi) for lo, hi in grid]
            assert [v["value"] for v in got["values"]] == pytest.approx(want), name
        assert processed["Count"]["pages"] == math.ceil(len(processed["Count"]["values"]) / 1000)
        assert processed["Count"]["pages"] >= 2


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _figure(name: str, ts: list[float], values: list[float], lo: float, hi: float) -> Any:
    """Count, Maximum or (stepped) TimeAverage of the rows over [lo, hi), as by hand."""
    # the server's reading of a time within `SAME` of a limit: at it
    inside = [v for t, v in zip(ts, values, strict=True) if lo - SAME <= t < hi - SAME]
    if name == "Count":
        return len(inside)
    if name == "Maximum":
        return max(inside) if inside else None
    area = duration = 0.0
    for k, (t, v) in enumerate(zip(ts, values, strict=True)):
        until = ts[k + 1] if k + 1 < len(ts) else math.inf
        a, b = max(t, lo), min(until, hi)
        if b > a:
            area, duration = area + v * (b - a), duration + b - a
    return area / duration


async def history_read(
    client: Client, details: Any, nodes: list[ua.HistoryReadValueId]
) -> list[ua.HistoryReadResult]:
    params = ua.HistoryReadParameters(
        HistoryReadDetails=details,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        ReleaseContinuationPoints=False,  # asyncua's default is True
        NodesToRead=nodes,
    )
    return list(await client.uaclient.history_read(params))
