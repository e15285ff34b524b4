"""The Modbus TCP simulator against a peer we did not write (mbpoll) and a raw-socket client.

mbpoll runs as a subprocess (``asyncio.create_subprocess_exec``) so that the simulator's event
loop, which is the test's loop, keeps serving while it waits.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest
from conftest import HOST, find_binary, wait_for

from protocols.modbus.codec import ByteOrder, DataType, Table, decode
from protocols.modbus.frames import (
    ExceptionCode,
    FrameDecoder,
    FunctionCode,
    ModbusError,
    ReadRequest,
    Request,
    WriteMultipleRegisters,
    WriteSingleCoil,
    build_frame,
    encode_request,
    parse_response,
)
from protocols.modbus.simulator import (
    Animation,
    SimulatedDevice,
    Simulator,
    apply_animation,
    demo_points,
)

HOLDING = FunctionCode.READ_HOLDING_REGISTERS
VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$", re.MULTILINE)


async def mbpoll(port: int, *args: str, limit_s: float = 15.0) -> tuple[int, str, str]:
    """Run mbpoll once against 127.0.0.1:port; (exit status, stdout, stderr)."""
    binary = find_binary("mbpoll", "/usr/bin/mbpoll")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-m",
        "tcp",
        "-p",
        str(port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def mbpoll_read(port: int, *args: str) -> dict[int, str]:
    """``mbpoll -1 ... HOST``: the values it printed, keyed by reference."""
    rc, out, err = await mbpoll(port, "-1", *args, HOST)
    assert rc == 0, f"mbpoll failed ({rc}): {err}\n{out}"
    return {int(ref): value for ref, value in VALUE_LINE.findall(out)}


class RawClient:
    """A minimal Modbus TCP client on the frame codec, to test what mbpoll cannot."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.tid = 0

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def frame(self, request: Request, unit: int = 1) -> bytes:
        self.tid += 1
        return build_frame(self.tid, unit, encode_request(request))

    async def response(self, limit_s: float = 2.0) -> tuple[int, int, bytes]:
        """Next response: (transaction id, unit id, PDU)."""
        async with asyncio.timeout(limit_s):
            while (frame := self.decoder.next_frame()) is None:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionResetError("connection closed by the simulator")
                self.decoder.receive_data(data)
        return frame.transaction_id, frame.unit_id, frame.pdu

    async def call(self, request: Request, unit: int = 1) -> list[int] | list[bool] | None:
        self.writer.write(self.frame(request, unit))
        tid, got_unit, pdu = await self.response()
        assert (tid, got_unit) == (self.tid, unit)
        return parse_response(request, pdu)

    async def closed(self) -> bool:
        """Whether the simulator closed (or reset) this connection."""
        try:
            async with asyncio.timeout(2.0):
                return await self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def device(simulator: Simulator) -> SimulatedDevice:
    """A device with size-40 tables for unit 1: holding[i] = 100 + i, input[i] = 1000 + i."""
    dev = await simulator.add_device(size=40)
    dev.set_registers(Table.HOLDING, 0, range(100, 140))
    dev.set_registers(Table.INPUT, 0, range(1000, 1040))
    dev.set_bits(Table.COIL, 0, [True, False, True, True, False])
    dev.set_bits(Table.DISCRETE, 0, [False, True, True, False, True])
    return dev


@pytest.fixture
async def client(device: SimulatedDevice) -> AsyncIterator[RawClient]:
    c = await RawClient.connect(device.port)
    yield c
    await c.close()


# --- mbpoll interop -------------------------------------------------------------------------


async def test_mbpoll_reads_holding_registers_one_based(device: SimulatedDevice) -> None:
    values = await mbpoll_read(device.port, "-a", "1", "-r", "1", "-c", "5", "-t", "4")
    assert values == {1: "100", 2: "101", 3: "102", 4: "103", 5: "104"}
    values = await mbpoll_read(device.port, "-a", "1", "-r", "38", "-c", "3", "-t", "4")
    assert values == {38: "137", 39: "138", 40: "139"}  # the last three of a 40-register block


