"""The embedded demo broker (gateway/broker.py): amqtt in our event loop, quiet, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, find_binary, port_open, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from gateway.adapter import AdapterContext
from gateway.broker import BrokerError, EmbeddedBroker
from gateway.bus import Bus
from gateway.types import Message, MessageKind, Sample
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute


async def test_port_zero_binds_a_free_port_and_releases_it() -> None:
    async with EmbeddedBroker(host=HOST, port=0) as broker:
        port = broker.port
        assert port > 0
        assert broker.url == f"mqtt://{HOST}:{port}"
        pub = await asyncio.create_subprocess_exec(
            find_binary("mosquitto_pub"), "-h", HOST, "-p", str(port), "-t", "probe", "-m", "x",
            "-q", "1",
        )  # fmt: skip
        assert await asyncio.wait_for(pub.wait(), 10) == 0  # an MQTT broker answers there
    assert not await asyncio.to_thread(port_open, HOST, port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.port


async def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"failed to start on {HOST}:{port}"):
            async with EmbeddedBroker(host=HOST, port=port):
                pass


@contextlib.contextmanager
def paho_subscriber(port: int, topic: str) -> Iterator[tuple[queue.Queue[Any], threading.Event]]:
    """A plain paho client on its own thread (test side only), subscribed to ``topic``."""
    received: queue.Queue[Any] = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-sub")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = lambda c, u, m: received.put((m.topic, m.payload))
    client.connect_async(HOST, port)
    client.loop_start()
    try:
        yield received, subscribed
    finally:
        client.disconnect()
        client.loop_stop()


async def test_adapter_publishes_through_it_to_subscribers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with EmbeddedBroker(host=HOST, port=0) as broker:
        bus = Bus()
        echo = bus.subscribe("mqtt/#")
        endpoint = MqttEndpoint(
            host=HOST,
            port=broker.port,
            reconnect={"initial": 0.05, "max": 0.2},
            subscriptions=[{"topic": "demo/#"}],
        )
        mqtt = MqttAdapter("demo", endpoint, AdapterContext(bus, "gw1"))
        live = MqttRoute(topic="demo/{device}/{point}", payload="sample", qos=1)
        kept = MqttRoute(topic="kept/{device}/{point}", payload="value", qos=1, retain=True)
        samples = (Sample.now("temp", 21.5, unit="degC"), Sample.now("on", True))
        message = Message("telemetry/boiler", MessageKind.TELEMETRY, samples, "m", 1,
                          device="boiler")  # fmt: skip
        with paho_subscriber(broker.port, "demo/#") as (received, subscribed):
            async with mqtt:
                task = asyncio.create_task(mqtt.run())
                try:
                    async with asyncio.timeout(10):
                        await mqtt.wait_connected()
                        assert await asyncio.to_thread(subscribed.wait, 5)
                    await mqtt.send(message, live)
                    await mqtt.send(message, kept)
                    await wait_for(lambda: mqtt.status()["acknowledged"] == 4)
                    await wait_for(lambda: len(echo) == 2, message="our publishes back via amqtt")
                    got = [await asyncio.to_thread(received.get, True, 5) for _ in range(2)]
                    late = await asyncio.create_subprocess_exec(
                        find_binary("mosquitto_sub"), "-h", HOST, "-p", str(broker.port),
                        "-t", "kept/#", "-v", "-C", "2", "-W", "5",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    )  # fmt: skip
                    async with asyncio.timeout(10):
                        out, err = await late.communicate()
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await asyncio.sleep(0.2)  # let amqtt see the test subscriber leave before it stops
    assert [topic for topic, _ in got] == ["demo/boiler/temp", "demo/boiler/on"]
    first, second = json.loads(got[0][1]), json.loads(got[1][1])
    assert (first["value"], first["quality"], first["id"]) == (21.5, "good", "gw1/demo/1")
    assert got[0][1].endswith(b'Z","unit":"degC"}')
    assert (second["value"], second["quality"], second["id"]) == (True, "good", "gw1/demo/2")
    assert late.returncode == 0, err
    assert sorted(out.decode().splitlines()) == ["kept/boiler/on true", "kept/boiler/temp 21.5"]
    values = [echo.get_nowait().samples[0].value for _ in range(2)]  # type: ignore[union-attr]
    assert values == [21.5, True]
    # Quiet: amqtt's per-connection and per-packet INFO lines stay out of the gateway's logs.
    assert not [r for r in caplog.records if r.name.startswith("amqtt") and r.levelno < 40]


async def test_logger_levels_are_restored_after_stop() -> None:
    amqtt_logger = logging.getLogger("amqtt")
    before = amqtt_logger.level
    async with EmbeddedBroker(host=HOST, port=0):
        assert amqtt_logger.getEffectiveLevel() >= logging.ERROR
    assert amqtt_logger.level == before
