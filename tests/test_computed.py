"""Computed points: the expression language, the stage, the config checks, and a whole gateway
where a fast point is combined with a slow one's last value from the shadow (real Modbus
simulator device, real mosquitto)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, modbus_device_yaml, wait_for
from test_e2e_modbus_mqtt import Collector
from test_opcua_server import running_gateway

from gateway.computed import ComputedPoints
from gateway.config import ConfigError, load_config_text
from gateway.config.computed import ComputedPoint
from gateway.expressions import ExpressionError, compile_expression
from gateway.shadow.store import ShadowDocument
from gateway.types import Quality, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator


def env(values: dict[str, Any]) -> Any:
    return lambda name: values[name]


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("(outlet - inlet) / 9.8", {"outlet": 300.0, "inlet": 104.0}, 20.0),
        ("a ** 2 + b // 3 - c % 4", {"a": 3, "b": 10, "c": 7}, 9),
        ("-a if a < 0 else a", {"a": -2.5}, 2.5),
        ("1 < a <= 3", {"a": 3}, True),
        ("1 < a <= 3", {"a": 4}, False),
        ("not a and b or c", {"a": 0, "b": 0, "c": 5}, 5 != 0),
        ("max(a, b) + min(a, b) + abs(-1) + round(2.6)", {"a": 1, "b": 2}, 7),
        ("sqrt(x) + log10(100)", {"x": 16.0}, 6.0),
        ("speed - shadow.desired.speed", {"speed": 40, "shadow.desired.speed": 50}, -10),
        ("shadow.reported.temp * 2", {"shadow.reported.temp": 21.5}, 43.0),
    ],
)
def test_expressions_compute(text: str, values: dict[str, Any], expected: Any) -> None:
    expr = compile_expression(text)
    assert expr(env(values)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "values", "error"),
    [
        ("9 ** 9 ** 9 ** 9", {}, OverflowError),  # as ints: hours of work on the event loop
        ("a ** b", {"a": 10, "b": 100000}, OverflowError),  # point values, same
        ("a ** 0.5", {"a": -4}, ValueError),  # not a complex number
    ],
)
def test_a_power_fails_at_once_instead_of_blocking(
    text: str, values: dict[str, Any], error: type[Exception]
) -> None:
    expr = compile_expression(text)
    started = time.monotonic()
    with pytest.raises(error):
        expr(env(values))
    assert time.monotonic() - started < 1.0


def test_expressions_know_their_inputs() -> None:
    expr = compile_expression("(outlet - inlet) / g + shadow.desired.speed")
    assert expr.points == {"outlet", "inlet", "g"}
    assert expr.shadow == {"desired.speed"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("__import__('os')", "unknown function __import__"),
        ("open('/etc/passwd')", "unknown function open"),
        ("a.real", "only shadow.reported"),
        ("shadow.metadata.x", "shadow has reported and desired"),
        ("a[0]", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("[x for x in a]", "not allowed"),
        ("'text' + a", "not allowed"),
        ("max", "is a function"),
        ("a +", "not an expression"),
        ("round(a, ndigits=2)", "not allowed"),
    ],
)
def test_expressions_refuse_what_is_not_arithmetic(text: str, why: str) -> None:
    with pytest.raises(ExpressionError, match=why):
        compile_expression(text)


def stage(doc: ShadowDocument | None, *points: dict[str, Any]) -> ComputedPoints:
    return ComputedPoints([ComputedPoint(**p) for p in points], lambda device: doc)


HEAD = {"name": "head", "expr": "(outlet - inlet) / 9.8", "unit": "m"}


def test_inputs_missing_from_the_message_come_from_the_shadow() -> None:
    doc = ShadowDocument("pump", reported={"inlet": 104.0, "outlet": 1.0})
    out = stage(doc, HEAD).apply("pump", (Sample("outlet", 300.0, source_ts=5.0),))
    assert len(out) == 1
    assert out[0].point == "head" and out[0].unit == "m" and out[0].source_ts == 5.0
    assert out[0].value == pytest.approx(20.0)  # outlet from the message, not the shadow's 1.0
    assert out[0].quality is Quality.GOOD


def test_quality_is_the_worst_input() -> None:
    doc = ShadowDocument("pump", reported={"inlet": 104.0}, quality={"inlet": "bad"})
    out = stage(doc, HEAD).apply("pump", (Sample("outlet", 300.0),))
    assert out[0].quality is Quality.UNCERTAIN  # the shadow's inlet is a stale last good value
    both = (Sample("outlet", 300.0, Quality.BAD), Sample("inlet", 104.0))
    assert stage(doc, HEAD).apply("pump", both)[0].quality is Quality.BAD


def test_no_fresh_input_no_value_and_failures_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = ShadowDocument("pump", reported={"inlet": 0.0})
    s = stage(doc, HEAD, {"name": "ratio", "expr": "outlet / inlet"})
    assert s.apply("pump", (Sample("temp", 1.0),)) == ()  # neither outlet nor inlet is fresh
    for _ in range(3):
        out = s.apply("pump", (Sample("outlet", 3.0),))
        assert [o.point for o in out] == ["head"]  # ratio divides by zero: skipped, not raised
    assert s.status() == {"computed": 3, "skipped": 3}
    assert sum("ratio skipped: ZeroDivisionError" in r.message for r in caplog.records) == 1
    nothing = stage(None, HEAD)
    assert nothing.apply("pump", (Sample("outlet", 3.0),)) == ()  # no inlet anywhere yet
    assert "no value for inlet" in caplog.text


def test_without_a_shadow_inputs_from_earlier_messages_are_remembered() -> None:
    """Points polled in different groups arrive in different messages; without a shadow the
    bridge keeps their last readings itself, or the computed point would never be computed."""
    s = ComputedPoints([ComputedPoint(**HEAD)])  # no shadow: state stays None
    assert s.apply("pump", (Sample("inlet", 104.0),)) == ()  # no outlet yet
    out = s.apply("pump", (Sample("outlet", 300.0, source_ts=5.0),))
    assert [(o.point, o.quality) for o in out] == [("head", Quality.GOOD)]
    assert out[0].value == pytest.approx(20.0)  # inlet remembered from the first message
    assert s.apply("other", (Sample("outlet", 300.0),)) == ()  # per device
    failing = s.apply("pump", (Sample("inlet", None, Quality.BAD), Sample("outlet", 300.0)))
    assert failing[0].value == pytest.approx(20.0)  # the last inlet with a value ...
    assert failing[0].quality is Quality.UNCERTAIN  # ... which is stale now
    kept_elsewhere = stage(None, HEAD)  # a shadow that does not keep this device
    assert kept_elsewhere.apply("pump", (Sample("inlet", 104.0),)) == ()
    assert len(kept_elsewhere.apply("pump", (Sample("outlet", 300.0),))) == 1


def test_desired_state_as_an_input() -> None:
    doc = ShadowDocument("pump", reported={"speed": 40}, desired={"speed": 50})
    s = stage(doc, {"name": "speed_error", "expr": "speed - shadow.desired.speed"})
    assert s.apply("pump", (Sample("speed", 45),))[0].value == -5.0


def plant(modbus_port: int, broker_port: int, db: Path, computed: str) -> str:
    return f"""
