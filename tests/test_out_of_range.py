"""Readings outside a point's low..high are not Good (``out_of_range``, `gateway.limits`).

The shared check alone, then each client adapter with a real peer as its device: the Modbus
simulator (through a whole in-process gateway to mosquitto and a paho subscriber, and to our OPC
UA server read by node-opcua), a node-opcua server for the OPC UA client, libcoap's coap-server
for the CoAP client, and the MQTT source decoder.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, free_port, modbus_device_yaml, wait_for
from test_coap_client import client as coap_client
from test_coap_client import coap_put, coap_server
from test_e2e_modbus_mqtt import Collector
from test_opcua_client import NODES, NodeOpcuaServer, client_config, running
from test_opcua_server import run_node_client, running_gateway

from gateway.config import ConfigError, load_config_text
from gateway.config.schema import json_schema
from gateway.limits import Limits, default_mode, exceeded
from gateway.plugins import load_registry
from gateway.types import Access, OutOfRange, Quality, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt.codec import PointDecoder
from protocols.mqtt.config import MqttPoint
from protocols.opcua.server import OpcuaServerAdapter

U, B, G = Quality.UNCERTAIN, Quality.BAD, Quality.GOOD


def limits(
    low: float | None,
    high: float | None,
    mode: str | None = "uncertain",
    access: Access | None = Access.READ,
) -> Limits | None:
    point = SimpleNamespace(
        low=low, high=high, out_of_range=None if mode is None else OutOfRange(mode), access=access
    )
    return Limits.of(point)


@pytest.mark.parametrize(
    ("access", "checked"),
    [(Access.READ, True), (None, True), (Access.READ_WRITE, False), (Access.WRITE, False)],
)
def test_by_default_writable_points_keep_their_quality(
    access: Access | None, checked: bool
) -> None:
    """Configs have long used a setpoint's low..high as its write range only: on an upgrade its
    readings (0 while idle) must not turn uncertain unless the point asks for it."""
    default = limits(0, 10, mode=None, access=access)
    assert (default is not None) is checked
    assert default_mode(access) is (OutOfRange.UNCERTAIN if checked else OutOfRange.KEEP)
    explicit = limits(0, 10, mode="uncertain", access=access)
    assert explicit is not None and explicit.check(11.0, G, None) == (U, "above high 10")


# -- the shared check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "value", "expected"),
    [
        (0, 100, 0, (G, None)),  # bounds are inclusive
        (0, 100, 100, (G, None)),
        (0, 100, 100.0001, (U, "above high 100")),
        (0, 100, -0.5, (U, "below low 0")),
        (None, 100, -1e9, (G, None)),  # one bound only
        (None, 100, 101, (U, "above high 100")),
        (-20.5, None, -21, (U, "below low -20.5")),
        (-20.5, None, 1e9, (G, None)),
        (0, 100, math.inf, (U, "above high 100")),
        (0, 100, -math.inf, (U, "below low 0")),
        (0, 100, math.nan, (G, None)),  # neither above nor below
        (0, 1, True, (G, None)),  # bool is not a number here, even where True > high
        (0, 0.5, True, (G, None)),
        (0, 100, "150", (G, None)),
        (0, 100, None, (G, None)),
        (0, 1e20, 2e20, (U, "above high 1e+20")),
    ],
)
def test_check_flags_numbers_outside_the_inclusive_bounds(
    low: float | None, high: float | None, value: Any, expected: tuple[Quality, str | None]
) -> None:
    lim = limits(low, high)
    assert lim is not None
    assert lim.check(value, G, None) == expected


def test_bad_and_uncertain_from_the_device() -> None:
    lim = limits(0, 100)
    assert lim is not None
    # Bad stays Bad with its own reason.
    assert lim.check(150, B, "timeout") == (B, "timeout")
    # Uncertain stays Uncertain; both reasons kept.
    assert lim.check(150, U, "UncertainSensorNotAccurate") == (
        U,
        "UncertainSensorNotAccurate; above high 100",
    )
    assert lim.check(150, U, None) == (U, "above high 100")
    assert lim.check(50, U, "UncertainLastUsableValue") == (U, "UncertainLastUsableValue")
    # bad: never a better quality, so Uncertain becomes Bad too
    bad = limits(0, 100, "bad")
    assert bad is not None
    assert bad.check(150, G, None) == (B, "above high 100")
    assert bad.check(-1, U, "UncertainSubNormal") == (B, "UncertainSubNormal; below low 0")
    assert bad.check(150, B, "timeout") == (B, "timeout")


def test_nothing_to_check_and_the_value_is_never_changed() -> None:
    assert limits(0, 100, "keep") is None
    assert limits(None, None) is None
    lim = limits(0, 100)
    assert lim is not None
    inside = Sample("p", 50, G, 1.0, 2.0, "degC")
    assert lim.sample(inside) is inside
    out = lim.sample(Sample("p", 250, G, 1.0, 2.0, "degC"))
    assert out == Sample("p", 250, U, 1.0, 2.0, "degC", "above high 100")
    assert exceeded(out.reason) and exceeded("UncertainSensorNotAccurate; below low 0")
    assert not exceeded("timeout") and not exceeded(None) and not exceeded("x above high 1")


# -- config --------------------------------------------------------------------------------

POINTS = {
    "modbus": "{name: p, table: holding, address: 0, low: 0, high: 10, OOR}",
    "opcua": '{name: p, node_id: "ns=1;s=x", low: 0, high: 10, OOR}',
    "coap": "{name: p, path: x, low: 0, high: 10, OOR}",
    "mqtt": "{name: p, topic: x, low: 0, high: 10, OOR}",
}
CONNECTION = {
    "modbus": "host: 127.0.0.1",
    "opcua": 'url: "opc.tcp://127.0.0.1:4840"\n    security: {policy: None, mode: None}',
    "coap": 'url: "coap://127.0.0.1"',
    "mqtt": "host: 127.0.0.1",
}


def one_point(protocol: str, option: str) -> str:
    section = "endpoints" if protocol == "mqtt" else "devices"
    return (
        f"gateway: {{name: g}}\n{section}:\n  dev:\n    protocol: {protocol}\n"
        f"    {CONNECTION[protocol]}\n"
        f"    points:\n      - {POINTS[protocol].replace('OOR', option)}\n"
    )


@pytest.mark.parametrize("protocol", sorted(POINTS))
def test_every_protocols_points_take_out_of_range(protocol: str) -> None:
    config = load_config_text(one_point(protocol, "out_of_range: bad"), "g.yaml")
    assert config.devices["dev"].config.points[0].out_of_range is OutOfRange.BAD
    default = load_config_text(one_point(protocol, "description: d"), "g.yaml")
    point = default.devices["dev"].config.points[0]
    assert point.out_of_range is None and Limits.of(point) is not None  # read-only: checked

    with pytest.raises(ConfigError) as bad:
        load_config_text(one_point(protocol, "out_of_range: clamp"), "g.yaml")
    text = str(bad.value)
    assert "g.yaml:" in text and ".dev.points[0].out_of_range: found 'clamp'" in text, text
    assert "expected one of 'uncertain', 'bad', 'keep'" in text, text
    # low above high now fails for every protocol: every reading would be out of range
    with pytest.raises(ConfigError) as upside_down:
        load_config_text(one_point(protocol, "description: d").replace("high: 10", "high: -1"), "g")
    assert ".dev.points[0].low: found 0.0; expected a number not above high (-1.0)" in str(
        upside_down.value
    )


def test_the_schema_has_out_of_range_for_every_protocols_points() -> None:
    schema = json_schema(load_registry())
    defs = schema["$defs"]
    for name in ("modbus.ModbusPoint", "opcua.OpcuaPoint", "coap.CoapPoint", "mqtt.MqttPoint"):
        prop = defs[name]["properties"]["out_of_range"]
        assert prop["default"] is None and "keep for writable ones" in prop["description"], name
        ref = next(a["$ref"] for a in prop["anyOf"] if "$ref" in a)
        enum = defs[ref.rsplit("/", 1)[-1]]["enum"]
        assert enum == ["uncertain", "bad", "keep"], name


# -- Modbus -> MQTT (a real broker and subscriber) -------------------------------------------


def modbus_mqtt_config(device: SimulatedDevice, broker: MosquittoBroker) -> str:
    return f"""
