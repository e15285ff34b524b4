"""Broker failover (`failover:` of the MQTT endpoint and of Sparkplug): two real mosquittos, one
down. The gateway connects to the one that answers, stays there, and moves to the other when it
goes, with every reading queued meanwhile delivered there. With `failback:` the MQTT endpoint
moves back to the first broker once a probe of it is accepted, and only then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, find_binary, modbus_device_yaml, wait_for
from test_e2e_modbus_mqtt import Collector

from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from gateway.runtime import Gateway
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt.config import MqttEndpoint, brokers
from protocols.sparkplug import codec


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    """Two mosquittos, neither started."""
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = MosquittoBroker(binary, tmp_path / "a"), MosquittoBroker(binary, tmp_path / "b")
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
async def device(simulator: Simulator) -> AsyncIterator[SimulatedDevice]:
    yield await simulator.add_device()


def _values(collector: Collector) -> list[int]:
    return [sample["value"] for sample in collector.on("out/plc/t")]


def _config(
    device: SimulatedDevice,
    a: MosquittoBroker,
    b: MosquittoBroker,
    failback: float | None = None,
) -> str:
    """The endpoint up and the Sparkplug node n1 on a, then b; ``failback`` on up only."""
    up_failback = "" if failback is None else f"\n    failback: {failback}"
    return f"""
gateway: {{name: fo, status_interval: 0}}
devices:
{modbus_device_yaml(device.port, name="plc", poll_groups="{fast: {interval: 0.05}}")}
    points: [{{name: t, address: 0, poll: fast}}]
endpoints:
  up:
    protocol: mqtt
    host: {a.host}
    port: {a.port}
    failover: [{{host: {b.host}, port: {b.port}}}]
    reconnect: {{initial: 0.1, max: 0.3}}{up_failback}
  node:
    protocol: sparkplug
    host: {a.host}
    port: {a.port}
    failover: [{{host: {b.host}, port: {b.port}}}]
    reconnect: {{initial: 0.1, max: 0.3}}
    group: g1
    node: n1
bridges:
  - {{name: mqtt, from: plc, to: up, topic: "out/{{device}}/{{point}}", qos: 1}}
  - {{name: spb, from: plc, to: node}}
"""


async def test_the_gateway_moves_to_the_broker_that_answers_and_loses_nothing(
    device: SimulatedDevice, pair: tuple[MosquittoBroker, MosquittoBroker]
) -> None:
    a, b = pair
    b.start()  # the first broker, a, is down
    on_b = Collector(b)
    device.set_registers("holding", 0, [1])
    gateway = Gateway(load_config_text(_config(device, a, b)))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    on_a: Collector | None = None
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        await wait_for(lambda: 1 in _values(on_b), 10, message="the reading on b")
        await wait_for(lambda: on_b.on("spBv1.0/g1/NBIRTH/n1"), 10, message="the node born on b")
        assert on_b.last("protocol-brain/fo/status")["state"] == "online"
        status = gateway.status()["adapters"]
        assert status["up"]["broker"] == f"{b.host}:{b.port}"
        assert status["up"]["failovers"] >= 1 and status["node"]["failovers"] >= 1
        # the gateway stays on b while a comes back; then b goes, with readings on the way
        a.start()
        on_a = Collector(a)
        await asyncio.sleep(0.5)
        assert not _values(on_a), "no move while b answers"
        b.stop()
        for value in (2, 3, 4):
            device.set_registers("holding", 0, [value])
            await asyncio.sleep(0.15)
        await wait_for(lambda: 4 in _values(on_a), 15, message="the readings on a")
        await wait_for(lambda: on_a.on("spBv1.0/g1/NBIRTH/n1"), 10, message="the node born on a")
        assert [v for v in _values(on_a) if v > 1] == [2, 3, 4], "none lost, in order"
        assert on_a.last("protocol-brain/fo/status")["state"] == "online"
        assert gateway.status()["adapters"]["up"]["broker"] == f"{a.host}:{a.port}"
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
        on_b.close()
        if on_a is not None:
            on_a.close()


def test_failover_brokers_take_the_entrys_port_and_credentials() -> None:
    endpoint = MqttEndpoint(
        host="127.0.0.1",
        port=1884,
        failover=[{"host": "10.0.0.2"}, {"host": "10.0.0.3", "port": 1885}],
        username="u",
        password="p",
    )
    assert brokers(endpoint) == [("127.0.0.1", 1884), ("10.0.0.2", 1884), ("10.0.0.3", 1885)]
    # the first broker is this machine's; the password still crosses the network to another
    warning = endpoint.password_warning()
    assert warning is not None and "10.0.0.2:1884" in warning


@pytest.mark.parametrize("protocol", ["mqtt", "sparkplug"])
def test_a_broker_named_twice_is_refused(protocol: str) -> None:
    text = f"""
