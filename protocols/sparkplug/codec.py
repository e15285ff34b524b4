"""Sparkplug B (Eclipse Sparkplug 3.0) payloads and topics, sans-IO.

A hand-written subset of protobuf (proto2) for ``org.eclipse.tahu.protobuf.Payload``: the
payload's timestamp (1), metrics (2) and seq (3); a metric's name (1), alias (2), timestamp (3),
datatype (4), is_historical (5), is_transient (6), is_null (7), properties (9), the scalar
values int_value (10) ... string_value (15), dataset_value (17) and template_value (18); a
property set's keys (1) and values (2). Every other field (metadata, bytes, files, property set
values, a payload's uuid and body) is skipped when decoding and never written, so a host's
richer payload still decodes.

Templates (Ignition's UDTs): a ``Template`` is a definition (``is_definition``, in an NBIRTH) or
an instance (``template_ref`` naming its definition) with member metrics of its own, which may
be templates again. They are decoded into `Metric.template`, never into `Metric.value` (which
stays a scalar). Nesting is recursion, so it is bounded: a template deeper than
`MAX_TEMPLATE_DEPTH` makes the payload a `CodecError`, as any other malformed input does. The
number of members needs no limit of its own: each takes bytes of the payload, which the broker
bounds. A DATA message may leave a member's datatype out as it may a metric's: the lookup is
asked for it with the member's path below its top-level metric. DataSets (``DataSet``: column
names, types and rows of scalar values) are decoded into `Metric.dataset` the same way.

Integers follow Eclipse Tahu, not protobuf's zigzag: a signed value is stored as its unsigned
two's complement (Int8/Int16/Int32 in the 32-bit ``int_value``, Int64 in the 64-bit
``long_value``) and read back by the metric's datatype. UInt32 goes in ``long_value`` as both
Tahu encoders (Java and JavaScript) put it there; the decoder takes it from either field, as the
spec allows ``int_value``.

A Primary Host Application's STATE has two forms: Sparkplug 3.0's JSON ``{"online", "timestamp"}``
on ``spBv1.0/STATE/{host_id}`` and 2.2's plain ``ONLINE`` / ``OFFLINE`` on ``STATE/{host_id}``,
with no timestamp. A `StateTopic` is one of them (topic, encode, decode), so that the node and
the host follow either through the same code.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, TypeAlias

NAMESPACE = "spBv1.0"

Value: TypeAlias = bool | int | float | str | None


class CodecError(ValueError):
    """A payload that is not a Sparkplug B payload we can read, or a value that does not fit."""


class DataType(IntEnum):
    """Sparkplug B datatypes: the scalar ones this codec reads and writes, DataSet and Template
    (read and written as `DataSet` and `Template`), and those it only names (a metric of one
    of them has no value here)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21


_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_UNSIGNED_BITS = {
    DataType.UINT8: 8,
    DataType.UINT16: 16,
    DataType.UINT32: 32,
    DataType.UINT64: 64,
    DataType.DATETIME: 64,
}
_INT_FIELD = frozenset({DataType.INT8, DataType.INT16, DataType.INT32, DataType.UINT8})
_INT_FIELD |= {DataType.UINT16}
_LONG_FIELD = frozenset({DataType.INT64, DataType.UINT32, DataType.UINT64, DataType.DATETIME})
_TEXT = frozenset({DataType.STRING, DataType.TEXT, DataType.UUID})
#: the datatypes whose value is a `Value` (what a property, parameter or dataset cell can be)
SCALAR_TYPES = frozenset(DataType(n) for n in range(DataType.INT8, DataType.UUID + 1))
#: templates nested deeper than this (a template member that is a template is one level more)
#: make a payload unreadable: decoding them is recursion
MAX_TEMPLATE_DEPTH = 8

#: the gateway's point datatypes (`gateway.types.PointSpec.datatype`) as Sparkplug datatypes
POINT_TYPES: Mapping[str, DataType] = {
    "bool": DataType.BOOLEAN,
    "int16": DataType.INT16,
    "uint16": DataType.UINT16,
    "int32": DataType.INT32,
    "uint32": DataType.UINT32,
    "int64": DataType.INT64,
    "uint64": DataType.UINT64,
    "float32": DataType.FLOAT,
    "float64": DataType.DOUBLE,
    "string": DataType.STRING,
}


