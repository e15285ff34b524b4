"""Byte-for-byte tests of the sans-IO Modbus TCP frame codec (examples from the Modbus spec)."""

from __future__ import annotations

import pytest

from protocols.modbus.frames import (
    ExceptionCode,
    Frame,
    FrameDecoder,
    FrameError,
    FunctionCode,
    ModbusError,
    ReadRequest,
    WriteMultipleCoils,
    WriteMultipleRegisters,
    WriteSingleCoil,
    WriteSingleRegister,
    build_frame,
    encode_request,
    exception_pdu,
    pack_bits,
    parse_request,
    parse_response,
    read_bits_pdu,
    read_registers_pdu,
    unpack_bits,
    write_response_pdu,
)

# transaction 0x0001, protocol 0, length 6, unit 0x11, read holding 0x006B x3
READ_HOLDING = bytes.fromhex("0001 0000 0006 11 03 006B 0003")


def test_decoder_yields_one_complete_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(READ_HOLDING) == [Frame(1, 0x11, bytes.fromhex("03006B0003"))]
    assert decoder.pending == 0
    assert decoder.next_frame() is None


def test_decoder_waits_for_partial_frames_byte_by_byte() -> None:
    decoder = FrameDecoder()
    for byte in READ_HOLDING[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.pending == len(READ_HOLDING) - 1
    (frame,) = decoder.feed(READ_HOLDING[-1:])
    assert frame.transaction_id == 1
    assert frame.unit_id == 0x11
    assert frame.function == FunctionCode.READ_HOLDING_REGISTERS


def test_decoder_splits_merged_frames_and_keeps_the_tail() -> None:
    second = build_frame(0xBEEF, 2, bytes.fromhex("0100130013"))
    third = build_frame(0xFFFF, 255, bytes.fromhex("0600010003"))
    decoder = FrameDecoder()
    frames = decoder.feed(READ_HOLDING + second + third[:5])
    assert [f.transaction_id for f in frames] == [1, 0xBEEF]
    assert frames[1] == Frame(0xBEEF, 2, bytes.fromhex("0100130013"))
    assert decoder.pending == 5
    assert decoder.feed(third[5:]) == [Frame(0xFFFF, 255, bytes.fromhex("0600010003"))]


def test_build_frame_writes_the_mbap_header() -> None:
    assert build_frame(1, 0x11, bytes.fromhex("03006B0003")) == READ_HOLDING
    assert Frame(1, 0x11, bytes.fromhex("03006B0003")).to_bytes() == READ_HOLDING
    assert build_frame(0x10001, 0x111, b"\x03") == bytes.fromhex("0001 0000 0002 11 03")
    with pytest.raises(ValueError):
        build_frame(1, 1, b"")
    with pytest.raises(ValueError):
        build_frame(1, 1, bytes(254))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes.fromhex("0001 0001 0006 11 03 006B 0003"), "protocol id"),
        (bytes.fromhex("0001 0000 0001 11"), "length 1"),
        (bytes.fromhex("0001 0000 0000 11"), "length 0"),
        (bytes.fromhex("0001 0000 00FF 11"), "length 255"),
        (bytes.fromhex("0001 0000 FFFF 11"), "length 65535"),
    ],
)
def test_malformed_header_is_a_frame_error_that_sticks(data: bytes, reason: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(data)
    with pytest.raises(FrameError):  # the stream is out of step for good
        decoder.feed(READ_HOLDING)


def test_frame_error_only_after_the_frames_before_it() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(READ_HOLDING + bytes.fromhex("0002 0007 0006 11 03 0000 0001"))
    assert decoder.next_frame() == Frame(1, 0x11, bytes.fromhex("03006B0003"))
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_largest_frame_is_accepted() -> None:
    pdu = bytes([0x10]) + bytes(252)
    data = bytes.fromhex("0009 0000 00FE 01") + pdu
    assert FrameDecoder().feed(data) == [Frame(9, 1, pdu)]


@pytest.mark.parametrize(
    ("pdu", "request_"),
    [
        ("0100130013", ReadRequest(FunctionCode.READ_COILS, 0x13, 0x13)),
        ("0200C40016", ReadRequest(FunctionCode.READ_DISCRETE_INPUTS, 0xC4, 0x16)),
        ("03006B0003", ReadRequest(FunctionCode.READ_HOLDING_REGISTERS, 0x6B, 3)),
        ("0400080001", ReadRequest(FunctionCode.READ_INPUT_REGISTERS, 8, 1)),
        ("0500ACFF00", WriteSingleCoil(0xAC, True)),
        ("0500AC0000", WriteSingleCoil(0xAC, False)),
        ("0600010003", WriteSingleRegister(1, 3)),
        ("0F0013000A02CD01", WriteMultipleCoils(0x13, (True, False, True, True, False, False,
                                                          True, True, True, False))),
        ("100001000204000A0102", WriteMultipleRegisters(1, (0x000A, 0x0102))),
    ],
)  # fmt: skip
def test_requests_round_trip(pdu: str, request_: object) -> None:
    raw = bytes.fromhex(pdu)
    assert parse_request(raw) == request_
    assert encode_request(request_) == raw  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("07", ExceptionCode.ILLEGAL_FUNCTION),  # read exception status: not implemented
        ("2B0D0100", ExceptionCode.ILLEGAL_FUNCTION),  # FC 43 with MEI 13 (CANopen): not served
        ("0300000000", ExceptionCode.ILLEGAL_DATA_VALUE),  # count 0
        ("030000007E", ExceptionCode.ILLEGAL_DATA_VALUE),  # 126 registers
        ("040000007D", None),  # 125 registers: the limit
        ("01000007D1", ExceptionCode.ILLEGAL_DATA_VALUE),  # 2001 bits
        ("02000007D0", None),  # 2000 bits: the limit
        ("03006B00", ExceptionCode.ILLEGAL_DATA_VALUE),  # short PDU
        ("03006B000300", ExceptionCode.ILLEGAL_DATA_VALUE),  # long PDU
        ("0500AC1234", ExceptionCode.ILLEGAL_DATA_VALUE),  # coil value neither FF00 nor 0000
        ("100001000204000A", ExceptionCode.ILLEGAL_DATA_VALUE),  # data shorter than byte count
        ("100001000203000A01", ExceptionCode.ILLEGAL_DATA_VALUE),  # byte count != 2 * count
        ("10000100000000", ExceptionCode.ILLEGAL_DATA_VALUE),  # count 0
        ("1000010001", ExceptionCode.ILLEGAL_DATA_VALUE),  # no byte count
        ("0F0013000A01CD", ExceptionCode.ILLEGAL_DATA_VALUE),  # 10 coils need 2 bytes
        ("0F001300000000", ExceptionCode.ILLEGAL_DATA_VALUE),  # count 0
    ],
)
def test_bad_requests_raise_the_exception_code(pdu: str, code: ExceptionCode | None) -> None:
    if code is None:
        assert isinstance(parse_request(bytes.fromhex(pdu)), ReadRequest)
        return
    with pytest.raises(ModbusError) as info:
        parse_request(bytes.fromhex(pdu))
    assert info.value.code is code
    assert info.value.function == bytes.fromhex(pdu)[0]


