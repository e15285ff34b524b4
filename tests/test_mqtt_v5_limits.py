"""MQTT 5: the limits a broker's CONNACK sets (Maximum Packet Size, Maximum QoS, Retain Available),
against real mosquittos configured with ``max_packet_size``, ``max_qos`` and ``retain_available``.

A client that sends past them commits a protocol error and mosquitto disconnects it ("oversize
packet", "Too high QoS in PUBLISH", "Retain not supported"); with the durable outbox, or paho's
re-send of what was in flight, the same publish came back after every reconnect and jammed the
uplink for good. Each broker logs everything (``log_type all``), so what reached it is read where
it landed (``Received PUBLISH from ... (d0, q1, r0, ...``), and observers subscribe before the
gateway publishes, waiting for their SUBACK in that log rather than for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import test_mqtt_adapter
from conftest import HOST, MosquittoBroker, wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_adapter import run_cmd, running, sub_args
from test_mqtt_codec import message, sample
from test_mqtt_v5 import CLIENT_ID, cancel, v5_adapter
from test_optimizer_uplink import BATCH_TOPIC, Collector, telemetry

from gateway.commands import WriteRefused, WriteStatus
from protocols.mqtt import codec
from protocols.mqtt.client import MqttAdapter, _Client
from protocols.mqtt.config import MqttRoute

broker_factory = test_mqtt_adapter.broker_factory  # the fixture: mosquittos of a given config
FIELDS = "%t|%q|%r|%p"  # topic, QoS, retain flag, payload
STATUS = "protocol-brain/gw1/status"
_observers = itertools.count()


def route(qos: int = 1, retain: bool = False) -> MqttRoute:
    return MqttRoute(topic="plant/{device}/{point}", payload="value", qos=qos, retain=retain)


def reading(value: float) -> Any:
    return message(sample("temp", value))


BIG = message(sample("big", "x" * 400))  # 400 bytes and more: over a limit of 300


def limited(factory: Any, limits: str) -> MosquittoBroker:
    """A started mosquitto that logs everything, with ``limits`` (mosquitto.conf lines)."""
    return factory(f"allow_anonymous true\nlog_type all\n{limits}")  # type: ignore[no-any-return]


def broker_log(broker: MosquittoBroker) -> str:
    return broker.log.read_text(errors="replace")


def publishes(broker: MosquittoBroker, topic: str) -> list[tuple[int, int]]:
    """(QoS, retain) of each PUBLISH of ``topic`` the broker received from the gateway."""
    found = re.findall(
        rf"Received PUBLISH from {re.escape(CLIENT_ID)} \(d\d, q(\d), r(\d), m\d+, "
        rf"'{re.escape(topic)}'",
        broker_log(broker),
    )
    return [(int(q), int(r)) for q, r in found]


@contextlib.asynccontextmanager
async def observer(
    broker: MosquittoBroker, *topics: str, count: int
) -> AsyncIterator[asyncio.Task[list[tuple[str, int, int, str]]]]:
    """A v5 mosquitto_sub at QoS 1, subscribed once this enters (its SUBACK is in the broker's
    log), collecting the next ``count`` messages as (topic, QoS, retain, payload)."""
    client_id = f"observer-{next(_observers)}"

    async def observe() -> list[tuple[str, int, int, str]]:
        rc, out, err = await run_cmd(
            *sub_args(broker.port, *topics), "-V", "mqttv5", "-q", "1", "-i", client_id,
            "-F", FIELDS, "-C", str(count), "-W", "20", limit_s=30,
        )  # fmt: skip
        assert rc == 0, (rc, out, err)
        lines = [line.split("|", 3) for line in out.splitlines()]
        return [(t, int(q), int(r), p) for t, q, r, p in lines]

    task = asyncio.create_task(observe())
    try:
        await wait_for(
            lambda: task.done() or f"Sending SUBACK to {client_id}" in broker_log(broker),
            15,
            message=f"{client_id}'s SUBACK",
        )
        yield task
    finally:
        await cancel(task)


@contextlib.asynccontextmanager
async def serving(mqtt: MqttAdapter) -> AsyncIterator[MqttAdapter]:
    """``run()`` as a task of an adapter already entered (what it queued goes at connect)."""
    task = asyncio.create_task(mqtt.run())
    try:
        yield mqtt
    finally:
        await cancel(task)


# --- Maximum Packet Size -----------------------------------------------------------------------


@pytest.mark.parametrize("outbox", [{}, None], ids=["outbox", "buffer"])
async def test_a_publish_over_the_packet_size_is_dropped_and_the_rest_goes(
    broker_factory: Any, outbox: dict[str, Any] | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The poison message: a reading too large for the broker waits first in line (durable
    outbox, or the memory buffer); the readings behind it arrive, it is counted, and the
    endpoint stays connected."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = limited(broker_factory, "max_packet_size 300")
    mqtt = v5_adapter(broker.port, outbox=outbox)
    async with mqtt:
        await mqtt.send(BIG, route())
        for value in range(3):
            await mqtt.send(reading(float(value)), route())
        assert mqtt.status()["queued"] == 4
        async with observer(broker, "plant/#", count=3) as got, serving(mqtt):
            received = await got
            assert [(t, p) for t, _q, _r, p in received] == [
                ("plant/boiler/temp", f"{v}.0") for v in range(3)
            ]
            await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
            status = mqtt.status()
            assert status["too_large"] == 1
            assert status["max_packet_size"] == 300
            assert status["reconnects"] == 0 and status["connected"]
            assert "'plant/boiler/big' is 4" in status["last_error"]
            assert "over the Maximum Packet Size" in status["last_error"]
    assert "oversize" not in broker_log(broker)
    assert publishes(broker, "plant/boiler/big") == []
    dropped = [r.message for r in caplog.records if "too_large" in r.message]
    assert len(dropped) == 1 and "dropped" in dropped[0]


async def test_a_write_or_a_reply_over_the_packet_size_is_not_sent(
    broker_factory: Any,
) -> None:
    broker = limited(broker_factory, "max_packet_size 300")
    points = [
        {
            "name": "label",
            "format": "text",
            "topic": "ok/label",
            "access": "rw",
            "command_topic": "ok/label/set",
        }
    ]
    async with running(v5_adapter(broker.port, points=points)) as mqtt:
        with pytest.raises(WriteRefused) as refused:
            await mqtt.write("label", "x" * 400)
        assert refused.value.status is WriteStatus.DEVICE_ERROR
        assert "over the Maximum Packet Size" in refused.value.reason
        assert "(300): not sent" in refused.value.reason
        await mqtt.write("label", "short")  # the same path, small enough: done
        assert mqtt.writes == 1
        request = {codec.RESPONSE_TOPIC: "answers/c9", codec.CORRELATION_DATA: b"job-1"}
        mqtt.publish("req/accepted", b"y" * 400, reply_to=request)
        async with observer(broker, "answers/#", count=1) as got:
            mqtt.publish("req/accepted", b"done", reply_to=request)
            assert [(t, p) for t, _q, _r, p in await got] == [("answers/c9", "done")]
        status = mqtt.status()
        assert status["too_large"] == 1  # the reply; the writer was told instead
        assert status["reconnects"] == 0 and status["connected"]
    assert "oversize" not in broker_log(broker)


async def test_batches_are_cut_to_the_packet_size(broker_factory: Any) -> None:
    """The packet optimizer's batches are halved until they fit: no row is dropped for the
    company it was sent in."""
    broker = limited(broker_factory, "max_packet_size 180")
    collector = Collector(broker.port)
    mqtt = v5_adapter(broker.port, outbox={}, optimizer={"model": "builtin", "interval": 0.25})
    sample_route = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)
    try:
        async with running(mqtt):
            for start in range(0, 60, 10):
                await mqtt.send(telemetry("press", 10, start), sample_route)
            await wait_for(lambda: len(collector.rows) >= 60, 20, message="60 rows")
            status = mqtt.status()
            assert status["too_large"] == 0
            assert status["reconnects"] == 0 and status["connected"]
        with collector.lock:
            batches = [n for topic, n, _qos in collector.publishes if topic == BATCH_TOPIC]
            values = sorted(row["value"] for _topic, row in collector.rows)
        assert values == [float(v) for v in range(60)]
        assert batches and max(batches) > 1, "the optimizer batched"
    finally:
        collector.close()
    assert "oversize" not in broker_log(broker)


# --- Maximum QoS -------------------------------------------------------------------------------


async def test_qos_2_goes_at_the_brokers_maximum_qos(
    broker_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = limited(broker_factory, "max_qos 1")
    async with running(v5_adapter(broker.port, outbox={})) as mqtt:
        assert mqtt.status()["max_qos"] == 1
        async with observer(broker, "plant/#", count=5) as got:
            for value in range(5):
                await mqtt.send(reading(float(value)), route(qos=2))
            assert [p for _t, _q, _r, p in await got] == [f"{v}.0" for v in range(5)]
        await wait_for(lambda: mqtt.acknowledged == 5, 10, message="5 PUBACKs")
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
        assert mqtt.status()["reconnects"] == 0 and mqtt.status()["connected"]
    assert publishes(broker, "plant/boiler/temp") == [(1, 0)] * 5
    assert "Too high QoS" not in broker_log(broker)
    said = [r.message for r in caplog.records if "takes QoS 1 at most" in r.message]
    assert len(said) == 1, said


async def test_a_broker_of_qos_0_only_gets_everything_at_qos_0(
    broker_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """QoS 0 has no PUBACK: outbox rows are done once written, as rows of QoS 0 always were,
    and a write is good once written. The will (QoS 1) is refused once (QoS not supported) and
    goes at QoS 0 from the next CONNECT on."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = limited(broker_factory, "max_qos 0")
    points = [{"name": "sp", "topic": "ok/sp", "access": "rw", "command_topic": "ok/sp/set"}]
    async with running(v5_adapter(broker.port, outbox={}, points=points)) as mqtt:
        assert mqtt.status()["max_qos"] == 0
        async with observer(broker, "plant/#", "ok/sp/set", count=4) as got:
            for value in range(3):
                await mqtt.send(reading(float(value)), route(qos=1))
            await mqtt.write("sp", 7.0)
            assert [(t, q, p) for t, q, _r, p in await got] == [
                *[("plant/boiler/temp", 0, f"{v}.0") for v in range(3)],
                ("ok/sp/set", 0, "7.0"),
            ]
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
        status = mqtt.status()
        assert (status["published"], status["acknowledged"], status["writes"]) == (3, 0, 1)
        assert status["reconnects"] == 0 and status["connected"]
    assert publishes(broker, "plant/boiler/temp") == [(0, 0)] * 3
    assert "Too high QoS" not in broker_log(broker)
    assert any(
        "refused the will" in r.message and "QoS not supported (155)" in r.message
        for r in caplog.records
    )