async def test_mbpoll_reads_input_registers_coils_and_discrete_inputs(
    device: SimulatedDevice,
) -> None:
    inputs = await mbpoll_read(device.port, "-0", "-r", "10", "-c", "3", "-t", "3")
    assert inputs == {10: "1010", 11: "1011", 12: "1012"}
    coils = await mbpoll_read(device.port, "-0", "-r", "0", "-c", "5", "-t", "0")
    assert coils == {0: "1", 1: "0", 2: "1", 3: "1", 4: "0"}
    discrete = await mbpoll_read(device.port, "-0", "-r", "0", "-c", "5", "-t", "1")
    assert discrete == {0: "0", 1: "1", 2: "1", 3: "0", 4: "1"}


async def test_mbpoll_reads_floats_in_both_word_orders(device: SimulatedDevice) -> None:
    assert device.set_value(Table.HOLDING, 20, 21.5, DataType.FLOAT32) == [0x41AC, 0x0000]
    device.set_value(Table.HOLDING, 22, -123.25, DataType.FLOAT32, ByteOrder.CDAB)
    device.set_value(Table.INPUT, 4, 1.0e6, DataType.FLOAT32)
    big = await mbpoll_read(device.port, "-0", "-r", "20", "-c", "1", "-t", "4:float", "-B")
    assert big == {20: "21.5"}
    # without -B mbpoll takes the low word first: CDAB
    little = await mbpoll_read(device.port, "-0", "-r", "22", "-c", "1", "-t", "4:float")
    assert little == {22: "-123.25"}
    wrong = await mbpoll_read(device.port, "-0", "-r", "20", "-c", "1", "-t", "4:float")
    assert wrong != {20: "21.5"}
    inputs = await mbpoll_read(device.port, "-0", "-r", "4", "-c", "1", "-t", "3:float", "-B")
    assert float(inputs[4]) == 1.0e6


async def test_mbpoll_writes_holding_registers(device: SimulatedDevice) -> None:
    rc, out, err = await mbpoll(device.port, "-0", "-r", "7", "-t", "4", HOST, "4321")
    assert rc == 0, err
    assert "Written 1 references" in out
    assert device.get_registers(Table.HOLDING, 6, 3) == [106, 4321, 108]
    rc, out, err = await mbpoll(device.port, "-0", "-r", "30", "-t", "4", HOST, "1", "65534", "3")
    assert rc == 0, err
    assert "Written 3 references" in out
    assert device.get_registers(Table.HOLDING, 29, 5) == [129, 1, 0xFFFE, 3, 133]
    rc, out, err = await mbpoll(device.port, "-0", "-r", "2", "-t", "4:int", "-B", HOST, "--", "-2")
    assert rc == 0, err
    assert device.get_registers(Table.HOLDING, 2, 2) == [0xFFFF, 0xFFFE]
    values = await mbpoll_read(device.port, "-0", "-r", "7", "-c", "1", "-t", "4")
    assert values == {7: "4321"}


async def test_mbpoll_writes_coils(device: SimulatedDevice) -> None:
    rc, _, err = await mbpoll(device.port, "-0", "-r", "1", "-t", "0", HOST, "1")
    assert rc == 0, err
    assert device.get_bits(Table.COIL, 0, 3) == [True, True, True]
    rc, _, err = await mbpoll(device.port, "-0", "-r", "10", "-t", "0", HOST, "1", "0", "1", "1")
    assert rc == 0, err
    assert device.get_bits(Table.COIL, 9, 6) == [False, True, False, True, True, False]
    rc, _, err = await mbpoll(device.port, "-0", "-r", "0", "-t", "0", HOST, "0")
    assert rc == 0, err
    assert device.get_bits(Table.COIL, 0, 1) == [False]


async def test_mbpoll_reports_illegal_data_address_outside_the_block(
    device: SimulatedDevice,
) -> None:
    rc, out, err = await mbpoll(device.port, "-1", "-0", "-r", "39", "-c", "2", "-t", "4", HOST)
    assert rc != 0
    assert "Illegal data address" in err, err + out
    rc, _, err = await mbpoll(device.port, "-0", "-r", "40", "-t", "0", HOST, "1")
    assert rc != 0
    assert "Illegal data address" in err
    assert device.exceptions == 2
    assert device.get_bits(Table.COIL, 0, 5) == [True, False, True, True, False]