gateway: {{name: computed-test, status_interval: 0}}
devices:
{modbus_device_yaml(modbus_port, poll_groups="{fast: {interval: 0.05}, slow: {interval: 3600}}", reconnect=False)}
    points:
      - {{name: inlet, table: holding, address: 0, type: int16, unit: kPa, poll: slow}}
      - {{name: outlet, table: holding, address: 1, type: int16, unit: kPa, poll: fast,
         publish: always}}
endpoints:
  broker: {{protocol: mqtt, host: {HOST}, port: {broker_port}, outbox: null}}
bridges:
  - name: up
    from: pump
    to: broker
    topic: "plant/{{device}}/{{point}}"
    payload: value
    computed:
{computed}
shadow:
  path: {db}
"""


COMPUTED = """\
      - {name: head, expr: "(outlet - inlet) / 9.8", unit: m}
      - {name: lift, expr: "outlet - shadow.desired.outlet_min"}
"""


async def test_a_fast_point_with_a_slow_points_last_value_from_the_shadow(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("holding", 0, 104, DataType.INT16)
    device.set_value("holding", 1, 300, DataType.INT16)
    collector = Collector(mosquitto, "plant/#")
    # outlet is published on every poll: the shadow may learn inlet (a separate, slow poll)
    # after the first outlet readings, and the computation waits for both
    text = plant(device.port, mosquitto.port, tmp_path / "s.db", COMPUTED)
    try:
        async with running_gateway(text) as gateway:
            await wait_for(lambda: collector.last("plant/pump/head") is not None, timeout=10)
            assert collector.last("plant/pump/head") == pytest.approx(20.0)
            # inlet is polled once an hour: only outlet changes reach the bridge from now on,
            # and head goes on being computed from the shadow's last inlet
            device.set_value("holding", 0, 0, DataType.INT16)  # not read again: no effect
            device.set_value("holding", 1, 202, DataType.INT16)
            await wait_for(
                lambda: collector.last("plant/pump/head") == pytest.approx(10.0), timeout=10
            )
            assert collector.last("plant/pump/lift") is None  # no desired.outlet_min yet
            assert gateway.shadow is not None
            await gateway.shadow.update("pump", {"outlet_min": 2})  # metadata-like desired key
            device.set_value("holding", 1, 250, DataType.INT16)
            await wait_for(lambda: collector.last("plant/pump/lift") == 248, timeout=10)
            assert gateway.bridges[0].status()["computed"]["computed"] >= 3
            points = [p.name for p in gateway.bridges[0].points()["pump"]]
            assert points == ["inlet", "outlet", "head", "lift"]
    finally:
        collector.close()


def test_config_names_unknown_inputs_and_clashes(tmp_path: Path) -> None:
    bad = """\
      - {name: head, expr: "(outlet - suction) / 9.8"}
      - {name: outlet, expr: "inlet * 2"}
