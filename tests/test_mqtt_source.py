"""MQTT as a source: payloads on the points' topics fill points (JSON, SenML, text).

The codec is tested sans-IO; the end-to-end tests run a whole in-process gateway with a real
mosquitto (values published with ``mosquitto_pub``) bridged to the gateway's OPC UA server, read
and written by asyncua's client; writes are read back from the broker with ``mosquitto_sub``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from asyncua import Client, ua
from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from pydantic import ValidationError
from test_opcua_server import running_gateway

from gateway.passwords import hash_password
from gateway.runtime import Gateway
from gateway.types import Quality
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.codec import PayloadError, PointDecoder, parse_time
from protocols.mqtt.config import MqttEndpoint, MqttPoint

T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z


def decoder(*points: dict[str, Any]) -> PointDecoder:
    return PointDecoder([MqttPoint.model_validate(p) for p in points], "dev")


# --- codec --------------------------------------------------------------------------------------


def test_json_bare_value_object_field_and_timestamps() -> None:
    d = decoder(
        {"name": "a", "topic": "t/a"},
        {"name": "b", "topic": "t/obj", "field": "data.temp", "unit": "degC"},
        {"name": "c", "topic": "t/obj", "field": "data.on", "type": "bool"},
        {"name": "d", "topic": "t/d", "type": "int16"},
    )
    samples, errors = d.decode("t/a", b"21.5", received=5.0)
    assert errors == [] and [(s.point, s.value, s.source_ts, s.gateway_ts) for s in samples] == [
        ("a", 21.5, 5.0, 5.0)
    ]
    payload = json.dumps({"ts": "2024-05-01T12:00:00.250Z", "data": {"temp": 20, "on": 1}})
    samples, errors = d.decode("t/obj", payload.encode(), received=9.0)
    assert errors == []
    assert [(s.point, s.value, s.unit, s.source_ts) for s in samples] == [
        ("b", 20.0, "degC", T0),
        ("c", True, None, T0),
    ]
    assert isinstance(samples[0].value, float)
    samples, _ = d.decode("t/a", json.dumps({"value": 3, "time": T0 * 1000}).encode())
    assert samples[0].value == 3.0 and samples[0].source_ts == pytest.approx(T0)
    samples, _ = d.decode("t/d", b"7")
    assert samples[0].value == 7 and isinstance(samples[0].value, int)
    assert d.decode("elsewhere", b"1") == ([], [])


def test_parse_time() -> None:
    assert parse_time(T0) == T0
    assert parse_time(T0 * 1000) == pytest.approx(T0)
    assert parse_time("2024-05-01T12:00:00.250+00:00") == T0
    assert parse_time("2024-05-01T12:00:00.250") == T0  # no zone: UTC
    assert parse_time("yesterday") is None and parse_time(None) is None
    assert parse_time(True) is None


def test_senml_records_base_fields_and_wildcards() -> None:
    d = decoder(
        {"name": "temp", "topic": "s/+/pack", "format": "senml", "senml_name": "urn:dev:1:temp"},
        {"name": "hum", "topic": "s/+/pack", "format": "senml", "senml_name": "urn:dev:1:hum"},
        {"name": "only", "topic": "s/one", "format": "senml", "unit": "degC"},
    )
    pack = [
        {"bn": "urn:dev:1:", "bt": T0 - 0.25, "n": "temp", "u": "Cel", "v": 23.5, "t": 0.25},
        {"n": "hum", "v": 40},
    ]
    samples, errors = d.decode("s/x/pack", json.dumps(pack).encode(), received=1.0)
    assert errors == []
    assert [(s.point, s.value, s.source_ts, s.unit) for s in samples] == [
        ("temp", 23.5, T0, None),  # the declared unit (none), not SenML's "Cel"
        ("hum", 40.0, T0 - 0.25, None),
    ]
    samples, _ = d.decode("s/one", b'[{"n": "t", "v": 1.5}]')
    assert (samples[0].value, samples[0].unit) == (1.5, "degC")
    assert abs(samples[0].source_ts - samples[0].gateway_ts) < 1  # no time: now (RFC 8428)
    # relative times (< 2**28) count from now
    samples, _ = d.decode("s/one", b'[{"n": "t", "v": 1, "t": -10}]')
    assert abs(samples[0].source_ts - (samples[0].gateway_ts - 10)) < 1
    _samples, errors = d.decode("s/one", b'[{"n": "a", "v": 1}, {"n": "b", "v": 2}]')
    assert "set senml_name" in str(errors[0])


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff", "not UTF-8"),
        (b'{"other": 1}', "without the key 'value'"),
        (b'"warm"', "not a number"),
        (b"[1, 2]", "not a scalar"),
        (b"70000", "does not fit int16"),
        (b"1.5", "not an integer"),
    ],
)
def test_bad_payloads_are_errors_not_samples(payload: bytes, why: str) -> None:
    d = decoder({"name": "a", "topic": "t", "type": "int16"})
    samples, errors = d.decode("t", payload)
    assert samples == [] and len(errors) == 1
    assert isinstance(errors[0], PayloadError) and why in str(errors[0])


@pytest.mark.parametrize(
    ("point", "payload", "why"),
    [
        ({"field": "temperature"}, b'{"temperature": NaN}', "NaN is not a finite number"),
        ({}, b"Infinity", "Infinity is not a finite number"),
        ({}, b'{"value": 1e999}', "1e999 is not a finite number"),
        ({"format": "senml"}, b'[{"n": "t", "v": -Infinity}]', "-Infinity is not a finite"),
        ({"format": "senml"}, b'[{"n": "t", "v": 1e999}]', "1e999 is not a finite number"),
        ({"format": "text", "type": "float64"}, b"nan", "'t': nan is not a finite number"),
        ({"format": "text", "type": "float64"}, b"1e999", "1e999 is not a finite number"),
        # Python's limits: RecursionError and ValueError escaped the decoder before
        ({}, b"[" * 100_000, "invalid JSON (nested too deeply)"),
        ({"format": "senml"}, b"[" * 100_000, "bad SenML: nested too deeply"),
        ({}, b"1" * 5000, "(5000 characters) is not a finite number"),
        # timestamps no clock reads: an OPC UA target failed on them later (OverflowError)
        ({"field": "temperature"}, b'{"temperature": 21.5, "ts": 1e300}', "ts 1e+300 is not"),
        ({}, b'{"value": 21.5, "ts": -1e18}', "ts -1e+18 is not between 1970-01-01"),
        ({}, b'{"value": 21.5, "time": 9e12}', "time 9000000000000.0 is not between"),  # ms
        ({}, b'{"value": 1, "ts": "9999-01-01T00:00:00Z"}', "ts 9999-01-01T00:00:00Z is not"),
        ({"format": "senml"}, b'[{"n": "t", "v": 1, "t": 1e300}]', r"time (bt + t) 1e+300"),
    ],
)
def test_non_finite_numbers_nesting_and_absurd_times_are_errors(
    point: dict[str, Any], payload: bytes, why: str
) -> None:
    d = decoder({"name": "a", "topic": "t", **point})
    samples, errors = d.decode("t", payload)
    assert samples == [] and len(errors) == 1
    assert isinstance(errors[0], PayloadError) and why in str(errors[0])


def test_sane_times_and_numeric_text_are_read() -> None:
    d = decoder(
        {"name": "a", "topic": "t"},
        {"name": "x", "topic": "x", "format": "text", "type": "float64"},
        {"name": "s", "topic": "s", "format": "text"},
    )
    samples, _ = d.decode("t", json.dumps({"value": 1, "ts": T0 * 1000}).encode())
    assert samples[0].source_ts == pytest.approx(T0)  # milliseconds, within range
    samples, _ = d.decode("x", b" 21.5\n")
    assert samples[0].value == 21.5
    samples, _ = d.decode("s", b"NaN")
    assert samples[0].value == "NaN"  # a string point: text, not a number


def test_point_config_rules() -> None:
    with pytest.raises(ValidationError, match="needs a command_topic"):
        MqttPoint(name="a", topic="t", access="rw")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="only unambiguous for format senml"):
        MqttPoint(name="a", topic="t/+")
    with pytest.raises(ValidationError, match="cannot contain the wildcards"):
        MqttPoint(name="a", topic="t", access="rw", command_topic="c/+")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="field goes with format json"):
        MqttPoint(name="a", topic="t", format="senml", field="x")
    endpoint = MqttEndpoint.model_validate(
        {"host": "h", "points": [{"name": "a", "topic": "t"}, {"name": "a", "topic": "t"}]}
    )
    assert len(endpoint.check()) == 2  # the name twice, and the same topic and field twice


# --- end to end: MQTT -> OPC UA server, writes back to MQTT -------------------------------------


def gateway_config(broker: MosquittoBroker, opcua_port: int, pki: Path) -> str:
    op = hash_password("secret")
    return f"""