async def test_mbpoll_unit_not_served_gets_gateway_target_failed(
    simulator: Simulator,
) -> None:
    dev = await simulator.add_device(unit_ids=(1, 2), size=10)
    dev.set_registers(Table.HOLDING, 0, [11], unit=1)
    dev.set_registers(Table.HOLDING, 0, [22], unit=2)
    assert await mbpoll_read(dev.port, "-a", "2", "-0", "-r", "0", "-t", "4") == {0: "22"}
    assert await mbpoll_read(dev.port, "-a", "1", "-0", "-r", "0", "-t", "4") == {0: "11"}
    rc, _, err = await mbpoll(dev.port, "-1", "-a", "3", "-0", "-r", "0", "-t", "4", HOST)
    assert rc != 0
    assert "Target device failed to respond" in err


# --- raw client: framing, exceptions, counters ----------------------------------------------


async def test_answers_every_function(client: RawClient, device: SimulatedDevice) -> None:
    assert await client.call(ReadRequest(HOLDING, 1, 2)) == [101, 102]
    read_input = ReadRequest(FunctionCode.READ_INPUT_REGISTERS, 39, 1)
    assert await client.call(read_input) == [1039]
    read_coils = ReadRequest(FunctionCode.READ_COILS, 0, 5)
    assert await client.call(read_coils) == [True, False, True, True, False]
    read_discrete = ReadRequest(FunctionCode.READ_DISCRETE_INPUTS, 1, 2)
    assert await client.call(read_discrete) == [True, True]
    assert await client.call(WriteSingleCoil(1, True)) is None
    assert await client.call(WriteMultipleRegisters(37, (7, 8, 9))) is None
    assert device.get_bits(Table.COIL, 1) == [True]
    assert device.get_registers(Table.HOLDING, 36, 4) == [136, 7, 8, 9]
    assert device.requests == 6
    assert device.exceptions == 0


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("0300280001", ExceptionCode.ILLEGAL_DATA_ADDRESS),  # first address past the block
        ("0300000029", ExceptionCode.ILLEGAL_DATA_ADDRESS),  # 41 registers of 40
        ("03FFFF0001", ExceptionCode.ILLEGAL_DATA_ADDRESS),
        ("0600280001", ExceptionCode.ILLEGAL_DATA_ADDRESS),
        ("0F0027000201FF", ExceptionCode.ILLEGAL_DATA_ADDRESS),
        ("0500280000", ExceptionCode.ILLEGAL_DATA_ADDRESS),
        ("0300000000", ExceptionCode.ILLEGAL_DATA_VALUE),
        ("030000007E", ExceptionCode.ILLEGAL_DATA_VALUE),
        ("01000007D1", ExceptionCode.ILLEGAL_DATA_VALUE),
        ("0500001234", ExceptionCode.ILLEGAL_DATA_VALUE),
        ("07", ExceptionCode.ILLEGAL_FUNCTION),
        ("41000000", ExceptionCode.ILLEGAL_FUNCTION),
    ],
)
async def test_exception_responses(
    client: RawClient, device: SimulatedDevice, pdu: str, code: ExceptionCode
) -> None:
    raw = bytes.fromhex(pdu)
    client.writer.write(build_frame(0x4242, 1, raw))
    assert await client.response() == (0x4242, 1, bytes((raw[0] | 0x80, code)))
    assert device.exceptions == 1
    # the connection lives on
    assert await client.call(ReadRequest(HOLDING, 0, 1)) == [100]


async def test_other_unit_ids_get_exception_0x0b(client: RawClient) -> None:
    with pytest.raises(ModbusError) as info:
        await client.call(ReadRequest(HOLDING, 0, 1), unit=7)
    assert info.value.code is ExceptionCode.GATEWAY_TARGET_FAILED


async def test_partial_and_merged_frames_over_tcp(client: RawClient) -> None:
    requests = [ReadRequest(HOLDING, i, 1) for i in range(5)]
    data = b"".join(client.frame(r) for r in requests)
    for i in range(0, len(data), 5):  # in pieces that cut headers and PDUs
        client.writer.write(data[i : i + 5])
        await client.writer.drain()
        await asyncio.sleep(0.005)
    answers = [await client.response() for _ in requests]
    assert [tid for tid, _, _ in answers] == [1, 2, 3, 4, 5]
    assert [parse_response(r, pdu) for r, (_, _, pdu) in zip(requests, answers, strict=True)] == [
        [100],
        [101],
        [102],
        [103],
        [104],
    ]


