"""A bridge from one MQTT broker to another relays the received message's MQTT 5 user
properties (``relay_user_properties``) and names them in its templates (``{property:<name>}``).

End to end: two real mosquittos (A and B) on free ports, an in-process gateway subscribed to A
and publishing to B; messages come from mosquitto_pub ``-D publish user-property`` on A, and
mosquitto_sub ``-V mqttv5 -F %P`` on B (tests/test_mqtt_user_properties.py's observer) reads
the properties the gateway published, in order.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import test_mqtt_adapter
from conftest import HOST, MosquittoBroker, wait_for
from test_mqtt_codec import message, sample
from test_mqtt_user_properties import _pub, _user, observer
from test_mqtt_v5 import v5_adapter
from test_mqtt_v5_limits import broker_log, limited
from test_opcua_server import running_gateway

from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from gateway.runtime import Gateway
from gateway.types import Message
from protocols.mqtt import codec
from protocols.mqtt.config import MqttEndpoint, MqttRoute

broker_factory = test_mqtt_adapter.broker_factory  # the fixture: mosquittos of a given config

# as mosquitto_pub sends them on A: a repeated name, and a `gw` that B's endpoint sets itself
SENT = ("trace=t1", "site=s7", "k=v1", "gw=spoofed", "k=v2")


def gateway_yaml(a: MosquittoBroker, b: MosquittoBroker, outbox: Path, *bridges: str) -> str:
    """Endpoint ``a`` reads point ``temp`` from ``dev/temp`` on A; endpoint ``b`` publishes
    to B with a user property of its own, ``gw``."""
    routes = "".join(f"\n  - {{name: r{i}, from: a, to: b, {r}}}" for i, r in enumerate(bridges))
    backoff = "reconnect: {initial: 0.1, max: 0.5}"
    return f"""
gateway: {{name: gw1}}
endpoints:
  a:
    protocol: mqtt
    host: {HOST}
    port: {a.port}
    version: "5"
    {backoff}
    points: [{{name: temp, topic: dev/temp}}]
  b:
    protocol: mqtt
    host: {HOST}
    port: {b.port}
    version: "5"
    {backoff}
    user_properties: {{gw: "{{gateway}}"}}
    outbox: {{path: "{outbox}"}}
