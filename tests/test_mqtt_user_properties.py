"""MQTT 5 user properties on the MQTT endpoint: out (endpoint and route ``user_properties``,
rendered per publish) and in (a received message's, in its bus message's meta), against a real
mosquitto. The observer is mosquitto_sub ``-V mqttv5 -F '%P'``, which prints a message's user
properties as ``name:value`` separated by spaces (so values here have no spaces), and requests
come from mosquitto_pub ``-D publish user-property``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import test_mqtt_adapter
import test_mqtt_v5_limits
from conftest import HOST, MosquittoBroker, find_binary, wait_for
from test_mqtt_adapter import run_cmd, running, sub_args
from test_mqtt_codec import message, sample
from test_mqtt_v5 import v5_adapter
from test_mqtt_v5_limits import broker_log, limited, serving
from test_optimizer_uplink import Collector, telemetry

from gateway.bus import Bus
from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from gateway.types import Message, MessageKind, Quality
from gateway.uplink.outbox import Outbox
from protocols.mqtt import codec
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute

broker_factory = test_mqtt_adapter.broker_factory  # the fixture: mosquittos of a given config

SITE = {"site": "plant-1", "gw": "{gateway}"}  # the endpoint's
PER_POINT = MqttRoute(
    topic="plant/{device}/{point}",
    payload="value",
    user_properties={
        "site": "line-2",  # replaces the endpoint's
        "device": "{device}",
        "point": "{point}",
        "unit": "{unit}",
        "quality": "{quality}",
    },
)
PER_DEVICE = MqttRoute(
    topic="plant/{device}", payload="device", user_properties={"where": "{device}/{kind}"}
)
READING = message(
    sample("temp", 21.5, unit="degC"), sample("flow", None, Quality.BAD, reason="timeout")
)


def pairs(text: str) -> list[tuple[str, str]]:
    """mosquitto_sub's %P: ``name:value`` pairs separated by spaces."""
    return [tuple(p.split(":", 1)) for p in text.split()]  # type: ignore[misc]


Seen = tuple[str, list[tuple[str, str]], str]  # topic, user properties, payload


@contextlib.asynccontextmanager
async def observer(
    broker: MosquittoBroker, *topics: str, count: int, payload: bool = True
) -> AsyncIterator[Awaitable[list[Seen]]]:
    """tests/test_mqtt_v5_limits.py's observer (a v5 mosquitto_sub at QoS 1, subscribed once
    this enters), its format with %P added: the next ``count`` messages as (topic, user
    properties, payload); ``payload=False``: not read (a batch's is binary)."""
    fields = "%t|%q|%r|%P|%p" if payload else "%t|%q|%r|%P|"
    with mock.patch.object(test_mqtt_v5_limits, "FIELDS", fields):
        async with test_mqtt_v5_limits.observer(broker, *topics, count=count) as task:

            async def seen() -> list[Seen]:
                found = [(t, rest.split("|", 1)) for t, _q, _r, rest in await task]
                return [(t, pairs(p), value) for t, (p, value) in found]

            yield seen()


async def published(
    broker: MosquittoBroker, *sends: tuple[Message, MqttRoute], count: int, **kw: Any
) -> tuple[list[Seen], dict[str, Any]]:
    """What an endpoint (``kw``) publishes of ``sends`` as the observer sees it, and its
    status after a clean stop."""
    mqtt = v5_adapter(broker.port, **kw)
    async with running(mqtt):
        async with observer(broker, "plant/#", count=count) as got:
            for sent, route in sends:
                await mqtt.send(sent, route)
            received = await got
    return received, mqtt.status()


@pytest.fixture
def broker(broker_factory: Any) -> MosquittoBroker:
    """A mosquitto that logs everything (observers wait for their SUBACK there)."""
    return limited(broker_factory, "")


# --- out ---------------------------------------------------------------------------------------


