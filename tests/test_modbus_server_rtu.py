"""The Modbus server with ``framing: rtu`` (Modbus RTU over TCP): a whole gateway serves a
simulated Modbus device's points, read and written by pymodbus's client in its RTU framer (a peer
we did not write) and by a raw socket for what a sound master never sends (a bad CRC, garbage, a
request dribbled byte by byte). Plus the sans-IO codec (`protocols.modbus.rtu`) byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from conftest import HOST, wait_for
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from test_modbus_server import ROUTE, plant

from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from protocols.modbus.codec import Table
from protocols.modbus.frames import (
    ExceptionCode,
    FunctionCode,
    ReadRequest,
    WriteMultipleRegisters,
    WriteSingleRegister,
    encode_request,
    exception_pdu,
    read_registers_pdu,
    write_response_pdu,
)
from protocols.modbus.rtu import RtuDecoder, RtuFrame, build_rtu_frame, crc16, request_size
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator

HOLDING = FunctionCode.READ_HOLDING_REGISTERS
RTU = "    framing: rtu"
DISCRETE = "      - {point: pump, table: discrete, address: 5}"


def rtu(
    request: ReadRequest | WriteSingleRegister | WriteMultipleRegisters, unit: int = 1
) -> bytes:
    return build_rtu_frame(unit, encode_request(request))


READ_0 = rtu(ReadRequest(HOLDING, 0, 1))
ANSWER_0 = build_rtu_frame(1, read_registers_pdu(HOLDING, [42]))


# -- the codec -------------------------------------------------------------------------------


def test_crc_known_vectors() -> None:
    # the brief's request, and the example of the Modbus over serial line spec (6.2.2)
    assert build_rtu_frame(1, bytes.fromhex("030000000A")).hex(" ") == "01 03 00 00 00 0a c5 cd"
    assert crc16(bytes.fromhex("0103 0000 000A")) == 0xCDC5
    assert build_rtu_frame(0x11, bytes.fromhex("03006B0003"))[-2:] == bytes.fromhex("7687")
    assert build_rtu_frame(1, exception_pdu(3, ExceptionCode.ILLEGAL_DATA_ADDRESS)) == (
        bytes.fromhex("01 83 02 C0 F1")
    )
    assert crc16(b"") == 0xFFFF


def test_request_sizes_follow_the_function_code() -> None:
    assert request_size(b"\x01") is None
    assert request_size(b"\x01\x03") == 8
    assert request_size(b"\x01\x06") == 8
    assert request_size(b"\x01\x10\x00\x00\x00") is None  # byte count not there yet
    assert request_size(bytes.fromhex("0110 0000 0002 04")) == 13
    assert request_size(bytes.fromhex("010F 0000 000A 02")) == 11
    assert request_size(b"\x01\x16") == 10  # FC 22: address, and mask, or mask
    assert request_size(bytes.fromhex("0117 0000 0001 0000 0002")) is None
    assert request_size(bytes.fromhex("0117 0000 0001 0000 0002 04")) == 17  # FC 23
    assert request_size(b"\x01\x2b") is None  # FC 43: the MEI type tells
    assert request_size(b"\x01\x2b\x0e") == 7  # 43/14: read code, object id
    assert request_size(b"\x01\x2b\x0d") == 0  # 43/13 (CANopen): no length we can know
    assert request_size(b"\x01\x07") == 0  # read exception status: serial only, not framed
    assert request_size(b"\x01\x83") == 0  # a response, not a request


def test_decoder_frames_split_and_joined_requests() -> None:
    write = rtu(WriteMultipleRegisters(16, (1, 57920)), unit=7)
    decoder = RtuDecoder()
    frames = [f for byte in READ_0 + write for f in decoder.feed(bytes((byte,)))]
    assert frames == [RtuFrame(1, READ_0[1:-2]), RtuFrame(7, write[1:-2])]
    assert decoder.feed(READ_0 + write + READ_0[:3]) == frames
    assert decoder.pending == 3 and decoder.errors == 0 and decoder.skipped == 0
    assert frames[1].function == 16 and frames[1].to_bytes() == write
    assert frames[0].reply(read_registers_pdu(HOLDING, [42])) == ANSWER_0


def test_decoder_drops_a_bad_crc_and_garbage_and_counts_each_run_once() -> None:
    decoder = RtuDecoder()
    bad = bytearray(READ_0)
    bad[-1] ^= 0x01
    assert decoder.feed(bytes(bad) + READ_0) == [RtuFrame(1, READ_0[1:-2])]
    assert (decoder.errors, decoder.skipped, decoder.last_error) == (1, 8, "CRC mismatch")
    # garbage, with a function code of unknown length on the way, then a request
    assert decoder.feed(b"\x00\x2b\xff\x83\x10\x55" + READ_0) == [RtuFrame(1, READ_0[1:-2])]
    assert (decoder.errors, decoder.skipped) == (2, 14)
    assert decoder.pending == 0


def test_decoder_does_not_wait_on_garbage_that_looks_like_a_long_write() -> None:
    # 01 10 ... with byte count 0xF0: a 249-byte frame would follow; a good request does
    decoder = RtuDecoder()
    assert decoder.feed(bytes.fromhex("0110 0000 0078 F0") + READ_0) == [RtuFrame(1, READ_0[1:-2])]
    assert decoder.errors == 1 and decoder.pending == 0


def test_decoder_memory_and_work_stay_bounded_under_garbage() -> None:
    rng = random.Random(7)
    decoder = RtuDecoder()
    for _ in range(200):
        chunk = bytes(rng.getrandbits(8) for _ in range(500))
        decoder.receive_data(chunk)
        list(decoder)  # a random CRC match may pass for a frame: the server would refuse it
        assert decoder.pending <= 9 + 255
    assert decoder.skipped > 90_000
    # a master repeating its request (after a timeout) is heard once the garbage is behind it
    frames = decoder.feed(READ_0 * 40)
    assert RtuFrame(1, READ_0[1:-2]) in frames


# -- the server, with pymodbus's RTU client --------------------------------------------------


@contextlib.asynccontextmanager
async def rtu_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(HOST, port=port, framer=FramerType.RTU, timeout=2, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def test_pymodbus_reads_every_table_over_rtu(simulator: Simulator) -> None:
    async with plant(simulator, RTU, DISCRETE) as p, rtu_client(p.port) as client:
        assert p.server.status()["framing"] == "rtu"
        rr = await client.read_holding_registers(0, count=3, device_id=1)
        assert not rr.isError() and rr.registers == [42, 65383, 205]
        rr = await client.read_holding_registers(10, count=2, device_id=1)
        assert struct.unpack(">f", struct.pack(">HH", *rr.registers)) == (12.5,)
        rr = await client.read_input_registers(0, count=2, device_id=1)
        kelvin = struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]
        assert kelvin == pytest.approx(257.85, abs=1e-4)
        rr = await client.read_coils(0, count=1, device_id=1)
        assert not rr.isError() and rr.bits[:1] == [True]
        rr = await client.read_discrete_inputs(5, count=1, device_id=1)
        assert not rr.isError() and rr.bits[:1] == [True]
        assert p.server.status()["requests"] == 5


async def test_pymodbus_writes_reach_the_source_device_over_rtu(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, rtu_client(p.port) as client:
        rr = await client.write_register(2, 255, device_id=1)  # FC 06
        assert not rr.isError()
        assert p.device.get_registers(Table.HOLDING, 2) == [255]  # 25.5 through the scaling
        rr = await client.write_registers(16, [1, 57920], device_id=1)  # FC 16: 123456
        assert not rr.isError()
        assert p.device.get_registers(Table.HOLDING, 8, 2) == [1, 57920]
        rr = await client.write_coil(0, False, device_id=1)  # FC 05
        assert not rr.isError()
        assert p.device.get_bits(Table.COIL, 0) == [False]
        rr = await client.write_coils(0, [True], device_id=1)  # FC 15
        assert not rr.isError()
        assert p.device.get_bits(Table.COIL, 0) == [True]
        assert p.server.status()["writes_ok"] == 4


async def test_exceptions_are_rtu_exception_frames(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, rtu_client(p.port) as client:
        rr = await client.read_holding_registers(30, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == ExceptionCode.ILLEGAL_DATA_ADDRESS
        rr = await client.read_holding_registers(0, count=1, device_id=9)  # a unit not served
        assert rr.isError() and rr.exception_code == ExceptionCode.GATEWAY_PATH_UNAVAILABLE
        rr = await client.write_register(2, 900, device_id=1)  # 90.0 > high 80
        assert rr.isError() and rr.exception_code == ExceptionCode.ILLEGAL_DATA_VALUE
        assert p.device.get_registers(Table.HOLDING, 2) == [205]
        async with raw(p.port) as (reader, writer):
            writer.write(rtu(ReadRequest(HOLDING, 30, 1)))
            assert await reader.readexactly(5) == bytes.fromhex("01 83 02 C0 F1")
        assert p.server.status()["exceptions"] == {"02": 2, "0A": 1, "03": 1}


# -- the server, with a raw socket -----------------------------------------------------------


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def answer(reader: asyncio.StreamReader, size: int = len(ANSWER_0)) -> bytes:
    async with asyncio.timeout(2.0):
        return await reader.readexactly(size)


async def test_a_bad_crc_gets_no_answer_and_the_next_request_does(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.modbus.server")
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        bad = bytearray(READ_0)
        bad[-2] ^= 0xFF
        writer.write(bytes(bad))
        await wait_for(lambda: p.server.status()["frame_errors"] == 1, message="dropped")
        writer.write(READ_0)  # answers come in order: the first is the good request's
        assert await answer(reader) == ANSWER_0
        assert p.server.status()["requests"] == 1 and p.server.status()["connections"] == 1
        assert any("CRC mismatch" in r.getMessage() for r in caplog.records)


async def test_garbage_then_a_good_request(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        writer.write(b"\x00\xff\x2b\x10\x55\x01\x10\x00\x00\x00\x7b\xf6" + READ_0)
        assert await answer(reader) == ANSWER_0
        assert p.server.status()["frame_errors"] == 1
        writer.write(READ_0)
        assert await answer(reader) == ANSWER_0


async def test_a_request_split_byte_by_byte(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        write = rtu(WriteSingleRegister(2, 300))
        for byte in write + READ_0:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.002)  # separate segments, not a timing assertion
        assert await answer(reader, len(write)) == write  # FC 06 answers with an echo
        assert await answer(reader) == ANSWER_0
        assert p.device.get_registers(Table.HOLDING, 2) == [300]
        assert p.server.status()["frame_errors"] == 0


async def test_a_broadcast_write_is_executed_and_not_answered(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p:
        async with rtu_client(p.port) as client:  # pymodbus's way: no response expected
            await client.write_register(2, 111, device_id=0, no_response_expected=True)
            await wait_for(lambda: p.device.get_registers(Table.HOLDING, 2) == [111])
        async with raw(p.port) as (reader, writer):
            # a broadcast write and read, then a read: the only answer is the last one's
            writer.write(
                rtu(WriteSingleRegister(2, 222), unit=0) + rtu(ReadRequest(HOLDING, 0, 1), 0)
            )
            writer.write(READ_0)
            assert await answer(reader) == ANSWER_0
            assert p.device.get_registers(Table.HOLDING, 2) == [222]  # written before that
            with pytest.raises(TimeoutError):  # nothing more comes
                async with asyncio.timeout(0.3):
                    await reader.read(1)
        status = p.server.status()
        assert status["broadcasts"] == 3 and status["writes_ok"] == 2
        assert status["exceptions"] == {}


async def test_an_rtu_write_answer_is_the_echo_with_its_crc(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        request = WriteMultipleRegisters(16, (0, 777))
        writer.write(rtu(request))
        expected = build_rtu_frame(1, write_response_pdu(request))
        assert await answer(reader, len(expected)) == expected
        assert p.device.get_registers(Table.HOLDING, 8, 2) == [0, 777]


# -- config ----------------------------------------------------------------------------------


def test_rtu_unit_ids_must_be_those_of_a_serial_bus() -> None:
    text = ROUTE.format(entries="      - {point: a, address: 0}")
    with pytest.raises(ConfigError) as info:
        load_config_text(text.replace("1502", "1502, framing: rtu, unit_ids: [0, 1, 250]"))
    [problem] = info.value.problems
    assert problem.dotted == "endpoints.mb.unit_ids"
    assert "0, 250 (framing: rtu)" in problem.found and "1-247" in problem.expected
    with pytest.raises(ConfigError) as info:
        load_config_text(text.replace("1502", "1502, framing: ascii"))
    assert [p.dotted for p in info.value.problems] == ["endpoints.mb.framing"]
    # tcp: unit 0 is an ordinary unit id, and the default framing
    for extra, framing in (("unit_ids: [0]", "tcp"), ("framing: rtu", "rtu")):
        gateway = Gateway(load_config_text(text.replace("1502", f"1502, {extra}")))
        adapter = gateway.adapters["mb"]
        assert isinstance(adapter, ModbusServerAdapter)
        assert adapter.status()["framing"] == framing
