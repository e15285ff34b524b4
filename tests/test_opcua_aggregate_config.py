"""A processed HistoryRead's AggregateConfiguration (OPC UA Part 13, 4.2.1.2 and 5.4.3.2):
TreatUncertainAsBad, PercentDataBad and PercentDataGood grade each interval, by duration for
TimeAverage and by number of raw values for the others; Part 13's refused configurations get
Bad_AggregateInvalidInputs; the server's defaults are in the Server's DefaultHAConfiguration.

One stored history read with many configurations, the figures worked out by hand: on a real
shadow store, through the service, and end to end with asyncua's client (requests built by
hand) and node-opcua's (its own ReadProcessedDetails with the configuration it is given)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from asyncua import Client, ua
from conftest import wait_for
from test_opcua_history import history_gateway
from test_opcua_history_processed import T0, _all, _Bridge, _store, _Var, history_read
from test_opcua_server import run_node

from gateway.shadow.store import ShadowStore
from gateway.types import Message, Quality, Sample
from protocols.modbus.simulator import Simulator
from protocols.opcua import history
from protocols.opcua.aggregates import CALCULATED, DEFAULT, INTERPOLATED, Aggregate, Config, code
from protocols.opcua.historian import Historian
from protocols.opcua.history import Continuations, ProcessedPosition, ProcessedQuery
from protocols.opcua.server import OpcuaServerAdapter

S = ua.StatusCodes
GOOD, SUB, BAD = code(S.Good, CALCULATED), code(S.UncertainDataSubNormal, CALCULATED), S.Bad
# One interval of 100 s (seconds after its start), stepped: 10 good for 40 s, 28 uncertain for
# 20 s, bad for 20 s, 40 good for 20 s. By number: 4 raw values, 2 good, 1 uncertain, 1 bad.
SERIES = [(0, 10.0, "good"), (40, 28.0, "uncertain"), (60, None, "bad"), (80, 40.0, "good")]
TA_ALL = (10 * 40 + 28 * 20 + 40 * 20) / 80  # 22.0: uncertain data used
TA_STRICT = (10 * 40 + 40 * 20) / 60  # 20.0: uncertain data left out (TreatUncertainAsBad)
AVG_ALL, AVG_STRICT = (10 + 28 + 40) / 3, (10 + 40) / 2  # 26.0, 25.0
# (TreatUncertainAsBad, PercentDataBad, PercentDataGood) -> TimeAverage, Average, Count, each
# (value, status). Shares: by time good 60 %, bad 20 % (40 % with uncertain as bad); by number
# good 50 %, bad 25 % (50 %).
CASES: list[tuple[tuple[bool, int, int], list[tuple[Any, int]]]] = [
    # the defaults: Good only when all is good, Bad only when all is bad
    ((False, 100, 100), [(TA_ALL, SUB), (AVG_ALL, SUB), (3, SUB)]),
    # PercentDataGood 60: 60 % good by time, 50 % by number
    ((False, 100, 60), [(TA_ALL, GOOD), (AVG_ALL, SUB), (3, SUB)]),
    ((False, 100, 50), [(TA_ALL, GOOD), (AVG_ALL, GOOD), (3, GOOD)]),
    ((False, 100, 61), [(TA_ALL, SUB), (AVG_ALL, SUB), (3, SUB)]),
    # PercentDataBad 25: 20 % bad by time, 25 % by number; Bad has no value
    ((False, 25, 100), [(TA_ALL, SUB), (None, BAD), (None, BAD)]),
    ((False, 20, 100), [(None, BAD), (None, BAD), (None, BAD)]),
    # TreatUncertainAsBad: the uncertain value left out and counted as bad
    ((True, 100, 100), [(TA_STRICT, SUB), (AVG_STRICT, SUB), (2, SUB)]),
    ((False, 40, 100), [(TA_ALL, SUB), (AVG_ALL, SUB), (3, SUB)]),
    ((True, 40, 100), [(None, BAD), (None, BAD), (None, BAD)]),
    # both thresholds met (60 % good, 40 % bad by time): PercentDataGood decides
    ((True, 40, 60), [(TA_STRICT, GOOD), (None, BAD), (None, BAD)]),
]
REFUSED = [(101, 100), (100, 101), (0, 80), (49, 50), (255, 255)]  # (PercentDataGood, Bad)
READS = (Aggregate.TIME_AVERAGE, Aggregate.AVERAGE, Aggregate.COUNT)


def _config(strict: bool, bad: int, good: int) -> Config:
    return Config(uncertain_bad=strict, percent_bad=bad, percent_good=good)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShadowStore]:
    s = _store(tmp_path / "shadow.db", SERIES)
    yield s
    s.close()


def _query(aggregate: Aggregate, config: Config, start: float = 0, step: float = 0) -> Any:
    return ProcessedQuery.of(
        datetime.fromtimestamp(T0 + start, UTC),
        datetime.fromtimestamp(T0 + 100, UTC),
        step * 1000,
        aggregate,
        config,
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    CASES,
    ids=[f"{'strict' if s else 'lenient'}-bad{b}-good{g}" for (s, b, g), _ in CASES],
)
async def test_configurations_grade_one_stored_interval(
    store: ShadowStore, given: tuple[bool, int, int], expected: list[tuple[Any, int]]
) -> None:
    config = _config(*given)
    assert config.problem() is None
    got = [(await _all(store, _query(a, config)))[0] for a in READS]
    assert [(r.value, r.status) for r in got] == [
        (pytest.approx(v) if v is not None else None, s) for v, s in expected
    ]


async def test_uncertain_as_bad_in_interpolated_and_raw_bounds(store: ShadowStore) -> None:
    strict = _config(True, 100, 100)
    for start, lenient_value in ((40, (28.0, S.Uncertain)), (50, (28.0, code(S.Uncertain, 2)))):
        # the uncertain value held (or raw at 40), or under TreatUncertainAsBad the last good
        # value before it, Uncertain_DataSubNormal
        (got,) = await _all(store, _query(Aggregate.INTERPOLATIVE, DEFAULT, start))
        assert (got.value, got.status) == lenient_value
        (got,) = await _all(store, _query(Aggregate.INTERPOLATIVE, strict, start))
        assert (got.value, got.status) == (10.0, code(S.UncertainDataSubNormal, INTERPOLATED))
    # Start and End are raw values with their own status, whatever the configuration
    for aggregate, row in ((Aggregate.START, (10.0, S.Good)), (Aggregate.END, (40.0, S.Good))):
        (got,) = await _all(store, _query(aggregate, _config(True, 20, 100)))
        assert (got.value, got.status) == row


def test_refused_configurations() -> None:
    for good, bad in REFUSED:
        assert _config(False, bad, good).problem() is not None, (good, bad)
    for good, bad in ((100, 100), (50, 50), (0, 100), (100, 0), (60, 40)):
        assert _config(True, bad, good).problem() is None, (good, bad)


def _details(aggregate: Aggregate, config: ua.AggregateConfiguration, step_ms: float = 0) -> Any:
    return ua.ReadProcessedDetails(
        StartTime=datetime.fromtimestamp(T0, UTC),
        EndTime=datetime.fromtimestamp(T0 + 100, UTC),
        ProcessingInterval=step_ms,
        AggregateType=[ua.NodeId(aggregate.value)],
        AggregateConfiguration=config,
    )


def _wire(strict: bool, bad: int, good: int, defaults: bool = False) -> ua.AggregateConfiguration:
    return ua.AggregateConfiguration(
        UseServerCapabilitiesDefaults=defaults,
        TreatUncertainAsBad=strict,
        PercentDataBad=cast(ua.Byte, bad),
        PercentDataGood=cast(ua.Byte, good),
        UseSlopedExtrapolation=False,
    )


async def test_the_service_applies_refuses_and_carries_a_configuration(store: ShadowStore) -> None:
    temp = ua.NodeId("pump.temp", 2)
    historian = Historian("opcua", {temp: cast(Any, _Var(_Bridge(store)))})

    async def read(details: Any, point: bytes | None = None) -> Any:
        params = ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Source,
            ReleaseContinuationPoints=False,  # asyncua's default is True
            NodesToRead=[ua.HistoryReadValueId(NodeId=temp, ContinuationPoint=point)],
        )
        (result,) = await historian.read(params, lambda n: n == temp)
        return result

    def figures(result: Any) -> list[tuple[Any, int]]:
        return [(v.Value.Value, v.StatusCode.value) for v in result.HistoryData.DataValues]

    average = Aggregate.AVERAGE
    assert figures(await read(_details(average, _wire(False, 100, 50)))) == [(AVG_ALL, GOOD)]
    assert figures(await read(_details(average, _wire(True, 100, 100)))) == [(AVG_STRICT, SUB)]
    # UseServerCapabilitiesDefaults: the rest is ignored (asyncua's own default sends 0 and 0)
    for ignored in (_wire(True, 0, 0, defaults=True), ua.AggregateConfiguration()):
        assert figures(await read(_details(average, ignored))) == [(AVG_ALL, SUB)]
    for good, bad in REFUSED:
        refused = await read(_details(average, _wire(False, bad, good)))
        assert refused.StatusCode.value == S.BadAggregateInvalidInputs, (good, bad)
        assert not refused.HistoryData
    # two intervals a page each: the second, read behind the continuation point, is graded by
    # the configuration of the first request. [50,100): 28 uncertain 10 s, bad 20 s, 40 good
    # 20 s: 60 % bad with uncertain as bad, Uncertain (36.0) with the defaults
    strict = _details(Aggregate.TIME_AVERAGE, _wire(True, 50, 100), step_ms=50_000)
    whole = figures(await read(strict))
    assert whole == [(10.0, SUB), (None, BAD)]
    lenient = _details(Aggregate.TIME_AVERAGE, _wire(False, 100, 100), step_ms=50_000)
    assert figures(await read(lenient))[1] == ((28 * 10 + 40 * 20) / 30, SUB)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "MAX_VALUES", 1)
        first = await read(strict)
        assert first.ContinuationPoint
        second = await read(strict, first.ContinuationPoint)
        assert not second.ContinuationPoint
        assert figures(first) + figures(second) == whole


def test_a_point_keeps_the_configuration() -> None:
    keys, node = Continuations(), "ns=2;s=pump.temp"
    query = _query(Aggregate.COUNT, _config(True, 40, 60), step=10)
    again, _ = keys.open_processed(node, keys.make_processed(node, query, ProcessedPosition(2)))
    assert again == query and again.config == _config(True, 40, 60)


# -- end to end: asyncua and node-opcua on a running gateway ----------------------------------


async def _kept(shadow: Any, times: list[float]) -> bool:
    rows = await shadow.history_page("pump", "level", low=times[0] - 1, high=times[-1] + 1)
    return [r.ts for r in rows] == times


@contextlib.asynccontextmanager
async def series_gateway(
    simulator: Simulator, tmp_path: Path
) -> AsyncIterator[tuple[OpcuaServerAdapter, ua.NodeId, datetime, datetime]]:
    """A gateway whose shadow keeps `SERIES` as pump.level's history ten minutes ago; its
    server, the node, and the interval's start and end."""
    async with history_gateway(simulator, tmp_path) as (gateway, server, _):
        shadow = gateway.shadow
        assert shadow is not None
        # readings of pump.level on the bus, recorded by the shadow (the device's own
        # readings are of now, after them)
        base = math.floor(time.time()) - 600.0
        times = [base + t for t, _, _ in SERIES]
        for ts, (_, value, quality) in zip(times, SERIES, strict=True):
            sample = Sample("level", value, Quality(quality), source_ts=ts, gateway_ts=ts)
            await gateway.bus.publish(Message.telemetry("pump", (sample,)))
        await wait_for(partial(_kept, shadow, times), timeout=15, message="the series kept")
        level = ua.NodeId.from_string(f"ns={server.namespace_index};s=pump.level")
        yield (
            server,
            level,
            datetime.fromtimestamp(base, UTC),
            datetime.fromtimestamp(base + 100, UTC),
        )