async def test_malformed_frame_closes_that_connection_only(
    client: RawClient, device: SimulatedDevice
) -> None:
    other = await RawClient.connect(device.port)
    try:
        client.writer.write(bytes.fromhex("0001 0005 0006 01 03 0000 0001"))  # protocol id 5
        assert await client.closed()
        assert device.frame_errors == 1
        assert await other.call(ReadRequest(HOLDING, 0, 1)) == [100]
        bad_length = await RawClient.connect(device.port)
        bad_length.writer.write(bytes.fromhex("0001 0000 2000 01 03 0000 0001"))
        assert await bad_length.closed()
        await bad_length.close()
        assert await other.call(ReadRequest(HOLDING, 1, 1)) == [101]
    finally:
        await other.close()


# --- lifecycle: stop/start, online, delay ---------------------------------------------------


async def test_stop_and_start_device_on_the_same_port(
    simulator: Simulator, device: SimulatedDevice
) -> None:
    port = device.port
    c = await RawClient.connect(port)
    assert await c.call(ReadRequest(HOLDING, 0, 1)) == [100]
    await simulator.stop_device(device)
    assert not device.running
    assert await c.closed()
    await c.close()
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect(port)
    device.set_registers(Table.HOLDING, 0, [555])  # tables stay usable while stopped
    await simulator.start_device(device)
    assert device.running
    assert device.port == port
    assert await mbpoll_read(port, "-0", "-r", "0", "-t", "4") == {0: "555"}


async def test_offline_device_drops_connections_until_back(
    client: RawClient, device: SimulatedDevice
) -> None:
    assert await client.call(ReadRequest(HOLDING, 0, 1)) == [100]
    assert device.connections == 1
    device.online = False
    assert await client.closed()
    assert device.connections == 0
    late = await RawClient.connect(device.port)  # the port listens, but hangs up at once
    assert await late.closed()
    await late.close()
    rc, _, _ = await mbpoll(device.port, "-1", "-o", "0.5", "-0", "-r", "0", "-t", "4", HOST)
    assert rc != 0
    device.online = True
    assert await mbpoll_read(device.port, "-0", "-r", "0", "-t", "4") == {0: "100"}


async def test_delay_makes_a_slow_device(client: RawClient, device: SimulatedDevice) -> None:
    device.delay = 0.3
    started = time.monotonic()
    assert await client.call(ReadRequest(HOLDING, 0, 1)) == [100]
    assert time.monotonic() - started >= 0.29
    device.delay = 2.0  # longer than mbpoll's timeout: a dead-silent device
    rc, out, err = await mbpoll(device.port, "-1", "-o", "0.3", "-0", "-r", "0", "-t", "4", HOST)
    assert rc != 0, out
    assert "timed out" in (err + out).lower()
    device.delay = 0.0
    started = time.monotonic()
    assert await mbpoll_read(device.port, "-0", "-r", "1", "-t", "4") == {1: "101"}
    assert time.monotonic() - started < 1.0


# --- tables, animation, many devices, CLI ---------------------------------------------------


def test_table_helpers_validate() -> None:
    dev = SimulatedDevice(unit_ids=(1, 5), size={"holding": 10, "coil": 3})
    assert dev.unit_ids == frozenset({1, 5})
    dev.set_registers("holding", 8, [1, 2])
    assert dev.get_registers(Table.HOLDING, 8, 2) == [1, 2]
    assert dev.get_registers(Table.HOLDING, 8, 2, unit=5) == [0, 0]
    assert len(dev.tables().tables[Table.INPUT]) == 1000  # tables not named keep the default
    with pytest.raises(IndexError):
        dev.set_registers(Table.HOLDING, 9, [1, 2])
    with pytest.raises(IndexError):
        dev.get_bits(Table.COIL, 2, 2)
    with pytest.raises(ValueError):
        dev.set_registers(Table.HOLDING, 0, [0x10000])
    with pytest.raises(TypeError):
        dev.set_bits(Table.HOLDING, 0, [True])
    with pytest.raises(TypeError):
        dev.get_registers(Table.DISCRETE, 0)
    with pytest.raises(KeyError):
        dev.get_registers(Table.HOLDING, 0, unit=2)