gateway: {{name: edge}}
endpoints:
  sensors:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    reconnect: {{initial: 0.05, max: 0.2}}
    points:
      - {{name: temp, topic: plant/boiler/temp, unit: degC}}
      - {{name: flow, topic: plant/boiler/state, field: flow.now, unit: "L/min"}}
      - {{name: hum, topic: "senml/+/pack", format: senml, senml_name: "urn:dev:7:hum"}}
      - {{name: setpoint, topic: plant/boiler/setpoint, unit: degC, access: rw,
          command_topic: plant/boiler/setpoint/set, low: 0, high: 90}}
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {opcua_port}
    anonymous: true
    security: {{allow_none: true, pki_dir: "{pki}"}}
    users: [{{username: op, password_hash: "{op}", access: write}}]
bridges:
  - {{name: up, from: sensors, to: opcua, units: {{temp: degF, setpoint: degF}}}}
"""


@contextlib.asynccontextmanager
async def source_gateway(
    broker: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, MqttAdapter]]:
    """The gateway of `gateway_config`, running, with its MQTT source connected."""
    text = gateway_config(broker, free_port(), tmp_path / "pki")
    async with running_gateway(text) as gateway:
        mqtt = gateway.adapters["sensors"]
        assert isinstance(mqtt, MqttAdapter)
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        yield gateway, mqtt


async def pub(broker: MosquittoBroker, topic: str, payload: str, *options: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        find_binary("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port),
        "-q", "1", "-t", topic, "-m", payload, *options,
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def read(client: Client, node_id: str) -> ua.DataValue:
    value: ua.DataValue = await client.get_node(node_id).read_data_value(raise_on_bad_status=False)
    return value


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def test_mqtt_payloads_reach_opcua_and_writes_come_back(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with source_gateway(mosquitto, tmp_path) as (gateway, mqtt):
        server = gateway.adapters["opcua"]
        url, ns = server.endpoint_url, server.namespace_index  # type: ignore[attr-defined]

        def node(point: str) -> str:
            return f"ns={ns};s=sensors.{point}"

        await pub(mosquitto, "plant/boiler/temp", json.dumps({"value": 21.5, "ts": T0}))
        state = {"ts": "2024-05-01T12:00:00.250Z", "flow": {"now": 12.5}}
        await pub(mosquitto, "plant/boiler/state", json.dumps(state))
        senml = [{"bn": "urn:dev:7:", "bt": T0, "n": "hum", "v": 41}, {"n": "other", "v": 1}]
        await pub(mosquitto, "senml/dev7/pack", json.dumps(senml))

        async with Client(url) as client:

            async def good(point: str, value: float) -> bool:
                dv = await read(client, node(point))
                return dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(value)

            await wait_for(lambda: good("temp", 70.7), timeout=10, message="temp in degF")
            dv = await read(client, node("temp"))
            assert dv.SourceTimestamp == utc(T0)
            await wait_for(lambda: good("flow", 12.5), timeout=10, message="flow")
            assert (await read(client, node("flow"))).SourceTimestamp == utc(T0)
            await wait_for(lambda: good("hum", 41.0), timeout=10, message="SenML hum")
            assert (await read(client, node("hum"))).SourceTimestamp == utc(T0)

            # A malformed payload is counted; the point keeps its last good value.
            before = mqtt.status()["bad_payloads"]
            await pub(mosquitto, "plant/boiler/temp", "{broken")
            await wait_for(lambda: mqtt.status()["bad_payloads"] == before + 1, timeout=10)
            dv = await read(client, node("temp"))
            assert dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(70.7)

        # An OPC UA write (degF) -> the command topic (degC), acknowledged by the broker.
        sub = await asyncio.create_subprocess_exec(
            find_binary("mosquitto_sub"), "-h", mosquitto.host, "-p", str(mosquitto.port),
            "-q", "1", "-t", "plant/boiler/setpoint/set", "-C", "1", "-W", "15", "-v",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # let mosquitto_sub subscribe
        writer = Client(url)
        writer.set_user("op")
        writer.set_password("secret")
        async with writer:
            variant = ua.Variant(122.0, ua.VariantType.Double)
            await writer.get_node(node("setpoint")).write_value(ua.DataValue(variant))
            out, _ = await asyncio.wait_for(sub.communicate(), 20)
            assert out.decode().strip() == "plant/boiler/setpoint/set 50.0"
            with pytest.raises(ua.UaStatusCodeError):  # 212 degF = 100 degC > high 90
                variant = ua.Variant(212.0, ua.VariantType.Double)
                await writer.get_node(node("setpoint")).write_value(ua.DataValue(variant))
        assert mqtt.status()["writes"] == 1


async def test_broker_down_writes_fail_now_and_points_go_bad(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with source_gateway(mosquitto, tmp_path) as (gateway, mqtt):
        await pub(mosquitto, "plant/boiler/temp", "20")
        seen = gateway.bus.subscribe("telemetry/sensors", maxsize=100, name="test")
        mosquitto.stop()
        bad = await asyncio.wait_for(seen.get(), 10)
        assert {s.quality for s in bad.samples} == {Quality.BAD}
        assert {s.point for s in bad.samples} == {"temp", "flow", "hum", "setpoint"}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await gateway.router.write("sensors", "setpoint", 40.0, origin="test")
        assert result.status == "unreachable" and loop.time() - t0 < 1.0
        seen.close()


async def test_retained_unparsable_payload_does_not_drop_the_connection(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    # Retained: the broker hands it over on every (re)subscription. The RecursionError it raised
    # escaped into paho's loop, which dropped the connection: a reconnect loop, 3.6 a second.
    await pub(mosquitto, "plant/boiler/temp", "[" * 100_000, "-r")
    async with source_gateway(mosquitto, tmp_path) as (gateway, mqtt):
        seen = gateway.bus.subscribe("telemetry/sensors", maxsize=100, name="test")
        await wait_for(lambda: mqtt.status()["bad_payloads"] >= 1, timeout=10)
        await asyncio.sleep(2.0)
        status = mqtt.status()
        assert status["connected"] and status["reconnects"] == 0
        assert status["bad_payloads"] == 1 and status["last_error"] is None
        await pub(mosquitto, "plant/boiler/temp", "21.5")
        while True:
            message = await asyncio.wait_for(seen.get(), 10)
            if any(s.point == "temp" and s.value == 21.5 for s in message.samples):
                break
        seen.close()


def test_no_exception_escapes_into_the_network_loop(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    config = MqttEndpoint.model_validate({"host": HOST, "points": [{"name": "a", "topic": "t"}]})
    mqtt = MqttAdapter("src", config, AdapterContext(Bus(), "gw"))

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug in reading")

    mqtt._points.decode = broken  # type: ignore[method-assign]
    message = paho.MQTTMessage(topic=b"t")
    message.payload = b"1"
    for _ in range(3):
        mqtt._on_message(mqtt._client, None, message)  # type: ignore[arg-type]
    assert mqtt.status()["bad_payloads"] == 3 and mqtt.status()["received"] == 3
    logged = [r for r in caplog.records if "a bug in reading" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once per log interval
    assert "unexpected RuntimeError" in logged[0].getMessage()


def test_a_partial_update_is_good_and_only_a_payload_with_none_of_the_keys_is_bad(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    points = [
        {"name": "temp", "topic": "plant/ahu1", "field": "ZN_T"},
        {"name": "setpoint", "topic": "plant/ahu1", "field": "ZN_T_SP"},
        {"name": "fan", "topic": "plant/ahu1", "field": "fan.on", "type": "bool"},
    ]
    d = decoder(*points)
    samples, errors = d.decode("plant/ahu1", b'{"ZN_T": 21.5}')  # only what changed
    assert errors == [] and [(s.point, s.value) for s in samples] == [("temp", 21.5)]
    samples, errors = d.decode("plant/ahu1", b'{"other": 1}')
    assert samples == [] and len(errors) == 1
    assert "JSON without any of the keys 'ZN_T', 'ZN_T_SP', 'fan.on'" in str(errors[0])
    # a key that is there with an unreadable value is still that point's error
    samples, errors = d.decode("plant/ahu1", b'{"ZN_T": [1], "ZN_T_SP": 22}')
    assert [s.point for s in samples] == ["setpoint"] and len(errors) == 1
    assert "point temp: [1] is not a scalar value" in str(errors[0])
    # SenML: a pack with some of the declared records
    s = decoder(
        {"name": "t", "topic": "s/p", "format": "senml", "senml_name": "temp"},
        {"name": "h", "topic": "s/p", "format": "senml", "senml_name": "hum"},
    )
    assert s.decode("s/p", b'[{"n": "hum", "v": 40}]')[1] == []
    assert "no SenML record named any of 'temp', 'hum'" in str(
        s.decode("s/p", b'[{"n": "x", "v": 1}]')[1][0]
    )

    # the adapter: no warning and no bad payload for the partial update, one for the other
    config = MqttEndpoint.model_validate({"host": HOST, "points": points})
    mqtt = MqttAdapter("src", config, AdapterContext(Bus(), "gw"))
    for payload in (b'{"ZN_T": 21.5}', b'{"ZN_T_SP": 22, "fan": {"on": true}}', b'{"x": 1}'):
        message = paho.MQTTMessage(topic=b"plant/ahu1")
        message.payload = payload
        mqtt._on_message(mqtt._client, None, message)  # type: ignore[arg-type]
    assert mqtt.status()["bad_payloads"] == 1 and mqtt.status()["received"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "MQTT src: bad payload on 'plant/ahu1': JSON without any of the keys"
        " 'ZN_T', 'ZN_T_SP', 'fan.on'"
    ]


def test_a_keys_subscription_is_telemetry_beside_declared_points(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``points: keys``: each JSON payload is one telemetry message of the endpoint (what
    bridges carry), one sample per key; a declared point on the same topic keeps its name and
    reads as before; a key that is not a point name is one bad payload."""
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    config = MqttEndpoint.model_validate(
        {
            "host": HOST,
            "points": [{"name": "ZN_T", "topic": "plant/ahu1", "field": "zone.t"}],
            "subscriptions": [{"topic": "plant/#", "points": "keys"}, {"topic": "raw/#"}],
        }
    )
    assert config.points_at_run_time
    bus = Bus()
    mqtt = MqttAdapter("src", config, AdapterContext(bus, "gw"))
    seen = bus.subscribe("#")
    for topic, payload in [
        (b"plant/ahu1", b'{"AHU1_SAT": 21.6, "zone": {"t": 22}, "ZN_T": 9, "bad key": 1}'),
        (b"raw/x", b"7"),
    ]:
        message = paho.MQTTMessage(topic=topic)
        message.payload = payload
        mqtt._on_message(mqtt._client, None, message)  # type: ignore[arg-type]
    got = []
    while (m := seen.get_nowait()) is not None:
        got.append((m.topic, [(s.point, s.value) for s in m.samples]))
    assert got == [
        ("telemetry/src", [("ZN_T", 22.0)]),  # the declared point, as today
        ("telemetry/src", [("AHU1_SAT", 21.6), ("zone.t", 22)]),  # ZN_T is the point's name
        ("mqtt/src/raw/x", [("raw/x", 7)]),  # a plain subscription, as today
    ]
    assert mqtt.status()["bad_payloads"] == 1
    assert "keys that are not point names skipped: 'bad key'" in caplog.text