gateway: {{name: oor}}
devices:
{modbus_device_yaml(device.port)}
    points:
      - {{name: level, table: holding, address: 0, type: int16, scale: 0.1, unit: percent,
         low: 0, high: 100, deadband: {{absolute: 5}}, poll: fast}}
      - {{name: temp, table: holding, address: 1, type: int16, unit: degC, low: -20, high: 100,
         poll: fast}}
      - {{name: press, table: holding, address: 2, type: int16, high: 10, out_of_range: bad,
         poll: fast}}
      - {{name: raw, table: holding, address: 3, type: int16, low: 0, high: 10,
         out_of_range: keep, poll: fast}}
endpoints:
  broker: {{protocol: mqtt, host: {broker.host}, port: {broker.port}}}
bridges:
  - {{name: up, from: pump, to: broker, topic: "oor/{{device}}/{{point}}", payload: sample,
     qos: 1, units: {{temp: degF}}}}
"""


@contextlib.asynccontextmanager
async def modbus_to_mqtt(
    simulator: Simulator, broker: MosquittoBroker, fill: Callable[[SimulatedDevice], None]
) -> AsyncIterator[tuple[SimulatedDevice, Collector]]:
    device = await simulator.add_device(name="pump")
    fill(device)
    collector = Collector(broker, "oor/#")
    try:
        async with running_gateway(modbus_mqtt_config(device, broker)):
            yield device, collector
    finally:
        collector.close()


def payload_on(collector: Collector, point: str, **expected: Any) -> Callable[[], Any]:
    """A predicate: the newest payload of ``point`` has ``expected``'s keys (and no reason when
    none is expected); returns it."""

    def check() -> Any:
        last = collector.last(f"oor/pump/{point}")
        if not isinstance(last, dict):
            return None
        if any(last.get(k) != v for k, v in expected.items()):
            return None
        return last

    check.__name__ = f"{point} with {expected}"
    return check


def set_int(device: SimulatedDevice, address: int, value: int) -> None:
    device.set_value("holding", address, value, DataType.INT16)


async def test_modbus_reading_above_high_is_uncertain_on_mqtt_then_good_again(
    simulator: Simulator, mosquitto: MosquittoBroker
) -> None:
    def fill(device: SimulatedDevice) -> None:
        set_int(device, 0, 980)  # 98.0 %
        set_int(device, 1, 99)  # 99 degC: 210.2 degF, far above 100, but checked in degC

    async with modbus_to_mqtt(simulator, mosquitto, fill) as (device, seen):
        first = await wait_for(payload_on(seen, "level", value=98.0), 10)
        assert first["quality"] == "good" and "reason" not in first
        temp = await wait_for(payload_on(seen, "temp", value=210.2), 5)
        assert temp["quality"] == "good" and temp["unit"] == "degF"

        # 100.2 %: 0.2 past high, well inside the 5 % deadband, still sent, value as read
        set_int(device, 0, 1002)
        over = await wait_for(payload_on(seen, "level", quality="uncertain"), 5)
        assert over["value"] == 100.2 and over["reason"] == "above high 100"
        # back to 100.0 (inclusive): Good again, though it moved only 0.2
        set_int(device, 0, 1000)
        back = await wait_for(payload_on(seen, "level", quality="good"), 5)
        assert back["value"] == 100.0 and "reason" not in back
        set_int(device, 0, -3)
        under = await wait_for(payload_on(seen, "level", quality="uncertain"), 5)
        assert under["value"] == -0.3 and under["reason"] == "below low 0"

        set_int(device, 1, 101)  # 101 degC is above 100 degC; sent in degF, value unchanged
        hot = await wait_for(payload_on(seen, "temp", quality="uncertain"), 5)
        assert hot["value"] == 213.8 and hot["reason"] == "above high 100"
        # uncertain is sent once per change, not again for the same reading
        levels = [p["quality"] for p in seen.on("oor/pump/level")]
        assert levels == ["good", "uncertain", "good", "uncertain"], levels


async def test_out_of_range_bad_and_keep(simulator: Simulator, mosquitto: MosquittoBroker) -> None:
    def fill(device: SimulatedDevice) -> None:
        set_int(device, 2, 5)
        set_int(device, 3, 50)  # above high 10, but keep

    async with modbus_to_mqtt(simulator, mosquitto, fill) as (device, seen):
        await wait_for(payload_on(seen, "press", value=5, quality="good"), 10)
        set_int(device, 2, 12)
        bad = await wait_for(payload_on(seen, "press", quality="bad"), 5)
        assert bad["value"] == 12 and bad["reason"] == "above high 10"  # the value is kept
        set_int(device, 2, 13)  # still bad, a new value: sent
        await wait_for(payload_on(seen, "press", quality="bad", value=13), 5)
        set_int(device, 2, 10)
        await wait_for(payload_on(seen, "press", quality="good", value=10), 5)

        raw = await wait_for(payload_on(seen, "raw", value=50), 5)
        assert raw["quality"] == "good" and "reason" not in raw


# -- our OPC UA server, read by node-opcua --------------------------------------------------


async def test_node_opcua_reads_uncertain_engineering_units_exceeded(
    simulator: Simulator, tmp_path: Path
) -> None:
    device = await simulator.add_device(name="pump")
    set_int(device, 0, 1100)  # 110.0 %
    set_int(device, 1, 12)  # above high 10, out_of_range: bad
    set_int(device, 2, 55)  # inside
    text = f"""