async def test_per_point_and_device_payloads_carry_the_rendered_properties(
    broker: MosquittoBroker,
) -> None:
    """Per point: the route's values rendered for each sample, after the endpoint's, whose
    ``site`` the route's replaces; a sample without a unit has no ``unit``. Per device: one set
    for the message. The retained offline status carries the endpoint's."""
    sends = [(READING, PER_POINT), (READING, PER_DEVICE)]
    received, status = await published(broker, *sends, count=3, user_properties=SITE)
    rc, offline, _ = await run_cmd(
        *sub_args(broker.port, "protocol-brain/gw1/status"), "-V", "mqttv5",
        "-F", "%P", "-C", "1", "-W", "5",
    )  # fmt: skip
    assert received[0][:2] == (
        "plant/boiler/temp",
        [
            ("site", "line-2"), ("gw", "gw1"), ("device", "boiler"), ("point", "temp"),
            ("unit", "degC"), ("quality", "good"),
        ],
    )  # fmt: skip
    assert received[1][:2] == (
        "plant/boiler/flow",
        [("site", "line-2"), ("gw", "gw1"), ("device", "boiler"), ("point", "flow"),
         ("quality", "bad")],
    )  # fmt: skip
    assert received[2][:2] == (
        "plant/boiler",
        [("site", "plant-1"), ("gw", "gw1"), ("where", "boiler/telemetry")],
    )
    assert rc == 0 and offline.strip() == "site:plant-1 gw:gw1", "the status has the endpoint's"
    assert status["user_property_errors"] == 0


async def test_the_will_carries_the_endpoints_properties(broker: MosquittoBroker) -> None:
    """The connection dropped without DISCONNECT: the broker publishes the will, with them."""
    mqtt = v5_adapter(broker.port, user_properties=SITE)
    async with running(mqtt):
        status = "protocol-brain/gw1/status"
        async with observer(broker, status, count=2) as got:  # the retained birth, the will
            mqtt._abort_connection("test: dropped")
            received = await got
    assert received[1] == (status, [("site", "plant-1"), ("gw", "gw1")], '{"state":"offline"}')


