"""HistoryRead on the OPC UA server, answered from the device shadow's history.

The time domain is checked against OPC UA Part 11's own examples (4.4, Table 1) on a real
shadow store; the service end to end with asyncua's and node-opcua's clients (node-opcua, which
we did not write, follows our continuation points page by page)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from conftest import HOST, free_port, modbus_device_yaml, wait_for
from test_opcua_server import fill, one, run_node_client, running_gateway

from gateway.runtime import Gateway
from gateway.shadow.store import ShadowStore
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.opcua.history import (
    MAX_VALUES,
    Continuations,
    InvalidContinuation,
    InvalidQuery,
    NoBound,
    Position,
    RawQuery,
    read_page,
)
from protocols.opcua.server import OpcuaServerAdapter

# -- the time domain, on a real store ---------------------------------------------------------

T0 = 1_700_000_000.0  # "5:00"; the table's values are at 5:00, 5:02, 5:03, 5:05 and 5:06
TABLE = (0, 2, 3, 5, 6)


def _at(minute: float | None) -> datetime | None:
    return None if minute is None else datetime.fromtimestamp(T0 + 60 * minute, UTC)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = ShadowStore(str(tmp_path / "shadow.db"))
    for n, minute in enumerate(TABLE):
        s.report("pump", {"temp": (float(n), "good", T0 + 60 * minute)})
    yield s
    s.close()


async def _read_all(store: ShadowStore, query: RawQuery, room: int = 10**6) -> list[str]:
    """Every page of ``query``: the values' minutes, FIRST/LAST for a missing bound."""
    out = []
    for item in await _pages(store, query, room):
        if isinstance(item, NoBound):
            out.append("FIRST" if item.ts == query.origin else "LAST")
        else:
            out.append(f"5:{round((item.ts - T0) / 60):02d}")
    return out


# Part 11, 4.4, Table 1 (Read Raw): start, end, numValuesPerNode, bounds -> data returned.
PART11 = [
    (0, 5, 0, True, "5:00 5:02 5:03 5:05"),
    (0, 5, 0, False, "5:00 5:02 5:03"),
    (1, 4, 0, True, "5:00 5:02 5:03 5:05"),
    (1, 4, 0, False, "5:02 5:03"),
    (5, 0, 0, True, "5:05 5:03 5:02 5:00"),
    (5, 0, 0, False, "5:05 5:03 5:02"),
    (4, 1, 0, True, "5:05 5:03 5:02 5:00"),
    (4, 1, 0, False, "5:03 5:02"),
    (-1, 5, 0, True, "FIRST 5:00 5:02 5:03 5:05"),
    (-1, 5, 0, False, "5:00 5:02 5:03"),
    (1, None, 3, True, "5:00 5:02 5:03"),
    (1, None, 3, False, "5:02 5:03 5:05"),
    (None, 6, 3, True, "5:06 5:05 5:03"),
    (None, 6, 3, False, "5:05 5:03 5:02"),
    (0, 0, 0, False, "5:00"),
    (3, 8, 0, True, "5:03 5:05 5:06 LAST"),
]


@pytest.mark.parametrize(("start", "end", "count", "bounds", "expected"), PART11)
async def test_the_time_domain_of_part_11(
    store: ShadowStore,
    start: float | None,
    end: float | None,
    count: int,
    bounds: bool,
    expected: str,
) -> None:
    query = RawQuery.of(_at(start), _at(end), count, bounds)
    assert await _read_all(store, query) == expected.split()
    # a page of one value at a time gives the same values, in the same order
    assert await _read_all(store, query, room=1) == expected.split()


async def test_pages_of_equal_times_lose_and_repeat_nothing(tmp_path: Path) -> None:
    store = ShadowStore(str(tmp_path / "shadow.db"))
    try:
        # five values at one time (a quality change is a row of its own), then others
        for n in range(5):
            store.report("pump", {"temp": (float(n), "good" if n % 2 else "uncertain", T0)})
        store.report("pump", {"temp": (9.0, "good", T0 + 1)})
        store.merge()  # some rows merged, the next staged: both tables are read
        store.report("pump", {"temp": (10.0, "good", T0 + 2)})
        for query in (
            RawQuery.of(_at(0), _at(1), 0, False),
            RawQuery.of(_at(1), _at(-1), 0, False),
        ):
            whole = [r.value for r in await _pages(store, query, 10**6)]
            assert len(whole) == 7 and sorted(whole) == [0, 1, 2, 3, 4, 9, 10]
            for room in (1, 2, 3):
                assert [r.value for r in await _pages(store, query, room)] == whole
    finally:
        store.close()


