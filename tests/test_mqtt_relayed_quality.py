"""A gateway reading another gateway over MQTT keeps the quality the first one gave a reading:
its ``sample`` payloads carry ``quality`` and ``reason`` beside ``value``, its ``device``
payloads a ``quality`` object beside ``values``. A dead device upstream is Bad downstream, never
a stale Good."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker
from test_opcua_server import running_gateway

from gateway.bus import Subscription
from gateway.types import Message, Quality, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator
from protocols.mqtt.codec import PointDecoder, encode
from protocols.mqtt.config import MqttPoint, MqttRoute

T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z


def decoder(*points: dict[str, Any]) -> PointDecoder:
    return PointDecoder([MqttPoint.model_validate(p) for p in points], "dev")


def published(payload: str, *samples: Sample) -> bytes:
    """What gateway A publishes for ``samples`` of its device ``pump`` with ``payload``."""
    topic = "a/{device}" if payload == "device" else "a/{device}/{point}"
    route = MqttRoute.model_validate({"topic": topic, "payload": payload})
    message = Message.telemetry("pump", samples)
    return encode(message, route, "a")[0][1]


SAMPLE_POINTS = (
    {"name": "relayed", "topic": "a/pump/t", "unit": "degC"},  # reads "value" implicitly
    {"name": "relayed_f", "topic": "a/pump/t", "field": "value", "unit": "degC"},
)


@pytest.mark.parametrize("quality", [Quality.UNCERTAIN, Quality.BAD])
def test_a_sample_payload_keeps_its_quality_and_reason(quality: Quality) -> None:
    payload = published("sample", Sample("t", 22.5, quality, T0, T0, "degC", "above high 20"))
    samples, errors = decoder(*SAMPLE_POINTS).decode("a/pump/t", payload, received=9.0)
    assert errors == []
    assert [(s.point, s.value, s.quality, s.reason, s.source_ts) for s in samples] == [
        ("relayed", 22.5, quality, "above high 20", T0),
        ("relayed_f", 22.5, quality, "above high 20", T0),
    ]


def test_a_dead_device_relayed_is_bad_not_a_bad_payload() -> None:
    payload = published("sample", Sample("t", None, Quality.BAD, T0, T0, "degC", "connection lost"))
    assert b'"value":null,"quality":"bad"' in payload
    samples, errors = decoder(*SAMPLE_POINTS).decode("a/pump/t", payload, received=9.0)
    assert errors == []
    assert [(s.point, s.value, s.quality, s.reason, s.unit) for s in samples] == [
        ("relayed", None, Quality.BAD, "connection lost", "degC"),
        ("relayed_f", None, Quality.BAD, "connection lost", "degC"),
    ]


def test_quality_is_read_beside_the_field_and_good_or_unknown_changes_nothing() -> None:
    d = decoder({"name": "temp", "topic": "t", "field": "boiler.temp"})
    nested = {"boiler": {"temp": None, "quality": "bad", "reason": "sensor open"}}
    samples, errors = d.decode("t", json.dumps(nested).encode(), received=1.0)
    assert errors == [] and [(s.value, s.quality, s.reason) for s in samples] == [
        (None, Quality.BAD, "sensor open")
    ]
    # a quality elsewhere in the object is not this value's
    elsewhere = {"boiler": {"temp": 20}, "quality": "bad"}
    samples, _ = d.decode("t", json.dumps(elsewhere).encode(), received=1.0)
    assert [(s.value, s.quality) for s in samples] == [(20.0, Quality.GOOD)]
    d = decoder({"name": "a", "topic": "t"})
    for extra in ({"quality": "good", "reason": "ignored"}, {"quality": 192}, {"quality": "high"}):
        samples, errors = d.decode("t", json.dumps({"value": 5, **extra}).encode(), received=1.0)
        assert errors == [] and [(s.value, s.quality, s.reason) for s in samples] == [
            (5.0, Quality.GOOD, None)
        ]
    # null is only a value when the payload says the reading is bad
    _, errors = d.decode("t", b'{"value": null, "quality": "uncertain"}', received=1.0)
    assert "None is not a scalar value" in str(errors[0])
    _, errors = d.decode("t", b'{"value": null, "quality": 192}', received=1.0)
    assert "None is not a scalar value" in str(errors[0])


def test_the_range_check_still_applies_to_a_relayed_reading() -> None:
    d = decoder({"name": "a", "topic": "t", "high": 10})
    samples, _ = d.decode("t", b'{"value": 20, "quality": "uncertain", "reason": "stale"}')
    assert samples[0].quality is Quality.UNCERTAIN
    assert samples[0].reason is not None and samples[0].reason.startswith("stale; ")


def test_a_device_payload_keeps_the_quality_of_each_point() -> None:
    payload = published(
        "device",
        Sample("temp", 21.5, Quality.GOOD, T0, T0),
        Sample("flow", None, Quality.BAD, T0, T0, None, "timeout"),
        Sample("level", 3, Quality.UNCERTAIN, T0, T0),
    )
    assert b'"quality":{"flow":"bad","level":"uncertain"}' in payload
    d = decoder(
        *({"name": n, "topic": "a/pump", "field": f"values.{n}"} for n in ("temp", "flow", "level"))
    )
    samples, errors = d.decode("a/pump", payload, received=9.0)
    assert errors == []
    assert [(s.point, s.value, s.quality, s.source_ts) for s in samples] == [
        ("temp", 21.5, Quality.GOOD, T0),
        ("flow", None, Quality.BAD, T0),  # a device payload sends no reasons
        ("level", 3.0, Quality.UNCERTAIN, T0),
    ]


# --- end to end: gateway A (Modbus) -> mosquitto -> gateway B ----------------------------------


async def until_all(seen: Subscription, points: set[str], quality: Quality) -> dict[str, Sample]:
    """The first sample of ``quality`` of each of ``points`` that the subscription delivers."""
    found: dict[str, Sample] = {}
    while found.keys() != points:
        message = await asyncio.wait_for(seen.get(), 15)
        for s in message.samples:
            if s.point in points and s.quality is quality:
                found.setdefault(s.point, s)
    return found


async def test_a_second_gateway_serves_the_first_ones_quality(
    mosquitto: MosquittoBroker, simulator: Simulator
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("input", 0, 225, DataType.INT16)  # 22.5 degC, above high 20: uncertain
    broker = f"protocol: mqtt, host: {mosquitto.host}, port: {mosquitto.port}, outbox: null"
    gateway_a = f"""
