"""Payload codecs: each format byte for byte, SenML base fields, round trips, bad input."""

from __future__ import annotations

import json
import time

import cbor2
import pytest

from gateway.payloads import Format, PayloadError, decode, encode, format_of
from gateway.types import Sample

T = 1_700_000_000.0


def s(point: str, value: object, unit: str | None = None, ts: float = T) -> Sample:
    return Sample(point, value, source_ts=ts, gateway_ts=ts, unit=unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, Format.TEXT),
        (110, Format.SENML_JSON),
        ("senml+cbor", Format.SENML_CBOR),
        ("application/json", Format.JSON),
        ("text/plain;charset=utf-8", Format.TEXT),
        ("CBOR", Format.CBOR),
        (Format.JSON, Format.JSON),
    ],
)
def test_format_of(given: object, expected: Format) -> None:
    assert format_of(given) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [41, "xml", True, 1.5])
def test_format_of_refuses(bad: object) -> None:
    with pytest.raises(PayloadError, match="unsupported content format"):
        format_of(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (21.5, b"21.5"),
        (21.0, b"21.0"),
        (7, b"7"),
        (True, b"true"),
        (False, b"false"),
        ("on", b"on"),
    ],
)
def test_text_encode(value: object, text: bytes) -> None:
    assert encode([s("p", value)], "text") == text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"21.5", 21.5),
        (b" 7\n", 7),
        (b"-3", -3),
        (b"true", True),
        (b"OFF", False),
        (b"1e3", 1000.0),
        (b"hello", "hello"),
    ],
)
def test_text_decode(text: bytes, value: object) -> None:
    assert decode(text, Format.TEXT) == [(None, value, None, None)]
    assert type(decode(text, 0)[0][1]) is type(value)


def test_text_carries_one_value() -> None:
    with pytest.raises(PayloadError, match="one value, not 2"):
        encode([s("a", 1), s("b", 2)], "text")
    with pytest.raises(PayloadError, match="no value"):
        encode([s("a", None)], "text")


def test_json_and_cbor_bytes() -> None:
    samples = [s("temp", 21.5, "Cel"), s("on", True)]
    assert encode(samples, 50) == b'{"temp":21.5,"on":true}'
    assert encode(samples, 60) == cbor2.dumps({"temp": 21.5, "on": True})
    for fmt in (50, 60):
        assert decode(encode(samples, fmt), fmt) == [
            ("temp", 21.5, None, None),
            ("on", True, None, None),
        ]


def test_json_shapes() -> None:
    assert decode(b"42", "json") == [(None, 42, None, None)]
    assert decode(b'"x"', "json") == [(None, "x", None, None)]
    nested = b'{"a": {"b": 1, "c": [1, 2]}, "d": null}'
    assert decode(nested, "json") == [("a.b", 1, None, None), ("d", None, None, None)]
    assert decode(cbor2.dumps(3.25), "cbor") == [(None, 3.25, None, None)]


def test_senml_json_bytes() -> None:
    samples = [s("temp", 21.5, "Cel"), s("on", True), s("mode", "auto")]
    payload = encode(samples, "senml+json", base_name="boiler/")
    assert json.loads(payload) == [
        {"bn": "boiler/", "n": "temp", "u": "Cel", "v": 21.5, "t": T},
        {"n": "on", "vb": True, "t": T},
        {"n": "mode", "vs": "auto", "t": T},
    ]
    assert decode(payload, 110) == [
        ("boiler/temp", 21.5, T, "Cel"),
        ("boiler/on", True, T, None),
        ("boiler/mode", "auto", T, None),
    ]


def test_senml_cbor_uses_integer_labels() -> None:
    payload = encode([s("temp", 21.5, "Cel")], "senml+cbor", base_name="b/")
    assert cbor2.loads(payload) == [{-2: "b/", 0: "temp", 1: "Cel", 2: 21.5, 6: T}]
    assert decode(payload, 112) == [("b/temp", 21.5, T, "Cel")]


def test_senml_rfc8428_example_base_fields() -> None:
    # RFC 8428 section 5.1.3 (multiple measurements), abridged.
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e09, "bu": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"n": "temp", "u": "Cel", "t": 10, "v": 20.4},
        {"bn": "other:", "bv": 100, "n": "x", "v": 1.5},
    ]
    got = decode(json.dumps(pack).encode(), "senml+json")
    assert got == [
        ("urn:dev:ow:10e2073a01080063:", 20, 1.320067464e09, "%RH"),
        ("urn:dev:ow:10e2073a01080063:", 24.30621, 1.320067464e09, "lon"),
        ("urn:dev:ow:10e2073a01080063:temp", 20.4, 1.320067474e09, "Cel"),
        ("other:x", 101.5, 1.320067464e09, "%RH"),
    ]