async def test_asyncua_reads_one_history_with_configurations(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with series_gateway(simulator, tmp_path) as (server, level, start, end):
        async with Client(server.endpoint_url) as client:
            for given, expected in CASES:
                details = ua.ReadProcessedDetails(
                    StartTime=start,
                    EndTime=end,
                    ProcessingInterval=0,
                    AggregateType=[ua.NodeId(a.value) for a in READS],
                    AggregateConfiguration=_wire(*given),
                )
                nodes = [ua.HistoryReadValueId(NodeId=level)] * len(READS)
                results = await history_read(client, details, nodes)
                got = [
                    (v.Value.Value, v.StatusCode.value)
                    for r in results
                    for v in r.HistoryData.DataValues
                ]
                assert got == [
                    (pytest.approx(v) if v is not None else None, s) for v, s in expected
                ], given
            details.AggregateConfiguration = _wire(False, 80, 0)
            refused = await history_read(client, details, nodes)
            assert [r.StatusCode.value for r in refused] == [S.BadAggregateInvalidInputs] * 3
            # the defaults a read gets, in the Server's DefaultHAConfiguration
            ha = "DefaultHAConfiguration_AggregateConfiguration_"
            defaults = {}
            for name in ("TreatUncertainAsBad", "PercentDataBad", "PercentDataGood"):
                node = client.get_node(ua.NodeId(getattr(ua.ObjectIds, ha + name)))
                defaults[name] = await node.read_value()
            want = {"TreatUncertainAsBad": False, "PercentDataBad": 100, "PercentDataGood": 100}
            assert defaults == want
            stepped = client.get_node(ua.NodeId(ua.ObjectIds.DefaultHAConfiguration_Stepped))
            assert await stepped.read_value() is True


async def test_node_opcua_reads_one_history_with_configurations(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with series_gateway(simulator, tmp_path) as (server, level, start, end):
        # node-opcua: its ReadProcessedDetails with the configurations it is given, and its
        # own default (UseServerCapabilitiesDefaults true)
        picked = [CASES[0], CASES[1], CASES[2], CASES[4], CASES[6], CASES[8]]
        reads = [
            {
                "aggregate": name,
                "interval": 0,
                "label": f"{name}/{n}",
                "config": {
                    "useServerCapabilitiesDefaults": False,
                    "treatUncertainAsBad": strict,
                    "percentDataBad": bad,
                    "percentDataGood": good,
                    "useSlopedExtrapolation": False,
                },
            }
            for n, ((strict, bad, good), _) in enumerate(picked)
            for name in ("TimeAverage", "Average", "Count")
        ]
        reads.append({"aggregate": "Average", "interval": 0, "label": "default"})
        refused = {
            "useServerCapabilitiesDefaults": False,
            "percentDataBad": 50,
            "percentDataGood": 49,
        }
        reads.append({"aggregate": "Average", "interval": 0, "label": "refused", "config": refused})
        ha_ids = [
            f"i={getattr(ua.ObjectIds, 'DefaultHAConfiguration_AggregateConfiguration_' + n)}"
            for n in ("TreatUncertainAsBad", "PercentDataBad", "PercentDataGood")
        ]
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": server.endpoint_url,
            "node": level.to_string(),
            "folder": f"i={ua.ObjectIds.DefaultHAConfiguration_AggregateFunctions}",
            "values": ha_ids,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "reads": reads,
        }
        rc, lines, err = await run_node(("opcua_history.js",), plan, limit=60)
        assert rc == 0, (lines, err.decode(errors="replace")[-2000:])
        processed = next(line["processed"] for line in lines if "processed" in line)
        for n, (given, expected) in enumerate(picked):
            for name, (value, status) in zip(
                ("TimeAverage", "Average", "Count"), expected, strict=True
            ):
                got = processed[f"{name}/{n}"]
                assert got["status"] == "Good", (given, name)
                (one,) = got["values"]
                want = pytest.approx(value) if value is not None else None
                assert (one["value"], one["code"]) == (want, status), (given, name)
        (default,) = processed["default"]["values"]
        assert (default["value"], default["code"]) == (pytest.approx(AVG_ALL), SUB)
        assert processed["refused"]["status"] == "BadAggregateInvalidInputs"
        # the defaults, and the aggregates, in the Server's DefaultHAConfiguration
        values = next(line["values"] for line in lines if "values" in line)
        assert [values[i] for i in ha_ids] == [False, 100, 100]
        functions = next(line["functions"] for line in lines if "functions" in line)
        assert {"TimeAverage", "Average", "Count"} <= set(functions)
