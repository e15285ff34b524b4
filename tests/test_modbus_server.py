"""The Modbus TCP server role: a whole gateway serves a simulated Modbus device's points as a
register map, read and written by mbpoll (a peer we did not write) and by a raw-socket client.

Modbus -> gateway -> Modbus: the simulator is the source device (polled by the gateway's Modbus
client), the gateway's Modbus server the target; writes from mbpoll reach the simulator's
registers through the bridge, the write rules and the reverse scaling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from conftest import HOST, free_port, wait_for
from test_opcua_server import running_gateway
from test_simulator import RawClient, mbpoll, mbpoll_read

from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from gateway.types import Quality, Sample
from protocols.modbus.codec import ByteOrder, DataType, Table
from protocols.modbus.frames import (
    ExceptionCode,
    FunctionCode,
    ModbusError,
    ReadRequest,
    WriteMultipleRegisters,
    WriteSingleRegister,
    build_frame,
    encode_request,
)
from protocols.modbus.server import ModbusServerAdapter, bad_code
from protocols.modbus.server_config import ModbusServerRoute
from protocols.modbus.simulator import SimulatedDevice, Simulator

HOLDING = FunctionCode.READ_HOLDING_REGISTERS

CONFIG = """
gateway: {{name: gw, status_interval: 0}}
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
    port: {device_port}
    timeout: 0.3
    poll_groups: {{default: {{interval: 0.05}}}}
    reconnect: {{initial: 0.05, max: 0.2}}
    points:
      - {{name: count, address: 0, type: uint16}}
      - {{name: temp, address: 1, type: int16, scale: 0.1, unit: degC}}
      - {{name: setpoint, address: 2, type: int16, scale: 0.1, access: rw, low: 0, high: 80}}
      - {{name: flow, address: 4, type: float32}}
      - {{name: level, address: 6, type: float32, byte_order: CDAB, access: rw}}
      - {{name: total, address: 8, type: uint32, access: rw}}
      - {{name: pump, table: coil, address: 0, access: rw}}
