"""Writes to MQTT points are published in the format the point is read in (what its device
speaks), and a ``command_topic`` the point itself reads is a config error."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError
from test_mqtt_adapter import adapter, collect, create_session, running

from gateway.commands import WriteRefused, WriteStatus
from gateway.config import ConfigError, load_config_text
from gateway.types import Value
from protocols.mqtt.codec import PointDecoder, command_payload
from protocols.mqtt.config import MqttPoint


def point(**kw: Any) -> MqttPoint:
    return MqttPoint.model_validate({"name": "sp", "topic": "dev/sp", **kw})


@pytest.mark.parametrize(
    ("config", "value", "payload"),
    [
        ({}, 7.0, b"7.0"),  # json: a bare JSON value, as before
        ({"type": "string"}, "hello", b'"hello"'),
        ({"format": "text"}, "hello", b"hello"),  # text: plain text, no JSON quotes
        ({"format": "text", "type": "int16"}, 7, b"7"),
        ({"format": "text", "type": "float64"}, 7.0, b"7.0"),
        ({"format": "text", "type": "bool"}, True, b"true"),
        ({"format": "senml"}, 7.0, b'[{"n":"sp","v":7.0}]'),  # the only record: the point's name
        ({"format": "senml", "senml_name": "urn:dev:7:sp"}, 7.0, b'[{"n":"urn:dev:7:sp","v":7.0}]'),
        ({"format": "senml", "type": "bool"}, False, b'[{"n":"sp","vb":false}]'),
        ({"format": "senml", "type": "string"}, "eco", b'[{"n":"sp","vs":"eco"}]'),
    ],
)
def test_a_command_is_written_in_the_points_format(
    config: dict[str, Any], value: Value, payload: bytes
) -> None:
    p = point(**config)
    assert command_payload(p, value) == payload
    # and the point reads it back as the same value: the device's format both ways
    samples, errors = PointDecoder([p], "dev").decode(p.topic, payload, received=1.0)
    assert errors == [] and [s.value for s in samples] == [value]


@pytest.mark.parametrize(
    "config", [{"format": "senml"}, {}, {"field": "set.temp"}, {"field": "temp"}]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_has_no_nan_or_infinity(config: dict[str, Any], value: float) -> None:
    """A NaN write to a JSON point went out as ``null`` (bare or in its field), which a device
    reads as "no value" or a type error: refused like SenML's, as the CoAP client refuses it."""
    with pytest.raises(ValueError, match="JSON|NaN|nan|inf"):
        command_payload(point(**config), value)


async def test_writes_reach_the_broker_in_the_points_format(mosquitto: Any) -> None:
    points = [
        {"name": "label", "topic": "d/label", "format": "text", "access": "rw",
         "command_topic": "d/label/set"},
        {"name": "sp", "topic": "d/pack", "format": "senml", "senml_name": "urn:d:sp",
         "access": "rw", "command_topic": "d/pack/set"},
        {"name": "on", "topic": "d/on", "type": "bool", "access": "rw",
         "command_topic": "d/on/set"},
    ]  # fmt: skip
    await create_session(mosquitto.port, "cmds", "d/+/set")
    async with running(adapter(mosquitto.port, points=points)) as mqtt:
        await mqtt.write("label", "hello")
        await mqtt.write("sp", 7)
        await mqtt.write("on", 1)
    assert await collect(mosquitto.port, "cmds", "d/+/set", count=3) == [
        ("d/label/set", "hello"),
        ("d/pack/set", '[{"n":"urn:d:sp","v":7.0}]'),
        ("d/on/set", "true"),
    ]


async def test_a_value_the_format_cannot_carry_is_a_bad_value_not_unreachable() -> None:
    points = [{"name": "sp", "topic": "d/pack", "format": "senml", "access": "rw",
               "command_topic": "d/pack/set"}]  # fmt: skip
    async with adapter(1, points=points) as mqtt:  # never connected: the value is refused first
        with pytest.raises(WriteRefused) as info:
            await mqtt.write("sp", math.nan)
    assert info.value.status is WriteStatus.BAD_VALUE


# --- command_topic: not a topic the point reads ---------------------------------------------------


def test_a_command_topic_the_point_reads_is_refused() -> None:
    with pytest.raises(ValidationError, match="it would read its writes back"):
        MqttPoint.model_validate(
            {"name": "sp", "access": "rw", "topic": "dev/sp", "command_topic": "dev/sp"}
        )
    point(access="rw", command_topic="dev/sp/set")  # beside it is fine


def test_a_wildcard_point_does_not_read_its_own_command_topic() -> None:
    """plant/# with plant/pump/set is a common layout (it validated before): the point's
    SenML commands on that topic must not come back as the device's value."""
    sp = MqttPoint.model_validate(
        {"name": "sp", "access": "rw", "topic": "dev/+/pack", "format": "senml",
         "senml_name": "sp", "command_topic": "dev/7/pack"}
    )  # fmt: skip
    decoder = PointDecoder([sp], "dev")
    assert decoder.points_for("dev/7/pack") == []
    assert decoder.points_for("dev/8/pack") == [sp]
    samples, _ = decoder.decode("dev/7/pack", command_payload(sp, 7.0))
    assert samples == []


def test_the_config_error_names_the_key() -> None:
    text = (
        "endpoints:\n"
        "  dev:\n"
        "    protocol: mqtt\n"
        "    host: h\n"
        "    points:\n"
        "      - {name: ok, topic: d/ok}\n"
        "      - {name: sp, topic: d/sp, access: rw, command_topic: d/sp}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "loop.yaml")
    assert str(info.value).splitlines() == [
        "loop.yaml:7:60: endpoints.dev.points[1].command_topic: found 'd/sp'; expected a topic"
        " the point does not read ('d/sp'): it would read its writes back as the device's value"
    ]