def test_points_keys_goes_with_json_payloads() -> None:
    with pytest.raises(ValidationError, match="points: keys reads JSON payloads"):
        MqttEndpoint.model_validate(
            {"host": HOST, "subscriptions": [{"topic": "a/#", "points": "keys", "payload": "raw"}]}
        )


@contextlib.asynccontextmanager
async def keys_source(
    mosquitto: MosquittoBroker, subscriptions: list[dict[str, str]]
) -> AsyncIterator[tuple[MqttAdapter, Any]]:
    """An MQTT endpoint ``src`` with ``subscriptions``, running and connected to
    ``mosquitto``, and a subscription to its telemetry on the bus."""
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    config = MqttEndpoint.model_validate(
        {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "outbox": None,
            "reconnect": {"initial": 0.05, "max": 0.2},
            "subscriptions": subscriptions,
        }
    )
    bus = Bus()
    seen = bus.subscribe("telemetry/src", maxsize=100, name="test")
    async with MqttAdapter("src", config, AdapterContext(bus, "gw")) as mqtt:
        task = asyncio.create_task(mqtt.run())
        try:
            await wait_for(lambda: mqtt.status().get("connected") is True, timeout=10)
            yield mqtt, seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_points_learned_from_keys_go_bad_with_the_broker_and_after_a_crash(
    mosquitto: MosquittoBroker,
) -> None:
    """A consumer must not keep a learned key's last value as Good when it is no longer
    current: broker lost (once per outage) and run() crashed (the runtime's points_lost)."""
    subscriptions = [{"topic": "plant/#", "points": "keys"}]
    async with keys_source(mosquitto, subscriptions) as (mqtt, seen):
        await pub(mosquitto, "plant/ahu1", '{"AHU1_SAT": 21.6, "fan": {"on": true}}')
        good = await asyncio.wait_for(seen.get(), 10)
        assert {(s.point, s.quality) for s in good.samples} == {
            ("AHU1_SAT", Quality.GOOD),
            ("fan.on", Quality.GOOD),
        }
        await mqtt.points_lost("adapter failed: RuntimeError")
        crashed = await asyncio.wait_for(seen.get(), 10)
        assert {(s.point, s.quality) for s in crashed.samples} == {
            ("AHU1_SAT", Quality.BAD),
            ("fan.on", Quality.BAD),
        }
        mosquitto.stop()
        lost = await asyncio.wait_for(seen.get(), 10)
        assert {(s.point, s.quality) for s in lost.samples} == {
            ("AHU1_SAT", Quality.BAD),
            ("fan.on", Quality.BAD),
        }
        assert {s.reason for s in lost.samples} != {"adapter failed: RuntimeError"}


