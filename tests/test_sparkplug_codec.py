"""Sparkplug B codec: round trips, every datatype, Tahu's two's complement, seq, topics.

The bytes are checked against Eclipse Tahu's JavaScript codec in test_sparkplug_interop.py;
here the byte-level expectations are the ones the protobuf wire format and Tahu define."""

from __future__ import annotations

import struct

import pytest

from protocols.sparkplug import codec
from protocols.sparkplug.codec import (
    CodecError,
    DataType,
    Metric,
    Payload,
    PropertyValue,
    decode_payload,
    encode_payload,
)
from protocols.sparkplug.config import SparkplugEndpoint

CASES = [
    (DataType.INT8, -128),
    (DataType.INT8, 127),
    (DataType.INT16, -5),
    (DataType.INT16, 32767),
    (DataType.INT32, -2147483648),
    (DataType.INT32, 2147483647),
    (DataType.INT64, -9223372036854775808),
    (DataType.INT64, 9223372036854775807),
    (DataType.INT64, -7),
    (DataType.UINT8, 255),
    (DataType.UINT16, 65535),
    (DataType.UINT32, 4294967295),
    (DataType.UINT64, 18446744073709551615),
    (DataType.FLOAT, 1.5),
    (DataType.DOUBLE, -2.0e-300),
    (DataType.BOOLEAN, True),
    (DataType.BOOLEAN, False),
    (DataType.STRING, "Grüße"),
    (DataType.DATETIME, 1_700_000_000_123),
    (DataType.TEXT, "a longer text\nwith lines"),
    (DataType.UUID, "0f8fad5b-d9cb-469f-a165-70867728950e"),
]


@pytest.mark.parametrize(("datatype", "value"), CASES)
def test_every_datatype_round_trips(datatype: DataType, value: object) -> None:
    metric = Metric("m", 7, 1_700_000_000_000, datatype, value)  # type: ignore[arg-type]
    payload = Payload(1_700_000_000_001, (metric,), 3)
    back = decode_payload(encode_payload(payload))
    assert back == payload
    assert type(back.metrics[0].value) is type(value)


def test_negative_ints_are_unsigned_twos_complement_as_tahu_writes_them() -> None:
    # Tahu JS encodes Int16 -5 as int_value 0xFFFFFFFB (a 5-byte varint), Int64 -7 as
    # long_value 2^64 - 7 (10 bytes); the same bytes here.
    int16 = codec.encode_metric(Metric("a", datatype=DataType.INT16, value=-5))
    assert int16 == bytes.fromhex("0a0161200250fbffffff0f")
    int64 = codec.encode_metric(Metric("b", datatype=DataType.INT64, value=-7))
    assert int64 == bytes.fromhex("0a0162200458f9ffffffffffffffff01")
    # and read back signed, from the 32-bit form and from a narrower peer's 8-bit form
    assert codec.decode_metric(int16).value == -5
    narrow = bytes.fromhex("0a0161200150fb01")  # Int8 -5 stored as 0xFB
    assert codec.decode_metric(narrow).value == -5


def test_uint32_goes_in_long_value_and_is_read_from_either_field() -> None:
    encoded = codec.encode_metric(Metric("u", datatype=DataType.UINT32, value=70000))
    assert b"\x58" in encoded and b"\x50" not in encoded  # field 11 (long_value), not 10
    from_int = bytes.fromhex("0a0175200750f0a204")  # int_value = 70000
    assert codec.decode_metric(from_int).value == 70000


def test_float_and_double_use_fixed_width_fields() -> None:
    f = codec.encode_metric(Metric(datatype=DataType.FLOAT, value=1.5))
    assert f.endswith(b"\x65" + struct.pack("<f", 1.5))  # field 12, wire type 5
    d = codec.encode_metric(Metric(datatype=DataType.DOUBLE, value=1.5))
    assert d.endswith(b"\x69" + struct.pack("<d", 1.5))  # field 13, wire type 1


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (DataType.INT8, 128),
        (DataType.INT16, -32769),
        (DataType.UINT16, -1),
        (DataType.UINT64, 1 << 64),
        (DataType.INT32, 1.5),
        (DataType.BOOLEAN, 1),
        (DataType.STRING, 3),
        (DataType.DOUBLE, "x"),
        (DataType.FLOAT, 1e300),
    ],
)
def test_values_that_do_not_fit_are_refused(datatype: DataType, value: object) -> None:
    with pytest.raises(CodecError):
        codec.encode_metric(Metric("m", datatype=datatype, value=value))  # type: ignore[arg-type]


def test_null_historical_transient_and_properties() -> None:
    metric = Metric(
        alias=3,
        timestamp=5,
        datatype=DataType.DOUBLE,
        value=None,
        is_null=True,
        is_historical=True,
        is_transient=True,
        properties={
            "Quality": PropertyValue(DataType.INT32, 0),
            "engUnit": PropertyValue(DataType.STRING, "degC"),
            "engLow": PropertyValue(DataType.DOUBLE, -40.0),
            "missing": PropertyValue(DataType.STRING, None),
        },
    )
    back = decode_payload(encode_payload(Payload(metrics=(metric,))))
    assert back.metrics == (metric,)
    assert back.timestamp is None and back.seq is None


