"""Sans-IO Modbus TCP framing: bytes in, frames and requests out; requests and responses as bytes.

No sockets and no asyncio here, in the style of h11: a :class:`FrameDecoder` is fed whatever the
transport delivered (half a frame, three frames, one and a half) and hands back complete
:class:`Frame` objects; :func:`parse_request` turns a frame's PDU into a small frozen request and
the ``*_pdu`` builders turn answers into bytes. The simulator is the server side; the same pieces
make a client (``encode_request`` + :func:`parse_response`), which the tests and load scripts use.

Two kinds of failure, on purpose kept apart:

* :class:`FrameError` -- the MBAP header itself is wrong (protocol id not 0, a length no Modbus
  frame can have). The byte stream can no longer be trusted to be in step, so the only safe reply
  is to close *that* connection. The decoder stays failed once it has raised.
* :class:`ModbusError` -- the frame is fine but the request is not (unknown function, bad count,
  address outside the table). It carries the exception code to answer with; the connection lives.

Exception codes follow the Modbus application protocol v1.1b3, section 7: quantity checks
(``ILLEGAL_DATA_VALUE``) come before address checks (``ILLEGAL_DATA_ADDRESS``); the address check
needs the server's table sizes, so it is the server's job, not this module's.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

from protocols.modbus.codec import Table

MBAP_SIZE = 7  # transaction id, protocol id, length, unit id
MAX_PDU_SIZE = 253
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_BITS = 1968
MAX_WRITE_REGISTERS = 123
MAX_READ_WRITE_REGISTERS = 121  # the write part of function 23 (its read part: 125)
MEI_DEVICE_IDENTIFICATION = 0x0E  # the only MEI type of function 43 served
COIL_ON = 0xFF00
COIL_OFF = 0x0000

_MBAP = struct.Struct(">HHHB")
_ADDR_COUNT = struct.Struct(">BHH")  # function, address, count (or value)
_WRITE_MULTI = struct.Struct(">BHHB")  # function, address, count, byte count
_MASK_WRITE = struct.Struct(">BHHH")  # function, address, and mask, or mask
_READ_WRITE = struct.Struct(">BHHHHB")  # function, read address/count, write address/count, bytes
_MEI_REQUEST = struct.Struct(">BBBB")  # function, MEI type, read device id code, object id


class FunctionCode(IntEnum):
    READ_COILS = 0x01
    READ_DISCRETE_INPUTS = 0x02
    READ_HOLDING_REGISTERS = 0x03
    READ_INPUT_REGISTERS = 0x04
    WRITE_SINGLE_COIL = 0x05
    WRITE_SINGLE_REGISTER = 0x06
    WRITE_MULTIPLE_COILS = 0x0F
    WRITE_MULTIPLE_REGISTERS = 0x10
    MASK_WRITE_REGISTER = 0x16
    READ_WRITE_MULTIPLE_REGISTERS = 0x17
    ENCAPSULATED_INTERFACE = 0x2B  # MEI; type 0x0E: read device identification

    @property
    def is_bit(self) -> bool:
        return self in _BIT_FUNCTIONS


_BIT_FUNCTIONS = frozenset(
    {
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
        FunctionCode.WRITE_SINGLE_COIL,
        FunctionCode.WRITE_MULTIPLE_COILS,
    }
)
_READ_FUNCTIONS = frozenset(
    {
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
        FunctionCode.READ_HOLDING_REGISTERS,
        FunctionCode.READ_INPUT_REGISTERS,
    }
)


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    SERVER_DEVICE_BUSY = 0x06
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED = 0x0B  # "gateway target device failed to respond"


class FrameError(ValueError):
    """The MBAP header is malformed: close the connection, the stream is out of step."""


class ModbusError(Exception):
    """A request the peer must be told is wrong; ``code`` is the Modbus exception code."""

    def __init__(self, code: ExceptionCode, function: int | None = None) -> None:
        self.code = code
        self.function = function
        name = code.name if isinstance(code, ExceptionCode) else str(code)
        super().__init__(f"Modbus exception {int(code):#04x} {name}")


# The table each function reads or writes: for whoever serves requests (simulator, server).
FUNCTION_TABLE: dict[FunctionCode, Table] = {
    FunctionCode.READ_COILS: Table.COIL,
    FunctionCode.READ_DISCRETE_INPUTS: Table.DISCRETE,
    FunctionCode.READ_HOLDING_REGISTERS: Table.HOLDING,
    FunctionCode.READ_INPUT_REGISTERS: Table.INPUT,
    FunctionCode.WRITE_SINGLE_COIL: Table.COIL,
    FunctionCode.WRITE_SINGLE_REGISTER: Table.HOLDING,
    FunctionCode.WRITE_MULTIPLE_COILS: Table.COIL,
    FunctionCode.WRITE_MULTIPLE_REGISTERS: Table.HOLDING,
    FunctionCode.MASK_WRITE_REGISTER: Table.HOLDING,
    FunctionCode.READ_WRITE_MULTIPLE_REGISTERS: Table.HOLDING,
}


class Adu(abc.ABC):
    """What an MBAP `Frame` and an RTU frame (`protocols.modbus.rtu.RtuFrame`) share: a unit id,
    a PDU, and ``reply``, which frames a response PDU the same way. The server answers through
    it, so only the framing differs between the two."""

    __slots__ = ()
    unit_id: int
    pdu: bytes

    @property
    def function(self) -> int:
        return self.pdu[0]

    def to_bytes(self) -> bytes:
        return self.reply(self.pdu)

    @abc.abstractmethod
    def reply(self, pdu: bytes) -> bytes:
        """The frame carrying ``pdu`` in this frame's framing, with its ids."""