def test_senml_relative_time_and_sum() -> None:
    before = time.time()
    got = decode(b'[{"n":"a","v":1,"t":-5},{"n":"b","bs":10,"s":2},{"n":"c","vb":false}]', 110)
    assert got[0][2] is not None and before - 5 <= got[0][2] <= time.time() - 5
    assert got[1][1] == 12
    assert got[2][1] is False
    [(name, value, _, _)] = decode(b'{"n":"lone","v":3}', 110)
    assert (name, value) == ("lone", 3)


def test_senml_round_trip_all_types() -> None:
    samples = [s("f", -0.5), s("i", 12), s("b", False), s("t", "text", "m")]
    for fmt in (110, 112):
        assert [(n, v, u) for n, v, _, u in decode(encode(samples, fmt), fmt)] == [
            ("f", -0.5, None),
            ("i", 12, None),
            ("b", False, None),
            ("t", "text", "m"),
        ]


@pytest.mark.parametrize(
    ("payload", "fmt", "reason"),
    [
        (b"", 0, "empty payload"),
        (b"   ", 0, "empty text"),
        (b"\xff\xfe", 0, "not UTF-8"),
        (b"nan", 0, "not a finite number"),
        (b"{bad", 50, "not JSON"),
        (b"[1, 2]", 50, "SenML pack goes with senml\\+json"),
        (b"{}", 50, "without values"),
        (b"\xff\x00", 60, "not CBOR"),
        (b"[]", 110, "non-empty array"),
        (b"42", 110, "non-empty array"),
        (b"[1]", 110, "record 0 is not a map"),
        (b'[{"n":"a"}]', 110, "record 0 has no value"),
        (b'[{"n":"a","v":"x"}]', 110, "v must be a number"),
        (b'[{"n":"a","v":1,"vs":"x"}]', 110, "more than one value"),
        (b'[{"n":"a","vd":"AA"}]', 110, "vd"),
        (b'[{"bver":11,"n":"a","v":1}]', 110, "version 11"),
        (b'[{"n":"a","v":1,"foo_":1}]', 110, "must-understand"),
        (b'[{"n":5,"v":1}]', 110, "n must be a str"),
        (b'[{"n":"a","vb":1}]', 110, "vb must be a bool"),
        (cbor2.dumps([{99: 1}]), 112, "unknown SenML CBOR label 99"),
        # Python's own limits: RecursionError, ValueError and OverflowError before.
        (b"[" * 3000, 50, "nested too deeply"),
        (b"[" * 100_000, 110, "nested too deeply"),
        (b'{"a": 1' + b"0" * 5000 + b"}", 50, r"10000000000000000000\.\.\. \(5001 characters\)"),
        (b"1" * 60_000, 0, r"^11111111111111111111\.\.\. \(60000 characters\) is not a finite"),
        (b"1" * 400, 0, "not a finite number"),  # an int, but no float holds it
        (b"-1" + b"0" * 400, 50, "not a finite number"),
        (cbor2.dumps({"a": 10**400}), 60, "a: 1000.* is not a finite number"),
        (b'{"a": NaN}', 50, "NaN is not a finite number"),
        (b'{"a": [Infinity]}', 50, "Infinity is not a finite number"),  # even where skipped
        (b'{"a": 1e999}', 50, "1e999 is not a finite number"),
        (b'[{"n":"a","v":-1e999}]', 110, "-1e999 is not a finite number"),
        (b"-inf", 0, "not a finite number"),
        (b'[{"n":"a","v":1,"t":1e300}]', 110, r"record 0: time \(bt \+ t\) 1e\+300 is not betw"),
        (b'[{"bt":-1e18,"n":"a","v":1}]', 110, "time .* is not between 1970-01-01 and 2200"),
        (b'[{"bt":1e10,"n":"a","v":1}]', 110, "not between"),  # 2286
    ],
)
def test_bad_input(payload: bytes, fmt: int, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode(payload, fmt)


def test_objects_nested_to_the_parser_limit_are_refused_or_read() -> None:
    depth = 2000  # deeper than the default recursion limit: json.loads refuses it
    with pytest.raises(PayloadError, match="nested too deeply"):
        decode(b'{"a":' * depth + b"1" + b"}" * depth, 50)
    [(name, value, _, _)] = decode(b'{"a":' * 50 + b"1" + b"}" * 50, 50)
    assert name == ".".join(["a"] * 50) and value == 1


def test_times_within_range_are_kept() -> None:
    [(_, _, when, _)] = decode(b'[{"n":"a","v":1,"t":7258118399}]', 110)  # 2199-12-31
    assert when == 7258118399
    [(_, value, _, _)] = decode(b"1" * 300, 0)  # a large int a float still holds
    assert value == int("1" * 300)


def test_payload_error_is_value_error() -> None:
    assert issubclass(PayloadError, ValueError)
    with pytest.raises(PayloadError, match="needs one"):
        encode([s("a", None)], 110)
    with pytest.raises(PayloadError, match="JSON"):
        encode([s("a", float("nan"))], 50)
