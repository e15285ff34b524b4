"""Modbus register and bit codecs: values <-> 16-bit registers. Sans-IO (no sockets, no asyncio).

Byte order. A value's bytes are named A (most significant) .. D (or .. H for 64 bits). Every
order is one choice of two endiannesses, which is how the codec stays to two precompiled
``struct`` calls per value (15,000 decodes a second in production):

=====  ========================  =============  ===========
order  registers of 32-bit ABCD  register bytes  value bytes
=====  ========================  =============  ===========
ABCD   [AB, CD]                  big            big
BADC   [BA, DC]                  little         big
CDAB   [CD, AB]                  little         little
DCBA   [DC, BA]                  big            little
=====  ========================  =============  ===========

Packing the registers with the register endianness gives a byte string that the value endianness
unpacks (CDAB: [CD, AB] packed little is D C B A, which read little is ABCD). The same two
choices extend to 64 bits (CDAB: [GH, EF, CD, AB]) and reduce to 16 bits, where ABCD and CDAB
read a register as AB and BADC and DCBA as BA. Strings are the exception: BADC and DCBA swap the
two characters inside each register and word order never reorders them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import cache, lru_cache


class Table(StrEnum):
    HOLDING = "holding"  # 4xxxx, read/write registers
    INPUT = "input"  # 3xxxx, read-only registers
    COIL = "coil"  # 0xxxx, read/write bits
    DISCRETE = "discrete"  # 1xxxx, read-only bits

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (Table.HOLDING, Table.COIL)


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class ByteOrder(StrEnum):
    """Order of the value's bytes A (most significant) .. D across registers."""

    ABCD = "ABCD"  # big-endian bytes, big-endian words (Modbus default)
    BADC = "BADC"  # bytes swapped inside each register
    CDAB = "CDAB"  # words swapped (low word first)
    DCBA = "DCBA"  # fully little-endian


class CodecError(ValueError):
    """Registers that do not hold the declared value, or a value that does not fit them."""


Decoded = bool | int | float | str
Decoder = Callable[[Sequence[int]], Decoded]