def test_write_limits() -> None:
    regs = WriteMultipleRegisters(0, tuple(range(123)))
    assert parse_request(encode_request(regs)) == regs
    too_many = encode_request(WriteMultipleRegisters(0, tuple(range(124))))
    with pytest.raises(ModbusError):
        parse_request(too_many)
    coils = WriteMultipleCoils(0, (True,) * 1968)
    assert parse_request(encode_request(coils)) == coils


def test_response_pdus_byte_for_byte() -> None:
    bits = [True, False, True, True, False, False, True, True, True, True, False, True]
    assert read_bits_pdu(0x01, bits) == bytes.fromhex("0102CD0B")
    assert read_bits_pdu(0x02, [False] * 8) == bytes.fromhex("020100")
    assert read_registers_pdu(0x03, [0x022B, 0x0000, 0x0064]) == bytes.fromhex("0306022B00000064")
    assert read_registers_pdu(0x04, [0xFFFF]) == bytes.fromhex("0402FFFF")
    assert write_response_pdu(WriteSingleCoil(0xAC, True)) == bytes.fromhex("0500ACFF00")
    assert write_response_pdu(WriteSingleRegister(1, 3)) == bytes.fromhex("0600010003")
    coils = WriteMultipleCoils(0x13, (True,) * 10)
    assert write_response_pdu(coils) == bytes.fromhex("0F0013000A")
    assert write_response_pdu(WriteMultipleRegisters(1, (10, 258))) == bytes.fromhex("1000010002")
    assert exception_pdu(0x03, ExceptionCode.ILLEGAL_DATA_ADDRESS) == bytes.fromhex("8302")
    assert exception_pdu(0x2B, ExceptionCode.ILLEGAL_FUNCTION) == bytes.fromhex("AB01")
    assert exception_pdu(0x04, ExceptionCode.GATEWAY_TARGET_FAILED) == bytes.fromhex("840B")


def test_bit_packing_is_lsb_first() -> None:
    assert pack_bits([True]) == b"\x01"
    assert pack_bits([False] * 7 + [True]) == b"\x80"
    assert pack_bits([False] * 8 + [True]) == b"\x00\x01"
    assert pack_bits([]) == b""
    assert unpack_bits(b"\xcd\x01", 10) == [True, False, True, True, False, False, True, True,
                                            True, False]  # fmt: skip


def test_parse_response_reads_values() -> None:
    read = ReadRequest(FunctionCode.READ_HOLDING_REGISTERS, 0x6B, 3)
    assert parse_response(read, bytes.fromhex("0306022B00000064")) == [0x022B, 0, 0x64]
    coils = ReadRequest(FunctionCode.READ_COILS, 0x13, 10)
    assert parse_response(coils, bytes.fromhex("0102CD01")) == unpack_bits(b"\xcd\x01", 10)
    write = WriteSingleRegister(1, 3)
    assert parse_response(write, bytes.fromhex("0600010003")) is None


def test_parse_response_raises_exceptions_and_mismatches() -> None:
    read = ReadRequest(FunctionCode.READ_HOLDING_REGISTERS, 0x6B, 3)
    with pytest.raises(ModbusError) as info:
        parse_response(read, bytes.fromhex("8302"))
    assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS
    with pytest.raises(FrameError):
        parse_response(read, bytes.fromhex("0304022B0000"))  # two registers for three
    with pytest.raises(FrameError):
        parse_response(read, bytes.fromhex("0406022B00000064"))  # other function
    with pytest.raises(FrameError):
        parse_response(WriteSingleRegister(1, 3), bytes.fromhex("0600010004"))  # not an echo
    with pytest.raises(FrameError):
        parse_response(read, bytes.fromhex("83FE"))  # no such exception code
