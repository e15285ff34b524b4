"""The Modbus server's functions 22 (mask write register), 23 (read/write multiple registers) and
43/14 (read device identification): a whole gateway serves a simulated Modbus device's points
(`plant` of test_modbus_server), used by pymodbus's client (a peer we did not write: MBAP and RTU
over TCP framings) and by a raw socket where pymodbus hides the bytes (exception frames, a read
code or quantities it would not send). Plus the sans-IO parts byte for byte, the write-through of
an acknowledged write with no device behind it, and ``gateway validate`` of ``identity:`` and of
the Modbus client's RTU unit ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from conftest import HOST, wait_for
from pymodbus.client import AsyncModbusTcpClient
from test_modbus_server import ROUTE, Plant, plant
from test_modbus_server_rtu import raw, rtu_client
from test_simulator import RawClient, mbpoll_read

from gateway import __version__
from gateway.commands import WriteResult, WriteStatus
from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from gateway.types import Message, Sample, Value
from protocols.modbus.codec import Table
from protocols.modbus.frames import (
    ExceptionCode,
    Frame,
    MaskWriteRegister,
    ModbusError,
    ReadDeviceIdCode,
    ReadDeviceIdentification,
    ReadWriteMultipleRegisters,
    build_frame,
    encode_request,
    exception_pdu,
    parse_request,
    parse_response,
    read_registers_pdu,
    write_response_pdu,
)
from protocols.modbus.identity import conformity_level, device_identification_pdu
from protocols.modbus.rtu import RtuDecoder, RtuFrame, build_rtu_frame, request_size
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator

MASK = 0x16
READ_WRITE = 0x17
MEI = 0x2B
RTU = "    framing: rtu"
BASIC = {0: b"Protocol Brain", 1: b"protocol-brain", 2: __version__.encode()}
IDENTITY = (
    "    identity: {vendor_name: ACME, product_code: GW-7, revision: V2.3, "
    "vendor_url: 'http://acme.example', model_name: Edge 7, user_application_name: line 4}"
)


def expected_mask(current: int, and_mask: int, or_mask: int) -> int:
    """The spec's formula, written out here (6.16), not taken from the server."""
    return (current & and_mask) | (or_mask & (~and_mask & 0xFFFF))


@contextlib.asynccontextmanager
async def mb_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=2, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def client_of(p: Plant, framing: str) -> AsyncIterator[AsyncModbusTcpClient]:
    opened = rtu_client(p.port) if framing == "rtu" else mb_client(p.port)
    async with opened as client:
        yield client


@contextlib.asynccontextmanager
async def served_over(
    simulator: Simulator, framing: str
) -> AsyncIterator[tuple[Plant, AsyncModbusTcpClient]]:
    """The plant with the server in ``framing``, and pymodbus's client in it."""
    async with plant(simulator, RTU if framing == "rtu" else "") as p, client_of(p, framing) as c:
        yield p, c


def served(p: Plant, address: int) -> int:
    return p.server.units[1].tables[Table.HOLDING].values[address]


async def device_value(p: Plant, address: int, value: int) -> None:
    """Set the device's holding register and wait until the server serves it."""
    p.device.set_registers(Table.HOLDING, address, [value])
    await wait_for(lambda: served(p, address) == value, message=f"{value} served")


# -- the sans-IO parts -----------------------------------------------------------------------