@dataclass(frozen=True, slots=True)
class Frame(Adu):
    """One complete Modbus TCP ADU: the MBAP fields that matter and the PDU bytes."""

    transaction_id: int
    unit_id: int
    pdu: bytes

    def reply(self, pdu: bytes) -> bytes:
        return build_frame(self.transaction_id, self.unit_id, pdu)


def build_frame(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """MBAP header + PDU."""
    if not 1 <= len(pdu) <= MAX_PDU_SIZE:
        raise ValueError(f"PDU of {len(pdu)} bytes (1..{MAX_PDU_SIZE})")
    return _MBAP.pack(transaction_id & 0xFFFF, 0, len(pdu) + 1, unit_id & 0xFF) + pdu


F = TypeVar("F")


class StreamDecoder(abc.ABC, Generic[F]):
    """A deframer fed whatever the transport delivered: ``receive_data`` then ``next_frame``
    until it returns None. MBAP's (`FrameDecoder`) and RTU's (`protocols.modbus.rtu`)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    @abc.abstractmethod
    def next_frame(self) -> F | None:
        """The next complete frame, or None while more bytes are needed."""

    def feed(self, data: bytes) -> list[F]:
        """``receive_data`` + every complete frame (raising what next_frame raises)."""
        self.receive_data(data)
        return list(self)

    def __iter__(self) -> Iterator[F]:
        while (frame := self.next_frame()) is not None:
            yield frame


class FrameDecoder(StreamDecoder[Frame]):
    """Incremental MBAP deframer. ``receive_data`` then ``next_frame`` until it returns None."""

    __slots__ = ("_error",)

    def __init__(self) -> None:
        super().__init__()
        self._error: FrameError | None = None

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed.

        Raises :class:`FrameError` on a malformed header, and again on every later call.
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        if len(buf) < MBAP_SIZE:
            return None
        tid, protocol, length, unit = _MBAP.unpack_from(buf)
        if protocol != 0:
            self._error = FrameError(f"protocol id {protocol}, expected 0 (Modbus)")
            raise self._error
        if not 2 <= length <= MAX_PDU_SIZE + 1:
            self._error = FrameError(f"MBAP length {length}, expected 2..{MAX_PDU_SIZE + 1}")
            raise self._error
        end = MBAP_SIZE - 1 + length
        if len(buf) < end:
            return None
        pdu = bytes(buf[MBAP_SIZE:end])
        del buf[:end]
        return Frame(tid, unit, pdu)


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Functions 01-04: ``count`` bits or registers from ``address``."""

    function: FunctionCode
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class WriteSingleCoil:
    address: int
    value: bool
    function: FunctionCode = FunctionCode.WRITE_SINGLE_COIL


@dataclass(frozen=True, slots=True)
class WriteSingleRegister:
    address: int
    value: int
    function: FunctionCode = FunctionCode.WRITE_SINGLE_REGISTER


@dataclass(frozen=True, slots=True)
class WriteMultipleCoils:
    address: int
    values: tuple[bool, ...]
    function: FunctionCode = FunctionCode.WRITE_MULTIPLE_COILS


@dataclass(frozen=True, slots=True)
class WriteMultipleRegisters:
    address: int
    values: tuple[int, ...]
    function: FunctionCode = FunctionCode.WRITE_MULTIPLE_REGISTERS


@dataclass(frozen=True, slots=True)
class MaskWriteRegister:
    """Function 22: the register becomes (current AND and_mask) OR (or_mask AND NOT and_mask)."""

    address: int
    and_mask: int
    or_mask: int
    function: FunctionCode = FunctionCode.MASK_WRITE_REGISTER

    def apply(self, current: int) -> int:
        return (current & self.and_mask) | (self.or_mask & ~self.and_mask & 0xFFFF)


@dataclass(frozen=True, slots=True)
class ReadWriteMultipleRegisters:
    """Function 23: write ``values`` at ``write_address``, then read ``read_count`` registers
    from ``read_address`` (the write is performed first)."""

    read_address: int
    read_count: int
    write_address: int
    values: tuple[int, ...]
    function: FunctionCode = FunctionCode.READ_WRITE_MULTIPLE_REGISTERS


class ReadDeviceIdCode(IntEnum):
    """What a function 43/14 request asks for: a category (stream access) or one object."""

    BASIC = 0x01
    REGULAR = 0x02
    EXTENDED = 0x03
    INDIVIDUAL = 0x04


@dataclass(frozen=True, slots=True)
class ReadDeviceIdentification:
    """Function 43, MEI type 14: the identification objects from ``object_id`` on."""

    read_code: ReadDeviceIdCode
    object_id: int
    function: FunctionCode = FunctionCode.ENCAPSULATED_INTERFACE


Request = (
    ReadRequest
    | WriteSingleCoil
    | WriteSingleRegister
    | WriteMultipleCoils
    | WriteMultipleRegisters
    | MaskWriteRegister
    | ReadWriteMultipleRegisters
    | ReadDeviceIdentification
)


def parse_request(pdu: bytes) -> Request:
    """Decode a request PDU; raises :class:`ModbusError` (01 or 03) for what must be refused."""
    if not pdu:
        raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION)
    code = pdu[0]
    try:
        function = FunctionCode(code)
    except ValueError:
        raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION, code) from None
    if function in _READ_FUNCTIONS:
        address, count = _fixed_fields(pdu, function)
        limit = MAX_READ_BITS if function.is_bit else MAX_READ_REGISTERS
        if not 1 <= count <= limit:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
        return ReadRequest(function, address, count)
    if function is FunctionCode.WRITE_SINGLE_COIL:
        address, value = _fixed_fields(pdu, function)
        if value not in (COIL_ON, COIL_OFF):
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
        return WriteSingleCoil(address, value == COIL_ON)
    if function is FunctionCode.WRITE_SINGLE_REGISTER:
        address, value = _fixed_fields(pdu, function)
        return WriteSingleRegister(address, value)
    if function is FunctionCode.MASK_WRITE_REGISTER:
        if len(pdu) != _MASK_WRITE.size:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
        return MaskWriteRegister(*_MASK_WRITE.unpack(pdu)[1:])
    if function is FunctionCode.READ_WRITE_MULTIPLE_REGISTERS:
        return _parse_read_write(pdu)
    if function is FunctionCode.ENCAPSULATED_INTERFACE:
        return _parse_mei(pdu)
    if len(pdu) < _WRITE_MULTI.size:
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
    _, address, count, byte_count = _WRITE_MULTI.unpack_from(pdu)
    data = pdu[_WRITE_MULTI.size :]
    if function is FunctionCode.WRITE_MULTIPLE_COILS:
        if not 1 <= count <= MAX_WRITE_BITS or byte_count != (count + 7) // 8:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
        if len(data) != byte_count:
            raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
        return WriteMultipleCoils(address, tuple(unpack_bits(data, count)))
    if not 1 <= count <= MAX_WRITE_REGISTERS or byte_count != 2 * count or len(data) != byte_count:
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
    return WriteMultipleRegisters(address, struct.unpack(f">{count}H", data))