"""
    with pytest.raises(ConfigError) as err:
        load_config_text(plant(1502, 1883, tmp_path / "s.db", bad), "plant.yaml")
    text = str(err.value)
    assert "names suction" in text
    assert "'outlet', already a point of the bridge" in text
    odd = '      - {name: odd, expr: "outlet.real"}\n'
    with pytest.raises(ConfigError, match="only shadow.reported.<key> or shadow.desired.<key>"):
        load_config_text(plant(1502, 1883, tmp_path / "s.db", odd), "plant.yaml")
    good = load_config_text(plant(1502, 1883, tmp_path / "s.db", COMPUTED), "plant.yaml")
    assert [c.name for c in good.bridges[0].computed] == ["head", "lift"]


def test_topic_placeholders_read_the_shadow() -> None:
    from gateway.types import Message
    from protocols.mqtt.codec import encode
    from protocols.mqtt.config import MqttRoute

    route = MqttRoute(topic="plant/{shadow.desired.site}/{device}/{shadow.reported.mode}/{point}")
    message = Message.telemetry("pump", (Sample.now("outlet", 3.0),))
    assert encode(message, route, "gw")[0][0] == "plant/unknown/pump/unknown/outlet"
    doc = ShadowDocument("pump", reported={"mode": "auto"}, desired={"site": "hall/2"})
    with_doc = replace(message, meta={"shadow": doc})
    topic = encode(with_doc, route, "gw")[0][0]
    assert topic == "plant/hall%2F2/pump/auto/outlet"  # a value is one level, escaped
    per_device = MqttRoute(topic="plant/{shadow.desired.site}/{device}", payload="device")
    assert encode(with_doc, per_device, "gw")[0][0] == "plant/hall%2F2/pump"


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("plant/{shadow.metadata.x}/{point}", "shadow.reported.<key>"),
        ("plant/{shadow.reported}/{point}", "shadow.reported.<key>"),
        ("plant/{shadow.reported.x.y}/{point}", "shadow.reported.<key>"),
        ("plant/{site}/{point}", "unknown placeholder"),
    ],
)
def test_topic_shadow_placeholders_are_checked(topic: str, why: str) -> None:
    from protocols.mqtt.config import MqttRoute

    with pytest.raises(ValueError, match=why):
        MqttRoute(topic=topic)


async def test_a_topic_level_from_the_shadow_in_a_whole_gateway(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    device = await simulator.add_device(name="pump")
    device.set_value("holding", 1, 300, DataType.INT16)
    collector = Collector(mosquitto, "site/#")
    text = plant(device.port, mosquitto.port, tmp_path / "s.db", COMPUTED).replace(
        'topic: "plant/{device}/{point}"', 'topic: "site/{shadow.desired.area}/{device}/{point}"'
    )
    try:
        async with running_gateway(text) as gateway:
            await wait_for(lambda: collector.last("site/unknown/pump/outlet") == 300, timeout=10)
            assert gateway.shadow is not None
            await gateway.shadow.update("pump", {"area": "north"})  # metadata-like desired key
            await wait_for(lambda: collector.last("site/north/pump/outlet") == 300, timeout=10)
    finally:
        collector.close()