# --- Retain Available --------------------------------------------------------------------------


async def test_without_retain_available_nothing_is_retained_and_the_will_still_works(
    broker_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto refuses a CONNECT whose will is retained (Retain not supported, 154): the
    next one carries it without retain. Retained readings and the birth go without retain."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = limited(broker_factory, "retain_available false")
    async with running(v5_adapter(broker.port, outbox={})) as mqtt:
        assert mqtt.status()["retain_available"] is False
        async with observer(broker, "plant/#", count=2) as got:
            for value in range(2):
                await mqtt.send(reading(float(value)), route(retain=True))
            assert [(q, r, p) for _t, q, r, p in await got] == [(1, 0, "0.0"), (1, 0, "1.0")]
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
        assert mqtt.status()["reconnects"] == 0 and mqtt.status()["connected"]
        async with observer(broker, STATUS, count=1) as got:
            mqtt._abort_connection("test: gone without DISCONNECT")  # the broker sends the will
            assert [(r, p) for _t, _q, r, p in await got] == [(0, '{"state":"offline"}')]
        await wait_for(lambda: mqtt.reconnects == 1, 10, message="the reconnect")
        await asyncio.wait_for(mqtt.wait_connected(), 10)  # its birth sent
    assert publishes(broker, "plant/boiler/temp") == [(1, 0)] * 2
    assert publishes(broker, STATUS)[0] == (1, 0)  # the birth
    assert "Retain not supported" not in broker_log(broker).split("(0, 154)")[-1]
    messages = [r.message for r in caplog.records]
    assert any("refused the will" in m and "Retain not supported (154)" in m for m in messages)
    assert len([m for m in messages if "keeps no retained messages" in m]) == 2  # per connection


# --- per connection: failover and failback -----------------------------------------------------


async def test_what_was_in_flight_is_fitted_to_the_failover_brokers_limits(
    broker_factory: Any,
) -> None:
    """QoS 2 publishes in flight when the first broker dies are sent again by paho on the next
    CONNACK: to a failover broker of QoS 1, at QoS 1; the one too large for it is dropped."""
    first = limited(broker_factory, "")
    other = limited(broker_factory, "max_qos 1\nmax_packet_size 300\nretain_available false")
    mqtt = v5_adapter(first.port, outbox={}, failover=[{"host": HOST, "port": other.port}])
    async with running(mqtt):
        assert mqtt.status()["max_qos"] == 2
        async with observer(other, "plant/#", count=3) as got:
            assert first.process is not None
            await wait_for(lambda: mqtt.status()["inflight"] == 0, 10, message="the birth's PUBACK")
            first.process.send_signal(signal.SIGSTOP)  # no PUBREC from here on
            await mqtt.send(reading(0.0), route(qos=2))
            await mqtt.send(BIG, route(qos=2))
            for value in (1.0, 2.0):
                await mqtt.send(reading(value), route(qos=2))
            await wait_for(lambda: mqtt.status()["inflight"] == 4, 10, message="4 in flight")
            first.process.kill()
            received = await got
        assert [(q, p) for _t, q, _r, p in received] == [(1, "0.0"), (1, "1.0"), (1, "2.0")]
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
        status = mqtt.status()
        assert status["broker"] == f"{HOST}:{other.port}"
        assert (status["max_qos"], status["retain_available"], status["max_packet_size"]) == (
            1,
            False,
            300,
        )
        assert status["too_large"] == 1 and status["acknowledged"] == 3
        assert status["reconnects"] == 1 and status["connected"]  # the first broker's loss
    text = broker_log(other)
    assert "Too high QoS" not in text and "oversize" not in text
    assert publishes(other, "plant/boiler/big") == []


async def test_the_limits_are_the_connections_own(broker_factory: Any) -> None:
    """On a failover broker with limits, then back on the first, which has none: a retained
    QoS 2 reading of 400 bytes goes as it is there."""
    other = limited(broker_factory, "max_qos 1\nmax_packet_size 300\nretain_available false")
    first = limited(broker_factory, "")
    first.stop()  # the first is down: the endpoint connects to the other
    mqtt = v5_adapter(first.port, failover=[{"host": HOST, "port": other.port}], failback=0.2)
    async with running(mqtt):
        status = mqtt.status()
        assert status["broker"] == f"{HOST}:{other.port}"
        assert (status["max_qos"], status["retain_available"], status["max_packet_size"]) == (
            1,
            False,
            300,
        )
        first.start()
        await wait_for(lambda: mqtt.failbacks == 1, 30, message="the move back")
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        status = mqtt.status()
        assert status["broker"] == f"{HOST}:{first.port}"
        assert (status["max_qos"], status["retain_available"], status["max_packet_size"]) == (
            2,
            True,
            None,
        )
        await mqtt.send(BIG, route(qos=2, retain=True))
        await wait_for(lambda: mqtt.acknowledged == 1, 10, message="the PUBCOMP")
        async with observer(first, "plant/boiler/big", count=1) as got:  # retained: there now
            [(_t, qos, retain, payload)] = await got
        assert (qos, retain, len(payload)) == (1, 1, 402)
        assert mqtt.status()["too_large"] == 0
    assert publishes(first, "plant/boiler/big") == [(2, 1)]


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_without_limits_nothing_changes(broker_factory: Any, version: str) -> None:
    """MQTT 3.1.1 (no CONNACK properties), or a v5 broker that sets none."""
    broker = limited(broker_factory, "")
    async with running(v5_adapter(broker.port, version=version, outbox={})) as mqtt:
        status = mqtt.status()
        assert (status["max_qos"], status["retain_available"], status["max_packet_size"]) == (
            2,
            True,
            None,
        )
        await mqtt.send(BIG, route(qos=2, retain=True))
        await wait_for(lambda: mqtt.acknowledged == 1, 10, message="the PUBCOMP")
        assert mqtt.status()["too_large"] == 0
    assert publishes(broker, "plant/boiler/big") == [(2, 1)]
    assert publishes(broker, STATUS)[0] == (1, 1)  # the retained birth


# --- the packet's size, as paho encodes it ------------------------------------------------------


@pytest.mark.parametrize("v5", [True, False])
def test_publish_size_is_the_size_paho_sends(v5: bool) -> None:
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    client = _Client(CallbackAPIVersion.VERSION2, client_id="size", protocol=protocol)
    client.on_socket_register_write = lambda *_: None
    client._sock = object()  # type: ignore[assignment]  # paho queues the packet, never sends
    lifetime = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    lifetime.MessageExpiryInterval = 3600
    reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    reply.CorrelationData = b"c" * 300
    cases = [(None, 1)]
    if v5:
        cases += [(lifetime, codec.LIFETIME_SIZE), (reply, len(reply.pack()))]  # type: ignore[no-untyped-call]
    # the Remaining Length's 1, 2 and 3 bytes, and either side of each step
    for topic in ("t", "plant/ä/温度", "x" * 300):
        for payload in (0, 1, 120, 127, 128, 16_380, 16_384, 70_000):
            for qos in (0, 1, 2):
                for props, size in cases:
                    client._out_packet.clear()
                    encoded = topic.encode()
                    client._send_publish(1, encoded, b"p" * payload, qos, False, False, None, props)
                    sent = len(client._out_packet[-1]["packet"])
                    assert codec.publish_size(len(encoded), payload, qos, size if v5 else 0) == sent
    client._sock = None