endpoints:
  mb:
    protocol: modbus
    role: server
    host: 127.0.0.1
    port: {server_port}
    unit_ids: [1, 2]
{server}
bridges:
  - name: serve
    from: plc
    to: mb
    map:
      - {{point: count, address: 0}}
      - {{point: temp, address: 1, type: int16, scale: 0.1}}
      - {{point: setpoint, address: 2, type: int16, scale: 0.1}}
      - {{point: flow, address: 10, type: float32}}
      - {{point: flow, address: 12, type: float32, byte_order: CDAB}}
      - {{point: plc/level, address: 14, type: float32, byte_order: CDAB}}
      - {{point: total, address: 16, type: uint32}}
      - {{point: temp, address: 20, type: bool, bit: 0}}
      - {{point: pump, address: 20, type: bool, bit: 3}}
      - {{point: pump, table: coil, address: 0}}
      - {{point: temp, table: input, address: 0, type: float32, scale: 1, offset: -273.15}}
{map}"""


@dataclass
class Plant:
    gateway: Gateway
    device: SimulatedDevice
    server: ModbusServerAdapter
    port: int


@contextlib.asynccontextmanager
async def plant(simulator: Simulator, server: str = "", entries: str = "") -> AsyncIterator[Plant]:
    """The gateway serving the simulated device; ``server``: more lines of the server's config,
    ``entries``: more lines of the map (one entry each)."""
    device = await simulator.add_device(size=40, name="plc")
    device.set_registers(Table.HOLDING, 0, [42])
    device.set_value(Table.HOLDING, 1, -153, DataType.INT16)  # -15.3 degC
    device.set_value(Table.HOLDING, 2, 205, DataType.INT16)  # 20.5
    device.set_value(Table.HOLDING, 4, 12.5, DataType.FLOAT32)
    device.set_value(Table.HOLDING, 6, -3.25, DataType.FLOAT32, ByteOrder.CDAB)
    device.set_value(Table.HOLDING, 8, 70000, DataType.UINT32)
    device.set_bits(Table.COIL, 0, [True])
    text = CONFIG.format(
        device_port=device.port, server_port=free_port(), server=server, map=entries
    )
    async with running_gateway(text) as gateway:
        server = gateway.adapters["mb"]
        assert isinstance(server, ModbusServerAdapter)
        mapped = 11 + len(entries.splitlines())
        await wait_for(lambda: server.status()["map_entries"] == mapped)
        # served once every entry has a first value
        await wait_for(lambda: all(e.state == 0 for e in server.entries), message="first values")
        yield Plant(gateway, device, server, server.port)


async def test_mbpoll_reads_the_served_registers(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        assert p.server.map_errors == []
        rc, out, err = await mbpoll(p.port, "-1", "-0", "-r", "0", "-c", "3", "-t", "4", HOST)
        assert rc == 0, err
        # int16 with scale 0.1: -15.3 degC is -153 (mbpoll shows it both ways)
        assert "[0]: \t42\n[1]: \t65383 (-153)\n[2]: \t205\n" in out
        abcd = await mbpoll_read(p.port, "-0", "-r", "10", "-c", "1", "-t", "4:float", "-B")
        assert abcd == {10: "12.5"}
        cdab = await mbpoll_read(p.port, "-0", "-r", "12", "-c", "1", "-t", "4:float")
        assert cdab == {12: "12.5"}  # without -B mbpoll reads the low word first: CDAB
        level = await mbpoll_read(p.port, "-0", "-r", "14", "-c", "1", "-t", "4:float")
        assert level == {14: "-3.25"}
        total = await mbpoll_read(p.port, "-0", "-r", "16", "-c", "1", "-t", "4:int", "-B")
        assert total == {16: "70000"}
        assert await mbpoll_read(p.port, "-0", "-r", "0", "-t", "0") == {0: "1"}
        kelvin = await mbpoll_read(p.port, "-0", "-r", "0", "-t", "3:float", "-B")
        assert float(kelvin[0]) == pytest.approx(257.85, abs=1e-4)  # offset reversed
        bits = await mbpoll_read(p.port, "-0", "-r", "20", "-t", "4:hex")
        assert bits == {20: "0x0009"}  # bit 0: temp is non-zero, bit 3: the pump coil


async def test_mbpoll_write_reaches_the_source_device(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        rc, out, err = await mbpoll(p.port, "-0", "-r", "2", "-t", "4", HOST, "255")
        assert rc == 0, err + out
        # 255 * 0.1 = 25.5 in the gateway, 25.5 / 0.1 = 255 on the source
        assert p.device.get_registers(Table.HOLDING, 2) == [255]
        await wait_for(
            lambda: p.server.units[1].tables[Table.HOLDING].values[2] == 255, message="re-poll"
        )
        assert await mbpoll_read(p.port, "-0", "-r", "2", "-t", "4") == {2: "255"}
        # a float in CDAB, a uint32 and a coil, each whole
        rc, out, err = await mbpoll(p.port, "-0", "-r", "14", "-t", "4:float", HOST, "--", "-7.5")
        assert rc == 0, err + out
        registers = p.device.get_registers(Table.HOLDING, 6, 2)
        assert registers == SimulatedDevice(size=2).set_value(
            Table.HOLDING, 0, -7.5, DataType.FLOAT32, ByteOrder.CDAB
        )
        rc, out, err = await mbpoll(p.port, "-0", "-r", "16", "-t", "4:int", "-B", HOST, "123456")
        assert rc == 0, err + out
        assert p.device.get_registers(Table.HOLDING, 8, 2) == [1, 57920]
        rc, out, err = await mbpoll(p.port, "-0", "-r", "0", "-t", "0", HOST, "0")
        assert rc == 0, err + out
        assert p.device.get_bits(Table.COIL, 0) == [False]
        assert p.server.status()["writes_ok"] == 4


async def test_refused_writes_get_their_exception_and_change_nothing(
    simulator: Simulator,
) -> None:
    async with plant(simulator) as p:
        # 900 -> 90.0, above the point's high of 80: the write rules refuse it
        rc, out, err = await mbpoll(p.port, "-0", "-r", "2", "-t", "4", HOST, "900")
        assert rc != 0
        assert "Illegal data value" in err + out
        assert p.device.get_registers(Table.HOLDING, 2) == [205]
        # read-only point: 02
        rc, out, err = await mbpoll(p.port, "-0", "-r", "0", "-t", "4", HOST, "7")
        assert rc != 0
        assert "Illegal data address" in err + out
        assert p.device.get_registers(Table.HOLDING, 0) == [42]
        # half of a float: 03, nothing written
        client = await RawClient.connect(p.port)
        try:
            with pytest.raises(ModbusError) as info:
                await client.call(WriteSingleRegister(14, 1))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_VALUE
            with pytest.raises(ModbusError) as info:
                await client.call(WriteMultipleRegisters(15, (1, 2)))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_VALUE
            # unmapped address: 02
            with pytest.raises(ModbusError) as info:
                await client.call(WriteSingleRegister(3, 1))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS
            # the connection lives on after each exception
            assert await client.call(ReadRequest(HOLDING, 0, 3)) == [42, 65383, 205]
        finally:
            await client.close()
        assert p.device.get_registers(Table.HOLDING, 6, 2) == SimulatedDevice(size=2).set_value(
            Table.HOLDING, 0, -3.25, DataType.FLOAT32, ByteOrder.CDAB
        )
        exceptions = p.server.status()["exceptions"]
        assert exceptions["03"] == 3 and exceptions["02"] == 2
        assert p.server.status()["writes_refused"] == {"out_of_range": 1}


async def test_unmapped_reads_and_other_units(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        rc, out, err = await mbpoll(p.port, "-1", "-0", "-r", "30", "-t", "4", HOST)
        assert rc != 0
        assert "Illegal data address" in err + out
        # a range with a hole (address 3) is refused whole
        rc, out, err = await mbpoll(p.port, "-1", "-0", "-r", "0", "-c", "5", "-t", "4", HOST)
        assert rc != 0
        assert "Illegal data address" in err + out
        rc, out, err = await mbpoll(p.port, "-1", "-a", "2", "-0", "-r", "0", "-t", "4", HOST)
        assert rc != 0 and "Illegal data address" in err + out  # unit 2: served, empty
        client = await RawClient.connect(p.port)
        try:
            with pytest.raises(ModbusError) as info:
                await client.call(ReadRequest(HOLDING, 0, 1), unit=9)
            assert info.value.code is ExceptionCode.GATEWAY_PATH_UNAVAILABLE
            with pytest.raises(ModbusError) as info:
                await client.call(ReadRequest(FunctionCode.READ_DISCRETE_INPUTS, 0, 1))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS  # no discrete map
            client.writer.write(build_frame(77, 1, bytes.fromhex("0300000000")))  # count 0
            assert (await client.response())[2] == bytes((0x83, 3))
            client.writer.write(build_frame(78, 1, bytes.fromhex("2B0D0100")))  # FC 43, MEI 13
            assert (await client.response())[2] == bytes((0xAB, 1))
            assert await client.call(ReadRequest(HOLDING, 0, 1)) == [42]
        finally:
            await client.close()


async def test_malformed_frame_closes_only_that_connection(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        good = await RawClient.connect(p.port)
        bad = await RawClient.connect(p.port)
        try:
            assert p.server.status()["connections"] == 2
            bad.writer.write(bytes.fromhex("0001 0005 0006 01 03 0000 0001"))  # protocol id 5
            assert await bad.closed()
            assert await good.call(ReadRequest(HOLDING, 0, 1)) == [42]
            assert p.server.status()["frame_errors"] == 1
            assert await mbpoll_read(p.port, "-0", "-r", "2", "-t", "4") == {2: "205"}
        finally:
            await good.close()
            await bad.close()


async def test_device_down_reads_and_writes_get_0b(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        await simulator.stop_device(p.device)
        await wait_for(lambda: all(e.state == 0x0B for e in p.server.entries), message="bad")
        rc, out, err = await mbpoll(p.port, "-1", "-0", "-r", "0", "-t", "4", HOST)
        assert rc != 0 and "Target device failed to respond" in err + out
        rc, out, err = await mbpoll(p.port, "-0", "-r", "2", "-t", "4", HOST, "100")
        assert rc != 0 and "Target device failed to respond" in err + out
        await simulator.start_device(p.device)
        await wait_for(lambda: all(e.state == 0 for e in p.server.entries), message="back")
        assert await mbpoll_read(p.port, "-0", "-r", "0", "-t", "4") == {0: "42"}


def burst_and_reset(port: int, requests: int) -> bytes:
    """Send ``requests`` reads in one write, read the first bytes back, close with a reset."""
    pdu = encode_request(ReadRequest(HOLDING, 0, 3))
    data = b"".join(build_frame(i & 0xFFFF, 1, pdu) for i in range(requests))
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(data)
        first = sock.recv(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return first


async def test_a_client_resetting_with_requests_queued_does_not_flood_the_log(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without the CLI's throttle (another test may have left it): the server's own doing
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    async with plant(simulator) as p:
        caplog.set_level(logging.DEBUG, logger="asyncio")
        caplog.clear()
        for requests in (250, 500, 5000):  # from a thread: the server answers meanwhile
            assert await asyncio.to_thread(burst_and_reset, p.port, requests)
        await wait_for(lambda: p.server.status()["connections"] == 0, message="all closed")
        # before: "socket.send() raised exception." once per response after the reset
        assert len(caplog.records) <= 5, [r.getMessage() for r in caplog.records[:5]]
        assert await mbpoll_read(p.port, "-0", "-r", "0", "-t", "4") == {0: "42"}


@contextlib.asynccontextmanager
async def polling(port: int) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """A client reading every 50 ms; what it yields stops it and says how many reads it made
    (each one answered: a failed read fails the test)."""
    client = await RawClient.connect(port)
    stop = asyncio.Event()

    async def poll() -> int:
        reads = 0
        while not stop.is_set():
            assert await client.call(ReadRequest(HOLDING, 0, 1)) == [42]
            reads += 1
            await asyncio.sleep(0.05)
        return reads

    task = asyncio.create_task(poll())

    async def finish() -> int:
        stop.set()
        return await task

    try:
        yield finish
    finally:
        stop.set()
        task.cancel()
        await client.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


EVICT_AFTER = 1.0
LIMITED = f"    max_connections: {{}}\n    idle_evict_after: {EVICT_AFTER}\n    idle_timeout: {{}}"


async def test_idle_connections_make_room_for_a_new_client(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with plant(simulator, LIMITED.format(4, 0)) as p:
        idle = [await RawClient.connect(p.port) for _ in range(4)]
        try:
            await wait_for(lambda: p.server.status()["connections"] == 4, message="4 open")
            for _ in range(3):  # none idle for EVICT_AFTER yet: refused, logged once
                newcomer = await RawClient.connect(p.port)
                assert await newcomer.closed()
                await newcomer.close()
            assert p.server.status()["connections_refused"] == 3
            assert len(lines(caplog, "refused")) == 1
            await asyncio.sleep(EVICT_AFTER + 0.2)
            newcomers = [await RawClient.connect(p.port) for _ in range(3)]
            idle += newcomers
            for client in newcomers:
                assert await client.call(ReadRequest(HOLDING, 0, 1)) == [42]
            for client in idle[:3]:  # those idle longest made room, in order
                assert await client.closed()
            # a SCADA client reconnecting: the last of the idle sockets makes room for it
            assert await mbpoll_read(p.port, "-0", "-r", "0", "-t", "4") == {0: "42"}
            assert await idle[3].closed()
            status = p.server.status()
            assert status["connections_evicted"] == 4 and status["connections_refused"] == 3
            assert len(lines(caplog, "to admit")) == 1
            assert len(lines(caplog, "new connections: works again after 3 failures")) == 1
        finally:
            for client in idle:
                await client.close()


async def test_an_active_connection_is_not_evicted(simulator: Simulator) -> None:
    async with plant(simulator, LIMITED.format(2, 0)) as p, polling(p.port) as reads:
        idle = await RawClient.connect(p.port)
        try:
            await asyncio.sleep(EVICT_AFTER + 0.2)
            newcomer = await RawClient.connect(p.port)
            assert await newcomer.call(ReadRequest(HOLDING, 0, 1)) == [42]
            assert await idle.closed()
            # the poller and a newcomer that just arrived: both active, the next is refused
            late = await RawClient.connect(p.port)
            assert await late.closed()
            await late.close()
            await asyncio.sleep(EVICT_AFTER + 0.2)  # the newcomer goes idle: it makes room
            late = await RawClient.connect(p.port)
            assert await late.call(ReadRequest(HOLDING, 0, 1)) == [42]
            assert await newcomer.closed()
            await late.close()
            await newcomer.close()
            assert await reads() > 10  # never interrupted
            status = p.server.status()
            assert status["connections_evicted"] == 2 and status["connections_refused"] == 1
        finally:
            await idle.close()


async def test_an_idle_connection_is_closed_after_idle_timeout(simulator: Simulator) -> None:
    async with plant(simulator, LIMITED.format(64, 0.5)) as p, polling(p.port) as reads:
        idle = await RawClient.connect(p.port)
        try:
            assert await idle.call(ReadRequest(HOLDING, 0, 1)) == [42]
            started = time.monotonic()
            assert await idle.closed()
            assert time.monotonic() - started >= 0.4
            await asyncio.sleep(0.3)
            assert await reads() > 5  # the active one stays
            status = p.server.status()
            assert status["connections_idle_closed"] == 1 and status["connections"] == 1
        finally:
            await idle.close()


def test_bad_sample_codes() -> None:
    assert bad_code(Sample("x", None, Quality.BAD, reason="timeout")) == 0x0B
    assert bad_code(Sample("x", None, Quality.BAD, reason="connection lost")) == 0x0B
    assert bad_code(Sample("x", None, Quality.BAD, reason="exception 02")) == 0x04


# -- config validation ----------------------------------------------------------------------

ROUTE = """
devices:
  plc: {{protocol: modbus, host: 127.0.0.1, points: [{{name: a, address: 0}}]}}
