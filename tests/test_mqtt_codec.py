"""MQTT codec (protocols/mqtt/codec.py): topics and payloads, byte for byte. No I/O."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gateway.types import Message, MessageKind, Quality, Sample
from protocols.mqtt.codec import (
    KeyDecoder,
    PayloadError,
    TopicError,
    decode,
    decode_sample,
    encode,
    escape_level,
    flatten,
    format_ts,
    json_value,
    render_topic,
    unescape_level,
)
from protocols.mqtt.config import MqttRoute

TS = 1714564800.123  # 2024-05-01T12:00:00.123Z
TS_ISO = "2024-05-01T12:00:00.123Z"


def sample(point: str, value: object, quality: Quality = Quality.GOOD, **kw: object) -> Sample:
    kw.setdefault("source_ts", TS)
    kw.setdefault("gateway_ts", TS + 0.5)
    return Sample(point=point, value=value, quality=quality, **kw)  # type: ignore[arg-type]


def message(*samples: Sample, device: str = "boiler", seq: int = 7) -> Message:
    return Message(
        topic=f"telemetry/{device}",
        kind=MessageKind.TELEMETRY,
        samples=samples,
        origin="modbus1",
        seq=seq,
        device=device,
    )


VALUE = MqttRoute(topic="plant/{gateway}/{device}/{point}", payload="value")
SAMPLE = MqttRoute(topic="plant/{device}/{point}", payload="sample")
DEVICE = MqttRoute(topic="plant/{gateway}/{kind}/{device}", payload="device")


# --- value ---------------------------------------------------------------------------------------


def test_value_mode_bytes() -> None:
    m = message(
        sample("temp", 21.5),
        sample("count", 42),
        sample("running", True),
        sample("stopped", False),
        sample("mode", "auto"),
        sample("label", 'say "hi" ü'),
        sample("missing", None),
        sample("big", 2**63),
        sample("tiny", 1e-7),
    )
    assert encode(m, VALUE, "gw1") == [
        ("plant/gw1/boiler/temp", b"21.5"),
        ("plant/gw1/boiler/count", b"42"),
        ("plant/gw1/boiler/running", b"true"),
        ("plant/gw1/boiler/stopped", b"false"),
        ("plant/gw1/boiler/mode", b'"auto"'),
        ("plant/gw1/boiler/label", '"say \\"hi\\" ü"'.encode()),
        ("plant/gw1/boiler/missing", b"null"),
        ("plant/gw1/boiler/big", b"9223372036854775808"),
        ("plant/gw1/boiler/tiny", b"1e-07"),
    ]


def test_value_mode_nan_inf_and_bad_quality_are_null() -> None:
    m = message(
        sample("nan", math.nan),
        sample("inf", math.inf),
        sample("ninf", -math.inf),
        sample("bad", 12.5, Quality.BAD, reason="timeout"),
        sample("uncertain", 12.5, Quality.UNCERTAIN),
    )
    assert [p for _, p in encode(m, VALUE, "gw1")] == [b"null", b"null", b"null", b"null", b"12.5"]


def test_value_payloads_are_valid_json_roundtrip() -> None:
    values = [0.1, -3.0, 1.7976931348623157e308, 5e-324, 123456789012345678901234567890, "ä\n\t"]
    m = message(*(sample(f"p{i}", v) for i, v in enumerate(values)))
    decoded = [json.loads(p) for _, p in encode(m, VALUE, "gw1")]
    assert decoded == values


# --- sample --------------------------------------------------------------------------------------


def test_sample_mode_bytes() -> None:
    m = message(sample("temp", 21.5, unit="degC"), sample("count", 3))
    assert encode(m, SAMPLE, "gw1") == [
        (
            "plant/boiler/temp",
            b'{"value":21.5,"quality":"good","ts":"2024-05-01T12:00:00.123Z","unit":"degC"}',
        ),
        ("plant/boiler/count", b'{"value":3,"quality":"good","ts":"2024-05-01T12:00:00.123Z"}'),
    ]


def test_sample_mode_bad_quality_has_reason_and_nan_is_null() -> None:
    m = message(
        sample("flow", None, Quality.BAD, reason="timeout", unit="m3/h"),
        sample("level", math.nan, Quality.UNCERTAIN, reason="sensor drift"),
        sample("ok", 1.0, reason="ignored when good"),
    )
    assert [p for _, p in encode(m, SAMPLE, "gw1")] == [
        b'{"value":null,"quality":"bad","ts":"2024-05-01T12:00:00.123Z","unit":"m3/h",'
        b'"reason":"timeout"}',
        b'{"value":null,"quality":"uncertain","ts":"2024-05-01T12:00:00.123Z",'
        b'"reason":"sensor drift"}',
        b'{"value":1.0,"quality":"good","ts":"2024-05-01T12:00:00.123Z"}',
    ]


def test_sample_without_source_ts_uses_gateway_ts() -> None:
    m = message(sample("temp", 1, source_ts=0.0, gateway_ts=TS))
    ((_, payload),) = encode(m, SAMPLE, "gw1")
    assert json.loads(payload)["ts"] == TS_ISO


def test_sample_unicode_unit_is_utf8_not_escaped() -> None:
    m = message(sample("temp", 20, unit="°C"))
    ((_, payload),) = encode(m, SAMPLE, "gw1")
    assert '"unit":"°C"'.encode() in payload


# --- device --------------------------------------------------------------------------------------


def test_device_mode_bytes_all_good() -> None:
    m = message(
        sample("temp", 21.5, source_ts=TS - 1),
        sample("running", True, source_ts=TS),
        seq=42,
    )
    assert encode(m, DEVICE, "gw1") == [
        (
            "plant/gw1/telemetry/boiler",
            b'{"device":"boiler","ts":"2024-05-01T12:00:00.123Z","seq":42,'
            b'"values":{"temp":21.5,"running":true}}',
        )
    ]


def test_device_mode_lists_only_non_good_quality() -> None:
    m = message(
        sample("temp", 21.5),
        sample("flow", None, Quality.BAD, reason="timeout"),
        sample("level", math.inf, Quality.UNCERTAIN),
    )
    ((_, payload),) = encode(m, DEVICE, "gw1")
    assert payload == (
        b'{"device":"boiler","ts":"2024-05-01T12:00:00.123Z","seq":7,'
        b'"values":{"temp":21.5,"flow":null,"level":null},'
        b'"quality":{"flow":"bad","level":"uncertain"}}'
    )


def test_device_mode_point_given_twice_keeps_the_later() -> None:
    m = message(sample("temp", 1.0, source_ts=TS - 5), sample("temp", 2.0, source_ts=TS))
    ((_, payload),) = encode(m, DEVICE, "gw1")
    assert json.loads(payload)["values"] == {"temp": 2.0}


def test_device_falls_back_to_origin_and_empty_message_publishes_nothing() -> None:
    m = Message("t", MessageKind.EVENT, (sample("x", 1),), origin="plc", seq=1)
    assert encode(m, DEVICE, "gw1")[0][0] == "plant/gw1/event/plc"
    assert encode(message(), VALUE, "gw1") == []
    assert encode(message(), DEVICE, "gw1") == []


def test_compact_separators_everywhere() -> None:
    m = message(sample("a b", "x y", unit="k g"))
    for route in (VALUE, SAMPLE, DEVICE):
        for _, payload in encode(m, route, "gw1"):
            text = payload.decode()
            assert ", " not in text.replace("x y", "").replace("a b", "").replace("k g", "")
            assert ": " not in text


# --- topics --------------------------------------------------------------------------------------


def test_names_cannot_inject_levels_or_wildcards() -> None:
    m = message(sample("a/b", 1), sample("t+", 2), sample("all#", 3), sample("$x", 4), device="d/1")
    topics = [t for t, _ in encode(m, VALUE, "gw/x")]
    assert topics == [
        "plant/gw%2Fx/d%2F1/a%2Fb",
        "plant/gw%2Fx/d%2F1/t%2B",
        "plant/gw%2Fx/d%2F1/all%23",
        "plant/gw%2Fx/d%2F1/%24x",
    ]
    for topic in topics:
        assert topic.count("/") == 3
        assert "+" not in topic and "#" not in topic


def test_escape_roundtrip_and_plain_names_untouched() -> None:
    for name in ["temp", "tank-1.level", "ü", "a/b+c#d%e", "$SYS", "100%", "a\0b"]:
        assert unescape_level(escape_level(name)) == name
    assert escape_level("tank-1.level_2") == "tank-1.level_2"
    assert escape_level("100%") == "100%25"
    assert escape_level("a$") == "a$"


def test_empty_name_is_refused() -> None:
    with pytest.raises(TopicError):
        escape_level("")
    with pytest.raises(TopicError):
        encode(message(sample("", 1)), VALUE, "gw1")


def test_render_topic_kind_and_cache() -> None:
    t1 = render_topic(
        "{gateway}/{kind}/{device}/{point}", gateway="g", device="d", point="p", kind="telemetry"
    )
    t2 = render_topic(
        "{gateway}/{kind}/{device}/{point}", gateway="g", device="d", point="p", kind="telemetry"
    )
    assert t1 == "g/telemetry/d/p"
    assert t1 is t2  # cached


# --- timestamps and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "iso"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (TS, TS_ISO),
        (1714564800.9996, "2024-05-01T12:00:01.000Z"),  # rounds to the nearest millisecond
        (1709210096.5, "2024-02-29T12:34:56.500Z"),
    ],
)
def test_format_ts(ts: float, iso: str) -> None:
    assert format_ts(ts) == iso


def test_json_value_subclasses() -> None:
    import enum

    class Mode(enum.IntEnum):
        AUTO = 3

    assert json_value(Mode.AUTO) == "3"
    assert json_value(float("nan")) == "null"


# --- decode --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"21.5", 21.5),
        (b"42", 42),
        (b"true", True),
        (b"null", None),
        (b'"on"', "on"),
        (b' {"value": 3.5, "quality": "good"} ', 3.5),
        (b'{"value":21.5,"quality":"good","ts":"2024-05-01T12:00:00.123Z","unit":"degC"}', 21.5),
    ],
)
def test_decode_json(payload: bytes, value: object) -> None:
    assert decode("sensors/t", payload, "json") == value


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "empty payload"),
        (b'{"temp": 1}', "without a 'value' key"),
        (b"[1, 2]", "got list"),
        (b'{"value": {"a": 1}}', "got dict"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),  # RecursionError before
        (b"1" + b"0" * 5000, "is not a finite number"),  # ValueError (4300 digits) before
        (b'{"value": NaN}', "NaN is not a finite number"),
        (b"-Infinity", "-Infinity is not a finite number"),
        (b'{"value": 1e999}', "1e999 is not a finite number"),
        (b'{"value": 1, "ts": 1e300}', "ts 1e+300 is not between 1970"),
    ],
)
def test_decode_json_errors_name_the_topic(payload: bytes, why: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode("sensors/t", payload, "json")
    assert "sensors/t" in str(info.value)
    assert why in str(info.value)
    assert info.value.topic == "sensors/t"


def test_decode_text_and_raw() -> None:
    assert decode("t", "héllo 1".encode(), "text") == "héllo 1"
    assert decode("t", b"", "text") == ""
    assert decode("t", b"\x00\x01\xff", "raw") == "0001ff"
    with pytest.raises(PayloadError, match="not UTF-8"):
        decode("t", b"\xff", "text")


def test_our_sample_payload_reads_back() -> None:
    m = message(sample("temp", 21.5, unit="degC"))
    ((topic, payload),) = encode(m, SAMPLE, "gw1")
    assert decode(topic, payload, "json") == 21.5


def test_our_sample_payload_reads_back_whole() -> None:
    bad = sample("temp", 21.5, Quality.BAD, unit="degC", reason="timeout")
    ((topic, payload),) = encode(message(bad), SAMPLE, "gw1")
    got = decode_sample(topic, payload, "json", received=TS + 9)
    assert (got.point, got.value, got.quality, got.unit, got.reason) == (
        topic,
        21.5,
        Quality.BAD,
        "degC",
        "timeout",
    )
    assert got.source_ts == pytest.approx(TS) and got.gateway_ts == TS + 9
    # Someone else's object: an unknown quality is not trusted; no ts means "when received".
    odd = decode_sample("t", b'{"value": 1, "quality": "fine"}', "json", received=5.0)
    assert (odd.quality, odd.source_ts, odd.unit) == (Quality.UNCERTAIN, 5.0, None)
    plain = decode_sample("t", b"3", "json", received=5.0)
    assert (plain.value, plain.quality, plain.source_ts) == (3, Quality.GOOD, 5.0)


# -- points: keys --------------------------------------------------------------------------------


def keyed(payload: object, topic: str = "plant/ahu1", **kw: Any) -> tuple[dict[str, object], str]:
    """What a keys decoder makes of one JSON payload: {point: value}, and its error text."""
    decoder = kw.pop("decoder", None) or KeyDecoder(["plant/#"], **kw)
    samples, errors = decoder.decode(topic, json.dumps(payload).encode(), 5.0)
    assert len(errors) <= 1
    return {s.point: s.value for s in samples}, str(errors[0]) if errors else ""


def test_flatten_dots_nested_keys_and_skips_arrays_and_nulls() -> None:
    data = {"a": 1, "b": {"c": True, "d": {"e": "on"}, "f": [1, 2]}, "g": None, "h": 2.5}
    assert list(flatten(data)) == [("a", 1), ("b.c", True), ("b.d.e", "on"), ("h", 2.5)]


def test_keys_of_an_object_are_points_stamped_by_its_own_time() -> None:
    decoder = KeyDecoder(["plant/#"])
    payload = b'{"AHU1_SAT": 21.6, "fan": {"on": true, "mode": "auto"}, "ts": "' + TS_ISO.encode()
    samples, errors = decoder.decode("plant/ahu1", payload + b'"}', 5.0)
    assert errors == []
    assert [(s.point, s.value) for s in samples] == [
        ("AHU1_SAT", 21.6),
        ("fan.on", True),
        ("fan.mode", "auto"),
    ]
    assert {(s.source_ts, s.gateway_ts, s.quality) for s in samples} == {(TS, 5.0, Quality.GOOD)}
    # without ts, time is the timestamp; without either, the time it was received
    assert keyed({"x": 1, "time": 1714564800})[0] == {"x": 1}
    samples, _ = decoder.decode("plant/ahu1", b'{"x": 1}', 5.0)
    assert samples[0].source_ts == 5.0


def test_a_bare_value_is_named_by_the_topics_last_level() -> None:
    assert keyed(21.5, "plant/ahu1/SAT") == ({"SAT": 21.5}, "")
    assert keyed("on", "plant/pump") == ({"pump": "on"}, "")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([1, 2], "no number, bool or string in it"),
        (None, "no number, bool or string in it"),
        ({"a": None, "b": []}, "no number, bool or string in it"),
        ({"ts": TS_ISO}, "no number, bool or string in it"),
    ],
)
def test_a_payload_with_nothing_to_read_is_bad(payload: object, reason: str) -> None:
    assert keyed(payload) == ({}, f"bad payload on 'plant/ahu1': {reason}")


def test_keys_that_are_not_point_names_are_skipped_with_one_error() -> None:
    values, error = keyed({"ok": 1, "a b": 2, "$x": 3, "c": {"d/e": 4}})
    assert values == {"ok": 1}
    assert error == (
        "bad payload on 'plant/ahu1': keys that are not point names skipped: 'a b', '$x', 'c.d/e'"
    )
    assert keyed(5, "plant/a b") == (
        {},
        "bad payload on 'plant/a b': keys that are not point names skipped: 'a b'",
    )


def test_declared_points_keep_their_names() -> None:
    assert keyed({"AHU1_SAT": 1, "new": 2}, reserved={"AHU1_SAT"}) == ({"new": 2}, "")
    assert keyed({"AHU1_SAT": 1}, reserved={"AHU1_SAT"}) == ({}, "")


def test_new_names_past_the_limit_are_dropped_known_ones_flow() -> None:
    decoder = KeyDecoder(["plant/#"], limit=2)
    assert keyed({"a": 1, "b": 2}, decoder=decoder) == ({"a": 1, "b": 2}, "")
    values, error = keyed({"a": 3, "c": 4, "d": 5}, decoder=decoder)
    assert values == {"a": 3}
    assert error.endswith("2 distinct point names already, new keys dropped: 'c', 'd'")
    assert set(decoder.names) == {"a", "b"}


def test_one_message_cannot_shut_new_names_out_for_good() -> None:
    """Anyone who may publish to the broker sends names: a message of 200,000 keys filled the
    table and every new key (a real sensor's) was dropped until a restart."""
    now = [0.0]
    decoder = KeyDecoder(["plant/#"], limit=10, per_message=4)
    # a device's first large object: learned a part per message, whole after a few
    big = {f"k{i}": i for i in range(6)}
    values, error = keyed(big, decoder=decoder)
    assert values == {"k0": 0, "k1": 1, "k2": 2, "k3": 3}
    assert error.endswith(
        "6 new keys in one message, over max_new_keys (4): the first learned, 'k4', 'k5'"
        " dropped this time"
    )
    assert keyed(big, decoder=decoder) == (big, "")
    decoder = KeyDecoder(["plant/#"], limit=3, per_message=2, idle=600.0, clock=lambda: now[0])
    values, error = keyed({"a": 0, "b": 0, "c": 0}, decoder=decoder)
    assert values == {"a": 0, "b": 0} and "'c' dropped this time" in error
    assert keyed({"a": 1, "b": 2, "c": 3}, decoder=decoder) == ({"a": 1, "b": 2, "c": 3}, "")
    now[0] = 500.0
    assert keyed({"a": 4}, decoder=decoder) == ({"a": 4}, "")  # a still flows
    now[0] = 700.0  # b and c unseen for 700 s, a for 200 s
    assert keyed({"temp": 21.5}, decoder=decoder) == ({"temp": 21.5}, "")
    assert set(decoder.names) == {"a", "temp"}  # the idle ones made room
    values, error = keyed({"d": 1, "e": 2}, decoder=decoder)
    assert values == {"d": 1} and error.endswith(
        "3 distinct point names already, new keys dropped: 'e'"
    )
    now[0] = 730.0  # full again, a minute has not passed: no second pass over the names
    assert keyed({"f": 1}, decoder=decoder)[0] == {}


def test_keys_payload_errors() -> None:
    decoder = KeyDecoder(["plant/#"])
    assert decoder.matches("plant/ahu1") and not decoder.matches("site/ahu1")
    for payload, why in [(b"{", "invalid JSON"), (b"\xff", "not UTF-8"), (b'{"ts": 1e15}', "ts")]:
        samples, (error,) = decoder.decode("plant/ahu1", payload, 5.0)
        assert samples == [] and why in str(error)


def test_wildcard_levels_are_what_plus_and_hash_matched() -> None:
    from protocols.mqtt.codec import wildcard_levels

    assert wildcard_levels("plant/+/status", "plant/ahu1/status") == ["ahu1"]
    assert wildcard_levels("plant/#", "plant/b7/ahu1") == ["b7", "ahu1"]
    assert wildcard_levels("plant/#", "plant") == []
    assert wildcard_levels("plant/ahu1", "plant/ahu1") == []


def test_keys_by_topic_name_bare_values_by_the_matched_levels() -> None:
    decoder = KeyDecoder(["plant/#", "site/+/t"], by_topic=["plant/#", "site/+/t"])
    assert keyed(3, "plant/b7/ahu1/temp", decoder=decoder)[0] == {"b7.ahu1.temp": 3}
    assert keyed(4, "site/b7/t", decoder=decoder)[0] == {"b7.t": 4}
    assert keyed(5, "plant", decoder=decoder)[0] == {"plant": 5}  # '#' matched no level
    assert keyed({"a": {"b": 1}}, "plant/x", decoder=decoder)[0] == {"x.a.b": 1}
    named, error = keyed({"t": 1}, "plant/bad level", decoder=decoder)
    assert named == {} and "'bad level.t'" in error