async def _pages(store: ShadowStore, query: RawQuery, room: int) -> list[Any]:
    """Every page of ``query`` read from ``store``, at most ``room`` values a page."""

    async def rows(**query: Any) -> list[Any]:
        return store.history_page("pump", "temp", **query)

    out: list[Any] = []
    at: Position | None = Position()
    for _ in range(50):
        page, at = await read_page(query, at, room, rows)
        out.extend(page)
        if at is None:
            return out
    raise AssertionError("no progress in 50 pages")


def test_two_of_three_must_be_given_and_points_are_signed() -> None:
    with pytest.raises(InvalidQuery):
        RawQuery.of(_at(0), None, 0, False)
    with pytest.raises(InvalidQuery):
        RawQuery.of(None, None, 10, False)
    assert RawQuery.of(_at(0), _at(1), 0, False).page == MAX_VALUES
    query = RawQuery.of(_at(0), _at(1), 2, True)
    keys = Continuations()
    point = keys.make("ns=2;s=pump.temp", query, Position(1, T0, 1, 2))
    assert keys.open("ns=2;s=pump.temp", point) == (query, Position(1, T0, 1, 2))
    for forged in (
        point[:-1] + bytes([point[-1] ^ 1]),  # the position changed
        Continuations().make("ns=2;s=pump.temp", query, Position()),  # another server's
        b"",
    ):
        with pytest.raises(InvalidContinuation):
            keys.open("ns=2;s=pump.temp", forged)
    with pytest.raises(InvalidContinuation):
        keys.open("ns=2;s=pump.level", point)  # another node's


# -- the service, end to end ------------------------------------------------------------------


def history_config(modbus_port: int, opcua_port: int, tmp_path: Path) -> str:
    """Modbus devices ``pump`` and ``fan`` -> OPC UA server, temperatures in degF, a computed
    point, a shadow of the pump only."""
    return f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(modbus_port)}
    points:
      - {{name: temp, table: input, address: 0, type: int16, scale: 0.1, unit: degC, poll: fast}}
      - {{name: level, table: holding, address: 20, type: int16, scale: 0.1, poll: fast}}
{modbus_device_yaml(modbus_port).replace("pump", "fan", 1)}
    points:
      - {{name: speed, table: holding, address: 20, type: int16, poll: fast}}
endpoints:
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {opcua_port}
    anonymous: true
    security: {{allow_none: true, pki_dir: {tmp_path / "pki"}}}
shadow: {{path: {tmp_path / "shadow.db"}, devices: [pump]}}
bridges:
  - name: up
    from: [pump, fan]
    to: opcua
    units: {{temp: degF}}
    computed: [{{name: double, expr: "level * 2"}}]