gateway: {{name: a}}
devices:
  pump:
    protocol: modbus
    host: {HOST}
    port: {device.port}
    timeout: 0.3
    reconnect: {{initial: 0.1, max: 0.3}}
    poll_groups: {{fast: {{interval: 0.2}}}}
    points:
      - {{name: t, table: input, address: 0, type: int16, scale: 0.1, unit: degC, high: 20,
          poll: fast}}
endpoints:
  up: {{{broker}}}
bridges:
  - {{name: samples, from: pump, to: up, topic: "e2/relay/{{point}}", payload: sample}}
  - {{name: snapshot, from: pump, to: up, topic: "e2/dev/{{device}}", payload: device}}
"""
    gateway_b = f"""
gateway: {{name: b}}
endpoints:
  e2:
    protocol: mqtt
    host: {mosquitto.host}
    port: {mosquitto.port}
    points:
      - {{name: relayed, topic: e2/relay/t, format: json, unit: degC}}
      - {{name: relayed_f, topic: e2/relay/t, format: json, field: value, unit: degC}}
      - {{name: snap, topic: e2/dev/pump, field: values.t, unit: degC}}
"""
    async with running_gateway(gateway_b) as b:
        seen = b.bus.subscribe("telemetry/e2", maxsize=1000, name="test")
        async with running_gateway(gateway_a):
            points = {"relayed", "relayed_f", "snap"}
            found = await until_all(seen, points, Quality.UNCERTAIN)
            assert {p: s.value for p, s in found.items()} == dict.fromkeys(points, 22.5)
            await simulator.stop_device(device)  # A's device dies: A publishes it bad
            found = await until_all(seen, points, Quality.BAD)
            assert {p: s.value for p, s in found.items()} == dict.fromkeys(points)
            assert found["relayed"].reason and found["relayed"].reason == found["relayed_f"].reason
            assert found["snap"].reason is None  # a device payload sends no reasons
        assert b.adapters["e2"].status()["bad_payloads"] == 0
        seen.close()
