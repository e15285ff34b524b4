"""OPC UA built-in types as the gateway's points use them (shared by client and server)."""

from __future__ import annotations

from asyncua import ua

VT = ua.VariantType

# point datatype -> OPC UA built-in type (the VariantType number is also the DataType NodeId)
VARIANT_TYPES: dict[str, ua.VariantType] = {
    "bool": VT.Boolean,
    "int16": VT.Int16,
    "uint16": VT.UInt16,
    "int32": VT.Int32,
    "uint32": VT.UInt32,
    "int64": VT.Int64,
    "uint64": VT.UInt64,
    "float32": VT.Float,
    "float64": VT.Double,
    "string": VT.String,
}
INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}
NUMBERS = frozenset((*INT_RANGES, VT.Float, VT.Double))