def test_max_keys_bounds_the_points_a_keys_subscription_creates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    config = MqttEndpoint.model_validate(
        {
            "host": HOST,
            "max_keys": 3,
            "max_new_keys": 50,
            "subscriptions": [{"topic": "plant/#", "points": "keys"}],
        }
    )
    bus = Bus()
    mqtt = MqttAdapter("src", config, AdapterContext(bus, "gw"))
    assert mqtt._keys.per_message == 50  # max_new_keys reaches the decoder
    seen = bus.subscribe("#")
    for payload in [b'{"a": 1, "b": 2}', b'{"c": 3, "d": 4, "e": 5}', b'{"a": 6}']:
        message = paho.MQTTMessage(topic=b"plant/ahu1")
        message.payload = payload
        mqtt._on_message(mqtt._client, None, message)  # type: ignore[arg-type]
    got = []
    while (m := seen.get_nowait()) is not None:
        got.append([(s.point, s.value) for s in m.samples])
    assert got == [[("a", 1), ("b", 2)], [("c", 3)], [("a", 6)]]  # d and e: past the 3
    assert mqtt.status()["bad_payloads"] == 1
    with pytest.raises(ValidationError, match="max_keys"):
        MqttEndpoint.model_validate({"host": HOST, "max_keys": 0})


