"""The Modbus client adapter in-process against the simulator (itself checked with mbpoll)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import HOST, wait_for

from gateway.adapter import AdapterContext
from gateway.bus import Bus, Subscription
from gateway.types import Message, Quality, Sample
from protocols.modbus import client
from protocols.modbus.client import ModbusClientAdapter, ModbusWriteError
from protocols.modbus.codec import ByteOrder, DataType, Table
from protocols.modbus.config import ModbusDevice
from protocols.modbus.frames import FUNCTION_TABLE, ExceptionCode, ModbusError, ReadRequest, Request
from protocols.modbus.simulator import SimulatedDevice, Simulator, UnitTables


def device_config(port: int, points: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "host": HOST,
            "port": port,
            "timeout": 0.3,
            "reconnect": {"initial": 0.05, "max": 0.2},
            "poll_groups": {"default": {"interval": 0.1}},
            "points": points,
            **extra,
        }
    )


@pytest.fixture
async def device(simulator: Simulator) -> SimulatedDevice:
    return await simulator.add_device(unit_ids=(1, 7), size=200)


class Running:
    def __init__(self, adapter: ModbusClientAdapter, sub: Subscription) -> None:
        self.adapter = adapter
        self.sub = sub
        self.seen: list[Message] = []

    def drain(self) -> list[Message]:
        while (m := self.sub.get_nowait()) is not None:
            self.seen.append(m)
        return self.seen

    def latest(self, point: str) -> Sample | None:
        for m in reversed(self.drain()):
            for s in m.samples:
                if s.point == point:
                    return s
        return None

    def count(self, point: str) -> int:
        return sum(1 for m in self.drain() for s in m.samples if s.point == point)


@pytest.fixture
async def run_adapter() -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []
    adapters: list[ModbusClientAdapter] = []

    async def start(config: ModbusDevice) -> Running:
        bus = Bus()
        sub = bus.subscribe("telemetry/dev", maxsize=10000)
        adapter = ModbusClientAdapter("dev", config, AdapterContext(bus, "test"))
        await adapter.__aenter__()
        adapters.append(adapter)
        tasks.append(asyncio.create_task(adapter.run()))
        return Running(adapter, sub)

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for a in adapters:
        await a.__aexit__(None, None, None)


async def test_reads_are_planned_into_few_requests(
    device: SimulatedDevice, run_adapter: Any
) -> None:
    points = [
        {"name": f"r{i}", "address": i * 2, "type": "uint16"}
        for i in range(10)  # gaps of 1
    ] + [
        {"name": "far", "address": 150},
        {"name": "c0", "table": "coil", "address": 0},
        {"name": "c9", "table": "coil", "address": 4},
        {"name": "other_unit", "address": 0, "unit_id": 7},
    ]
    for i in range(10):
        device.set_registers("holding", i * 2, [100 + i])
    device.set_registers("holding", 150, [5])
    device.set_registers("holding", 0, [77], unit=7)
    device.set_bits("coil", 4, [True])
    r = await run_adapter(device_config(device.port, points, max_gap=4))
    # holding 0..18 in one read, 150 alone, the coils in one, unit 7 in one
    assert r.adapter.requests_per_poll() == {"default": 4}
    await wait_for(lambda: r.latest("other_unit"))
    assert [r.latest(f"r{i}").value for i in range(10)] == [100 + i for i in range(10)]  # type: ignore[union-attr]
    assert r.latest("far").value == 5  # type: ignore[union-attr]
    assert r.latest("c9").value is True and r.latest("c0").value is False  # type: ignore[union-attr]
    assert r.latest("other_unit").value == 77  # type: ignore[union-attr]
    before = device.requests
    await asyncio.sleep(0.5)
    polls = (device.requests - before) / 4
    assert 3 <= polls <= 7  # 0.1 s interval, 4 requests each


async def test_publish_on_change_versus_always(device: SimulatedDevice, run_adapter: Any) -> None:
    points = [
        {"name": "quiet", "address": 0},
        {"name": "chatty", "address": 1, "publish": "always"},
        {"name": "banded", "address": 2, "deadband": {"absolute": 10}},
    ]
    r = await run_adapter(device_config(device.port, points))
    await wait_for(lambda: r.count("chatty") >= 5)
    assert r.count("quiet") == 1
    device.set_registers("holding", 2, [5])  # below the deadband of 10
    await asyncio.sleep(0.3)
    assert r.count("banded") == 1
    device.set_registers("holding", 2, [11])
    await wait_for(lambda: r.latest("banded").value == 11)  # type: ignore[union-attr]
    device.set_registers("holding", 0, [3])
    await wait_for(lambda: r.count("quiet") == 2)


async def test_exception_response_marks_only_its_points_bad(
    device: SimulatedDevice, run_adapter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    points = [
        {"name": "ok", "address": 0},
        {"name": "missing", "address": 199, "type": "uint32"},  # runs past the 200 registers
    ]
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(device.port, points, max_gap=0))
        missing = await wait_for(lambda: r.latest("missing"))
        await asyncio.sleep(0.3)
    assert missing.quality is Quality.BAD
    assert missing.reason == "exception 02 (illegal data address) at holding 199..200"
    assert r.latest("ok").quality is Quality.GOOD  # type: ignore[union-attr]
    assert r.adapter.status()["connected"] is True
    assert [m for m in caplog.messages if "refused" in m] == [
        "dev: point missing (holding 199, unit 1) is refused by the device with exception 02"
        " (illegal data address): it is Bad and read on its own every 60 s; the points around"
        " it are read without it"
    ]


async def test_unreachable_device_is_bad_then_recovers(
    simulator: Simulator, run_adapter: Any
) -> None:
    dev = await simulator.add_device()
    port = dev.port
    await simulator.stop_device(dev)
    dev.set_registers("holding", 0, [9])
    r = await run_adapter(device_config(port, [{"name": "x", "address": 0}]))
    bad = await wait_for(lambda: r.latest("x"))
    assert bad.quality is Quality.BAD and bad.reason == "unreachable"
    await simulator.start_device(dev)
    good = await wait_for(
        lambda: (s := r.latest("x")) and s.quality is Quality.GOOD and s, timeout=5
    )
    assert good.value == 9


async def test_writes_reverse_scaling_and_byte_order(
    device: SimulatedDevice, run_adapter: Any
) -> None:
    points = [
        {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "access": "rw"},
        {"name": "flow", "address": 20, "type": "float32", "byte_order": "CDAB", "access": "rw"},
        {"name": "pump", "table": "coil", "address": 3, "access": "rw"},
        {"name": "flag", "address": 30, "type": "bool", "bit": 4, "access": "rw"},
        {"name": "ro", "address": 40},
    ]
    r = await run_adapter(device_config(device.port, points))
    await wait_for(lambda: r.adapter.status()["connected"])
    device.set_registers("holding", 30, [0b1])
    await r.adapter.write("setpoint", -21.5)
    assert device.get_registers("holding", 10) == [(-215) & 0xFFFF]
    await r.adapter.write("flow", 12.5)
    assert device.get_registers("holding", 20, 2) == device.set_value(
        "holding", 100, 12.5, DataType.FLOAT32, ByteOrder.CDAB
    )
    await r.adapter.write("pump", True)
    assert device.get_bits("coil", 3) == [True]
    await r.adapter.write("flag", True)
    assert device.get_registers("holding", 30) == [0b10001]  # the other bit kept
    with pytest.raises(ModbusWriteError, match="not writable"):
        await r.adapter.write("ro", 1)
    with pytest.raises(ModbusWriteError, match="does not fit"):
        await r.adapter.write("setpoint", 5000.0)  # raw 50000 overflows int16
    await wait_for(lambda: (s := r.latest("setpoint")) and s.value == -21.5)


async def test_writes_through_the_router_reach_the_register_and_read_back(
    simulator: Simulator, run_adapter: Any
) -> None:
    dev = await simulator.add_device()
    points = [
        {
            "name": "sp",
            "address": 5,
            "type": "int16",
            "scale": 0.1,
            "unit": "degC",
            "access": "rw",
            "low": -50,
            "high": 150,
        },
        {"name": "ro", "address": 6},
    ]
    config = device_config(dev.port, points, poll_groups={"default": {"interval": 30}})
    r = await run_adapter(config)
    router = r.adapter.context.router
    router.declare("dev", r.adapter.points())
    assert r.adapter.points()[0].datatype == "float64"  # a scaled int16 publishes floats
    await wait_for(lambda: r.adapter.status()["connected"])
    await wait_for(lambda: r.latest("sp"))

    result = await router.write("dev", "sp", 42.5, origin="test")
    assert result.ok, result
    assert dev.get_registers("holding", 5) == [425]
    # Read back at once: the new value is on the bus long before the 30 s poll.
    await wait_for(lambda: r.latest("sp").value == 42.5, timeout=1)  # type: ignore[union-attr]

    refused = await router.write("dev", "sp", 151, origin="test")
    assert refused.status == "out_of_range" and dev.get_registers("holding", 5) == [425]
    refused = await router.write("dev", "ro", 1, origin="test")
    assert refused.status == "not_writable" and dev.get_registers("holding", 6) == [0]

    await simulator.stop_device(dev)
    await wait_for(lambda: not r.adapter.status()["connected"], timeout=5)
    t0 = asyncio.get_running_loop().time()
    down = await router.write("dev", "sp", 10, origin="test")
    assert down.status == "unreachable"
    assert asyncio.get_running_loop().time() - t0 < 1.0  # refused at once, not after a timeout
    await simulator.start_device(dev)
    await wait_for(lambda: r.adapter.status()["connected"], timeout=5)
    await asyncio.sleep(0.3)
    assert dev.get_registers("holding", 5) == [425]  # the refused write was not applied later
    router.close()


async def test_a_device_that_accepts_but_never_answers_is_not_connected(run_adapter: Any) -> None:
    # A frozen device (SIGSTOP, a hung stack) still accepts TCP connections: its kernel does.
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await run_adapter(device_config(port, [{"name": "x", "address": 0}]))
        await wait_for(lambda: r.adapter.status()["timeouts"] >= 1, timeout=5)
        for _ in range(20):  # through timeouts and reconnects, never up
            assert not r.adapter.status()["connected"]
            await asyncio.sleep(0.05)
        assert "timeout" in (r.adapter.status()["last_error"] or "")
    finally:
        server.close()


async def test_points_lost_goes_through_the_deadband_so_an_unchanged_value_comes_back(
    device: SimulatedDevice, run_adapter: Any
) -> None:
    # The runtime calls points_lost when run() failed; after the restart the register has not
    # changed, and the on-change filter must still send it, or targets would stay Bad.
    device.set_registers("holding", 0, [42])
    r = await run_adapter(device_config(device.port, [{"name": "sp", "address": 0}]))
    await wait_for(lambda: r.latest("sp"), message="first reading")
    await r.adapter.points_lost("adapter failed: RuntimeError")
    bad = r.latest("sp")
    assert bad is not None and bad.quality is Quality.BAD
    assert bad.reason == "adapter failed: RuntimeError"
    await wait_for(
        lambda: (s := r.latest("sp")) is not None and s.quality is Quality.GOOD and s.value == 42,
        message="the unchanged value sent again as Good",
    )


async def test_a_poll_slower_than_its_interval_counts_and_logs_the_skipped_ticks(
    simulator: Simulator, run_adapter: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    # Ticks skipped by a late poll are readings never taken: before, nothing said so.
    monkeypatch.setattr("protocols.modbus.client._LatePolls.EVERY", 0.5)
    slow = await simulator.add_device(unit_ids=(1,), size=10, delay=0.25)
    config = device_config(slow.port, [{"name": "x", "address": 0}], timeout=1.0)
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(config)
        await wait_for(lambda: r.adapter.status()["polls"] >= 6, timeout=10)
        status = r.adapter.status()
        # each 0.25 s poll of a 0.1 s schedule skips two or three ticks
        assert status["polls_missed"] >= 2 * (status["polls"] - 2)
        late = [m for m in caplog.messages if "is late" in m]
        assert len(late) == 1, caplog.messages
        assert "poll group default (every 0.1 s)" in late[0]
        await wait_for(lambda: any("more ticks skipped in the last" in m for m in caplog.messages))
        slow.delay = 0.0
        await wait_for(lambda: any("keeps time again" in m for m in caplog.messages), timeout=5)
        missed = r.adapter.status()["polls_missed"]
        polls = r.adapter.status()["polls"]
        await wait_for(lambda: r.adapter.status()["polls"] >= polls + 10)
        # on time again: two or three misses a poll before; a loaded box may pause once or twice
        assert r.adapter.status()["polls_missed"] <= missed + 3


async def test_ticks_while_the_device_is_down_are_not_late_polls(
    simulator: Simulator, run_adapter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    device = await simulator.add_device(unit_ids=(1,), size=10)
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(device.port, [{"name": "x", "address": 0}]))
        await wait_for(lambda: r.adapter.status()["polls"] >= 3, timeout=5)
        await simulator.stop_device(device)
        await wait_for(lambda: r.adapter.status()["reconnects"] >= 2, timeout=5)
        await asyncio.sleep(0.5)  # five ticks of the schedule pass while it is down
        polls = r.adapter.status()["polls"]
        await simulator.start_device(device)
        await wait_for(lambda: r.adapter.status()["polls"] >= polls + 5, timeout=5)
    assert r.adapter.status()["polls_missed"] == 0
    assert not [m for m in caplog.messages if "is late" in m]


# -- addresses the device refuses (exception 02) inside a merged read ---------------------------


def refuse_reads_of(monkeypatch: pytest.MonkeyPatch, table: str, *addresses: int) -> None:
    """Gaps in the simulator's map: a read covering one of ``addresses`` is exception 02, as a
    device answers for an address it lacks (the simulator alone only refuses past its end)."""
    execute = UnitTables.execute
    kind = Table(table)

    def with_gaps(self: UnitTables, request: Request) -> bytes:
        if isinstance(request, ReadRequest) and FUNCTION_TABLE[request.function] is kind:
            span = range(request.address, request.address + request.count)
            if any(a in span for a in addresses):
                raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, request.function)
        return execute(self, request)

    monkeypatch.setattr(UnitTables, "execute", with_gaps)


def good(r: Running, point: str) -> Sample | None:
    s = r.latest(point)
    return s if s is not None and s.quality is Quality.GOOD else None


async def test_an_address_past_the_map_takes_only_its_own_point_bad(
    simulator: Simulator, run_adapter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The audit's case: 998 and 1000 merge into one read; the device has 1000 registers, so
    # the read is refused, and before, r998 went Bad with it although it reads fine alone.
    dev = await simulator.add_device(size=1000)
    dev.set_registers("holding", 998, [42])
    points = [{"name": "r998", "address": 998}, {"name": "r1000", "address": 1000}]
    with caplog.at_level("INFO", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(dev.port, points))
        r998 = await wait_for(lambda: good(r, "r998"), message="r998 Good")
        assert r998.value == 42
        r1000 = r.latest("r1000")
        assert r1000 is not None and r1000.quality is Quality.BAD
        assert r1000.reason == "exception 02 (illegal data address) at holding 1000"
        status = r.adapter.status()
        assert status["points_refused"] == 1
        assert status["refused_points"] == ["r1000 (holding 1000 unit 1)"]
        assert r.adapter.requests_per_poll() == {"default": 1}  # r998 alone from now on
        # and r1000 is not asked for again before the retry interval (60 s)
        before, polls = dev.requests, r.adapter.status()["polls"]
        await wait_for(lambda: r.adapter.status()["polls"] >= polls + 5)
        assert dev.requests - before == r.adapter.status()["polls"] - polls
    refused = [m for m in caplog.messages if "refused" in m]
    assert len(refused) == 1 and "point r1000 (holding 1000, unit 1)" in refused[0], refused
    assert r.count("r998") == 1 and r.count("r1000") == 1  # each sent once, no flapping


async def test_a_device_refusing_every_point_names_a_few_in_the_log_not_all(
    simulator: Simulator, run_adapter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong table or unit id makes every point refused: one warning each buried the cause.
    dev = await simulator.add_device(size=100)
    points = [{"name": f"p{a}", "address": a} for a in range(200, 240, 2)]  # 20, all past 100
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(dev.port, points))
        await wait_for(lambda: r.adapter.status()["points_refused"] == 20, message="all 20 refused")
    assert all(r.latest(p["name"]).quality is Quality.BAD for p in points)
    named = [m for m in caplog.messages if m.startswith("dev: point ")]
    assert len(named) == client.REFUSALS_LOGGED, named
    assert sum("more points are refused" in m for m in caplog.messages) == 1


@pytest.mark.parametrize(("table", "unit"), [("holding", 1), ("coil", 7), ("input", 7)])
async def test_a_refused_point_in_the_middle_of_a_block(
    device: SimulatedDevice,
    run_adapter: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    table: str,
    unit: int,
) -> None:
    refuse_reads_of(monkeypatch, table, 11)
    bits = Table(table).is_bit
    if bits:
        device.set_bits(table, 10, [True, False, True], unit=unit)
    else:
        device.set_registers(table, 10, [5, 6, 7], unit=unit)
    points = [
        {"name": n, "table": table, "address": a, "unit_id": unit}
        for n, a in (("a", 10), ("typo", 11), ("c", 12))
    ]
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(device.port, points))
        a = await wait_for(lambda: good(r, "a"))
        c = await wait_for(lambda: good(r, "c"))
    assert (a.value, c.value) == ((True, True) if bits else (5, 7))
    typo = r.latest("typo")
    assert typo is not None and typo.quality is Quality.BAD
    assert typo.reason == f"exception 02 (illegal data address) at {table} 11"
    assert r.adapter.requests_per_poll() == {"default": 2}  # a and c, each on its own
    assert r.adapter.status()["refused_points"] == [f"typo ({table} 11 unit {unit})"]
    refused = [m for m in caplog.messages if "refused" in m]
    assert len(refused) == 1 and f"point typo ({table} 11, unit {unit})" in refused[0]


async def test_a_gap_in_the_map_between_two_points_splits_the_read(
    device: SimulatedDevice,
    run_adapter: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No point is refused: the unused address between them is, which max_gap reads too.
    refuse_reads_of(monkeypatch, "holding", 11)
    device.set_registers("holding", 10, [5, 0, 7])
    points = [{"name": "a", "address": 10}, {"name": "c", "address": 12}]
    with caplog.at_level("WARNING", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(device.port, points))
        await wait_for(lambda: good(r, "a") and good(r, "c"))
    assert r.count("a") == 1 and r.count("c") == 1  # Good from the first poll on
    assert r.adapter.requests_per_poll() == {"default": 2}
    assert r.adapter.status()["points_refused"] == 0
    assert any("holding 10+3 unit 1 is refused as one read" in m for m in caplog.messages)


async def test_a_refused_point_reads_again_once_the_map_grows(
    simulator: Simulator,
    run_adapter: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("protocols.modbus.client.REFUSED_RETRY_S", 0.5)
    dev = await simulator.add_device(size=1000)
    points = [{"name": "r998", "address": 998}, {"name": "r1000", "address": 1000}]
    with caplog.at_level("INFO", logger="protocols.modbus.client"):
        r = await run_adapter(device_config(dev.port, points))
        await wait_for(lambda: r.adapter.status()["points_refused"] == 1)
        dev.add_unit(1, size=1100)  # a firmware update: the map grows, on the same port
        dev.set_registers("holding", 998, [8, 0, 9])
        r1000 = await wait_for(lambda: good(r, "r1000"), timeout=3)
        assert r1000.value == 9
        assert r.adapter.status()["points_refused"] == 0
        assert r.adapter.requests_per_poll() == {"default": 1}  # merged again
        await wait_for(lambda: (s := good(r, "r998")) and s.value == 8)
    assert any("point r1000 (holding 1000, unit 1) reads again" in m for m in caplog.messages)
    assert len([m for m in caplog.messages if "is refused" in m]) == 1


async def test_no_extra_requests_when_nothing_is_refused(
    device: SimulatedDevice, run_adapter: Any
) -> None:
    points = [
        {"name": "a", "address": 0},
        {"name": "b", "address": 5},
        {"name": "c0", "table": "coil", "address": 0},
        {"name": "c1", "table": "coil", "address": 3},
    ]
    r = await run_adapter(device_config(device.port, points))
    assert r.adapter.requests_per_poll() == {"default": 2}
    await wait_for(lambda: r.adapter.status()["polls"] >= 10)
    status = r.adapter.status()  # a poll may be between its two requests
    assert 2 * status["polls"] <= status["requests"] <= 2 * status["polls"] + 2
    assert status["points_refused"] == 0 and status["refused_points"] == []
    assert status["errors"] == 0


def refuse_once(monkeypatch: pytest.MonkeyPatch, refuses: Any) -> dict[str, bool]:
    """The simulator answers exception 02 to the first read ``refuses(request)`` picks, once
    ``armed`` is set: a device that refused an address it has, transiently."""
    execute = UnitTables.execute
    state = {"armed": False}

    def hook(self: UnitTables, request: Request) -> bytes:
        if isinstance(request, ReadRequest) and state["armed"] and refuses(request):
            state["armed"] = False
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_ADDRESS, request.function)
        return execute(self, request)

    monkeypatch.setattr(UnitTables, "execute", hook)
    return state


async def test_a_refused_read_back_is_one_bad_sample_not_a_refused_point(
    device: SimulatedDevice, run_adapter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review: the read-back after a write refused once made the point "refused" while the
    # group's plan went on reading it, so every poll sent it Good and then Bad.
    device.set_registers("holding", 10, [5, 6])
    once = refuse_once(monkeypatch, lambda r: r.address == 11 and r.count == 1)
    points = [{"name": "a", "address": 10}, {"name": "b", "address": 11, "access": "rw"}]
    r = await run_adapter(device_config(device.port, points))
    await wait_for(lambda: good(r, "b"), message="b Good")
    once["armed"] = True
    await r.adapter.write_and_read_back("b", 9)
    polls = r.adapter.status()["polls"]
    await wait_for(lambda: r.adapter.status()["polls"] >= polls + 5)
    assert r.adapter.status()["points_refused"] == 0
    b = good(r, "b")
    assert b is not None and b.value == 9


async def test_a_refusal_with_a_part_lost_otherwise_leaves_the_plan_for_the_next_poll(
    device: SimulatedDevice, run_adapter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The merged read of 8 points is refused once, and the first half of its bisection times
    # out: the plan is not cut on so little, the next poll reads all 8 in one request again.
    once = refuse_once(monkeypatch, lambda r: r.count == 8)
    execute = UnitTables.execute
    slow = {"once": True}

    def first_half_lost(self: UnitTables, request: Request) -> bytes:
        if isinstance(request, ReadRequest) and request.count == 4 and slow["once"]:
            slow["once"] = False
            raise ConnectionError("lost")  # the simulator drops the connection
        return execute(self, request)

    monkeypatch.setattr(UnitTables, "execute", first_half_lost)
    once["armed"] = True  # refuse_once's hook is wrapped by this one
    points = [{"name": f"p{a}", "address": a} for a in range(10, 18)]
    r = await run_adapter(device_config(device.port, points))
    await wait_for(lambda: r.adapter.status()["polls"] >= 10)
    assert not slow["once"], "the bisection ran"
    assert r.adapter.requests_per_poll() == {"default": 1}
    assert r.adapter.status()["points_refused"] == 0


async def test_a_refused_point_sent_always_is_sent_once_per_poll(
    simulator: Simulator, run_adapter: Any
) -> None:
    dev = await simulator.add_device(size=1000)
    points = [{"name": "r998", "address": 998}, {"name": "r1000", "address": 1000}]
    r = await run_adapter(device_config(dev.port, points, publish="always"))
    await wait_for(lambda: r.adapter.status()["points_refused"] == 1)
    polls = r.adapter.status()["polls"]
    await wait_for(lambda: r.adapter.status()["polls"] >= polls + 3)
    per_message = [sum(s.point == "r1000" for s in m.samples) for m in r.drain()]
    assert max(per_message) == 1, per_message


async def test_a_read_split_by_a_refusal_is_merged_again_at_the_next_reconnect(
    simulator: Simulator, run_adapter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every point reads alone, so the refusal was a gap in the map, or a passing fault: the
    # split holds until a reconnect (a restarted device may have another map) plans afresh.
    device = await simulator.add_device()
    once = refuse_once(monkeypatch, lambda r: r.count == 8)
    points = [{"name": f"p{a}", "address": a} for a in range(10, 18)]
    r = await run_adapter(device_config(device.port, points))
    await wait_for(lambda: r.adapter.status()["polls"] >= 2)
    once["armed"] = True
    await wait_for(lambda: r.adapter.requests_per_poll() == {"default": 2}, message="split")
    reconnects = r.adapter.status()["reconnects"]
    await simulator.stop_device(device)
    await wait_for(lambda: r.adapter.status()["reconnects"] > reconnects, message="reconnect")
    await simulator.start_device(device)
    polls = r.adapter.status()["polls"]
    await wait_for(lambda: r.adapter.status()["polls"] >= polls + 3, message="polls again")
    assert r.adapter.requests_per_poll() == {"default": 1}
    assert all(good(r, p["name"]) for p in points)
