"""Modbus codec byte for byte: every type in every byte order, registers worked out by hand."""

from __future__ import annotations

import math
import struct

import pytest

from protocols.modbus.codec import (
    ByteOrder,
    CodecError,
    DataType,
    decode,
    decoder,
    encode,
    get_bit,
    register_count,
    set_bit,
)

ABCD, BADC, CDAB, DCBA = ByteOrder.ABCD, ByteOrder.BADC, ByteOrder.CDAB, ByteOrder.DCBA
D = DataType

# (dtype, value, {order: registers}); the registers come from the value's bytes A.. written out
# by hand (float32 1.0 is 3F 80 00 00, -2.5 is C0 20 00 00, pi is 40 49 0F DB; float64 pi is
# 40 09 21 FB 54 44 2D 18), never from the codec.
KNOWN: list[tuple[DataType, bool | int | float | str, dict[ByteOrder, list[int]]]] = [
    (
        D.FLOAT32,
        1.0,
        {
            ABCD: [0x3F80, 0x0000],
            BADC: [0x803F, 0x0000],
            CDAB: [0x0000, 0x3F80],
            DCBA: [0x0000, 0x803F],
        },
    ),
    (
        D.FLOAT32,
        -2.5,
        {
            ABCD: [0xC020, 0x0000],
            BADC: [0x20C0, 0x0000],
            CDAB: [0x0000, 0xC020],
            DCBA: [0x0000, 0x20C0],
        },
    ),
    (
        D.FLOAT32,
        3.1415927,  # float32 pi (0x40490FDB) in its shortest decimal form
        {
            ABCD: [0x4049, 0x0FDB],
            BADC: [0x4940, 0xDB0F],
            CDAB: [0x0FDB, 0x4049],
            DCBA: [0xDB0F, 0x4940],
        },
    ),
    (
        D.INT32,
        -2,
        {
            ABCD: [0xFFFF, 0xFFFE],
            BADC: [0xFFFF, 0xFEFF],
            CDAB: [0xFFFE, 0xFFFF],
            DCBA: [0xFEFF, 0xFFFF],
        },
    ),
    (
        D.INT32,
        0x01020304,
        {
            ABCD: [0x0102, 0x0304],
            BADC: [0x0201, 0x0403],
            CDAB: [0x0304, 0x0102],
            DCBA: [0x0403, 0x0201],
        },
    ),
    (
        D.UINT32,
        0x01020304,
        {
            ABCD: [0x0102, 0x0304],
            BADC: [0x0201, 0x0403],
            CDAB: [0x0304, 0x0102],
            DCBA: [0x0403, 0x0201],
        },
    ),
    (
        D.UINT32,
        0xFF00AA55,
        {
            ABCD: [0xFF00, 0xAA55],
            BADC: [0x00FF, 0x55AA],
            CDAB: [0xAA55, 0xFF00],
            DCBA: [0x55AA, 0x00FF],
        },
    ),
    (
        D.INT64,
        0x0102030405060708,
        {
            ABCD: [0x0102, 0x0304, 0x0506, 0x0708],
            BADC: [0x0201, 0x0403, 0x0605, 0x0807],
            CDAB: [0x0708, 0x0506, 0x0304, 0x0102],
            DCBA: [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        D.INT64,
        -2,
        {
            ABCD: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
            BADC: [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
            CDAB: [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            DCBA: [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        },
    ),
    (
        D.UINT64,
        0x0102030405060708,
        {
            ABCD: [0x0102, 0x0304, 0x0506, 0x0708],
            BADC: [0x0201, 0x0403, 0x0605, 0x0807],
            CDAB: [0x0708, 0x0506, 0x0304, 0x0102],
            DCBA: [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        D.FLOAT64,
        1.0,
        {
            ABCD: [0x3FF0, 0, 0, 0],
            BADC: [0xF03F, 0, 0, 0],
            CDAB: [0, 0, 0, 0x3FF0],
            DCBA: [0, 0, 0, 0xF03F],
        },
    ),
    (
        D.FLOAT64,
        -2.5,
        {
            ABCD: [0xC004, 0, 0, 0],
            BADC: [0x04C0, 0, 0, 0],
            CDAB: [0, 0, 0, 0xC004],
            DCBA: [0, 0, 0, 0x04C0],
        },
    ),
    (
        D.FLOAT64,
        math.pi,
        {
            ABCD: [0x4009, 0x21FB, 0x5444, 0x2D18],
            BADC: [0x0940, 0xFB21, 0x4454, 0x182D],
            CDAB: [0x2D18, 0x5444, 0x21FB, 0x4009],
            DCBA: [0x182D, 0x4454, 0xFB21, 0x0940],
        },
    ),
    (D.INT16, -1, {ABCD: [0xFFFF], BADC: [0xFFFF], CDAB: [0xFFFF], DCBA: [0xFFFF]}),
    (D.INT16, -2, {ABCD: [0xFFFE], BADC: [0xFEFF], CDAB: [0xFFFE], DCBA: [0xFEFF]}),
    (D.INT16, 0x1234, {ABCD: [0x1234], BADC: [0x3412], CDAB: [0x1234], DCBA: [0x3412]}),
    (D.UINT16, 0xABCD, {ABCD: [0xABCD], BADC: [0xCDAB], CDAB: [0xABCD], DCBA: [0xCDAB]}),
    (D.BOOL, True, {ABCD: [1], BADC: [1], CDAB: [1], DCBA: [1]}),
    (D.BOOL, False, {ABCD: [0], BADC: [0], CDAB: [0], DCBA: [0]}),
]
KNOWN_CASES = [
    pytest.param(dtype, value, order, regs, id=f"{dtype}-{value!r}-{order}")
    for dtype, value, by_order in KNOWN
    for order, regs in by_order.items()
]


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), KNOWN_CASES)
def test_encode_known_registers(
    dtype: DataType, value: bool | int | float, order: ByteOrder, registers: list[int]
) -> None:
    assert encode(value, dtype, order) == registers


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), KNOWN_CASES)
def test_decode_known_registers(
    dtype: DataType, value: bool | int | float, order: ByteOrder, registers: list[int]
) -> None:
    decoded = decode(registers, dtype, order)
    assert decoded == value
    assert type(decoded) is type(value)
    assert decoder(dtype, order)(tuple(registers)) == value  # any sequence will do


# "ABC" in 2 registers is 41 42 43 00; byte-swapping orders swap the characters in each register
# and no order moves registers.
STRING_CASES = [
    pytest.param(ABCD, [0x4142, 0x4300], id="ABCD"),
    pytest.param(CDAB, [0x4142, 0x4300], id="CDAB"),
    pytest.param(BADC, [0x4241, 0x0043], id="BADC"),
    pytest.param(DCBA, [0x4241, 0x0043], id="DCBA"),
]


@pytest.mark.parametrize(("order", "registers"), STRING_CASES)
def test_string_orders(order: ByteOrder, registers: list[int]) -> None:
    assert encode("ABC", D.STRING, order, length=2) == registers
    assert decode(registers, D.STRING, order, length=2) == "ABC"


@pytest.mark.parametrize(
    ("registers", "text"),
    [
        ([0x4142, 0x2020], "AB"),  # trailing spaces
        ([0x4100, 0x0000], "A"),  # trailing NULs
        ([0x2041, 0x2000], " A"),  # leading space kept
        ([0x4142, 0x0043], "AB\x00C"),  # only trailing NULs go
        ([0xE900], "é"),  # latin-1
        ([0x0000, 0x0000], ""),
    ],
)
def test_string_decode_strips_trailing_padding(registers: list[int], text: str) -> None:
    assert decode(registers, D.STRING, length=len(registers)) == text


@pytest.mark.parametrize(
    ("text", "length", "registers"),
    [
        ("A", 3, [0x4100, 0x0000, 0x0000]),  # NUL-padded
        ("ABCD", 2, [0x4142, 0x4344]),  # exactly full
        ("é", 1, [0xE900]),
        ("ABC", None, [0x4142, 0x4300]),  # fewest registers that hold it
        ("", None, [0x0000]),
    ],
)
def test_string_encode_pads(text: str, length: int | None, registers: list[int]) -> None:
    assert encode(text, D.STRING, length=length) == registers


INT_LIMITS = {
    D.INT16: (-(2**15), 2**15 - 1),
    D.UINT16: (0, 2**16 - 1),
    D.INT32: (-(2**31), 2**31 - 1),
    D.UINT32: (0, 2**32 - 1),
    D.INT64: (-(2**63), 2**63 - 1),
    D.UINT64: (0, 2**64 - 1),
}
ROUND_TRIPS = [
    *[(dtype, v) for dtype, (lo, hi) in INT_LIMITS.items() for v in (lo, hi, 0, 1, lo + 1, hi - 1)],
    *[(dtype, -1) for dtype in (D.INT16, D.INT32, D.INT64)],
    *[
        (D.FLOAT32, v)  # all exactly representable in float32
        for v in (
            0.0,
            -0.0,
            0.5,
            -2.5,
            16777216.0,
            math.inf,
            -math.inf,
            3.4028234663852886e38,  # largest float32
            -3.4028234663852886e38,
            1.1754943508222875e-38,  # smallest normal
            1.401298464324817e-45,  # smallest subnormal
        )
    ],
    *[
        (D.FLOAT64, v)
        for v in (
            0.0,
            -0.0,
            0.1,
            -2.5,
            math.pi,
            1e300,
            -1e-300,
            math.inf,
            -math.inf,
            1.7976931348623157e308,
            2.2250738585072014e-308,
            5e-324,
        )
    ],
    *[(D.BOOL, v) for v in (True, False)],
]


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize(("dtype", "value"), ROUND_TRIPS)
def test_round_trip(dtype: DataType, value: bool | int | float, order: ByteOrder) -> None:
    registers = encode(value, dtype, order)
    assert len(registers) == register_count(dtype)
    assert all(0 <= r <= 0xFFFF for r in registers)
    back = decode(registers, dtype, order)
    if dtype is D.FLOAT32:  # the same float32, in its shortest decimal form
        assert struct.pack(">f", back) == struct.pack(">f", value)
    else:
        assert back == value
    if isinstance(value, float):
        assert math.copysign(1.0, back) == math.copysign(1.0, value)  # -0.0 stays negative


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("dtype", [D.FLOAT32, D.FLOAT64])
def test_nan_round_trip(dtype: DataType, order: ByteOrder) -> None:
    back = decode(encode(math.nan, dtype, order), dtype, order)
    assert isinstance(back, float) and math.isnan(back)


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("text", ["", "A", "AB", "Pump 3", "ÄÖÜ ß", "x" * 20, "with\x00inside"])
def test_string_round_trip(text: str, order: ByteOrder) -> None:
    assert decode(encode(text, D.STRING, order, length=10), D.STRING, order, length=10) == text


def test_float32_rounds_to_nearest_float32() -> None:
    assert decode(encode(0.1, D.FLOAT32), D.FLOAT32) == pytest.approx(0.1, rel=1e-7)


@pytest.mark.parametrize(
    ("value", "dtype", "registers"),
    [
        (2.6, D.INT16, [3]),
        (-2.6, D.INT16, [0xFFFD]),
        (65535.4, D.UINT16, [0xFFFF]),
        (1e3, D.UINT32, [0, 1000]),
        (True, D.UINT16, [1]),
    ],
)
def test_integer_types_round_floats(value: float, dtype: DataType, registers: list[int]) -> None:
    assert encode(value, dtype) == registers


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (70000, D.INT16, "70000 does not fit in int16"),
        (32768, D.INT16, "does not fit in int16"),
        (-32769, D.INT16, "does not fit in int16"),
        (-1, D.UINT16, "-1 does not fit in uint16"),
        (65536, D.UINT16, "does not fit in uint16"),
        (2**31, D.INT32, "does not fit in int32"),
        (2**32, D.UINT32, "does not fit in uint32"),
        (-1, D.UINT32, "does not fit in uint32"),
        (2**63, D.INT64, "does not fit in int64"),
        (-(2**63) - 1, D.INT64, "does not fit in int64"),
        (2**64, D.UINT64, "does not fit in uint64"),
        (65535.6, D.UINT16, "65536 does not fit in uint16"),
        (math.nan, D.INT16, "nan is not a number"),
        (math.nan, D.UINT64, "nan is not a number"),
        (math.inf, D.INT32, "inf is not a number"),
        (1e39, D.FLOAT32, "does not fit in float32"),
        (-1e39, D.FLOAT32, "does not fit in float32"),
        ("12", D.INT16, "needs a number"),
        ("1.5", D.FLOAT32, "needs a number"),
        (2, D.BOOL, "bool needs"),
        (12, D.STRING, "string needs a str"),
    ],
)
def test_encode_rejects(value: object, dtype: DataType, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(value, dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "length", "message"),
    [
        ("ABCDE", 2, "5 characters; 2 registers hold 4"),
        ("ABC", 1, "3 characters; 1 registers hold 2"),
        ("€", 1, "outside latin-1"),
        ("A", 0, "length of at least 1"),
    ],
)
def test_encode_string_rejects(text: str, length: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(text, D.STRING, length=length)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


@pytest.mark.parametrize(
    ("registers", "dtype", "kwargs", "message"),
    [
        ([1], D.INT32, {}, "int32 needs 2 registers, got 1"),
        ([1, 2, 3], D.FLOAT32, {}, "float32 needs 2 registers, got 3"),
        ([1, 2], D.FLOAT64, {}, "float64 needs 4 registers, got 2"),
        ([], D.UINT16, {}, "uint16 needs 1 registers, got 0"),
        ([1, 2], D.INT16, {}, "int16 needs 1 registers, got 2"),
        ([1, 2], D.BOOL, {"bit": 0}, "bool needs 1 registers, got 2"),
        ([1, 2, 3], D.STRING, {"length": 2}, "string needs 2 registers, got 3"),
        ([70000], D.UINT16, {}, "70000 is not in 0..65535"),
        ([-1], D.INT16, {}, "-1 is not in 0..65535"),
        ([0, 65536], D.UINT32, {}, "65536 is not in 0..65535"),
        ([1.5, 0], D.FLOAT32, {}, "1.5 is not in 0..65535"),
        ([70000], D.BOOL, {"bit": 1}, "70000 is not in 0..65535"),
        ([0x4142, -3], D.STRING, {"length": 2}, "-3 is not in 0..65535"),
        ([1], D.BOOL, {"bit": 16}, "bit 16 is not in 0..15"),
        ([1], D.STRING, {"length": 0}, "length of at least 1"),
    ],
)
def test_decode_rejects(
    registers: list[int], dtype: DataType, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(CodecError, match=message):
        decode(registers, dtype, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("register", "bit", "expected"),
    [
        (0b1010, 0, False),
        (0b1010, 1, True),
        (0b1010, 3, True),
        (0x8000, 15, True),
        (0x7FFF, 15, False),
        (0xFFFF, 7, True),
        (0, 0, False),
    ],
)
def test_bit_in_register(register: int, bit: int, expected: bool) -> None:
    assert get_bit(register, bit) is expected
    assert decode([register], D.BOOL, bit=bit) is expected


@pytest.mark.parametrize(("register", "expected"), [(0, False), (1, True), (0x8000, True)])
def test_bool_without_bit_is_register_not_zero(register: int, expected: bool) -> None:
    assert decode([register], D.BOOL) is expected


@pytest.mark.parametrize(
    ("register", "bit", "on", "expected"),
    [
        (0x0000, 0, True, 0x0001),
        (0x0000, 15, True, 0x8000),
        (0xFFFF, 0, False, 0xFFFE),
        (0xFFFF, 15, False, 0x7FFF),
        (0x00F0, 4, True, 0x00F0),  # already set
        (0x00F0, 3, False, 0x00F0),  # already clear
        (0x1234, 8, True, 0x1334),
    ],
)
def test_set_bit(register: int, bit: int, on: bool, expected: int) -> None:
    result = set_bit(register, bit, on)
    assert result == expected
    assert get_bit(result, bit) is on


@pytest.mark.parametrize(
    ("register", "bit", "message"),
    [(0, 16, "bit 16"), (0, -1, "bit -1"), (70000, 0, "70000 is not in 0..65535")],
)
def test_set_bit_rejects(register: int, bit: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        set_bit(register, bit, True)


@pytest.mark.parametrize(
    ("dtype", "length", "count"),
    [
        (D.BOOL, None, 1),
        (D.INT16, None, 1),
        (D.UINT16, None, 1),
        (D.INT32, None, 2),
        (D.UINT32, None, 2),
        (D.FLOAT32, None, 2),
        (D.INT64, None, 4),
        (D.UINT64, None, 4),
        (D.FLOAT64, None, 4),
        (D.STRING, 1, 1),
        (D.STRING, 8, 8),
        (D.STRING, 125, 125),
    ],
)
def test_register_count(dtype: DataType, length: int | None, count: int) -> None:
    assert register_count(dtype, length) == count


def test_register_count_string_needs_length() -> None:
    with pytest.raises(CodecError, match="string needs a length"):
        register_count(D.STRING)


def test_decoder_is_precompiled_once() -> None:
    assert decoder(D.FLOAT32, CDAB) is decoder(D.FLOAT32, CDAB)
    assert decoder(D.FLOAT32, CDAB) is not decoder(D.FLOAT32, ABCD)
    assert decoder(D.BOOL, bit=3)([0b1000]) is True


def test_plain_strings_name_type_and_order() -> None:
    assert decode([0x0000, 0x3F80], "float32", "CDAB") == 1.0  # type: ignore[arg-type]
    assert encode("AB", "string", "BADC") == [0x4241]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("widened", "shown"),
    [(1.1546930074691772, 1.154693), (68.94191284179688, 68.94191), (0.10000000149011612, 0.1)],
)
def test_float32_decodes_to_its_shortest_decimal(widened: float, shown: float) -> None:
    registers = encode(widened, D.FLOAT32)
    assert decode(registers, D.FLOAT32) == shown
    assert struct.pack(">f", shown) == struct.pack(">f", widened)