def test_a_message_over_max_payload_is_dropped_unread(caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who may publish to the broker could send 50 MB to a subscribed topic: decoded,
    it held the event loop and its memory. Past max_payload it is counted and dropped."""
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus

    config = MqttEndpoint.model_validate(
        {
            "host": HOST,
            "max_payload": 64,
            "subscriptions": [{"topic": "plant/#", "points": "keys"}, {"topic": "raw/#"}],
            "points": [{"name": "sp", "topic": "dev/sp"}],
        }
    )
    bus = Bus()
    mqtt = MqttAdapter("src", config, AdapterContext(bus, "gw"))
    seen = bus.subscribe("#")
    big = json.dumps({f"k{i}": i for i in range(20)}).encode()
    for topic, payload in [("plant/a", big), ("raw/x", b"1" * 65), ("dev/sp", b"7" * 65),
                           ("plant/a", b'{"ok": 1}')]:  # fmt: skip
        message = paho.MQTTMessage(topic=topic.encode())
        message.payload = payload
        mqtt._on_message(mqtt._client, None, message)  # type: ignore[arg-type]
    got = []
    while (m := seen.get_nowait()) is not None:
        got.append([(s.point, s.value) for s in m.samples])
    assert got == [[("ok", 1)]]
    assert mqtt.status()["bad_payloads"] == 3
    assert f"{len(big):,} bytes, over max_payload 64: dropped" in caplog.text


async def test_keys_named_by_topic_keep_two_devices_apart(mosquitto: MosquittoBroker) -> None:
    """``names: topic``: the same key on two devices' topics is two points (by key alone it
    would be one point, each device overwriting the other's value)."""
    subscriptions = [
        {"topic": "plant/+", "points": "keys", "names": "topic"},
        {"topic": "site/+/temp", "points": "keys", "names": "topic"},
        {"topic": "old/#", "points": "keys"},
    ]
    async with keys_source(mosquitto, subscriptions) as (_, seen):
        await pub(mosquitto, "plant/ahu1", '{"temp": 21.5, "fan": {"on": true}}')
        await pub(mosquitto, "plant/ahu2", '{"temp": 19.0}')
        await pub(mosquitto, "site/b7/temp", "23.5")
        await pub(mosquitto, "old/ahu1", '{"temp": 1}')
        got = set()
        for _ in range(4):
            message = await asyncio.wait_for(seen.get(), 10)
            got |= {(s.point, s.value) for s in message.samples}
    assert got == {
        ("ahu1.temp", 21.5),
        ("ahu1.fan.on", True),
        ("ahu2.temp", 19.0),
        ("b7.temp", 23.5),
        ("temp", 1),  # names: key (the default) as before
    }


def test_names_topic_goes_with_points_keys() -> None:
    with pytest.raises(ValidationError, match="names: topic needs points: keys"):
        MqttEndpoint.model_validate(
            {"host": HOST, "subscriptions": [{"topic": "a/#", "names": "topic"}]}
        )