gateway: {{name: plant}}
devices:
{modbus_device_yaml(device.port)}
    points:
      - {{name: level, table: holding, address: 0, type: int16, scale: 0.1, unit: percent,
         low: 0, high: 100, poll: fast}}
      - {{name: press, table: holding, address: 1, type: int16, high: 10, out_of_range: bad,
         poll: fast}}
      - {{name: fine, table: holding, address: 2, type: int16, low: 0, high: 100, poll: fast}}
endpoints:
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {free_port()}
    anonymous: true
    security: {{allow_none: true, pki_dir: {tmp_path / "pki"}}}
bridges:
  - {{name: up, from: pump, to: opcua, folder: "Plant/{{device}}"}}
"""
    async with running_gateway(text) as gateway:
        server = gateway.adapters["opcua"]
        assert isinstance(server, OpcuaServerAdapter)
        await wait_for(lambda: server.status()["updates"] >= 3, message="first values")
        ns = server.namespace_index
        nodes = [f"ns={ns};s=pump.{p}" for p in ("level", "press", "fine")]
        plan = {"pki": str(tmp_path / "node-pki"), "url": server.endpoint_url, "read": nodes}
        code, lines = await run_node_client(plan)
    assert code == 0, lines
    (found,) = [line["read"] for line in lines if "read" in line]
    level, press, fine = found
    assert (level["status"], level["value"]) == ("UncertainEngineeringUnitsExceeded", 110)
    assert level["properties"]["EURange"] == {"low": 0, "high": 100}
    assert (press["status"], press["value"]) == ("BadOutOfRange", None)  # Bad: null, as required
    assert (fine["status"], fine["value"]) == ("Good", 55)


# -- the other clients: OPC UA (a node-opcua server), CoAP (libcoap), MQTT points ---------------


async def test_opcua_client_marks_a_value_outside_its_limits(tmp_path: Path) -> None:
    peer = NodeOpcuaServer(tmp_path / "pki", tmp_path / "node.log", period=100)
    await peer.start()
    try:
        temp = NODES["Temp"]  # starts at 20.0
        config = client_config(
            peer.url,
            [
                {"name": "temp", "node_id": temp, "high": 30},
                {"name": "strict", "node_id": temp, "low": 25, "out_of_range": "bad"},
                {"name": "kept", "node_id": temp, "high": 10, "out_of_range": "keep"},
            ],
        )
        async with running(config) as (_, seen):

            def last(point: str) -> Sample:
                s = seen.last(point)
                assert s is not None
                return s

            await wait_for(lambda: (s := seen.last("temp")) and s.value == 20.0, 10)
            assert last("temp").quality is G
            assert (last("strict").quality, last("strict").reason) == (B, "below low 25")
            assert last("strict").value == 20.0 and last("kept").quality is G
            await peer.set("Temp", 35.5)
            await wait_for(lambda: last("temp").value == 35.5, 5)
            assert (last("temp").quality, last("temp").reason) == (U, "above high 30")
            assert last("strict").quality is G and last("kept").quality is G
            await peer.set("Temp", 36.0, status="UncertainSensorNotAccurate")
            await wait_for(lambda: last("temp").value == 36.0, 5)
            assert last("temp").quality is U
            assert last("temp").reason == "UncertainSensorNotAccurate; above high 30"
    finally:
        await peer.kill()


async def test_coap_client_marks_a_value_outside_its_limits() -> None:
    port = free_port()
    cfg = {
        "url": f"coap://{HOST}:{port}",
        "timeout": 2,
        "points": [
            {"name": "sp", "path": "/sp", "poll": 0.1, "low": 0, "high": 100},
            {"name": "hard", "path": "/hard", "poll": 0.1, "high": 100, "out_of_range": "bad"},
        ],
    }

    def last(seen: list[Any], point: str) -> Sample | None:
        found = [s for m in seen for s in m.samples if s.point == point]
        return found[-1] if found else None

    async with coap_server(port):
        await coap_put(port, "/sp", "150")
        await coap_put(port, "/hard", "150")
        async with coap_client(cfg) as (_, seen):
            sp = await wait_for(lambda: last(seen, "sp"), 5)
            assert (sp.value, sp.quality, sp.reason) == (150.0, U, "above high 100")
            hard = await wait_for(lambda: last(seen, "hard"), 5)
            assert (hard.value, hard.quality, hard.reason) == (150.0, B, "above high 100")
            # A Bad reading with a value is a reading, not an outage: each new one is sent.
            await coap_put(port, "/hard", "160")
            await wait_for(lambda: (s := last(seen, "hard")) and s.value == 160.0, 5)
            await coap_put(port, "/sp", "-1")
            below = await wait_for(lambda: (s := last(seen, "sp")) and s.value == -1.0 and s, 5)
            assert (below.quality, below.reason) == (U, "below low 0")
            await coap_put(port, "/sp", "100")
            await wait_for(lambda: (s := last(seen, "sp")) and s.quality is G and s.value == 100)


def test_mqtt_points_are_checked_where_payloads_become_samples() -> None:
    points = [
        MqttPoint(name="t", topic="dev/t", low=0, high=100),
        MqttPoint(name="h", topic="dev/s", format="senml", senml_name="h", low=0, high=100),
        MqttPoint(
            name="s", topic="dev/s", format="senml", senml_name="s", high=1, out_of_range="bad"
        ),
        MqttPoint(name="k", topic="dev/k", high=1, out_of_range="keep"),
    ]
    decoder = PointDecoder(points, "dev")
    (t,), _ = decoder.decode("dev/t", b'{"value": 101.5}', 1.0)
    assert (t.value, t.quality, t.reason) == (101.5, U, "above high 100")
    (t,), _ = decoder.decode("dev/t", b"100", 1.0)
    assert (t.value, t.quality, t.reason) == (100.0, G, None)
    samples, _ = decoder.decode("dev/s", b'[{"n": "h", "v": -2}, {"n": "s", "v": 5}]', 1.0)
    found = {s.point: (s.value, s.quality, s.reason) for s in samples}
    assert found == {"h": (-2.0, U, "below low 0"), "s": (5.0, B, "above high 1")}
    (k,), _ = decoder.decode("dev/k", b"7", 1.0)
    assert (k.value, k.quality) == (7.0, G)