endpoints:
  mb: {{protocol: modbus, role: server, port: 1502}}
bridges:
  - name: serve
    from: plc
    to: mb
    map:
{entries}
"""


def problems(entries: str) -> dict[str, tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(ROUTE.format(entries=entries), "serve.yaml")
    return {p.dotted: (p.line, p.found, p.expected) for p in info.value.problems}


def test_overlapping_map_entries_are_reported_at_their_address() -> None:
    found = problems(
        "      - {point: a, address: 0, type: float32}\n"
        "      - {point: a, address: 4}\n"
        "      - {point: a, address: 1}\n"
        "      - {point: a, address: 10, type: bool, bit: 2}\n"
        "      - {point: a, address: 10, type: bool, bit: 3}\n"
        "      - {point: a, address: 10, type: bool, bit: 3}\n"
        "      - {point: a, table: coil, address: 1}\n"
    )
    assert set(found) == {"bridges[0].map[2].address", "bridges[0].map[5].address"}
    line, what, expected = found["bridges[0].map[2].address"]
    assert line == 13 and what == "1"
    assert "map[0]" in expected and "holding 0..1" in expected
    assert "map[4]" in found["bridges[0].map[5].address"][2]


def test_types_that_do_not_fit_the_table_are_reported_with_their_path() -> None:
    found = problems(
        "      - {point: a, table: coil, address: 0, type: int16}\n"
        "      - {point: a, address: 65535, type: float32}\n"
        "      - {point: a, address: 3, type: bool}\n"
        "      - {point: a, address: 4, table: registers}\n"
        "      - {point: a, address: 5, scale: 0}\n"
    )
    assert set(found) == {
        "bridges[0].map[0]",
        "bridges[0].map[1]",
        "bridges[0].map[2]",
        "bridges[0].map[3].table",
        "bridges[0].map[4].scale",
    }
    assert "coil" in found["bridges[0].map[0]"][2]
    assert "65535" in found["bridges[0].map[1]"][2]
    assert "bit" in found["bridges[0].map[2]"][2]


def test_a_map_naming_a_point_the_bridge_lacks_is_not_served() -> None:
    # validate refuses it (tests/test_config_served.py); the run checks all the same
    config = load_config_text(ROUTE.format(entries="      - {point: a, address: 1}"))
    route = ModbusServerRoute.model_validate(
        {"map": [{"point": "nope", "address": 0}, {"point": "a", "address": 1}]}
    )
    bridges = [dataclasses.replace(config.bridges[0], route=route)]
    gateway = Gateway(dataclasses.replace(config, bridges=bridges))
    server = gateway.adapters["mb"]
    assert isinstance(server, ModbusServerAdapter)
    assert len(server.entries) == 1 and len(server.map_errors) == 1
    assert "nope" in server.map_errors[0]


def test_idle_timeout_zero_or_null_disables_it_a_negative_one_is_refused() -> None:
    for value, expected in (("null", None), ("0", 0.0), ("30", 30.0)):
        text = ROUTE.format(entries="      - {point: a, address: 0}")
        server = Gateway(load_config_text(text.replace("1502", f"1502, idle_timeout: {value}")))
        adapter = server.adapters["mb"]
        assert isinstance(adapter, ModbusServerAdapter)
        assert adapter.config.idle_timeout == expected and adapter.config.idle_evict_after == 10
    text = ROUTE.format(entries="      - {point: a, address: 0}").replace(
        "1502", "1502, idle_timeout: -1, idle_evict_after: 0"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    found = {p.dotted for p in info.value.problems}
    assert found == {"endpoints.mb.idle_timeout", "endpoints.mb.idle_evict_after"}