def datatype_of(point_type: str) -> DataType:
    """The Sparkplug datatype of a gateway point datatype (an unknown one is a Double)."""
    return POINT_TYPES.get(point_type, DataType.DOUBLE)


INT_TYPES = frozenset(
    {
        DataType.INT8,
        DataType.INT16,
        DataType.INT32,
        DataType.INT64,
        DataType.UINT8,
        DataType.UINT16,
        DataType.UINT32,
        DataType.UINT64,
        DataType.DATETIME,
    }
)
TEXT_TYPES = frozenset({DataType.STRING, DataType.TEXT, DataType.UUID})


def wire_value(datatype: DataType, value: Value) -> Value:
    """``value`` as the metric's datatype carries it; ValueError when it does not fit."""
    if value is None:
        return None
    if datatype is DataType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a Boolean")
    if datatype in INT_TYPES:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number")
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{value!r} is not a number")
    if datatype in TEXT_TYPES:
        return value if isinstance(value, str) else str(value)
    raise ValueError(f"datatype {datatype.name} is not supported")


#: Ignition's quality codes in a metric's ``Quality`` property (Int32)
QUALITY_GOOD = 192
QUALITY_UNCERTAIN = 64
QUALITY_BAD = 0


@dataclass(frozen=True, slots=True)
class PropertyValue:
    type: DataType
    value: Value = None  # None: is_null


@dataclass(frozen=True, slots=True)
class Parameter:
    """A template's parameter (Payload.Template.Parameter): a named scalar."""

    name: str | None
    type: DataType | None
    value: Value = None


@dataclass(frozen=True, slots=True)
class Template:
    """A Template metric's value: a definition (``is_definition``, named by its metric) or an
    instance of the definition ``template_ref``, with member metrics (templates too, maybe)."""

    metrics: tuple[Metric, ...] = ()
    template_ref: str | None = None
    is_definition: bool = False
    version: str | None = None
    parameters: tuple[Parameter, ...] = ()