def test_unknown_fields_are_skipped_and_garbage_refused() -> None:
    metric = codec.encode_metric(Metric("m", datatype=DataType.BOOLEAN, value=True))
    # payload: uuid (4) and body (5), a metric's metadata (8) and a bytes_value (17) skipped
    extra_metric = metric + bytes.fromhex("4200") + bytes.fromhex("8a010101")
    data = (
        bytes.fromhex("0801")
        + b"\x12"
        + bytes([len(extra_metric)])
        + extra_metric
        + bytes.fromhex("2203616263")
        + bytes.fromhex("2a0100")
    )
    back = decode_payload(data)
    assert back.timestamp == 1 and back.metrics[0].value is True
    with pytest.raises(CodecError):
        decode_payload(b"\x12\x05\x0a")  # truncated
    with pytest.raises(CodecError):
        decode_payload(b"\x0f")  # wire type 7


def test_seq_wraps_at_256() -> None:
    seq, seen = 0, []
    for _ in range(300):
        seen.append(seq)
        seq = codec.next_seq(seq)
    assert seen[:3] == [0, 1, 2] and seen[255] == 255 and seen[256] == 0 and max(seen) == 255
    back = decode_payload(encode_payload(Payload(seq=255)))
    assert back.seq == 255


def test_topics() -> None:
    assert codec.topic("plant1", "NBIRTH", "edge-01") == "spBv1.0/plant1/NBIRTH/edge-01"
    assert codec.topic("g", "DDATA", "n", "plc") == "spBv1.0/g/DDATA/n/plc"
    parsed = codec.parse_topic("spBv1.0/g/DCMD/n/plc")
    assert (parsed.group, parsed.message_type, parsed.node, parsed.device) == (
        "g",
        "DCMD",
        "n",
        "plc",
    )
    for bad in ("a/b", "a+b", "a#", ""):
        assert codec.id_problem(bad) is not None
        with pytest.raises(ValueError, match="Sparkplug"):
            codec.topic(bad, "NDATA", "n")
        with pytest.raises(ValueError):
            codec.topic("g", "DDATA", "n", bad)
    with pytest.raises(ValueError):
        codec.topic("g", "DDATA", "n")  # a device message without a device
    with pytest.raises(ValueError):
        codec.topic("g", "NDATA", "n", "d")
    with pytest.raises(ValueError):
        codec.topic("g", "STATE", "n")
    with pytest.raises(ValueError):
        codec.parse_topic("spBv1.0/g/DCMD/n")
    with pytest.raises(ValueError):
        codec.parse_topic("spAv1.0/g/NCMD/n")


def test_point_types_map_onto_sparkplug_datatypes() -> None:
    assert codec.datatype_of("bool") is DataType.BOOLEAN
    assert codec.datatype_of("int16") is DataType.INT16
    assert codec.datatype_of("uint32") is DataType.UINT32
    assert codec.datatype_of("int64") is DataType.INT64
    assert codec.datatype_of("uint64") is DataType.UINT64
    assert codec.datatype_of("float32") is DataType.FLOAT
    assert codec.datatype_of("float64") is DataType.DOUBLE
    assert codec.datatype_of("string") is DataType.STRING


def test_config_refuses_bad_ids_and_needs_a_group() -> None:
    ok = SparkplugEndpoint.model_validate({"host": "h", "group": "plant1", "node": "edge-01"})
    assert ok.group == "plant1" and ok.buffer == 10_000 and ok.effective_port == 1883
    with pytest.raises(ValueError, match="group"):
        SparkplugEndpoint.model_validate({"host": "h"})
    with pytest.raises(ValueError, match="group_id without '/', '\\+' or '#'"):
        SparkplugEndpoint.model_validate({"host": "h", "group": "a/b"})
    with pytest.raises(ValueError, match="edge_node_id"):
        SparkplugEndpoint.model_validate({"host": "h", "group": "g", "node": "n#"})


def test_a_host_state_is_json_with_online_and_a_timestamp() -> None:
    got = codec.decode_state(b'{"online": true, "timestamp": 1668114759262, "extra": 1}')
    assert got == codec.HostState(True, 1668114759262)
    assert codec.decode_state(b'{"timestamp": 7, "online": false}') == codec.HostState(False, 7)
    assert codec.state_topic("scada-1") == "spBv1.0/STATE/scada-1"
    with pytest.raises(ValueError, match="host_id"):
        codec.state_topic("scada/1")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"ONLINE", "not a JSON object"),  # Sparkplug 2.2's STATE
        (b"\xff\xfe", "not a JSON object"),
        (b"[true, 1]", "not a JSON object"),
        (b'{"timestamp": 1}', "'online'"),
        (b'{"online": "true", "timestamp": 1}', "'online'"),
        (b'{"online": true}', "'timestamp'"),
        (b'{"online": true, "timestamp": true}', "'timestamp'"),
        (b'{"online": true, "timestamp": -5}', "'timestamp'"),
        (b'{"online": true, "timestamp": 1.5}', "'timestamp'"),
    ],
)
def test_a_host_state_that_is_not_one_says_why(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        codec.decode_state(data)
