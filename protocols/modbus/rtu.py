"""Sans-IO Modbus RTU framing over a byte stream (RTU over TCP): requests in, responses out.

An RTU frame is unit id, PDU, CRC16 (Modbus: polynomial 0xA001 reflected, initial 0xFFFF, low
byte first on the wire). On a serial line a frame ends with 3.5 characters of silence; over TCP
there is no silence and no length field, so a request's length follows from its function code:
01-06 are 8 bytes, 22 (mask write) 10, 43 with MEI type 14 (read device identification) 7; 15/16
are 9 + the byte count at offset 6, 23 (read/write registers) 13 + the byte count at offset 10.
Any other function code's length (43 with another MEI type included) cannot be known, so such
bytes cannot be a request we can frame: they are skipped like garbage.
The PDU is then :mod:`protocols.modbus.frames`'s, parsed and built by the same functions as MBAP.

Resynchronisation. A frame whose CRC does not match is dropped, as a real RTU slave drops it
(it stays silent and the master times out), and so is any byte that cannot start a frame. The
decoder does not know where the garbage ends, so it drops one byte and tries again at the next,
until a candidate's CRC matches: at most one CRC (of at most `MAX_ADU` bytes) per byte dropped.
While the candidate at the front waits for more bytes (garbage that looks like the head of a
long write), a complete frame with a good CRC further on, within `MAX_ADU` bytes, wins: the
bytes before it are dropped, so a good request after garbage is answered without waiting for
bytes that may never come. Each run of dropped bytes counts as one error (`errors`), with its
reason (`last_error`), however many bytes it spanned (`skipped`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocols.modbus.frames import (
    MAX_PDU_SIZE,
    MEI_DEVICE_IDENTIFICATION,
    Adu,
    FunctionCode,
    StreamDecoder,
)

MIN_ADU = 4  # unit id, function, CRC: the shortest frame (an exception response is 5)
MAX_ADU = 256  # unit id + 253 bytes of PDU + CRC
FIXED_SIZE = 8  # unit id, function, address, count or value, CRC: functions 01-06
# function -> frame size, for the other requests of fixed size
_SIZES: dict[int, int] = {
    **dict.fromkeys(range(1, 7), FIXED_SIZE),
    FunctionCode.MASK_WRITE_REGISTER: 10,  # unit, function, address, and mask, or mask, CRC
}
MEI_SIZE = 7  # unit, function 43, MEI type, read device id code, object id, CRC
# function -> (offset of its byte count, size of the frame without the bytes counted)
_COUNTED: dict[int, tuple[int, int]] = {
    FunctionCode.WRITE_MULTIPLE_COILS: (6, 9),  # unit, function, address, quantity, count, CRC
    FunctionCode.WRITE_MULTIPLE_REGISTERS: (6, 9),
    FunctionCode.READ_WRITE_MULTIPLE_REGISTERS: (10, 13),  # read and write address, quantity
}
HEAD_SIZE = 11  # bytes that tell any request's size (23's byte count is the 11th)
# Responses: function -> frame size, for the answers of fixed size (a write's echo or summary)
_RESPONSE_SIZES: dict[int, int] = {
    **dict.fromkeys(range(5, 7), FIXED_SIZE),
    FunctionCode.WRITE_MULTIPLE_COILS: FIXED_SIZE,  # unit, function, address, quantity, CRC
    FunctionCode.WRITE_MULTIPLE_REGISTERS: FIXED_SIZE,
    FunctionCode.MASK_WRITE_REGISTER: 10,  # the request's echo
}
# ...and those that carry a byte count (third byte) of values
_COUNTED_RESPONSES = frozenset((1, 2, 3, 4, FunctionCode.READ_WRITE_MULTIPLE_REGISTERS))
_REGISTER_RESPONSES = frozenset((3, 4, FunctionCode.READ_WRITE_MULTIPLE_REGISTERS))
_REQUESTS = frozenset((*_SIZES, *_COUNTED, FunctionCode.ENCAPSULATED_INTERFACE))
_MAX_READ_BYTES = 250  # 125 registers, 2000 bits
EXCEPTION_SIZE = 5  # unit, function | 0x80, exception code, CRC
_IDENT_OBJECTS = 8  # unit, 43, MEI type, read code, conformity, more, next id: then the count


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC16 of ``data``; on the wire it goes low byte first."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def build_rtu_frame(unit_id: int, pdu: bytes) -> bytes:
    """Unit id + PDU + CRC16 (low byte first)."""
    if not 1 <= len(pdu) <= MAX_PDU_SIZE:
        raise ValueError(f"PDU of {len(pdu)} bytes (1..{MAX_PDU_SIZE})")
    body = bytes((unit_id & 0xFF,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class RtuFrame(Adu):
    """One complete RTU request: unit id and PDU (the CRC was checked)."""

    unit_id: int
    pdu: bytes

    def reply(self, pdu: bytes) -> bytes:
        return build_rtu_frame(self.unit_id, pdu)


def request_size(head: bytes | bytearray) -> int | None:
    """The size of the request frame ``head`` starts, 0 when its function code has no size we
    can know (not a request we frame), None when more bytes are needed to tell."""
    if len(head) < 2:
        return None
    function = head[1]
    size = _SIZES.get(function)
    if size is not None:
        return size
    counted = _COUNTED.get(function)
    if counted is not None:
        at, base = counted
        return base + head[at] if len(head) > at else None
    if function == FunctionCode.ENCAPSULATED_INTERFACE:
        if len(head) < 3:
            return None
        return MEI_SIZE if head[2] == MEI_DEVICE_IDENTIFICATION else 0
    return 0


def response_size(head: bytes | bytearray) -> int | None:
    """The size of the response frame ``head`` starts (unit id first) to any request
    `request_size` knows, 0 when no such response starts so, None while more bytes are needed.
    Reads and 23 carry a byte count, 43/14 its objects' lengths; writes are of fixed size."""
    if len(head) < 3:
        return None
    function = head[1]
    if function & 0x80:
        return EXCEPTION_SIZE if function & 0x7F in _REQUESTS else 0
    size = _RESPONSE_SIZES.get(function)
    if size is not None:
        return size
    if function in _COUNTED_RESPONSES:
        count = head[2]
        if count > _MAX_READ_BYTES or (count % 2 and function in _REGISTER_RESPONSES):
            return 0
        return EXCEPTION_SIZE + count
    if function != FunctionCode.ENCAPSULATED_INTERFACE or head[2] != MEI_DEVICE_IDENTIFICATION:
        return 0
    at = _IDENT_OBJECTS  # past the head: the first object
    if len(head) < at:
        return None
    for _ in range(head[at - 1]):
        if len(head) < at + 2:
            return None
        at += 2 + head[at + 1]
        if at > MAX_ADU:
            return 0
    return at + 2