# struct format letter and register count of each numeric type
_NUMERIC: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}
_INT_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}
# (register endianness, value endianness); see the module docstring
_ENDIAN: dict[ByteOrder, tuple[str, str]] = {
    ByteOrder.ABCD: (">", ">"),
    ByteOrder.BADC: ("<", ">"),
    ByteOrder.CDAB: ("<", "<"),
    ByteOrder.DCBA: (">", "<"),
}
_SWAPS_BYTES = frozenset({ByteOrder.BADC, ByteOrder.DCBA})
# one decoder per (dtype, order, bit, length): few distinct keys, so the dict stays small
_DECODERS: dict[tuple[DataType, ByteOrder, int | None, int | None], Decoder] = {}


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Registers one value occupies (strings: ``length`` registers, two characters each)."""
    if dtype is DataType.STRING:
        if length is None or length < 1:
            raise CodecError(f"a string needs a length of at least 1 register, got {length}")
        return length
    if dtype is DataType.BOOL:
        return 1
    return _NUMERIC[dtype][1]


def get_bit(register: int, bit: int) -> bool:
    """Bit ``bit`` (0 = least significant) of one register."""
    _check_bit(bit)
    return bool(register >> bit & 1)


def set_bit(register: int, bit: int, on: bool) -> int:
    """``register`` with bit ``bit`` set or cleared: the value to write back after a read."""
    _check_bit(bit)
    _check_register(register)
    return register | 1 << bit if on else register & ~(1 << bit)


def decode(
    registers: Sequence[int],
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    bit: int | None = None,
    length: int | None = None,
) -> Decoded:
    """The value held by ``registers`` (16-bit unsigned ints).

    A bool reads bit ``bit`` of its register, or the whole register being non-zero without one.
    A string reads ``length`` registers (all of them when None) as latin-1, trailing NULs and
    spaces stripped.
    """
    fn = _DECODERS.get((dtype, order, bit, length))
    if fn is None:
        fn = decoder(dtype, order, bit=bit, length=length)
    return fn(registers)


def decoder(
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    bit: int | None = None,
    length: int | None = None,
) -> Decoder:
    """A precompiled ``decode`` for one kind of point; the hot path should hold on to it."""
    key = (dtype, order, bit, length)
    fn = _DECODERS.get(key)
    if fn is None:
        fn = _DECODERS[key] = _make_decoder(dtype, order, bit, length)
    return fn


def shortest_float32(value: float, raw: bytes, value_struct: struct.Struct) -> float:
    """The shortest decimal that is the same float32: 1.154693, not 1.1546930074691772.

    A float32 widened to a Python float prints with float64's digits, which the device never
    had; the shortest round-trip form (at most 9 significant digits) is exact and readable.
    """
    if value != value or value in (math.inf, -math.inf):
        return value
    pack = value_struct.pack
    for digits in (6, 7, 8):
        candidate = float(f"{value:.{digits}g}")
        if pack(candidate) == raw:
            return candidate
    return float(f"{value:.9g}")


def _make_decoder(
    dtype: DataType, order: ByteOrder, bit: int | None, length: int | None
) -> Decoder:
    dtype, order = DataType(dtype), ByteOrder(order)  # plain strings from config work too
    if dtype is DataType.BOOL:
        return _bool_decoder(bit)
    if dtype is DataType.STRING:
        return _string_decoder(order, length)
    fmt, count = _NUMERIC[dtype]
    regs, value_struct = _structs(fmt, count, order)
    pack, unpack = regs.pack, value_struct.unpack

    if dtype is DataType.FLOAT32:

        def decode_float32(registers: Sequence[int]) -> Decoded:
            try:
                raw = pack(*registers)
            except struct.error:
                raise _register_error(registers, count, dtype) from None
            return shortest_float32(unpack(raw)[0], raw, value_struct)

        return decode_float32

    def decode_numeric(registers: Sequence[int]) -> Decoded:
        try:
            value: int | float = unpack(pack(*registers))[0]
        except struct.error:
            raise _register_error(registers, count, dtype) from None
        return value

    return decode_numeric


def encode(
    value: bool | int | float | str,
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    length: int | None = None,
) -> list[int]:
    """The registers that hold ``value``; the inverse of `decode`.

    Integer types take ints, or floats that they round to the nearest integer (a scaled write
    rarely lands exactly on one); NaN, infinities and out-of-range values are errors, never
    clipped. A string is latin-1, NUL-padded to ``length`` registers (or to the fewest that hold
    it when None); one that does not fit is an error, never truncated. A bool is one register,
    0 or 1; a single bit of a register is written with `set_bit`.
    """
    dtype, order = DataType(dtype), ByteOrder(order)
    if dtype is DataType.STRING:
        return _encode_string(value, order, length)
    if isinstance(value, str):
        raise CodecError(f"{dtype} needs a number, got the string {value!r}")
    if dtype is DataType.BOOL:
        if value not in (0, 1):
            raise CodecError(f"bool needs True/False (or 0/1), got {value!r}")
        return [int(value)]
    fmt, count = _NUMERIC[dtype]
    regs, value_struct = _structs(fmt, count, order)
    if dtype in _INT_RANGE:
        value = _as_int(value, dtype)
    try:
        return list(regs.unpack(value_struct.pack(value)))
    except (struct.error, OverflowError):
        raise CodecError(f"{value!r} does not fit in {dtype}") from None


@cache
def _structs(fmt: str, count: int, order: ByteOrder) -> tuple[struct.Struct, struct.Struct]:
    """(registers, value) structs of a numeric type: decode packs the registers and unpacks
    the value, encode the other way round."""
    regs_endian, value_endian = _ENDIAN[order]
    return struct.Struct(f"{regs_endian}{count}H"), struct.Struct(f"{value_endian}{fmt}")


def _as_int(value: bool | int | float, dtype: DataType) -> int:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(f"{value} is not a number that fits in {dtype}")
        value = round(value)
    low, high = _INT_RANGE[dtype]
    if not low <= value <= high:
        raise CodecError(f"{value} does not fit in {dtype} ({low}..{high})")
    return int(value)


def _bool_decoder(bit: int | None) -> Decoder:
    if bit is not None:
        _check_bit(bit)
    mask = 0xFFFF if bit is None else 1 << bit

    def decode_bool(registers: Sequence[int]) -> Decoded:
        if len(registers) != 1 or not 0 <= registers[0] <= 0xFFFF:
            raise _register_error(registers, 1, DataType.BOOL)
        return bool(registers[0] & mask)

    return decode_bool


def _string_decoder(order: ByteOrder, length: int | None) -> Decoder:
    if length is not None:
        register_count(DataType.STRING, length)  # validates it
    endian = "<" if order in _SWAPS_BYTES else ">"

    def decode_string(registers: Sequence[int]) -> Decoded:
        count = len(registers) if length is None else length
        try:
            raw = _string_struct(endian, count).pack(*registers)
        except struct.error:
            raise _register_error(registers, count, DataType.STRING) from None
        return raw.decode("latin-1").rstrip("\x00 ")

    return decode_string


def _encode_string(value: object, order: ByteOrder, length: int | None) -> list[int]:
    if not isinstance(value, str):
        raise CodecError(f"string needs a str, got {value!r}")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError as e:
        raise CodecError(f"{value!r} has characters outside latin-1: {e.reason}") from None
    if length is None:
        count = max(1, len(raw) + 1 >> 1)
    else:
        count = register_count(DataType.STRING, length)
    if len(raw) > 2 * count:
        raise CodecError(f"{value!r} is {len(raw)} characters; {count} registers hold {2 * count}")
    endian = "<" if order in _SWAPS_BYTES else ">"
    return list(_string_struct(endian, count).unpack(raw.ljust(2 * count, b"\x00")))


@lru_cache(maxsize=256)
def _string_struct(endian: str, count: int) -> struct.Struct:
    return struct.Struct(f"{endian}{count}H")


def _register_error(registers: Sequence[int], count: int, dtype: DataType) -> CodecError:
    """Why ``registers`` did not decode: the wrong number of them, or one not 16-bit unsigned."""
    if len(registers) != count:
        return CodecError(f"{dtype} needs {count} registers, got {len(registers)}")
    for r in registers:
        if not isinstance(r, int) or not 0 <= r <= 0xFFFF:
            return CodecError(f"register value {r!r} is not in 0..65535")
    return CodecError(f"registers {list(registers)!r} do not hold a {dtype}")


def _check_register(register: int) -> None:
    if not 0 <= register <= 0xFFFF:
        raise CodecError(f"register value {register} is not in 0..65535")


def _check_bit(bit: int) -> None:
    if not 0 <= bit <= 15:
        raise CodecError(f"bit {bit} is not in 0..15")