async def test_a_bad_rendered_value_is_dropped_counted_and_logged_once(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL in a point name, a unit over 65,535 bytes: that property is left out, each such
    publish counted, one log line; the publish goes with the rest."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    bad = message(sample("te\0mp", 1.0), sample("flow", 2.0, unit="u" * 70_000))
    sends = [(bad, PER_POINT)] * 2
    received, status = await published(broker, *sends, count=4, user_properties=SITE)
    assert [t for t, _p, _v in received] == ["plant/boiler/te%00mp", "plant/boiler/flow"] * 2
    assert [name for name, _v in received[0][1]] == ["site", "gw", "device", "quality"]
    assert [name for name, _v in received[1][1]] == ["site", "gw", "device", "point", "quality"]
    assert status["user_property_errors"] == 4
    said = [r.message for r in caplog.records if "user_property_errors" in r.message]
    assert len(said) == 1 and "'unit' of boiler: its value is 70,000 bytes" in said[0]


async def test_the_packet_size_check_counts_the_properties(broker_factory: Any) -> None:
    """A publish that fits the broker's Maximum Packet Size without its properties and not
    with them is too large: dropped and counted, the connection kept, the next one goes."""
    broker = limited(broker_factory, "max_packet_size 300")
    big = {"tag": "{point}-" + "x" * 120}
    route = MqttRoute(topic="plant/{device}/{point}", payload="value", user_properties=big)
    reading = message(sample("temp", "y" * 150))
    topic, payload = codec.encode(reading, route, "gw1")[0]
    [props] = codec.PropertyTemplates({}, big, "gw1").of(reading, "value")
    bare = codec.publish_size(len(topic), len(payload), 1, 1)
    full = codec.publish_size(len(topic), len(payload), 1, 1 + codec.user_properties_size(props))
    assert bare <= 300 < full, "the premise: it fits only without its properties"
    async with running(v5_adapter(broker.port)) as mqtt:
        async with observer(broker, "plant/#", count=1) as got:
            await mqtt.send(reading, route)
            await mqtt.send(message(sample("temp", 1.0)), route)
            [(_t, received, value)] = await got
        status = mqtt.status()
    assert (received, value) == ([("tag", "temp-" + "x" * 120)], "1.0")
    assert status["too_large"] == 1 and status["reconnects"] == 0 and status["connected"]
    assert "oversize" not in broker_log(broker)


PER_POINT_SEEN = [
    ("plant/boiler/temp", [("site", "line-2"), ("gw", "gw1"), ("device", "boiler"),
                           ("point", "temp"), ("unit", "degC"), ("quality", "good")]),
    ("plant/boiler/flow", [("site", "line-2"), ("gw", "gw1"), ("device", "boiler"),
                           ("point", "flow"), ("quality", "bad")]),
]  # fmt: skip


@pytest.mark.parametrize("durable", [True, False], ids=["outbox", "buffer"])
async def test_what_waited_out_an_outage_goes_with_them(
    broker: MosquittoBroker, tmp_path: Path, durable: bool
) -> None:
    """Readings queued while the broker is down (outbox rows, or the memory buffer) go with
    their properties once it is back, with topic aliases. Retained, so that the observer,
    which can subscribe only once the broker is back, gets them however soon they went (the
    broker keeps a retained message's properties)."""
    outbox = {"path": str(tmp_path / "outbox.db")} if durable else None
    mqtt = v5_adapter(broker.port, user_properties=SITE, outbox=outbox, topic_alias=True)
    route = PER_POINT.model_copy(update={"retain": True})
    async with running(mqtt):
        broker.stop()
        await wait_for(lambda: not mqtt.connected, 10, message="the outage noticed")
        await mqtt.send(READING, route)
        assert mqtt.status()["queued"] == 2
        broker.start()
        await wait_for(lambda: mqtt.status()["acknowledged"] == 2, 10, message="both sent")
        assert mqtt.status()["topic_aliases"] == 2, "they went with aliases"
        async with observer(broker, "plant/#", count=2) as got:
            outage = await got
    assert sorted((t, p) for t, p, _v in outage) == sorted(PER_POINT_SEEN)


async def test_the_outbox_replays_them_after_a_restart(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Rows kept in the file by an endpoint that stopped before it could send them are sent
    by the next one with their properties."""
    outbox = {"path": str(tmp_path / "outbox.db")}
    broker.stop()
    async with v5_adapter(broker.port, user_properties=SITE, outbox=outbox) as first:
        await first.send(READING, PER_DEVICE)  # never connected: kept in the file
        await first.send(READING, PER_POINT)
    broker.start()
    again = v5_adapter(broker.port, user_properties=SITE, outbox=outbox)
    async with again:
        assert again.status()["queued"] == 3
        async with observer(broker, "plant/#", count=3) as got, serving(again):
            restart = await got
    assert [(t, p) for t, p, _v in restart] == [
        ("plant/boiler", [("site", "plant-1"), ("gw", "gw1"), ("where", "boiler/telemetry")]),
        *PER_POINT_SEEN,
    ]


async def test_a_publish_refused_for_now_goes_again_with_them(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mosquitto never says 0x97 (Quota exceeded): its first PUBACK of a reading is made
    one (as tests/test_mqtt_v5.py does); the reading sent again carries its properties."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from protocols.mqtt import client as module

    faked: list[int] = []
    real, quota = module.MqttAdapter._on_publish, ReasonCode(PacketTypes.PUBACK, identifier=0x97)

    def quota_once(self: MqttAdapter, client: Any, u: Any, mid: int, code: Any, p: Any) -> None:
        first = not faked and mid not in self._internal_mids
        faked.extend([mid] if first else [])
        real(self, client, u, mid, quota if first else code, p)

    monkeypatch.setattr(module.MqttAdapter, "_on_publish", quota_once)
    route = MqttRoute(topic="plant/{point}", payload="value", user_properties={"p": "{point}"})
    async with running(v5_adapter(broker.port, outbox={})) as mqtt:
        async with observer(broker, "plant/#", count=2) as got:
            await mqtt.send(message(sample("temp", 3.0)), route)
            received = await got
        assert mqtt.status()["retrying"] == 0 and faked
    assert received == [("plant/temp", [("p", "temp")], "3.0")] * 2


def test_an_outbox_file_from_before_user_properties_opens_and_replays(tmp_path: Path) -> None:
    """A file made before the column: its rows replay without properties, new rows keep
    theirs across a reopen."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY, ts REAL NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
        " size INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        f"INSERT INTO outbox VALUES (1, {time.time()}, 'old/topic', x'6f6c64', 1, 0, 12);"
    )
    db.commit()
    db.close()
    box = Outbox(path)
    box.append([("new/topic", b"new", 1, False, (("site", "plant-1"), ("k", "v\u00e9")))])
    box.close()
    box = Outbox(path)
    try:
        rows = box.take(10)
    finally:
        box.close()
    assert [(r.topic, r.payload, r.user_properties) for r in rows] == [
        ("old/topic", b"old", ()),
        ("new/topic", b"new", (("site", "plant-1"), ("k", "v\u00e9"))),
    ]
    assert [r.size for r in rows] == [12, 9 + 3 + 4 + 7 + 1 + 2], "max_bytes counts them"


async def test_an_optimizer_batch_carries_the_endpoints_properties_only(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    optimizer = {"batch_topic": "batches/{gateway}"}
    mqtt = v5_adapter(
        broker.port, user_properties=SITE, outbox={"path": str(tmp_path / "o.db")},
        optimizer=optimizer,
    )  # fmt: skip
    alarm = replace(message(sample("temp", 99.0)), kind=MessageKind.EVENT)
    async with running(mqtt):
        async with observer(broker, "batches/#", count=1, payload=False) as got:
            for value in range(5):
                await mqtt.send(message(sample("temp", float(value))), PER_POINT)
            batch = [(t, p) for t, p, _payload in await got]
        async with observer(broker, "plant/#", count=1, payload=False) as got:
            await mqtt.send(alarm, PER_POINT)  # an alarm goes alone: its own properties
            alone = [(t, p) for t, p, _payload in await got]
    assert batch == [("batches/gw1", [("site", "plant-1"), ("gw", "gw1")])]
    assert alone == [
        ("plant/boiler/temp", [("site", "line-2"), ("gw", "gw1"), ("device", "boiler"),
                               ("point", "temp"), ("quality", "good")]),
    ]  # fmt: skip


async def test_batches_are_cut_to_the_packet_size_with_the_properties(
    broker_factory: Any,
) -> None:
    """The optimizer halves a batch until it fits the Maximum Packet Size counting the
    endpoint's properties it carries: none goes over (mosquitto would disconnect)."""
    broker = limited(broker_factory, "max_packet_size 400")
    optimizer = {"model": "builtin", "interval": 0.25}
    mqtt = v5_adapter(
        broker.port, outbox={}, optimizer=optimizer, user_properties={"pad": "x" * 200}
    )
    readings = [telemetry("press", 10, start) for start in range(0, 60, 10)]
    with contextlib.closing(Collector(broker.port)) as collector:
        async with running(mqtt):
            for reading in readings:
                await mqtt.send(reading, MqttRoute(topic="plant/{device}/{point}"))
            await wait_for(lambda: len(collector.rows) >= 60, 20, message="60 rows")
        status = mqtt.status()
        values = sorted(row["value"] for _topic, row in collector.rows)
    assert values == [float(v) for v in range(60)]
    assert status["too_large"] == 0 and status["reconnects"] == 0
    assert "oversize" not in broker_log(broker)


# --- config ------------------------------------------------------------------------------------


def _config(version: str, extra: str = "") -> str:
    return f"""
devices:
  plc: {{protocol: modbus, host: 127.0.0.1, points: [{{name: temp, address: 0}}]}}
endpoints:
  up:
    protocol: mqtt
    host: 127.0.0.1
    version: "{version}"
{extra}
bridges:
  - {{name: b, from: plc, to: up, user_properties: {{point: "{{point}}"}}}}
"""


def test_user_properties_need_mqtt_5() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(_config("3.1.1", "    user_properties: {site: plant-1}"))
    assert 'version: "5"' in str(refused.value) and "user_properties" in str(refused.value)
    load_config_text(_config("5", "    user_properties: {site: plant-1}"))  # taken
    with pytest.raises(ConfigError) as refused:  # a bridge's, on a 3.1.1 endpoint
        load_config_text(_config("3.1.1", ""))
    assert "bridges[0].user_properties: found with MQTT 3.1.1" in str(refused.value)
    route = MqttRoute(user_properties={"site": "x"})
    old = MqttEndpoint(host=HOST, version="3.1.1")
    assert [p.found for p in route.check_target(old)] == ["with MQTT 3.1.1"]
    assert route.check_target(MqttEndpoint(host=HOST, version="5")) == []


@pytest.mark.parametrize(
    ("where", "props", "said"),
    [
        ("route", {"x": "{bogus}"}, "unknown placeholder {bogus}"),
        ("device", {"x": "{point}"}, "unknown placeholder {point}"),
        ("endpoint", {"x": "{device}"}, "unknown placeholder {device}"),
        ("route", {"x": "{unit:>5}"}, "takes no format spec"),
        ("route", {"": "v"}, "needs a name"),
        ("route", {"a\0b": "v"}, "NUL"),
        ("endpoint", {"x": "v" * 65_536}, "over MQTT's 65,535"),
    ],
)
def test_a_bad_template_is_a_validate_error(where: str, props: dict[str, str], said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("{", r"\{").replace("}", r"\}")):
        if where == "endpoint":
            MqttEndpoint(host=HOST, version="5", user_properties=props)
        else:
            payload = "device" if where == "device" else "value"
            topic = "t/{device}" if where == "device" else "t/{point}"
            MqttRoute(topic=topic, payload=payload, user_properties=props)


async def test_a_route_with_properties_on_mqtt_3_publishes_without_them(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """What `gateway validate` refuses, met at run time all the same: the publish goes,
    counted and logged once."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    received, status = await published(broker, (READING, PER_POINT), count=2, version="3.1.1")
    assert status["user_property_errors"] == 2
    assert [(t, p) for t, p, _v in received] == [
        ("plant/boiler/temp", []),
        ("plant/boiler/flow", []),
    ]
    said = [r.message for r in caplog.records if "user_property_errors" in r.message]
    assert len(said) == 1 and "MQTT 3.1.1 has no user properties" in said[0]


# --- in ----------------------------------------------------------------------------------------


async def _pub(port: int, topic: str, payload: str, *props: str) -> None:
    args = [find_binary("mosquitto_pub"), "-h", HOST, "-p", str(port), "-V", "mqttv5"]
    rc, _, err = await run_cmd(*args, "-q", "1", "-t", topic, "-m", payload, *props)
    assert rc == 0, err


def _user(*pairs: str) -> list[str]:
    out: list[str] = []
    for pair in pairs:
        name, value = pair.split("=")
        out += ["-D", "publish", "user-property", name, value]
    return out


async def test_received_properties_reach_the_bus_messages_meta(
    broker: MosquittoBroker,
) -> None:
    """A subscription's sample and a point's telemetry carry the message's user properties in
    their meta, in order, a repeated name twice; a message without has no such key."""
    bus = Bus()
    raw = bus.subscribe("mqtt/up/#", maxsize=10, name="raw")
    points = bus.subscribe("telemetry/up", maxsize=10, name="points")
    mqtt = v5_adapter(
        broker.port, bus, subscriptions=[{"topic": "req/#", "payload": "text"}],
        points=[{"name": "temp", "topic": "dev/temp"}],
    )  # fmt: skip
    async with running(mqtt):
        await _pub(broker.port, "req/a", "hi", *_user("k=v", "site=p1", "k=w"))
        await _pub(broker.port, "req/b", "bare")
        await _pub(broker.port, "dev/temp", "21.5", *_user("src=plc7"))
        first = await asyncio.wait_for(raw.get(), 10)
        second = await asyncio.wait_for(raw.get(), 10)
        reading = await asyncio.wait_for(points.get(), 10)
    assert first.meta == {codec.USER_PROPERTIES: [("k", "v"), ("site", "p1"), ("k", "w")]}
    assert second.meta == {}
    assert reading.samples[0].value == 21.5
    assert reading.meta == {codec.USER_PROPERTIES: [("src", "plc7")]}


@pytest.mark.parametrize("response_topic", [True, False], ids=["response-topic", "own-topic"])
async def test_a_reply_echoes_the_requests_properties(
    broker: MosquittoBroker, response_topic: bool, tmp_path: Path
) -> None:
    """A shadow-style reply (`publish` with the request's meta) carries the request's user
    properties after the endpoint's (the request's replacing one of the same name), on its
    Response Topic or, without one, on its own topic through the durable outbox."""
    bus = Bus()
    requests = bus.subscribe("mqtt/up/#", maxsize=10, name="test")
    mqtt = v5_adapter(
        broker.port, bus, user_properties=SITE, outbox={"path": str(tmp_path / "o.db")},
        subscriptions=[{"topic": "req/#", "payload": "text"}],
    )  # fmt: skip
    extra = ["-D", "publish", "response-topic", "answers/c9"] if response_topic else []
    async with running(mqtt):
        await _pub(broker.port, "req/pump", "get", *_user("job=42", "site=client"), *extra)
        request = await asyncio.wait_for(requests.get(), 10)
        async with observer(broker, "answers/#", "req/pump/accepted", count=1) as got:
            mqtt.publish("req/pump/accepted", b"done", reply_to=request.meta)
            [(topic, received, payload)] = await got
    assert topic == ("answers/c9" if response_topic else "req/pump/accepted")
    assert (received, payload) == ([("site", "client"), ("gw", "gw1"), ("job", "42")], "done")


async def test_a_write_carries_the_endpoints_properties(broker: MosquittoBroker) -> None:
    points = [{"name": "sp", "topic": "dev/sp", "access": "rw", "command_topic": "dev/sp/set"}]
    async with running(v5_adapter(broker.port, user_properties=SITE, points=points)) as mqtt:
        async with observer(broker, "dev/sp/set", count=1) as got:
            await mqtt.write("sp", 7.0)
            received = await got
    assert received == [("dev/sp/set", [("site", "plant-1"), ("gw", "gw1")], "7.0")]


def test_user_properties_size_is_what_paho_packs() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    pairs = [("site", "plant-1"), ("unit", "\u00b0C")]
    props.UserProperty = pairs
    packed = len(props.pack())  # type: ignore[no-untyped-call]
    assert packed == 1 + codec.user_properties_size(pairs)  # their length takes one byte here


def test_light_publish_properties_pack_as_pahos() -> None:
    """`PublishProperties` (shared tables, packed once) packs what paho's own would, again
    after a property is set."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from protocols.mqtt.props import PublishProperties

    light, paho = PublishProperties(), Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for props in (light, paho):
        props.UserProperty = [("site", "plant-1")]
    assert light.pack() == paho.pack()  # type: ignore[no-untyped-call]
    for props in (light, paho):
        props.MessageExpiryInterval = 60
    assert light.pack() == paho.pack()  # type: ignore[no-untyped-call]


def test_the_adapter_without_properties_builds_none() -> None:
    """The option off: no user properties on data, status or batches."""
    mqtt = MqttAdapter("up", MqttEndpoint(host=HOST, version="5"), _context())
    assert mqtt._own_props == () and mqtt._status_props is None and mqtt._batch_props == 1


def _context() -> Any:
    from gateway.adapter import AdapterContext

    return AdapterContext(Bus(), "gw1")