def test_requests_parse_and_encode_byte_for_byte() -> None:
    # the spec's examples (6.16, 6.17, 6.21)
    mask = MaskWriteRegister(4, 0x00F2, 0x0025)
    assert encode_request(mask).hex().upper() == "16000400F20025"
    assert parse_request(encode_request(mask)) == mask
    assert write_response_pdu(mask) == encode_request(mask)  # the answer is an echo
    assert mask.apply(0x12) == 0x17 == expected_mask(0x12, 0xF2, 0x25)
    both = ReadWriteMultipleRegisters(3, 6, 14, (0xFF, 0xFF, 0xFF))
    assert encode_request(both).hex().upper() == "1700030006000E00030600FF00FF00FF"
    assert parse_request(encode_request(both)) == both
    assert parse_response(both, bytes.fromhex("170C00FE0ACD00010003000D00FF")) == [
        0xFE,
        0xACD,
        1,
        3,
        0xD,
        0xFF,
    ]
    ident = ReadDeviceIdentification(ReadDeviceIdCode.BASIC, 0)
    assert encode_request(ident).hex().upper() == "2B0E0100"
    assert parse_request(bytes.fromhex("2B0E0405")) == ReadDeviceIdentification(
        ReadDeviceIdCode.INDIVIDUAL, 5
    )


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("16000400F200", ExceptionCode.ILLEGAL_DATA_VALUE),  # mask write one byte short
        ("16000400F2002500", ExceptionCode.ILLEGAL_DATA_VALUE),  # and one too long
        ("1700000000000A0001020001", ExceptionCode.ILLEGAL_DATA_VALUE),  # read 0
        ("170000007E000A0001020001", ExceptionCode.ILLEGAL_DATA_VALUE),  # read 126
        ("170000007D000A0000000000", ExceptionCode.ILLEGAL_DATA_VALUE),  # write 0
        ("170000000100000079F2" + "00" * 242, None),  # write 121, read 1: the limits
        ("17000000010000007AF4" + "00" * 244, ExceptionCode.ILLEGAL_DATA_VALUE),  # write 122
        ("1700000001000A0001030001", ExceptionCode.ILLEGAL_DATA_VALUE),  # byte count 3
        ("1700000001000A00010400010002", ExceptionCode.ILLEGAL_DATA_VALUE),  # 4 for 1 register
        ("1700000001000A000102000100", ExceptionCode.ILLEGAL_DATA_VALUE),  # a byte too many
        ("2B0E0500", ExceptionCode.ILLEGAL_DATA_VALUE),  # read device id code 05
        ("2B0E0000", ExceptionCode.ILLEGAL_DATA_VALUE),  # and 00
        ("2B0E01", ExceptionCode.ILLEGAL_DATA_VALUE),  # no object id
        ("2B0D0100", ExceptionCode.ILLEGAL_FUNCTION),  # MEI 13 (CANopen): not served
        ("2B", ExceptionCode.ILLEGAL_FUNCTION),
    ],
)
def test_bad_requests_get_their_exception(pdu: str, code: ExceptionCode | None) -> None:
    if code is None:
        request = parse_request(bytes.fromhex(pdu))
        assert isinstance(request, ReadWriteMultipleRegisters) and len(request.values) == 121
        return
    with pytest.raises(ModbusError) as info:
        parse_request(bytes.fromhex(pdu))
    assert info.value.code is code and info.value.function == bytes.fromhex(pdu)[0]


def ident(code: int, object_id: int = 0) -> ReadDeviceIdentification:
    return ReadDeviceIdentification(ReadDeviceIdCode(code), object_id)


def test_device_identification_streams_and_single_objects() -> None:
    objects = {**BASIC, 4: b"Gw", 6: b"line 4"}
    version = __version__.encode()
    head = bytes.fromhex("2B0E0182000003")
    basic = (
        head
        + b"\x00\x0eProtocol Brain\x01\x0eprotocol-brain\x02"
        + bytes((len(version),))
        + version
    )
    assert device_identification_pdu(objects, ident(1)) == basic
    # an object id the stream does not hold restarts it at 0 (object 4 is not basic)
    assert device_identification_pdu(objects, ident(1, 4)) == basic
    regular = device_identification_pdu(objects, ident(2, 4))
    assert regular == bytes.fromhex("2B0E02820000 02 0402") + b"Gw" + b"\x06\x06line 4"
    # extended, above what the server holds: answered with what it holds
    assert (
        device_identification_pdu(objects, ident(3))[7:]
        == (device_identification_pdu(objects, ident(2))[7:])
    )
    assert device_identification_pdu(objects, ident(3))[6] == 5
    assert device_identification_pdu(objects, ident(4, 6)) == (
        bytes.fromhex("2B0E04820000 01 0606") + b"line 4"
    )
    with pytest.raises(ModbusError) as info:
        device_identification_pdu(objects, ident(4, 5))
    assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS
    assert conformity_level(BASIC) == 0x81 and conformity_level(objects) == 0x82
    assert conformity_level({**BASIC, 0x80: b"x"}) == 0x83


