"""MQTT points read and write payloads as CoAP does: a string point's text is the text as sent
(by the shared `gateway.payloads.decode_for`), and a command to a JSON point with a ``field`` is
the object the point is read from, not a bare value."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import MosquittoBroker
from test_mqtt_adapter import adapter, collect, create_session, publish_to, running

from gateway import payloads
from gateway.bus import Bus
from gateway.types import Sample, Value
from protocols.mqtt.codec import PayloadError, PointDecoder, command_payload
from protocols.mqtt.config import MqttPoint


def point(**kw: Any) -> MqttPoint:
    return MqttPoint.model_validate({"name": "p", "topic": "dev/p", **kw})


def read(p: MqttPoint, payload: bytes) -> Value:
    samples, errors = PointDecoder([p], "dev").decode(p.topic, payload, received=1.0)
    assert errors == [] and len(samples) == 1
    return samples[0].value


# --- text: a string point takes the text as it is -------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"1234", "1234"),
        (b"true", "true"),
        (b"1e3", "1e3"),
        (b"1234\n", "1234"),  # what echo | mosquitto_pub -s sends
        (b"on\r\n", "on"),
        (b" padded \n\n", " padded \n"),  # one line end dropped; the rest is the text
        ("héllo".encode(), "héllo"),
    ],
)
@pytest.mark.parametrize("config", [{"format": "text"}, {"format": "text", "type": "string"}])
def test_a_string_text_point_is_the_text_less_one_line_end(
    config: dict[str, Any], payload: bytes, text: str
) -> None:
    p = point(**config)
    assert read(p, payload) == text
    # one piece of code: what CoAP reads for a string point
    assert payloads.decode_for(payload, "text", "string")[0][1] == text


@pytest.mark.parametrize(
    ("config", "payload", "value"),
    [
        ({"type": "int16"}, b"1234\n", 1234),
        ({"type": "float64"}, b"1e3", 1000.0),
        ({"type": "bool"}, b"true\n", True),
        ({"type": "bool"}, b"off", False),
    ],
)
def test_numeric_and_bool_text_points_still_parse(
    config: dict[str, Any], payload: bytes, value: Value
) -> None:
    got = read(point(format="text", **config), payload)
    assert got == value and type(got) is type(value)


def test_an_empty_payload_is_no_text() -> None:
    """As CoAP and the numeric text points: an empty payload (on MQTT, a retained message
    being cleared) is not a value, so the point keeps its last one."""
    p = point(format="text")
    samples, errors = PointDecoder([p], "dev").decode(p.topic, b"")
    assert samples == [] and len(errors) == 1
    assert isinstance(errors[0], PayloadError) and "empty payload" in str(errors[0])


async def test_a_string_point_read_through_the_broker_keeps_its_text(
    mosquitto: MosquittoBroker,
) -> None:
    points = [
        {"name": "serial", "topic": "d/serial", "format": "text"},
        {"name": "count", "topic": "d/count", "format": "text", "type": "int32"},
    ]
    bus = Bus()
    seen = bus.subscribe("telemetry/up", maxsize=100, name="test")
    async with running(adapter(mosquitto.port, bus, points=points)):
        await publish_to(mosquitto.port, "d/serial", "1234\n")
        await publish_to(mosquitto.port, "d/count", "1234\n")
        got: dict[str, Value] = {}
        async with asyncio.timeout(10):
            while len(got) < 2:
                message = await seen.get()
                got.update((s.point, s.value) for s in message.samples)
    assert got == {"serial": "1234", "count": 1234}


# --- json commands: the object the point is read from ----------------------------------------------


@pytest.mark.parametrize(
    ("config", "value", "payload"),
    [
        ({}, 22.0, b"22.0"),  # no field: a bare JSON value, as before
        ({"field": "value"}, 22.0, b'{"value":22.0}'),  # an explicit field is an object
        ({"field": "temp"}, 22.0, b'{"temp":22.0}'),
        ({"field": "temp", "type": "int16"}, 22, b'{"temp":22}'),
        ({"field": "on", "type": "bool"}, True, b'{"on":true}'),
        ({"field": "mode", "type": "string"}, "éco", '{"mode":"éco"}'.encode()),
        ({"field": "data.temp"}, 22.0, b'{"data":{"temp":22.0}}'),  # dotted: nested, as read
        ({"field": "a.b.c", "type": "int16"}, 1, b'{"a":{"b":{"c":1}}}'),
    ],
)
def test_a_json_command_with_a_field_is_an_object(
    config: dict[str, Any], value: Value, payload: bytes
) -> None:
    p = point(access="rw", command_topic="dev/p/set", **config)
    assert command_payload(p, value) == payload
    assert read(p, payload) == value  # the point reads its own command back as the value


def test_a_one_key_command_is_what_the_coap_client_writes() -> None:
    p = point(field="temp", access="rw", command_topic="dev/p/set")
    assert command_payload(p, 22.0) == payloads.encode([Sample("temp", 22.0)], "json")


async def test_json_field_commands_reach_the_broker_as_objects(
    mosquitto: MosquittoBroker,
) -> None:
    points = [
        {"name": "sp", "topic": "d/state", "field": "temp", "access": "rw",
         "command_topic": "d/sp/set"},
        {"name": "fan", "topic": "d/state", "field": "fan.on", "type": "bool", "access": "rw",
         "command_topic": "d/fan/set"},
        {"name": "raw", "topic": "d/raw", "type": "int16", "access": "rw",
         "command_topic": "d/raw/set"},
    ]  # fmt: skip
    await create_session(mosquitto.port, "cmds", "d/+/set")
    async with running(adapter(mosquitto.port, points=points)) as mqtt:
        await mqtt.write("sp", 22)
        await mqtt.write("fan", 1)
        await mqtt.write("raw", 7)
    assert await collect(mosquitto.port, "cmds", "d/+/set", count=3) == [
        ("d/sp/set", '{"temp":22.0}'),
        ("d/fan/set", '{"fan":{"on":true}}'),
        ("d/raw/set", "7"),  # no field: bare, byte for byte as before
    ]