def _parse_read_write(pdu: bytes) -> ReadWriteMultipleRegisters:
    code = FunctionCode.READ_WRITE_MULTIPLE_REGISTERS
    if len(pdu) < _READ_WRITE.size:
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
    _, read_address, read_count, write_address, count, byte_count = _READ_WRITE.unpack_from(pdu)
    data = pdu[_READ_WRITE.size :]
    if (
        not 1 <= read_count <= MAX_READ_REGISTERS
        or not 1 <= count <= MAX_READ_WRITE_REGISTERS
        or byte_count != 2 * count
        or len(data) != byte_count
    ):
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
    values = struct.unpack(f">{count}H", data)
    return ReadWriteMultipleRegisters(read_address, read_count, write_address, values)


def _parse_mei(pdu: bytes) -> ReadDeviceIdentification:
    """Function 43: only MEI type 14 (other types, CANopen's 13, are not served: 01)."""
    code = FunctionCode.ENCAPSULATED_INTERFACE
    if len(pdu) < 2 or pdu[1] != MEI_DEVICE_IDENTIFICATION:
        raise ModbusError(ExceptionCode.ILLEGAL_FUNCTION, code)
    if len(pdu) != _MEI_REQUEST.size:
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code)
    _, _, read_code, object_id = _MEI_REQUEST.unpack(pdu)
    try:
        return ReadDeviceIdentification(ReadDeviceIdCode(read_code), object_id)
    except ValueError:  # the spec's flow chart: a read device id code not 01-04 is 03
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, code) from None