def test_device_identification_too_long_for_one_answer_says_more_follows() -> None:
    objects = {**BASIC, 3: b"u" * 200, 4: b"p" * 244, 5: b"m" * 10}
    first = device_identification_pdu(objects, ident(2))
    assert first[4:7] == bytes((0xFF, 4, 4))  # more follows, next object 4, 4 objects here
    assert len(first) <= 253 and first.endswith(b"u" * 200)
    second = device_identification_pdu(objects, ident(2, 4))
    assert second[4:7] == bytes((0xFF, 5, 1)) and len(second) == 253  # 244 fits alone
    third = device_identification_pdu(objects, ident(2, 5))
    assert third[4:7] == bytes((0, 0, 1)) and third.endswith(b"\x05\x0a" + b"m" * 10)
    # the limit to the byte: 7 + 122 + 124 = 253 fits, one more does not
    exact = device_identification_pdu({0: b"a" * 120, 1: b"b" * 122}, ident(1))
    assert len(exact) == 253 and exact[4:7] == bytes((0, 0, 2))
    over = device_identification_pdu({0: b"a" * 120, 1: b"b" * 123}, ident(1))
    assert over[4:7] == bytes((0xFF, 1, 1))


def test_rtu_frames_the_new_requests() -> None:
    requests = [
        MaskWriteRegister(4, 0xF2, 0x25),
        ReadWriteMultipleRegisters(0, 3, 2, (1, 2)),
        ident(1),
    ]
    frames = [build_rtu_frame(1, encode_request(r)) for r in requests]
    assert [len(f) for f in frames] == [10, 13 + 4, 7]
    assert [request_size(f) for f in frames] == [10, 17, 7]
    decoder = RtuDecoder()
    got = [f for byte in b"".join(frames) for f in decoder.feed(bytes((byte,)))]
    assert got == [RtuFrame(1, f[1:-2]) for f in frames] and decoder.errors == 0
    # a 43 of another MEI type has no length we know: dropped, the next request framed
    other = build_rtu_frame(1, bytes.fromhex("2B0D0100"))
    assert decoder.feed(other + frames[0]) == [RtuFrame(1, frames[0][1:-2])]
    assert decoder.errors == 1
    # garbage that looks like the head of a long write does not hide a 23 behind it
    assert decoder.feed(bytes.fromhex("0110 0000 0078 F0") + frames[1]) == [
        RtuFrame(1, frames[1][1:-2])
    ]
    assert decoder.errors == 2 and decoder.pending == 0


# -- mask write, over both framings, with pymodbus --------------------------------------------


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_mask_write_changes_the_device_register_as_the_formula_says(
    simulator: Simulator, framing: str
) -> None:
    async with served_over(simulator, framing) as (p, client):
        await device_value(p, 2, 0x12)  # setpoint, 1.8 (int16, scale 0.1)
        rr = await client.mask_write_register(address=2, and_mask=0xF2, or_mask=0x25)
        assert not rr.isError(), rr
        assert (rr.address, rr.and_mask, rr.or_mask) == (2, 0xF2, 0x25)  # the echo
        assert p.device.get_registers(Table.HOLDING, 2) == [expected_mask(0x12, 0xF2, 0x25)]
        # from what is served now (0x17), without waiting for the device's next poll
        rr = await client.mask_write_register(address=2, and_mask=0xFFF0, or_mask=0x0108)
        assert not rr.isError(), rr
        assert p.device.get_registers(Table.HOLDING, 2) == [expected_mask(0x17, 0xFFF0, 0x108)]
        # a register of bits: clearing bit 3 writes the pump coil alone (bit 0, temp, is
        # read-only and does not change)
        assert served(p, 20) == 0x0009
        rr = await client.mask_write_register(address=20, and_mask=0xFFF7, or_mask=0)
        assert not rr.isError(), rr
        assert p.device.get_bits(Table.COIL, 0) == [False]
        assert p.server.status()["writes_ok"] == 3
        # changing bit 0 is a write to the read-only point: 02, nothing written
        rr = await client.mask_write_register(address=20, and_mask=0xFFFE, or_mask=0)
        assert rr.isError() and rr.exception_code == ExceptionCode.ILLEGAL_DATA_ADDRESS
        assert p.server.status()["writes_ok"] == 3


