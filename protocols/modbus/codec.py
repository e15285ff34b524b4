"""Modbus register and bit codecs: values <-> 16-bit registers. Sans-IO (no sockets, no asyncio).

TODO(helper A): implement; see the function docstrings.
"""

from __future__ import annotations

from enum import StrEnum


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


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Registers one value occupies (strings: ``length`` registers, two characters each)."""
    raise NotImplementedError
