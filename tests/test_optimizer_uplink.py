"""The uplink driven by the shipped policy, against a real mosquitto behind a shaping proxy.

The MQTT adapter publishes through `ShapingProxy` (loopback, rate- and delay-limited); a
subscriber reads the broker directly and unbatches. When the link narrows, the publishes carry
more rows each (batches grow), and every row arrives once, in order per device, with its id.
An alarm (an EVENT message) goes alone, QoS 1, never inside a batch.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from conftest import HOST, MosquittoBroker, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from shaping_proxy import ShapingProxy
from test_mqtt_adapter import running  # async with + run() as a task, cancelled at exit

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.optimizer.batch import decode_batch, is_batch
from gateway.types import Message, MessageKind, Sample
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute

ROUTE = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)
BATCH_TOPIC = "protocol-brain/gw1/batch"


class Collector:
    """Everything the broker delivers, unbatched, in arrival order."""

    def __init__(self, port: int, extra: str = "") -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.publishes: list[tuple[str, int, int]] = []  # topic, rows, qos
        self.lock = threading.Lock()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="collector")
        client.on_message = self._on_message
        client.connect(HOST, port)
        client.subscribe([("plant/#", 1), (BATCH_TOPIC, 1)] + ([(extra, 1)] if extra else []))
        client.loop_start()
        self.client = client

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        items = (
            decode_batch(msg.payload) if msg.topic == BATCH_TOPIC else [(msg.topic, msg.payload)]
        )
        with self.lock:
            self.publishes.append((msg.topic, len(items), msg.qos))
            for topic, payload in items:
                self.rows.append((topic, json.loads(payload)))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def telemetry(device: str, n: int, start: int) -> Message:
    now = time.time()
    samples = tuple(
        Sample(f"p{start + i}", float(start + i), source_ts=now, gateway_ts=now) for i in range(n)
    )
    return Message(
        topic=f"telemetry/{device}",
        kind=MessageKind.TELEMETRY,
        samples=samples,
        origin="test",
        device=device,
    )


def rows_per_publish(mqtt: MqttAdapter, since: float, until: float) -> float:
    opt = mqtt._opt
    assert opt is not None
    sizes = [n for t, n in opt.batches if since <= t < until]
    assert sizes, "no publishes in that phase"
    return sum(sizes) / len(sizes)


async def test_batches_grow_when_the_link_narrows_and_nothing_is_lost(
    mosquitto: MosquittoBroker,
) -> None:
    collector = Collector(mosquitto.port)
    try:
        async with ShapingProxy(mosquitto.port, rate=2_000_000, delay=0.01) as proxy:
            endpoint = MqttEndpoint(
                host=HOST,
                port=proxy.port,
                reconnect={"initial": 0.05, "max": 0.2, "multiplier": 2.0},
                optimizer={"model": "builtin", "interval": 0.25},
            )
            mqtt = MqttAdapter("up", endpoint, AdapterContext(Bus(), "gw1"))
            async with running(mqtt):
                assert mqtt._opt is not None and mqtt._opt.policy.name == "learned"
                sent = 0
                devices = ("press", "oven")

                async def phase(seconds: float) -> tuple[float, float]:
                    nonlocal sent
                    start = time.monotonic()
                    while time.monotonic() - start < seconds:
                        for device in devices:  # 2 x 10 samples every 50 ms: 400 samples/s
                            await mqtt.send(telemetry(device, 10, sent), ROUTE)
                            sent += 10
                        await asyncio.sleep(0.05)
                    return start, time.monotonic()

                wide = await phase(3.0)
                proxy.rate = 1_500  # bytes/s: below what even 10-row compressed batches need
                narrow_from = time.monotonic()
                # measured once the window has filled and the policy has seen the RTT grow
                narrow = (narrow_from + 2.0, (await phase(4.0))[1])
                await mqtt.send(
                    Message(
                        topic="events/press",
                        kind=MessageKind.EVENT,
                        device="press",
                        samples=(Sample("alarm", True, source_ts=time.time()),),
                        origin="test",
                    ),
                    ROUTE,
                )
                total = sent + 1  # and the alarm
                wide_rows = rows_per_publish(mqtt, *wide)
                narrow_rows = rows_per_publish(mqtt, *narrow)
                proxy.rate = 2_000_000
                await wait_for(
                    lambda: len(collector.rows) >= total,
                    timeout=30,
                    message=f"{total} rows at the subscriber",
                )
                await wait_for(
                    lambda: mqtt.status()["outbox"]["backlog"] == 0,
                    timeout=10,
                    message="the outbox empty after the acknowledgements",
                )
                status = mqtt.status()
        timeline = [(round(t - wide[0], 1), n) for t, n in mqtt._opt.batches]
        assert narrow_rows > 2 * wide_rows, (wide_rows, narrow_rows, status["optimizer"], timeline)
        with collector.lock:
            rows, publishes = list(collector.rows), list(collector.publishes)
        ids = [int(doc["id"].rsplit("/", 1)[1]) for _, doc in rows]
        assert len(ids) == len(set(ids)) == total  # nothing lost, nothing twice
        per_device: dict[str, list[int]] = {}
        for (topic, _), i in zip(rows, ids, strict=True):
            per_device.setdefault(topic.split("/")[1], []).append(i)
        for device, seq in per_device.items():
            assert seq == sorted(seq), f"{device} out of order"
        alarm = [p for p in publishes if p[0] == "plant/press/alarm"]
        assert alarm == [("plant/press/alarm", 1, 1)]  # alone, QoS 1
        assert any(is_batch_topic == BATCH_TOPIC for is_batch_topic, _, _ in publishes)
    finally:
        collector.close()


async def test_a_shadow_reply_is_not_hidden_in_a_batch(mosquitto: MosquittoBroker) -> None:
    """Publishes outside any bridge (shadow replies) go alone on their own topic while the
    optimizer batches telemetry: a client waiting on .../get/accepted never reads the batch."""
    collector = Collector(mosquitto.port, extra="things/#")
    try:
        endpoint = MqttEndpoint(
            host=HOST, port=mosquitto.port, optimizer={"model": "builtin", "interval": 0.25}
        )
        mqtt = MqttAdapter("up", endpoint, AdapterContext(Bus(), "gw1"))
        async with running(mqtt):
            await wait_for(lambda: mqtt.status()["connected"], timeout=10, message="connected")
            for i in range(5):
                await mqtt.send(telemetry("press", 10, 10 * i), ROUTE)
            mqtt.publish("things/press/shadow/get/accepted", b'{"state": {"desired": {}}}')
            await mqtt.send(telemetry("press", 10, 50), ROUTE)
            await wait_for(lambda: len(collector.rows) >= 61, timeout=10, message="61 rows")
        with collector.lock:
            publishes, rows = list(collector.publishes), list(collector.rows)
        reply = [p for p in publishes if p[0].startswith("things/")]
        assert reply == [("things/press/shadow/get/accepted", 1, 1)]
        docs = [doc for topic, doc in rows if topic == "things/press/shadow/get/accepted"]
        assert [doc["state"] for doc in docs] == [{"desired": {}}]  # (the outbox adds an id)
        assert any(topic == BATCH_TOPIC for topic, _, _ in publishes)  # telemetry was batched
    finally:
        collector.close()


def test_batch_payload_is_recognised() -> None:
    from gateway.optimizer.batch import encode_batch

    assert is_batch(encode_batch([("a", b"1")])) and is_batch(
        encode_batch([("a", b"1")], compress=True)
    )
    assert not is_batch(b'{"value":1}')