def _fixed_fields(pdu: bytes, function: FunctionCode) -> tuple[int, int]:
    if len(pdu) != _ADDR_COUNT.size:
        raise ModbusError(ExceptionCode.ILLEGAL_DATA_VALUE, function)
    _, first, second = _ADDR_COUNT.unpack(pdu)
    return first, second


def encode_request(request: Request) -> bytes:
    """The PDU of a request (client side); validates counts and values like a server would."""
    match request:
        case ReadRequest(function=function, address=address, count=count):
            return _ADDR_COUNT.pack(function, address, count)
        case WriteSingleCoil(address=address, value=value):
            return _ADDR_COUNT.pack(request.function, address, COIL_ON if value else COIL_OFF)
        case WriteSingleRegister(address=address, value=value):
            return _ADDR_COUNT.pack(request.function, address, value)
        case WriteMultipleCoils(address=address, values=values):
            data = pack_bits(values)
            head = _WRITE_MULTI.pack(request.function, address, len(values), len(data))
            return head + data
        case WriteMultipleRegisters(address=address, values=values):
            head = _WRITE_MULTI.pack(request.function, address, len(values), 2 * len(values))
            return head + struct.pack(f">{len(values)}H", *values)
        case MaskWriteRegister(address=address, and_mask=and_mask, or_mask=or_mask):
            return _MASK_WRITE.pack(request.function, address, and_mask, or_mask)
        case ReadWriteMultipleRegisters(values=values):
            n = len(values)
            head = _READ_WRITE.pack(
                request.function,
                request.read_address,
                request.read_count,
                request.write_address,
                n,
                2 * n,
            )
            return head + struct.pack(f">{n}H", *values)
        case ReadDeviceIdentification(read_code=read_code, object_id=object_id):
            return _MEI_REQUEST.pack(
                request.function, MEI_DEVICE_IDENTIFICATION, read_code, object_id
            )
    raise TypeError(f"not a Modbus request: {request!r}")


# --- responses ------------------------------------------------------------------------------


def pack_bits(bits: Sequence[int]) -> bytes:
    """Bits to bytes, first bit in the least significant bit of the first byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i >> 3] & (1 << (i & 7))) for i in range(count)]


def read_bits_pdu(function: int, bits: Sequence[int]) -> bytes:
    """Response PDU of functions 01/02."""
    data = pack_bits(bits)
    return bytes((function, len(data))) + data


def read_registers_pdu(function: int, values: Sequence[int]) -> bytes:
    """Response PDU of functions 03/04."""
    n = len(values)
    return struct.pack(f">BB{n}H", function, 2 * n, *values)


def write_response_pdu(request: Request) -> bytes:
    """Response PDU of functions 05/06/22 (an echo) and 15/16 (address and quantity)."""
    match request:
        case WriteSingleCoil() | WriteSingleRegister() | MaskWriteRegister():
            return encode_request(request)
        case (
            WriteMultipleCoils(address=address, values=values)
            | WriteMultipleRegisters(address=address, values=values)
        ):
            return _ADDR_COUNT.pack(request.function, address, len(values))
    raise TypeError(f"not a write request: {request!r}")


def exception_pdu(function: int, code: ExceptionCode) -> bytes:
    return bytes((function | 0x80, code))


def parse_response(request: Request, pdu: bytes) -> list[int] | list[bool] | None:
    """Check a response PDU against its request (client side).

    Returns the values read (ints for registers, bools for bits), None for a write (function
    43 is not parsed here: its answer is no list of values); raises
    :class:`ModbusError` for an exception response and :class:`FrameError` for a response that
    does not match the request.
    """
    function = request.function
    if len(pdu) == 2 and pdu[0] == function | 0x80:
        try:
            code = ExceptionCode(pdu[1])
        except ValueError:
            raise FrameError(f"unknown exception code {pdu[1]:#04x}") from None
        raise ModbusError(code, function)
    if not pdu or pdu[0] != function:
        raise FrameError(f"response to function {pdu[:1].hex() or 'none'}, sent {function:#04x}")
    if isinstance(request, ReadRequest | ReadWriteMultipleRegisters):
        count = request.count if isinstance(request, ReadRequest) else request.read_count
        size = (count + 7) // 8 if function.is_bit else 2 * count
        if len(pdu) != 2 + size or pdu[1] != size:
            raise FrameError(f"read response of {len(pdu)} bytes for {request}")
        if function.is_bit:
            return unpack_bits(pdu[2:], count)
        return list(struct.unpack(f">{count}H", pdu[2:]))
    if pdu != write_response_pdu(request):
        raise FrameError(f"write response {pdu.hex()} does not echo {request}")
    return None