@dataclass(frozen=True, slots=True)
class DataSet:
    """A DataSet metric's value: named, typed columns and rows of their values."""

    columns: tuple[str, ...] = ()
    types: tuple[DataType | None, ...] = ()
    rows: tuple[tuple[Value, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None  # ms since the epoch
    datatype: DataType | None = None
    value: Value = None  # a scalar; a Template's or a DataSet's is in `template` / `dataset`
    is_null: bool = False
    is_historical: bool = False
    is_transient: bool = False
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    template: Template | None = None
    dataset: DataSet | None = None


@dataclass(frozen=True, slots=True)
class Payload:
    timestamp: int | None = None  # ms since the epoch
    metrics: tuple[Metric, ...] = ()
    seq: int | None = None


# --- protobuf wire format -------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    if value < 0 or value > _U64:
        raise CodecError(f"{value} does not fit an unsigned 64-bit varint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len_field(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(data)) + data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CodecError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise CodecError("varint longer than 10 bytes")


Field: TypeAlias = tuple[int, int, int | bytes]  # number, wire type, value


def _fields(data: bytes) -> Iterator[Field]:
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CodecError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire, value
        elif wire == _I64:
            if pos + 8 > len(data):
                raise CodecError("truncated 64-bit field")
            yield number, wire, data[pos : pos + 8]
            pos += 8
        elif wire == _I32:
            if pos + 4 > len(data):
                raise CodecError("truncated 32-bit field")
            yield number, wire, data[pos : pos + 4]
            pos += 4
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise CodecError("truncated length-delimited field")
            yield number, wire, data[pos : pos + size]
            pos += size
        else:
            raise CodecError(f"unsupported wire type {wire} (field {number})")


def _int(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise CodecError("expected a varint")
    return value


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise CodecError("expected a length-delimited field")
    return value


def _text(value: int | bytes) -> str:
    try:
        return _bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("a string field is not UTF-8") from None


# --- values ---------------------------------------------------------------------------------


def _check_int(value: Value, datatype: DataType) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"{value!r} is not a {datatype.name} value")
    if isinstance(value, float):
        if not value.is_integer():
            raise CodecError(f"{value!r} is not a whole number ({datatype.name})")
        value = int(value)
    if datatype in _SIGNED_BITS:
        bits = _SIGNED_BITS[datatype]
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        bits = _UNSIGNED_BITS[datatype]
        low, high = 0, (1 << bits) - 1
    if not low <= value <= high:
        raise CodecError(f"{value} is outside {datatype.name} ({low}..{high})")
    return value


def _encode_value(datatype: DataType, value: Value, base: int) -> bytes:
    """The value field of a metric (``base`` 10: int_value is 10) or property value (base 3)."""
    if datatype in _INT_FIELD:
        return _key(base, _VARINT) + _varint(_check_int(value, datatype) & 0xFFFFFFFF)
    if datatype in _LONG_FIELD:
        return _key(base + 1, _VARINT) + _varint(_check_int(value, datatype) & _U64)
    if datatype is DataType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{value!r} is not a Float value")
        try:
            return _key(base + 2, _I32) + struct.pack("<f", value)
        except OverflowError:
            raise CodecError(f"{value!r} does not fit a Float") from None
    if datatype is DataType.DOUBLE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{value!r} is not a Double value")
        return _key(base + 3, _I64) + struct.pack("<d", value)
    if datatype is DataType.BOOLEAN:
        if not isinstance(value, bool):
            raise CodecError(f"{value!r} is not a Boolean value")
        return _key(base + 4, _VARINT) + _varint(int(value))
    if datatype in _TEXT:
        if not isinstance(value, str):
            raise CodecError(f"{value!r} is not a {datatype.name} value")
        return _len_field(base + 5, value.encode("utf-8"))
    raise CodecError(f"datatype {datatype!r} is not supported")


def _decode_value(datatype: DataType | None, raw: dict[int, int | bytes], base: int) -> Value:
    """A metric's (base 10) or property value's (base 3) value, by its datatype."""
    if datatype is None:
        return None
    if datatype in _SIGNED_BITS or datatype in _UNSIGNED_BITS:
        # Tahu: Int8..Int32, UInt8, UInt16 in int_value; Int64, UInt32, UInt64, DateTime in
        # long_value. Either field is read for any integer type (UInt32 comes in both).
        number = base if datatype in _INT_FIELD else base + 1
        got = raw.get(number, raw.get(base + 1 if number == base else base))
        if got is None:
            return None
        value = _int(got)
        if datatype in _SIGNED_BITS:
            bits = _SIGNED_BITS[datatype]
            value &= (1 << bits) - 1
            return value - (1 << bits) if value >> (bits - 1) else value
        return value & ((1 << _UNSIGNED_BITS[datatype]) - 1)
    if datatype is DataType.FLOAT:
        got = raw.get(base + 2)
        return None if got is None else float(struct.unpack("<f", _bytes(got))[0])
    if datatype is DataType.DOUBLE:
        got = raw.get(base + 3)
        return None if got is None else float(struct.unpack("<d", _bytes(got))[0])
    if datatype is DataType.BOOLEAN:
        got = raw.get(base + 4)
        return None if got is None else bool(_int(got))
    if datatype in _TEXT:
        got = raw.get(base + 5)
        return None if got is None else _text(got)
    return None  # a datatype this codec does not read (DataSet, Bytes, Template, ...)


def _datatype(number: int) -> DataType | None:
    try:
        return DataType(number)
    except ValueError:
        return None


# --- messages -------------------------------------------------------------------------------


def _encode_properties(properties: Mapping[str, PropertyValue]) -> bytes:
    out = bytearray()
    for key in properties:
        out += _len_field(1, key.encode("utf-8"))
    for prop in properties.values():
        body = _key(1, _VARINT) + _varint(int(prop.type))
        if prop.value is None:
            body += _key(2, _VARINT) + b"\x01"
        else:
            body += _encode_value(prop.type, prop.value, 3)
        out += _len_field(2, body)
    return bytes(out)


def encode_metric(metric: Metric) -> bytes:
    out = bytearray()
    if metric.name is not None:
        out += _len_field(1, metric.name.encode("utf-8"))
    if metric.alias is not None:
        out += _key(2, _VARINT) + _varint(metric.alias)
    if metric.timestamp is not None:
        out += _key(3, _VARINT) + _varint(metric.timestamp)
    if metric.datatype is not None:
        out += _key(4, _VARINT) + _varint(int(metric.datatype))
    if metric.is_historical:
        out += _key(5, _VARINT) + b"\x01"
    if metric.is_transient:
        out += _key(6, _VARINT) + b"\x01"
    null = metric.is_null or (
        metric.value is None and metric.template is None and metric.dataset is None
    )
    if null:
        out += _key(7, _VARINT) + b"\x01"
    if metric.properties:
        out += _len_field(9, _encode_properties(metric.properties))
    if null:
        return bytes(out)
    what = repr(metric.name or metric.alias)
    if metric.template is not None:
        if metric.datatype is not DataType.TEMPLATE:
            raise CodecError(f"metric {what} has a template but datatype {metric.datatype!r}")
        return bytes(out + _len_field(18, encode_template(metric.template)))
    if metric.dataset is not None:
        if metric.datatype is not DataType.DATASET:
            raise CodecError(f"metric {what} has a dataset but datatype {metric.datatype!r}")
        return bytes(out + _len_field(17, encode_dataset(metric.dataset)))
    if metric.datatype is None:
        raise CodecError(f"metric {what} has a value but no datatype")
    return bytes(out + _encode_value(metric.datatype, metric.value, 10))


def encode_template(template: Template) -> bytes:
    """A ``Payload.Template`` (a Template metric's ``template_value``)."""
    out = bytearray()
    if template.version is not None:
        out += _len_field(1, template.version.encode("utf-8"))
    for member in template.metrics:
        out += _len_field(2, encode_metric(member))
    for parameter in template.parameters:
        body = bytearray()
        if parameter.name is not None:
            body += _len_field(1, parameter.name.encode("utf-8"))
        if parameter.type is not None:
            body += _key(2, _VARINT) + _varint(int(parameter.type))
            if parameter.value is not None:
                body += _encode_value(parameter.type, parameter.value, 3)
        out += _len_field(3, bytes(body))
    if template.template_ref is not None:
        out += _len_field(4, template.template_ref.encode("utf-8"))
    if template.is_definition:
        out += _key(5, _VARINT) + b"\x01"
    return bytes(out)


def encode_dataset(dataset: DataSet) -> bytes:
    """A ``Payload.DataSet``; a None cell is an element with no value (the proto has no null)."""
    if len(dataset.types) != len(dataset.columns):
        raise CodecError(f"{len(dataset.columns)} columns and {len(dataset.types)} types")
    out = bytearray(_key(1, _VARINT) + _varint(len(dataset.columns)))
    for column in dataset.columns:
        out += _len_field(2, column.encode("utf-8"))
    for datatype in dataset.types:
        if datatype is None or datatype not in SCALAR_TYPES:
            raise CodecError(f"a dataset column of type {datatype!r}")
        out += _key(3, _VARINT) + _varint(int(datatype))
    for row in dataset.rows:
        if len(row) != len(dataset.types):
            raise CodecError(f"a dataset row of {len(row)} values for {len(dataset.types)} columns")
        body = bytearray()
        for datatype, cell in zip(dataset.types, row, strict=True):
            assert datatype is not None
            element = b"" if cell is None else _encode_value(datatype, cell, 1)
            body += _len_field(1, element)
        out += _len_field(4, bytes(body))
    return bytes(out)


def encode_payload(payload: Payload) -> bytes:
    out = bytearray()
    if payload.timestamp is not None:
        out += _key(1, _VARINT) + _varint(payload.timestamp)
    for metric in payload.metrics:
        out += _len_field(2, encode_metric(metric))
    if payload.seq is not None:
        out += _key(3, _VARINT) + _varint(payload.seq)
    return bytes(out)


def _decode_property_value(data: bytes) -> PropertyValue:
    raw: dict[int, int | bytes] = {}
    for number, _wire, value in _fields(data):
        raw[number] = value
    datatype = _datatype(_int(raw.get(1, 0)))
    if datatype is None or datatype not in SCALAR_TYPES:
        raise CodecError(f"property of unsupported type {raw.get(1)!r}")
    if raw.get(2):
        return PropertyValue(datatype, None)
    return PropertyValue(datatype, _decode_value(datatype, raw, 3))


def _decode_properties(data: bytes) -> dict[str, PropertyValue]:
    keys: list[str] = []
    values: list[PropertyValue | None] = []
    for number, _wire, value in _fields(data):
        if number == 1:
            keys.append(_text(value))
        elif number == 2:
            try:
                values.append(_decode_property_value(_bytes(value)))
            except CodecError:
                values.append(None)  # a nested property set or a type we do not read
    if len(keys) != len(values):
        raise CodecError(f"a property set with {len(keys)} keys and {len(values)} values")
    return {k: v for k, v in zip(keys, values, strict=True) if v is not None}


class DatatypeLookup(Protocol):
    """A metric's datatype when its payload leaves it out (DATA messages may), from the birth
    that declared it (a host keeps those): by the top-level metric's name and alias, and for a
    template's member the path of member names below it (``("Motor", "Amps")``)."""

    def __call__(
        self, name: str | None, alias: int | None, members: tuple[str, ...] = (), /
    ) -> DataType | None: ...


_Lookup: TypeAlias = "DatatypeLookup | None"


def _members_of(lookup: DatatypeLookup | None, name: str | None, alias: int | None) -> _Lookup:
    """The lookup of the members of the template metric (``name``, ``alias``): a member is
    known by its name only."""
    if lookup is None:
        return None

    def member(
        sub: str | None, _alias: int | None, members: tuple[str, ...] = (), /
    ) -> DataType | None:
        return None if sub is None else lookup(name, alias, (sub, *members))

    return member


def decode_metric(data: bytes, lookup: DatatypeLookup | None = None) -> Metric:
    """A metric; CodecError if ``data`` is not one (a template nested too deep among others)."""
    return _decode_metric(data, lookup, 0)


def _decode_metric(data: bytes, lookup: _Lookup, depth: int) -> Metric:
    raw: dict[int, int | bytes] = {}
    for number, _wire, value in _fields(data):
        raw[number] = value
    name = _text(raw[1]) if 1 in raw else None
    alias = _int(raw[2]) if 2 in raw else None
    datatype = _datatype(_int(raw[4])) if 4 in raw else None
    if datatype is None and lookup is not None:
        datatype = lookup(name, alias)
    is_null = bool(_int(raw.get(7, 0)))
    template = dataset = None
    if not is_null and 18 in raw and datatype in (DataType.TEMPLATE, None):
        members = _members_of(lookup, name, alias)
        template = _decode_template(_bytes(raw[18]), members, depth + 1)
        datatype = DataType.TEMPLATE
    if not is_null and 17 in raw and datatype in (DataType.DATASET, None):
        dataset = _decode_dataset(_bytes(raw[17]))
        datatype = DataType.DATASET
    return Metric(
        name=name,
        alias=alias,
        timestamp=_int(raw[3]) if 3 in raw else None,
        datatype=datatype,
        value=None if is_null else _decode_value(datatype, raw, 10),
        is_null=is_null,
        is_historical=bool(_int(raw.get(5, 0))),
        is_transient=bool(_int(raw.get(6, 0))),
        properties=_decode_properties(_bytes(raw[9])) if 9 in raw else {},
        template=template,
        dataset=dataset,
    )


def _decode_template(data: bytes, lookup: _Lookup, depth: int) -> Template:
    if depth > MAX_TEMPLATE_DEPTH:
        raise CodecError(f"templates nested more than {MAX_TEMPLATE_DEPTH} deep")
    metrics: list[Metric] = []
    parameters: list[Parameter] = []
    version = template_ref = None
    is_definition = False
    for number, _wire, value in _fields(data):
        if number == 1:
            version = _text(value)
        elif number == 2:
            metrics.append(_decode_metric(_bytes(value), lookup, depth))
        elif number == 3:
            parameters.append(_decode_parameter(_bytes(value)))
        elif number == 4:
            template_ref = _text(value)
        elif number == 5:
            is_definition = bool(_int(value))
    return Template(tuple(metrics), template_ref, is_definition, version, tuple(parameters))


def _decode_parameter(data: bytes) -> Parameter:
    raw: dict[int, int | bytes] = {}
    for number, _wire, value in _fields(data):
        raw[number] = value
    name = _text(raw[1]) if 1 in raw else None
    datatype = _datatype(_int(raw[2])) if 2 in raw else None
    return Parameter(name, datatype, _decode_value(datatype, raw, 3))


def _decode_dataset(data: bytes) -> DataSet:
    width: int | None = None
    columns: list[str] = []
    types: list[DataType | None] = []
    rows: list[bytes] = []
    for number, wire, value in _fields(data):
        if number == 1:
            width = _int(value)
        elif number == 2:
            columns.append(_text(value))
        elif number == 3 and wire == _LEN:  # packed, as some encoders write repeated uint32
            pos, packed = 0, _bytes(value)
            while pos < len(packed):
                code, pos = _read_varint(packed, pos)
                types.append(_datatype(code))
        elif number == 3:
            types.append(_datatype(_int(value)))
        elif number == 4:
            rows.append(_bytes(value))
    if width is None:
        width = len(columns)
    if len(columns) != width or len(types) != width:
        raise CodecError(
            f"a dataset of {width} columns with {len(columns)} names and {len(types)} types"
        )
    decoded: list[tuple[Value, ...]] = []
    for row in rows:
        cells = [_bytes(v) for number, _wire, v in _fields(row) if number == 1]
        if len(cells) != width:
            raise CodecError(f"a dataset row of {len(cells)} values for {width} columns")
        values: list[Value] = []
        for datatype, cell in zip(types, cells, strict=True):
            raw = {number: v for number, _wire, v in _fields(cell)}
            values.append(_decode_value(datatype, raw, 1))
        decoded.append(tuple(values))
    return DataSet(tuple(columns), tuple(types), tuple(decoded))


def decode_payload(data: bytes, lookup: DatatypeLookup | None = None) -> Payload:
    """A Sparkplug B payload; CodecError if ``data`` is not one. ``lookup`` gives the
    datatype of a metric that has none in the payload (else its value is None)."""
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = []
    for number, _wire, value in _fields(data):
        if number == 1:
            timestamp = _int(value)
        elif number == 2:
            metrics.append(decode_metric(_bytes(value), lookup))
        elif number == 3:
            seq = _int(value)
    return Payload(timestamp, tuple(metrics), seq)


# --- sequence numbers -----------------------------------------------------------------------


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``: 0..255, wrapping."""
    return (seq + 1) % 256


# --- topics ---------------------------------------------------------------------------------

NODE_TYPES = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})
_BAD_ID = re.compile(r"[/+#]")


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a Sparkplug group, edge node or device id; None if it can."""
    if not value:
        return "an empty id"
    found = _BAD_ID.search(value)
    if found is not None:
        return f"{value!r} contains {found.group()!r}"
    return None


def check_id(value: str, what: str = "id") -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"a Sparkplug {what} without '/', '+' or '#' ({problem})")
    return value


def topic(group: str, message_type: str, node: str, device: str | None = None) -> str:
    """``spBv1.0/{group}/{type}/{node}[/{device}]``; ValueError for a bad id or type."""
    check_id(group, "group_id")
    check_id(node, "edge_node_id")
    if message_type in NODE_TYPES:
        if device is not None:
            raise ValueError(f"{message_type} is a node message: no device id")
        return f"{NAMESPACE}/{group}/{message_type}/{node}"
    if message_type in DEVICE_TYPES:
        if device is None:
            raise ValueError(f"{message_type} is a device message: it needs a device id")
        check_id(device, "device_id")
        return f"{NAMESPACE}/{group}/{message_type}/{node}/{device}"
    raise ValueError(f"unknown Sparkplug message type {message_type!r}")


@dataclass(frozen=True, slots=True)
class Topic:
    group: str
    message_type: str
    node: str
    device: str | None = None


def parse_topic(name: str) -> Topic:
    """The parts of a Sparkplug B topic; ValueError if it is not one."""
    parts = name.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        raise ValueError(f"{name!r} is not a {NAMESPACE} edge node or device topic")
    device = parts[4] if len(parts) == 5 else None
    message_type = parts[2]
    if (device is None) != (message_type in NODE_TYPES):
        raise ValueError(f"{name!r}: {message_type} with the wrong number of levels")
    topic(parts[1], message_type, parts[3], device)  # validates
    return Topic(parts[1], message_type, parts[3], device)


# --- the Primary Host Application's STATE (Sparkplug 3.0, 6.4.1; and 2.2's) -----------------------

#: ``state_version`` values: 3.0's JSON on ``spBv1.0/STATE/{id}``, 2.2's text on ``STATE/{id}``
STATE_3_0, STATE_2_2 = "3.0", "2.2"
STATE_VERSIONS = (STATE_3_0, STATE_2_2)


@dataclass(frozen=True, slots=True)
class HostState:
    """A STATE message: whether the host is online, and when it said so (UTC ms, the host's
    clock; its will carries the timestamp of the birth it follows). Sparkplug 2.2's STATE
    has no timestamp: None."""

    online: bool
    timestamp: int | None


def state_topic(host_id: str, version: str = STATE_3_0) -> str:
    """``spBv1.0/STATE/{host_id}`` (3.0), or ``STATE/{host_id}`` (2.2, outside the
    namespace); ValueError for a bad id or version."""
    check_id(host_id, "host_id")
    if version == STATE_3_0:
        return f"{NAMESPACE}/STATE/{host_id}"
    if version == STATE_2_2:
        return f"STATE/{host_id}"
    raise ValueError(f"unknown STATE version {version!r}: one of {', '.join(STATE_VERSIONS)}")


def decode_state(data: bytes) -> HostState:
    """A STATE payload: UTF-8 JSON ``{"online": true|false, "timestamp": ms}`` (other keys
    ignored); ValueError saying what is wrong otherwise. Sparkplug 2.2's plain ``ONLINE`` /
    ``OFFLINE`` is refused as well: its hosts publish on ``STATE/{host_id}``, another topic."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not a JSON object (Sparkplug 3.0 STATE)") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object (Sparkplug 3.0 STATE)")
    online, stamp = doc.get("online"), doc.get("timestamp")
    if not isinstance(online, bool):
        raise ValueError("'online' is missing or not true/false")
    if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
        raise ValueError("'timestamp' is missing or not a UTC time in milliseconds")
    return HostState(online, stamp)


def encode_state(state: HostState) -> bytes:
    """The STATE payload a Primary Host Application publishes (retained, QoS 1): compact
    UTF-8 JSON ``{"online": ..., "timestamp": ...}``."""
    if state.timestamp is None:
        raise ValueError("a Sparkplug 3.0 STATE needs a timestamp")
    return json.dumps(
        {"online": state.online, "timestamp": state.timestamp}, separators=(",", ":")
    ).encode()


_STATE_2_2 = {"ONLINE": True, "OFFLINE": False}


def decode_state_2_2(data: bytes) -> HostState:
    """A Sparkplug 2.2 STATE payload: the UTF-8 text ``ONLINE`` or ``OFFLINE``, in capitals as
    the 2.2 specification and its hosts write it (white space around it is tolerated: a shell
    script's newline); no timestamp. ValueError saying what is wrong otherwise, a 3.0 JSON
    STATE among them."""
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text (Sparkplug 2.2 STATE: ONLINE or OFFLINE)") from None
    online = _STATE_2_2.get(text)
    if online is not None:
        return HostState(online, None)
    if text.startswith("{"):
        raise ValueError("a JSON object (Sparkplug 3.0's STATE), not ONLINE or OFFLINE (2.2)")
    shown = text if len(text) <= 40 else f"{text[:40]}..."
    raise ValueError(f"{shown!r}, not ONLINE or OFFLINE (Sparkplug 2.2 STATE)")


@dataclass(frozen=True, slots=True)
class StateTopic:
    """One Primary Host Application's STATE in one Sparkplug version: its topic, and how its
    payload is written and read. The adapters hold these, so that what differs between the
    versions stays here."""

    host_id: str
    version: str = STATE_3_0
    topic: str = field(init=False)

    def __post_init__(self) -> None:  # ValueError for a bad id or version, at once
        object.__setattr__(self, "topic", state_topic(self.host_id, self.version))

    @property
    def stamped(self) -> bool:
        """Whether its payload carries a timestamp (3.0's), which orders STATEs."""
        return self.version == STATE_3_0

    def encode(self, online: bool, timestamp: int) -> bytes:
        """The payload saying ``online``; 2.2's has no place for ``timestamp``."""
        if self.version == STATE_2_2:
            return b"ONLINE" if online else b"OFFLINE"
        return encode_state(HostState(online, timestamp))

    def decode(self, data: bytes) -> HostState:
        """The payload read; ValueError saying what is wrong."""
        if self.version == STATE_2_2:
            return decode_state_2_2(data)
        return decode_state(data)


def state_topics(host_id: str, version: str) -> tuple[StateTopic, ...]:
    """The STATEs a host with ``state_version: version`` publishes: one, or with ``both``
    3.0's then 2.2's (the first is the one its will can say: see the host's docstring)."""
    versions = STATE_VERSIONS if version == "both" else (version,)
    return tuple(StateTopic(host_id, v) for v in versions)