bridges:{routes}
"""


def connected(gateway: Gateway, *names: str) -> bool:
    return all(gateway.adapters[n].status()["connected"] for n in names)


@pytest.fixture
def brokers(broker_factory: Any) -> tuple[MosquittoBroker, MosquittoBroker]:
    """A (the source) and B (the target), each logging everything: observers wait for their
    SUBACK in the log."""
    return limited(broker_factory, ""), limited(broker_factory, "")


async def test_a_bridge_relays_them_filters_them_and_names_them(
    brokers: tuple[MosquittoBroker, MosquittoBroker], tmp_path: Path
) -> None:
    """One message on A, three bridges to B. ``true``: all of it in order, the repeated name
    twice, then the endpoint's and the route's; a name they set (``gw``, ``site``) is theirs
    alone. A list of names and globs: only those. ``{property:site}``: the received value.
    A second message with no properties: none relayed, and a ``{property:site}`` template
    left out and counted, the publish going all the same."""
    a, b = brokers
    config = gateway_yaml(
        a, b, tmp_path / "outbox.db",
        'topic: "all/{point}", payload: value, relay_user_properties: true,'
        ' user_properties: {site: "{property:site}-b", hop: "{device}"}',
        'topic: "some/{point}", payload: value, relay_user_properties: [k, "tr*"]',
        'topic: "ref/{point}", payload: value, user_properties: {origin: "{property:site}"}',
    )  # fmt: skip
    async with running_gateway(config) as gateway:
        target = gateway.adapters["b"]
        await wait_for(lambda: connected(gateway, "a", "b"), 15, message="both connected")
        async with observer(b, "all/#", "some/#", "ref/#", count=6) as got:
            await _pub(a.port, "dev/temp", "21.5", *_user(*SENT))
            await _pub(a.port, "dev/temp", "3.5")  # no properties at all
            received = await got
        errors = target.status()["user_property_errors"]
    seen = {(topic, value): props for topic, props, value in received}
    assert seen == {
        ("all/temp", "21.5"): [
            ("trace", "t1"), ("k", "v1"), ("k", "v2"), ("gw", "gw1"), ("site", "s7-b"),
            ("hop", "a"),
        ],
        ("some/temp", "21.5"): [("trace", "t1"), ("k", "v1"), ("k", "v2"), ("gw", "gw1")],
        ("ref/temp", "21.5"): [("gw", "gw1"), ("origin", "s7")],
        ("all/temp", "3.5"): [("gw", "gw1"), ("hop", "a")],
        ("some/temp", "3.5"): [("gw", "gw1")],
        ("ref/temp", "3.5"): [("gw", "gw1")],
    }  # fmt: skip
    assert errors == 2, "the bare message had no site for all/ and ref/"


@pytest.mark.parametrize("restart", [False, True], ids=["outage", "gateway-restart"])
async def test_they_wait_out_an_outage_of_the_target_in_the_outbox(
    brokers: tuple[MosquittoBroker, MosquittoBroker], tmp_path: Path, restart: bool
) -> None:
    """B stops; a message arrives on A and waits in B's outbox; B comes back (and, with
    ``restart``, the gateway stopped meanwhile and the next one sends the file's rows): it
    goes with its relayed properties. Retained, so that the observer, which can subscribe
    only once B is back, gets it however soon it went (B keeps its properties)."""
    a, b = brokers
    config = gateway_yaml(
        a, b, tmp_path / "outbox.db",
        'topic: "all/{point}", payload: value, retain: true, relay_user_properties: true,'
        ' user_properties: {origin: "{property:site}"}',
    )  # fmt: skip
    async with running_gateway(config) as gateway:
        target = gateway.adapters["b"]
        await wait_for(lambda: connected(gateway, "a", "b"), 15, message="both connected")
        b.stop()
        await wait_for(lambda: not connected(gateway, "b"), 15, message="the outage noticed")
        await _pub(a.port, "dev/temp", "21.5", *_user(*SENT))
        await wait_for(lambda: target.status()["queued"] == 1, 15, message="queued for B")
        if not restart:
            b.start()
            await wait_for(lambda: target.status()["acknowledged"] == 1, 20, message="sent")
    if restart:
        b.start()
        async with running_gateway(config) as again:
            target = again.adapters["b"]
            await wait_for(lambda: target.status()["acknowledged"] == 1, 20, message="replayed")
    async with observer(b, "all/#", count=1) as got:
        [(topic, props, value)] = await got
    assert (topic, value) == ("all/temp", "21.5")
    assert props == [
        ("trace", "t1"), ("site", "s7"), ("k", "v1"), ("k", "v2"), ("gw", "gw1"),
        ("origin", "s7"),
    ]  # fmt: skip


async def test_the_packet_size_check_counts_the_relayed_ones(broker_factory: Any) -> None:
    """A publish that fits B's Maximum Packet Size without the received properties and not
    with them is too large: dropped and counted, the connection kept, the next one goes with
    its own."""
    b = limited(broker_factory, "max_packet_size 300")
    route = MqttRoute(topic="plant/{point}", payload="value", relay_user_properties=True)
    reading = message(sample("temp", 1.0))
    big, small = _with(reading, ("pad", "x" * 300)), _with(reading, ("k", "v"))
    async with test_mqtt_adapter.running(v5_adapter(b.port)) as mqtt:
        async with observer(b, "plant/#", count=1) as got:
            await mqtt.send(big, route)
            await mqtt.send(small, route)
            received = await got
        status = mqtt.status()
    assert received == [("plant/temp", [("k", "v")], "1.0")]
    assert status["too_large"] == 1 and status["reconnects"] == 0 and status["connected"]
    assert "oversize" not in broker_log(b)


# --- sans-IO ------------------------------------------------------------------------------------


def _with(msg: Message, *pairs: Any) -> Message:
    return replace(msg, meta={codec.USER_PROPERTIES: list(pairs)})


def test_templates_relay_in_order_and_render_each_messages_own_value() -> None:
    """The cache of rendered sets tells messages apart by the received values the templates
    name; what is not a pair of strings in the meta is skipped; the endpoint's name wins."""
    props = codec.PropertyTemplates(
        {"gw": "{gateway}"}, {"from": "{property:site}", "at": "{point}"}, "gw1", ("s*", "gw", "n")
    )
    reading = message(sample("temp", 1.0), sample("flow", 2.0))
    one = _with(reading, ("site", "s1"), ("n", 5), ["sx", "2"], ("gw", "no"), ("other", "o"))
    two = _with(reading, ("site", "s2"), ("site", "s3"))
    assert props.of(one, "value") == [
        (("site", "s1"), ("sx", "2"), ("gw", "gw1"), ("from", "s1"), ("at", "temp")),
        (("site", "s1"), ("sx", "2"), ("gw", "gw1"), ("from", "s1"), ("at", "flow")),
    ]
    assert props.of(two, "device") == [
        (("site", "s2"), ("site", "s3"), ("gw", "gw1"), ("from", "s2")),
    ]
    assert props.errors == 0
    bare = message(sample("temp", 1.0))  # a non-MQTT source's: no meta
    assert props.of(bare, "value") == [(("gw", "gw1"), ("at", "temp"))] and props.errors == 1
    assert "has no user property 'site'" in str(props.last_error)