def test_animation_changes_values() -> None:
    dev = SimulatedDevice(size=10)
    points = demo_points(10)
    assert {(p.table, p.address) for p in points} == {
        (Table.HOLDING, 0),
        (Table.HOLDING, 2),
        (Table.HOLDING, 4),
        (Table.INPUT, 0),
        (Table.INPUT, 2),
        (Table.COIL, 0),
        (Table.DISCRETE, 0),
    }
    assert demo_points(3) == [p for p in points if p.address + p.size <= 3]
    apply_animation([dev], points, tick=0, t=0.0)
    assert decode(dev.get_registers(Table.HOLDING, 0, 2), DataType.FLOAT32) == 20.0
    assert dev.get_bits(Table.COIL, 0) == [False]
    apply_animation([dev], points, tick=3, t=15.0)
    assert decode(dev.get_registers(Table.HOLDING, 0, 2), DataType.FLOAT32) == 25.0
    assert decode(dev.get_registers(Table.HOLDING, 2, 2), DataType.UINT32) == 3
    assert decode(dev.get_registers(Table.HOLDING, 4, 1), DataType.INT16) == 0  # sin(pi)
    assert dev.get_bits(Table.COIL, 0) == [True]
    assert dev.get_bits(Table.DISCRETE, 0) == [True]
    wrap = Animation("counter", Table.HOLDING, 0, DataType.UINT16, offset=65535)
    assert [wrap.value(tick, 0.0) for tick in range(3)] == [65535, 0, 1]
    signed = Animation("counter", Table.HOLDING, 0, DataType.INT16, offset=32767)
    assert signed.value(1, 0.0) == -32768


async def test_animate_task_updates_devices(simulator: Simulator) -> None:
    devices = [await simulator.add_device(size=10) for _ in range(3)]
    counter = [Animation("counter", Table.INPUT, 5, DataType.UINT16, step=2)]
    task = simulator.animate(points=counter, period=0.02)
    await wait_for(lambda: all(d.get_registers(Table.INPUT, 5)[0] >= 10 for d in devices))
    values = await mbpoll_read(devices[1].port, "-0", "-r", "5", "-t", "3")
    assert int(values[5]) >= 10
    assert int(values[5]) % 2 == 0
    await simulator.close()
    assert task.done()


async def test_many_devices_in_one_loop(simulator: Simulator) -> None:
    devices = [await simulator.add_device(size=30) for _ in range(100)]
    assert len({d.port for d in devices}) == 100
    for i, dev in enumerate(devices):
        dev.set_registers(Table.HOLDING, 0, [i] * 30)
    clients = [await RawClient.connect(d.port) for d in devices]
    try:
        for _ in range(3):
            answers = await asyncio.gather(*(c.call(ReadRequest(HOLDING, 0, 30)) for c in clients))
            assert answers == [[i] * 30 for i in range(100)]
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert simulator.requests == 300
    assert all(d.requests == 3 for d in devices)


async def test_command_line_simulator_serves_and_reports_cpu() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "protocols.modbus.simulator",
        "--devices",
        "3",
        "--registers",
        "30",
        "--animate",
        "--period",
        "0.05",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        ports = ready["ports"]
        assert len(ports) == 3
        values = await mbpoll_read(ports[2], "-0", "-r", "10", "-c", "2", "-t", "4")
        assert values == {10: "10", 11: "11"}  # holding[i] = i outside the animated points

        async def counter() -> int:
            found = await mbpoll_read(ports[0], "-0", "-r", "2", "-c", "1", "-t", "3")
            return int(found[2]) if int(found[2]) > 3 else 0  # input 2 counts ticks

        await wait_for(counter, timeout=10)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["requests"] >= 2
    assert report["cpu_s"] > 0
    assert 0 <= report["serve_cpu_s"] <= report["cpu_s"]