"""


@contextlib.asynccontextmanager
async def history_gateway(
    simulator: Simulator, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, OpcuaServerAdapter, SimulatedDevice]]:
    device = await simulator.add_device(name="pump")
    fill(device)
    async with running_gateway(history_config(device.port, free_port(), tmp_path)) as gateway:
        server = gateway.adapters["opcua"]
        assert isinstance(server, OpcuaServerAdapter)
        yield gateway, server, device


async def test_history_read_by_asyncua_and_node_opcua(simulator: Simulator, tmp_path: Path) -> None:
    async with history_gateway(simulator, tmp_path) as (gateway, server, device):
        shadow = gateway.shadow
        assert shadow is not None
        ns = server.namespace_index
        temp, level = f"ns={ns};s=pump.temp", f"ns={ns};s=pump.level"
        # 20.0 .. 26.0 degC, each held until the shadow has recorded it
        for n in range(7):
            device.set_value("input", 0, 200 + 10 * n, DataType.INT16)
            await wait_for(
                partial(_recorded, shadow, 20.0 + n), timeout=10, message=f"{20 + n} degC kept"
            )
        kept = await shadow.history_page("pump", "temp")
        assert [r.value for r in kept][-7:] == [20.0 + n for n in range(7)]
        times = [datetime.fromtimestamp(r.ts, UTC) for r in kept]
        degf = [r.value * 9 / 5 + 32 for r in kept]

        async with Client(server.endpoint_url) as client:
            node = client.get_node(temp)
            access = await node.read_attribute(ua.AttributeIds.AccessLevel)
            assert access.Value.Value & ua.AccessLevel.HistoryRead.mask
            assert (await node.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
            # the whole history in the bridge's unit, oldest first, with the source's times
            got = await node.read_raw_history(times[0], times[-1] + timedelta(seconds=1), 0, False)
            assert [round(v.Value.Value, 6) for v in got] == [round(f, 6) for f in degf]
            assert [v.SourceTimestamp for v in got] == times
            assert all(v.StatusCode.is_good() for v in got)
            # backwards from now, three values
            got = await node.read_raw_history(None, datetime.now(UTC), 3, False)
            assert [round(v.Value.Value, 6) for v in got] == [round(f, 6) for f in degf[::-1][:3]]
            # a continuation point this server did not make is refused, the node's only
            details = ua.ReadRawModifiedDetails(
                IsReadModified=False, StartTime=times[0], EndTime=times[-1], NumValuesPerNode=2
            )
            first = await node.history_read(details)
            assert first.ContinuationPoint and len(first.HistoryData.DataValues) == 2
            forged = bytes([first.ContinuationPoint[0] ^ 1]) + first.ContinuationPoint[1:]
            refused = await node.history_read(details, forged)
            assert refused.StatusCode.value == ua.StatusCodes.BadContinuationPointInvalid
            # not historized: a computed point; no history: the device without a shadow
            for other in (f"ns={ns};s=pump.double", f"ns={ns};s=fan.speed"):
                result = await client.get_node(other).history_read(details)
                assert result.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported
                assert (
                    await client.get_node(other).read_attribute(ua.AttributeIds.Historizing)
                ).Value.Value is False
            unknown = await client.get_node(f"ns={ns};s=pump.nope").history_read(details)
            assert unknown.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
            modified = ua.ReadRawModifiedDetails(
                IsReadModified=True, StartTime=times[0], EndTime=times[-1]
            )
            result = await node.history_read(modified)
            assert result.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported

        # node-opcua pages through two values at a time, with bounds, two nodes at once
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": server.endpoint_url,
            "history": {
                "nodes": [temp, level],
                "start": (times[1] - timedelta(milliseconds=1)).isoformat(),
                "end": (times[-1] + timedelta(milliseconds=1)).isoformat(),
                "numValuesPerNode": 2,
                "returnBounds": True,
            },
        }
        code, lines = await run_node_client(plan)
        assert code == 0, lines
        read_temp, read_level = one(lines, "history")
        values = read_temp["values"]
        # the bound before the start (the first value), every value after it, no bound after
        # the end (none there): Bad_BoundNotFound at the end time
        assert [v["value"] for v in values[:-1]] == pytest.approx(degf)
        assert [v["sourceTimestamp"] for v in values[:-1]] == [_iso(t) for t in times]
        assert values[-1]["status"] == "BadBoundNotFound" and values[-1]["value"] is None
        assert read_temp["pages"] == (len(values) + 1) // 2 and read_temp["status"] == "Good"
        level_kept = await shadow.history_page("pump", "level")
        assert [v["value"] for v in read_level["values"] if v["status"] == "Good"] == (
            pytest.approx([r.value for r in level_kept])
        )
        status = server.status()
        assert status["history_values"] >= len(values) and status["history_reads"] >= 4


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _recorded(shadow: Any, value: float) -> bool:
    rows = await shadow.history_page("pump", "temp", newest_first=True, limit=1)
    return bool(rows) and rows[0].value == pytest.approx(value)


async def test_a_request_without_nodes_or_timestamps_is_refused(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with history_gateway(simulator, tmp_path) as (_, server, _):
        async with Client(server.endpoint_url) as client:
            details = ua.ReadRawModifiedDetails(
                StartTime=datetime.now(UTC) - timedelta(hours=1), EndTime=datetime.now(UTC)
            )
            for nodes, stamps, refusal in (
                ([], ua.TimestampsToReturn.Both, ua.uaerrors.BadNothingToDo),
                (
                    [ua.HistoryReadValueId(NodeId=ua.NodeId("pump.temp", server.namespace_index))],
                    ua.TimestampsToReturn.Neither,
                    ua.uaerrors.BadTimestampsToReturnInvalid,
                ),
            ):
                params = ua.HistoryReadParameters(
                    HistoryReadDetails=details, TimestampsToReturn=stamps, NodesToRead=nodes
                )
                with pytest.raises(refusal):
                    await client.uaclient.history_read(params)
            # the server says it serves raw history
            capability = client.get_node(
                ua.NodeId(ua.ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability)
            )
            assert await capability.read_value() is True
        await asyncio.sleep(0)