class RtuDecoder(StreamDecoder[RtuFrame]):
    """Incremental RTU request deframer: ``receive_data`` then ``next_frame`` until None. It
    never fails: what is not a frame is dropped and counted (see the module's docstring).

    ``size`` tells a frame's size from its first ``head`` bytes (0: no frame we take starts
    so; None: more bytes needed): requests by default; `protocols.modbus.scan` deframes the
    responses it asked for with its own."""

    __slots__ = ("_size", "_head", "_skipping", "errors", "skipped", "last_error")

    def __init__(
        self, size: Callable[[bytes | bytearray], int | None] = request_size, head: int = HEAD_SIZE
    ) -> None:
        super().__init__()
        self._size, self._head = size, head
        self._skipping = False  # inside a run of dropped bytes: one error for the whole run
        self.errors = 0
        self.skipped = 0
        self.last_error = ""

    def next_frame(self) -> RtuFrame | None:
        """The next complete frame with a good CRC, or None when more bytes are needed."""
        buf = self._buffer
        while True:
            size = self._size(buf)
            if size is None:
                return None
            if size == 0:
                self._skip(1, f"function {buf[1]:#04x}, not a request of known length")
                continue
            if len(buf) < size:
                later = self._complete_later()
                if later is None:
                    return None
                self._skip(later, "an incomplete frame followed by another")
                continue
            if not self._crc_ok(0, size):
                self._skip(1, "CRC mismatch")
                continue
            frame = RtuFrame(buf[0], bytes(buf[1 : size - 2]))
            del buf[:size]
            self._skipping = False
            return frame

    def _crc_ok(self, start: int, size: int) -> bool:
        buf = self._buffer
        end = start + size
        return crc16(buf[start : end - 2]) == buf[end - 2] | buf[end - 1] << 8

    def _complete_later(self) -> int | None:
        """The offset of a complete frame with a good CRC within MAX_ADU bytes, if any."""
        buf = self._buffer
        for start in range(1, min(len(buf), MAX_ADU) - MIN_ADU + 1):
            size = self._size(buf[start : start + self._head])
            if size and start + size <= len(buf) and self._crc_ok(start, size):
                return start
        return None

    def _skip(self, count: int, why: str) -> None:
        del self._buffer[:count]
        self.skipped += count
        if not self._skipping:  # the run's first reason is the one that says what went wrong
            self._skipping = True
            self.errors += 1
            self.last_error = why