gateway: {{name: fo}}
endpoints:
  up: {{protocol: {protocol}, host: {HOST}, group: g1,
       failover: [{{host: 10.0.0.2}}, {{host: {HOST}, port: 1883}}]}}
"""
    if protocol == "mqtt":
        text = text.replace(" group: g1,", "")
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert f"endpoints.up.failover[1].host: found {HOST}:1883 again" in str(caught.value)


def _say_state(broker: MosquittoBroker, online: bool, timestamp: int) -> None:
    """A Primary Host Application's STATE for host_id scada, retained on ``broker``."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"scada-{timestamp}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        payload = codec.encode_state(codec.HostState(online, timestamp))
        client.publish(codec.state_topic("scada"), payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("first_says", ["offline", "nothing"])
async def test_a_sparkplug_node_walks_to_the_broker_where_its_primary_host_is_online(
    device: SimulatedDevice, pair: tuple[MosquittoBroker, MosquittoBroker], first_says: str
) -> None:
    """Sparkplug 3.0's walk: the node leaves a broker where the primary host is offline (its
    STATE says so, or none comes within primary_host_wait) for the next one, and is born where
    the host is online."""
    a, b = pair
    a.start()
    b.start()
    if first_says == "offline":
        _say_state(a, False, 1000)
    _say_state(b, True, 2000)
    on_a, on_b = Collector(a), Collector(b)
    wait = "30" if first_says == "offline" else "0.5"  # an offline STATE walks at once
    text = _config(device, a, b).replace(
        "node: n1", f"node: n1\n    primary_host: scada\n    primary_host_wait: {wait}"
    )
    gateway = Gateway(load_config_text(text))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        await wait_for(lambda: on_b.on("spBv1.0/g1/NBIRTH/n1"), 10, message="born on b")
        assert not on_a.on("spBv1.0/g1/NBIRTH/n1"), "no birth where the host is offline"
        # the host moves to a: offline on b (with its birth's timestamp, as 3.0 has it), then
        # online on a
        _say_state(b, False, 2000)
        _say_state(a, True, 3000)
        await wait_for(lambda: on_b.on("spBv1.0/g1/NDEATH/n1"), 10, message="its death on b")
        await wait_for(lambda: on_a.on("spBv1.0/g1/NBIRTH/n1"), 10, message="born on a")
        node = gateway.status()["adapters"]["node"]
        assert node["broker"] == f"{a.host}:{a.port}" and node["failovers"] >= 2
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
        on_a.close()
        on_b.close()


STATUS = "protocol-brain/fo/status"


async def _readings(device: SimulatedDevice, values: list[int], every: float = 0.15) -> None:
    """Set the register to 2, 3, ... every ``every`` seconds (more than the poll), each value
    taken in ``values``; until cancelled."""
    value = 2
    while True:
        device.set_registers("holding", 0, [value])
        values.append(value)
        value += 1
        await asyncio.sleep(every)


async def test_failback_moves_to_the_first_broker_once_it_answers_and_loses_nothing(
    device: SimulatedDevice, pair: tuple[MosquittoBroker, MosquittoBroker]
) -> None:
    a, b = pair
    b.start()  # the first broker, a, is down
    on_b = Collector(b)
    device.set_registers("holding", 0, [1])
    gateway = Gateway(load_config_text(_config(device, a, b, failback=0.3)))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    taken: list[int] = []
    readings: asyncio.Task[None] | None = None
    on_a: Collector | None = None
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        await wait_for(lambda: 1 in _values(on_b), 10, message="the reading on b")
        up = lambda: gateway.status()["adapters"]["up"]  # noqa: E731
        assert up()["broker"] == f"{b.host}:{b.port}" and up()["failovers"] >= 1
        failovers = up()["failovers"]
        # readings all along: on b, then while the gateway moves, then on a
        readings = asyncio.create_task(_readings(device, taken))
        await wait_for(lambda: len(taken) >= 3, 10, message="readings on b")
        a.start()
        on_a = Collector(a)
        await wait_for(lambda: up()["failbacks"] == 1, 15, message="the move back to a")
        assert up()["broker"] == f"{a.host}:{a.port}"
        moved_at = len(taken)
        await wait_for(lambda: len(taken) >= moved_at + 3, 10, message="readings after")
        readings.cancel()
        last = taken[-1]
        await wait_for(lambda: last in _values(on_a), 10, message="the last reading on a")
        seen_b = [v for v in _values(on_b) if v > 1]
        seen_a = [v for v in _values(on_a) if v > 1]
        assert seen_b and seen_a, "readings went out on both brokers"
        assert seen_b + seen_a == taken, "every reading once, in order, b's before a's"
        status = up()
        assert status["connected"] and status["failbacks"] == 1
        assert status["failovers"] == failovers, "a move back is not a failover"
        assert on_a.last(STATUS)["state"] == "online"
        # the node has no failback: it stays on b
        assert gateway.status()["adapters"]["node"]["broker"] == f"{b.host}:{b.port}"
        # b keeps "offline" retained, said by the gateway as it left (not its will)
        on_b.close()
        on_b = Collector(b, STATUS)
        await wait_for(lambda: on_b.last(STATUS), 10, message="the status retained on b")
        assert on_b.last(STATUS)["state"] == "offline" and "ts" in on_b.last(STATUS)
    finally:
        if readings is not None:
            readings.cancel()
        stop.set()
        await asyncio.wait_for(run, 30)
        on_b.close()
        if on_a is not None:
            on_a.close()


@pytest.mark.parametrize("first", ["down", "refusing"])
async def test_a_failed_probe_of_the_first_broker_leaves_the_session_alone(
    device: SimulatedDevice,
    pair: tuple[MosquittoBroker, MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
    first: str,
) -> None:
    """The first broker down, or up but refusing the endpoint's CONNECT (no anonymous
    logins): probe after probe, the gateway stays connected to b, said once."""
    caplog.set_level(logging.INFO, logger="protocols.mqtt.client")
    a, b = pair
    if first == "refusing":
        a.config.write_text(
            a.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        )
        a.start()
    b.start()
    on_b = Collector(b)
    device.set_registers("holding", 0, [1])
    gateway = Gateway(load_config_text(_config(device, a, b, failback=0.1)))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        await wait_for(lambda: 1 in _values(on_b), 10, message="the reading on b")

        def said() -> list[str]:
            return [
                r.getMessage() for r in caplog.records if "does not answer yet" in r.getMessage()
            ]

        await wait_for(said, 10, message="the failed probe logged")
        assert ("Not authorized" if first == "refusing" else "refused") in said()[0]
        await asyncio.sleep(1.0)  # ten probes more
        assert len(said()) == 1, "logged once per outage, not once per probe"
        status = gateway.status()["adapters"]["up"]
        assert status["connected"] and status["broker"] == f"{b.host}:{b.port}"
        assert status["failbacks"] == 0 and status["reconnects"] == 0, "the session untouched"
        device.set_registers("holding", 0, [2])
        await wait_for(lambda: 2 in _values(on_b), 10, message="a reading still on b")
        assert on_b.last(STATUS)["state"] == "online"
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
        on_b.close()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("failback: 30", "endpoints.up.failback: found 30 with no failover brokers"),
        (
            "failover: [{host: 10.0.0.2}], failback: 0",
            "endpoints.up.failback: found 0; expected a number > 0",
        ),
        (
            "failover: [{host: 10.0.0.2}], failback: -5",
            "endpoints.up.failback: found -5; expected a number > 0",
        ),
    ],
)
def test_failback_needs_failover_and_a_positive_period(entry: str, error: str) -> None:
    text = f"""
gateway: {{name: fo}}
endpoints:
  up: {{protocol: mqtt, host: {HOST}, {entry}}}
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert error in str(caught.value)


def test_failback_is_an_mqtt_endpoints_not_a_sparkplug_nodes() -> None:
    fine = load_config_text(f"""
gateway: {{name: fo}}
endpoints:
  up: {{protocol: mqtt, host: {HOST}, failover: [{{host: 10.0.0.2}}], failback: 30}}
""")
    endpoint = fine.devices["up"].config
    assert isinstance(endpoint, MqttEndpoint) and endpoint.failback == 30
    # the node walks by its primary host's STATE: a move of its own would fight it
    with pytest.raises(ConfigError) as caught:
        load_config_text(f"""
gateway: {{name: fo}}
endpoints:
  node: {{protocol: sparkplug, host: {HOST}, group: g1, failover: [{{host: 10.0.0.2}}],
         failback: 30}}
""")
    assert "endpoints.node.failback: found unknown key 'failback'" in str(caught.value)