async def test_refused_mask_writes_get_the_exceptions_of_function_6(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        client = await RawClient.connect(p.port)
        try:
            cases = [
                (MaskWriteRegister(2, 0, 900), ExceptionCode.ILLEGAL_DATA_VALUE),  # 90.0 > 80
                (MaskWriteRegister(0, 0, 7), ExceptionCode.ILLEGAL_DATA_ADDRESS),  # read-only
                (MaskWriteRegister(10, 0, 7), ExceptionCode.ILLEGAL_DATA_VALUE),  # half a float
                (MaskWriteRegister(3, 0, 7), ExceptionCode.ILLEGAL_DATA_ADDRESS),  # unmapped
            ]
            for request, code in cases:
                client.writer.write(client.frame(request))
                assert (await client.response())[2] == bytes((MASK | 0x80, code)), request
            assert await client.call(MaskWriteRegister(2, 0xFFFF, 0)) is None  # no change: ok
        finally:
            await client.close()
        assert p.device.get_registers(Table.HOLDING, 0, 3) == [42, 65383, 205]
        assert p.server.status()["writes_refused"] == {"out_of_range": 1}
        assert p.server.status()["exceptions"] == {"03": 2, "02": 2}


async def test_mask_write_and_read_write_with_the_device_down_get_0b(
    simulator: Simulator,
) -> None:
    async with plant(simulator) as p:
        await simulator.stop_device(p.device)
        await wait_for(lambda: all(e.state == 0x0B for e in p.server.entries), message="bad")
        client = await RawClient.connect(p.port)
        try:
            # no current value to mask: refused as a read of it is
            client.writer.write(client.frame(MaskWriteRegister(2, 0xFF, 0)))
            assert (await client.response())[2] == bytes((MASK | 0x80, 0x0B))
            # half of a float is 03 with or without a value (a mask never writes one whole)
            client.writer.write(client.frame(MaskWriteRegister(10, 0xFF, 0)))
            assert (await client.response())[2] == bytes((MASK | 0x80, 0x03))
            # the write part cannot reach the device: its exception, nothing read
            client.writer.write(client.frame(ReadWriteMultipleRegisters(0, 1, 2, (300,))))
            assert (await client.response())[2] == bytes((READ_WRITE | 0x80, 0x0B))
        finally:
            await client.close()
        assert p.server.status()["writes_refused"] == {"unreachable": 1}


# -- read/write multiple registers -------------------------------------------------------------


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_read_write_reads_back_what_it_just_wrote(simulator: Simulator, framing: str) -> None:
    async with served_over(simulator, framing) as (p, client):
        rr = await client.readwrite_registers(
            read_address=0, read_count=3, write_address=2, values=[300]
        )
        assert not rr.isError(), rr
        assert rr.registers == [42, 65383, 300]  # 30.0, written before the read
        assert p.device.get_registers(Table.HOLDING, 2) == [300]
        # a uint32, whole, read with the registers around it
        rr = await client.readwrite_registers(
            read_address=14, read_count=4, write_address=16, values=[1, 57920]
        )
        assert not rr.isError(), rr
        assert rr.registers[2:] == [1, 57920]
        assert p.device.get_registers(Table.HOLDING, 8, 2) == [1, 57920]
        # a read-only read part elsewhere (the scaled temperature at 1): read like 03
        rr = await client.readwrite_registers(
            read_address=1, read_count=1, write_address=2, values=[301]
        )
        assert rr.registers == [65383]
        assert p.server.status()["writes_ok"] == 3


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_refused_read_writes_get_the_exceptions_of_16_and_read_nothing(
    simulator: Simulator, framing: str
) -> None:
    async with served_over(simulator, framing) as (p, client):
        cases = [
            (2, [900], ExceptionCode.ILLEGAL_DATA_VALUE),  # 90.0 > high 80
            (0, [7], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # read-only point
            (15, [1, 2], ExceptionCode.ILLEGAL_DATA_VALUE),  # half of a float
            (3, [1], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # unmapped
        ]
        for write_address, values, code in cases:
            for function in ("write_registers", "readwrite_registers"):
                if function == "write_registers":
                    rr = await client.write_registers(write_address, values)
                else:
                    rr = await client.readwrite_registers(
                        read_address=0, read_count=3, write_address=write_address, values=values
                    )
                assert rr.isError() and rr.exception_code == code, (function, values)
        # the read part unmapped: 02 like 03, and the write part is not done
        rr = await client.readwrite_registers(
            read_address=30, read_count=1, write_address=2, values=[100]
        )
        assert rr.isError() and rr.exception_code == ExceptionCode.ILLEGAL_DATA_ADDRESS
        assert p.device.get_registers(Table.HOLDING, 0, 3) == [42, 65383, 205]
        status = p.server.status()
        assert status["writes_ok"] == 0 and status["exceptions"] == {"03": 4, "02": 5}
        assert status["writes_refused"] == {"out_of_range": 2}


async def test_read_write_exception_frames_byte_for_byte(simulator: Simulator) -> None:
    async with plant(simulator) as p:
        client = await RawClient.connect(p.port)
        try:
            for pdu, code in (
                ("17000000000002000102012C", 3),  # read 0 registers
                ("170000007E0002000102012C", 3),  # read 126
                ("1700000001000200010301", 3),  # byte count 3 for one register
                ("170000000100020001020384", 3),  # write 900: out of range
                ("1700000001000000010200FF", 2),  # the count point is read-only
            ):
                client.writer.write(build_frame(9, 1, bytes.fromhex(pdu)))
                assert await client.response() == (9, 1, bytes((0x97, code))), pdu
            # the write part is done before the read: 12C (30.0) is read back at once
            client.writer.write(build_frame(10, 1, bytes.fromhex("17000200010002000102012C")))
            assert await client.response() == (10, 1, read_registers_pdu(0x17, [300]))
            client.writer.write(build_frame(11, 9, bytes.fromhex("17000200010002000102012C")))
            assert await client.response() == (11, 9, bytes((0x97, 0x0A)))  # unit not served
        finally:
            await client.close()
        assert p.device.get_registers(Table.HOLDING, 2) == [300]
        assert await mbpoll_read(p.port, "-0", "-r", "2", "-t", "4") == {2: "300"}


# -- write-through, with no device behind the bridge -------------------------------------------


WRITE_THROUGH = """
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
    points: [{name: a, address: 0, access: rw}, {name: b, address: 1}]
endpoints:
  mb: {protocol: modbus, role: server, port: 1502, unit_ids: [1, 2]}
bridges:
  - name: serve
    from: plc
    to: mb
    map:
      - {point: a, address: 0}
      - {point: b, address: 1}
      - {point: a, table: input, address: 3}
"""


async def test_an_acknowledged_write_is_served_at_once_as_a_device_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # not run: no device is polled, so only the acknowledged writes change what is served
    server = Gateway(load_config_text(WRITE_THROUGH)).adapters["mb"]
    assert isinstance(server, ModbusServerAdapter)
    entry = server.entries[0]
    writes: list[Value] = []

    async def acknowledged(device: str, point: str, value: Value, **_: object) -> WriteResult:
        writes.append(value)
        return WriteResult(WriteStatus.GOOD)

    monkeypatch.setattr(entry.bridge, "write", acknowledged)
    await server.send(Message.telemetry("plc", (Sample("a", 0x12),)), entry.bridge.config.route)

    async def call(unit: int, pdu: str) -> bytes:
        answer = server.handle(Frame(1, unit, bytes.fromhex(pdu)), "test")
        if not isinstance(answer, bytes | None):
            answer = await answer
        assert answer is not None
        return answer[7:]

    assert await call(1, "16000000F20025") == bytes.fromhex("16000000F20025")
    assert await call(1, "160000FFF00108") == bytes.fromhex("160000FFF00108")
    assert writes == [0x17, expected_mask(0x17, 0xFFF0, 0x108)]
    assert await call(1, "170000000100000001020063") == read_registers_pdu(0x17, [0x63])
    assert await call(1, "0300000001") == read_registers_pdu(3, [0x63])
    assert await call(1, "0400030001") == read_registers_pdu(4, [0x63])  # the point's other entry
    # b has no value yet: the read part fails after the write was done (as 16's half-done)
    assert await call(1, "170000000200000001020064") == bytes((0x97, 0x0B))
    assert writes[-1] == 0x64 and await call(1, "0400030001") == read_registers_pdu(4, [0x64])
    # identification, for each unit id served, of a gateway with the default identity
    answer = await call(2, "2B0E0200")
    assert answer[:7] == bytes.fromhex("2B0E02820000 05")
    assert b"Protocol Brain gateway" in answer and answer.endswith(b"\x06\x0eprotocol-brain")


async def test_the_simulator_refuses_the_functions_it_lacks(simulator: Simulator) -> None:
    # the source devices of these tests: a plain device without 22, 23 and 43 answers 01
    device = await simulator.add_device(size=10)
    client = await RawClient.connect(device.port)
    try:
        for request in (MaskWriteRegister(0, 0, 1), ReadWriteMultipleRegisters(0, 1, 0, (1,))):
            with pytest.raises(ModbusError) as info:
                await client.call(request)
            assert info.value.code is ExceptionCode.ILLEGAL_FUNCTION
        client.writer.write(client.frame(ident(1)))
        assert (await client.response())[2] == bytes((MEI | 0x80, 1))
    finally:
        await client.close()
    assert device.get_registers(Table.HOLDING, 0) == [0]


# -- read device identification ----------------------------------------------------------------


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_device_identification_default_and_configured(
    simulator: Simulator, framing: str
) -> None:
    rtu_line = RTU + "\n" if framing == "rtu" else ""
    async with plant(simulator, rtu_line.rstrip("\n")) as p, client_of(p, framing) as client:
        rr = await client.read_device_information(read_code=1)
        assert not rr.isError(), rr
        assert rr.information == BASIC and rr.conformity == 0x82
        rr = await client.read_device_information(read_code=2, device_id=2)  # every unit
        assert rr.information == {**BASIC, 4: b"Protocol Brain gateway", 6: b"gw"}
        assert rr.more_follows == 0
        rr = await client.read_device_information(read_code=4, object_id=6)
        assert rr.information == {6: b"gw"}
        rr = await client.read_device_information(read_code=4, object_id=5)  # no ModelName
        assert rr.isError() and rr.exception_code == ExceptionCode.ILLEGAL_DATA_ADDRESS
    async with plant(simulator, rtu_line + IDENTITY) as p, client_of(p, framing) as client:
        rr = await client.read_device_information(read_code=2)
        assert rr.information == {
            0: b"ACME",
            1: b"GW-7",
            2: b"V2.3",
            3: b"http://acme.example",
            4: b"Protocol Brain gateway",
            5: b"Edge 7",
            6: b"line 4",
        }
        rr = await client.read_device_information(read_code=4, object_id=5)
        assert rr.information == {5: b"Edge 7"}
        rr = await client.read_device_information(read_code=1, device_id=9)  # not served
        assert rr.isError() and rr.exception_code == ExceptionCode.GATEWAY_PATH_UNAVAILABLE


async def test_device_identification_in_several_answers(simulator: Simulator) -> None:
    long = ("vendor_url", "u"), ("product_name", "p"), ("model_name", "m")
    identity = "    identity: {" + ", ".join(f"{k}: {c * 200}" for k, c in long) + "}"
    async with plant(simulator, identity) as p, mb_client(p.port) as client:
        rr = await client.read_device_information(read_code=2)
        assert rr.more_follows == 0xFF and rr.next_object_id == 4
        assert rr.information == {**BASIC, 3: b"u" * 200}
        rr = await client.read_device_information(read_code=2, object_id=rr.next_object_id)
        assert rr.more_follows == 0xFF and rr.next_object_id == 5
        assert rr.information == {4: b"p" * 200}  # two of 200 do not fit one answer
        rr = await client.read_device_information(read_code=2, object_id=5)
        assert rr.more_follows == 0 and rr.information == {5: b"m" * 200, 6: b"gw"}


async def test_device_identification_exception_frames_byte_for_byte(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        for pdu, code in (("2B0E0500", 3), ("2B0E0407", 2)):  # bad read code; no object 7
            writer.write(build_rtu_frame(1, bytes.fromhex(pdu)))
            async with asyncio.timeout(2):
                expected = build_rtu_frame(1, exception_pdu(MEI, ExceptionCode(code)))
                assert await reader.readexactly(5) == expected
        writer.write(build_rtu_frame(1, bytes.fromhex("2B0E0400")))
        expected = build_rtu_frame(1, bytes.fromhex("2B0E04820000 01 000E") + b"Protocol Brain")
        async with asyncio.timeout(2):
            assert await reader.readexactly(len(expected)) == expected
        assert p.server.status()["exceptions"] == {"03": 1, "02": 1}


# -- RTU broadcasts ---------------------------------------------------------------------------


async def test_rtu_broadcast_mask_write_is_done_read_write_is_not(simulator: Simulator) -> None:
    async with plant(simulator, RTU) as p, raw(p.port) as (reader, writer):
        await device_value(p, 2, 0x12)
        read = build_rtu_frame(1, bytes.fromhex("0300020001"))
        # 22 to unit 0: every unit masks its own register, none answers; 23 and 43 to unit 0
        # read, so they are no broadcast: ignored, 23's write part too; then a read, answered
        writer.write(
            build_rtu_frame(0, encode_request(MaskWriteRegister(2, 0xF2, 0x25)))
            + build_rtu_frame(0, encode_request(ReadWriteMultipleRegisters(0, 1, 2, (500,))))
            + build_rtu_frame(0, encode_request(ident(1)))
            + read
        )
        async with asyncio.timeout(2):
            answer = await reader.readexactly(7)
        assert answer == build_rtu_frame(1, read_registers_pdu(3, [0x17]))
        assert p.device.get_registers(Table.HOLDING, 2) == [0x17]
        with pytest.raises(TimeoutError):  # nothing more comes
            async with asyncio.timeout(0.3):
                await reader.read(1)
        status = p.server.status()
        assert status["broadcasts"] == 3 and status["writes_ok"] == 1
        assert status["exceptions"] == {}


# -- config ----------------------------------------------------------------------------------


def problems_of(text: str) -> dict[str, tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "plant.yaml")
    return {p.dotted: (p.found, p.expected) for p in info.value.problems}


def test_identity_option_is_validated() -> None:
    text = ROUTE.format(entries="      - {point: a, address: 0}")
    gateway = Gateway(load_config_text(text))
    adapter = gateway.adapters["mb"]
    assert isinstance(adapter, ModbusServerAdapter)
    assert adapter.identity == {**BASIC, 4: b"Protocol Brain gateway", 6: b"protocol-brain"}
    configured = text.replace("1502", "1502, identity: {product_name: null, revision: V9}")
    adapter = Gateway(load_config_text(configured)).adapters["mb"]
    assert isinstance(adapter, ModbusServerAdapter)
    assert adapter.identity == {**BASIC, 2: b"V9", 6: b"protocol-brain"}
    found = problems_of(
        text.replace(
            "1502",
            "1502, identity: {vendor_name: 'Müller', model_name: " + "x" * 245 + ", colour: red}",
        )
    )
    assert set(found) == {
        "endpoints.mb.identity.vendor_name",
        "endpoints.mb.identity.model_name",
        "endpoints.mb.identity.colour",
    }
    assert "244" in found["endpoints.mb.identity.model_name"][1]


def test_the_write_warning_names_the_new_write_functions() -> None:
    text = ROUTE.format(entries="      - {point: a, address: 0}")
    adapter = Gateway(load_config_text(text)).adapters["mb"]
    assert isinstance(adapter, ModbusServerAdapter)
    warning = adapter.config.write_warning(1)
    assert warning is not None and "5, 6, 15, 16, 22 and 23" in warning