# --- config ------------------------------------------------------------------------------------


def _config(version: str, route: str) -> str:
    return f"""
endpoints:
  a: {{protocol: mqtt, host: {HOST}, version: "5", points: [{{name: t, topic: dev/t}}]}}
  b: {{protocol: mqtt, host: {HOST}, version: "{version}"}}
bridges:
  - {{name: r, from: a, to: b, {route}}}
"""


def test_gateway_validate_refuses_relaying_to_mqtt_3(tmp_path: Path) -> None:
    """`gateway validate` as a user runs it: relaying to a 3.1.1 endpoint is an error naming
    the key; the same on MQTT 5 is taken."""
    path = tmp_path / "plant.yaml"
    path.write_text(_config("3.1.1", "relay_user_properties: true"))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "bridges[0].relay_user_properties: found with MQTT 3.1.1" in out.stderr
    assert 'version: "5"' in out.stderr and "or no relay_user_properties" in out.stderr
    load_config_text(_config("5", "relay_user_properties: [site, 'trace-*']"))  # taken
    route = MqttRoute(relay_user_properties=True)
    assert route.check_target(MqttEndpoint(host=HOST, version="5")) == []


@pytest.mark.parametrize(
    ("route", "said"),
    [
        ("relay_user_properties: []", "expected true for all, or a list of names and globs"),
        ("relay_user_properties: ['']", "'' is empty"),
        ("relay_user_properties: site", "expected true or false or a list"),
        ('user_properties: {x: "{property}"}', "as {property:<name>}"),
        ('user_properties: {x: "{property:{point}}"}', "as {property:<name>}"),
        ('user_properties: {x: "{property!r:a}"}', "as {property:<name>}"),
    ],
)
def test_a_bad_relay_or_reference_is_a_validate_error(route: str, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(_config("5", route))
    assert said in str(refused.value)


def test_a_device_payload_may_name_a_received_one() -> None:
    """One publish per message: the received message's properties are the same for all of
    it, as {device} is."""
    route = 'topic: "d/{device}", payload: device, user_properties: {s: "{property:site}"}'
    loaded = load_config_text(_config("5", route))
    assert loaded.bridges[0].route.user_properties == {"s": "{property:site}"}  # type: ignore[union-attr]


def test_the_endpoints_properties_cannot_name_a_received_one() -> None:
    """The endpoint's go on its status and will too, which answer no message."""
    with pytest.raises(ValueError, match=r"unknown placeholder \{property\}"):
        MqttEndpoint(host=HOST, version="5", user_properties={"x": "{property:site}"})
