"""MQTT 5 Topic Aliases on the uplink (``topic_alias: true``), against real mosquittos
(``max_topic_alias``) and v5 mosquitto_sub observers, which get full topics (the broker resolves
the aliases).

What went on the wire is read by `Proxy`, a TCP proxy between the gateway and the broker that
decodes the gateway's PUBLISH packets as they pass (topic, Topic Alias, size): mosquitto logs the
resolved topic, not what it received. The proxy also freezes a connection (nothing passes either
way) and cuts it, so that QoS 1 publishes are in flight when the connection is lost; a failover
freezes the first broker with SIGSTOP instead. paho re-sends what was in flight after the next
CONNACK, where an empty topic with an alias of the old connection is a protocol error (mosquitto
sends DISCONNECT 0x82, Protocol error) that would come back with every re-send: reconnects are
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import test_mqtt_adapter
from conftest import HOST, wait_for
from test_mqtt_adapter import running
from test_mqtt_codec import message, sample
from test_mqtt_v5 import _endpoint_yaml, acl_broker, password_file, v5_adapter
from test_mqtt_v5_limits import broker_log, limited, observer

from gateway.config import ConfigError, load_config_text
from protocols.mqtt import codec
from protocols.mqtt.alias import TopicAliases
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttRoute

broker_factory = test_mqtt_adapter.broker_factory  # the fixture: mosquittos of a given config
__all__ = ["acl_broker", "password_file"]  # fixtures too
PREFIX = "site7/plant/pump-station-3"
ROUTE = MqttRoute(topic=PREFIX + "/{device}/{point}", payload="value", qos=1)


def topic(point: str) -> str:
    return f"{PREFIX}/boiler/{point}"


@dataclass(frozen=True)
class Wire:
    """One PUBLISH the gateway sent, as it went: ``topic`` empty where an alias stood for it."""

    topic: str
    alias: int | None
    size: int
    qos: int
    payload: bytes


def _varint(data: bytes | bytearray, i: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while i < len(data):
        byte = data[i]
        value += (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
    return None


def _publish(packet: bytes, start: int) -> Wire:
    qos = (packet[0] >> 1) & 3
    length = int.from_bytes(packet[start : start + 2], "big")
    name = packet[start + 2 : start + 2 + length].decode()
    i = start + 2 + length + (2 if qos else 0)
    props = _varint(packet, i)
    assert props is not None
    size, i = props
    alias, k = None, i
    while k < i + size:  # the properties the gateway sends: Message Expiry, Topic Alias
        if packet[k] == 0x23:
            alias = int.from_bytes(packet[k + 1 : k + 3], "big")
            k += 3
        elif packet[k] == 0x02:
            k += 5
        else:
            break
    return Wire(name, alias, len(packet), qos, packet[i + size :])


class Proxy:
    """A TCP proxy in front of a broker, reading the gateway's PUBLISH packets as they pass."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = 0
        self.wire: list[Wire] = []
        self.connections = 0
        self._frozen = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def freeze(self) -> None:
        """Nothing passes from now on, either way: what was sent is lost with the connection."""
        self._frozen = True

    def cut(self) -> None:
        """Close every connection; the next ones pass again."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        self._frozen = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.broker_port)
        self._writers += [writer, up_writer]
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, parse=True)),
            asyncio.create_task(self._pipe(up_reader, writer, parse=False)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, parse: bool
    ) -> None:
        buf = bytearray()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._frozen:
                    continue
                if parse:
                    buf += data
                    self._parse(buf)
                writer.write(data)
                await writer.drain()

    def _parse(self, buf: bytearray) -> None:
        while len(buf) >= 2:
            header = _varint(buf, 1)
            if header is None or len(buf) < header[0] + header[1]:
                return
            end = header[0] + header[1]
            if buf[0] >> 4 == 3:  # PUBLISH
                self.wire.append(_publish(bytes(buf[:end]), header[1]))
            del buf[:end]

    def data(self) -> list[Wire]:
        """The gateway's data publishes (not its birth), in order."""
        return [w for w in self.wire if w.topic.startswith(PREFIX) or w.alias and not w.topic]


def reading(point: str, value: float) -> Any:
    return message(sample(point, value))


def alias_adapter(port: int, **kw: Any) -> MqttAdapter:
    kw.setdefault("topic_alias", True)
    return v5_adapter(port, **kw)


@contextlib.asynccontextmanager
async def proxied(factory: Any, conf: str) -> AsyncIterator[tuple[Any, Proxy]]:
    broker = limited(factory, conf)
    async with Proxy(broker.port) as proxy:
        yield broker, proxy


def size(name: str, payload: bytes, props: int) -> int:
    return codec.publish_size(len(name.encode()), len(payload), 1, props)


# --- the alias table (sans-IO) -------------------------------------------------------------------


def test_first_come_first_served_then_the_least_recently_used_if_less_used() -> None:
    table = TopicAliases(2)
    assert table.lookup("a") == (True, False)
    assert table.use("a") == (1, False) and table.use("b") == (2, False)
    assert table.use("a") == (1, True)  # a is the most recently used now
    assert table.lookup("c") == (False, False)  # published no more often than b
    assert table.use("c") == (0, False)  # as it is, no alias
    assert table.lookup("c") == (True, False)
    assert table.use("c") == (2, False)  # b's alias, re-mapped: c was published more often
    assert table.lookup("b") == (False, False) and table.lookup("c") == (True, True)
    table.forget("c")  # paho did not send it: the next publish of c carries it again
    assert table.use("d") == (2, False)  # the alias c gave back, not a third one
    assert table.use("c") == (1, False)  # more often than a, now the least recently used
    table.reset(0)
    assert len(table) == 0 and table.lookup("a") == (False, False)
    assert table.use("a") == (0, False)


def test_topics_in_turn_keep_their_aliases() -> None:
    """A gateway publishes its points in turn: with more topics than aliases, the first ones
    keep theirs and the others go as they are (no alias re-mapped on every publish)."""
    table = TopicAliases(2)
    got = [table.use(t) for t in "abcabcabc"]
    assert got == [(1, False), (2, False), (0, False)] + [(1, True), (2, True), (0, False)] * 2


def test_the_counts_decay() -> None:
    """What was hot long ago gives way: counts are halved every DECAY publishes."""
    table = TopicAliases(1, decay=8)
    got = [table.use(t)[0] for t in "aaaaaabbbbb"]
    # a 6, b 1; then 3 and 0 (halved), and b's 5th publish is its 4th since: over a's 3
    assert got == [1] * 6 + [0] * 4 + [1]
    assert table.lookup("b") == (True, True)


# --- on the wire ---------------------------------------------------------------------------------


@pytest.mark.parametrize("outbox", [{}, None], ids=["outbox", "buffer"])
async def test_a_topic_goes_once_then_its_alias(broker_factory: Any, outbox: Any) -> None:
    """Three topics, four readings each: every reading arrives on its topic; on the wire the
    first of each topic carries it with an alias, the others an empty topic, and each packet
    is the size `codec.publish_size` counts (what `_fit` checks)."""
    points = ("discharge_pressure", "suction_pressure", "motor_temperature")
    async with proxied(broker_factory, "max_topic_alias 10") as (broker, proxy):
        mqtt = alias_adapter(proxy.port, outbox=outbox)
        async with running(mqtt), observer(broker, f"{PREFIX}/#", count=12) as got:
            assert mqtt.status()["topic_alias_max"] == 10
            for n in range(4):
                for point in points:
                    await mqtt.send(reading(point, float(n)), ROUTE)
            received = await got
            assert [(t, p) for t, _q, _r, p in received] == [
                (topic(point), f"{n}.0") for n in range(4) for point in points
            ]
            status = mqtt.status()
            assert status["topic_aliases"] == 3 and status["reconnects"] == 0
        wire = proxy.data()
        assert [(w.topic, w.alias) for w in wire] == [
            (topic(point), i + 1) for i, point in enumerate(points)
        ] + [("", i + 1) for _ in range(3) for i in range(3)]
        for w in wire:
            assert w.size == size(w.topic, w.payload, 4)  # no other property: 1 + 3
        plain = sum(size(topic(p), w.payload, 1) for w, p in zip(wire, points * 4, strict=True))
        # each topic's bytes once per later publish, less an alias (3 bytes) on every one
        assert plain - sum(w.size for w in wire) == 3 * sum(len(topic(p)) for p in points) - 12 * 3
    assert "protocol error" not in broker_log(broker).lower()


async def test_more_topics_than_aliases(broker_factory: Any) -> None:
    """Two aliases: a topic published more often than the least recently used one takes its
    alias (re-mapped by a publish with the full topic); one that is not goes as it is."""
    async with proxied(broker_factory, "max_topic_alias 2") as (broker, proxy):
        mqtt = alias_adapter(proxy.port)
        order = ["a", "b", "a", "c", "c", "c", "b", "a", "c"]
        async with running(mqtt), observer(broker, f"{PREFIX}/#", count=len(order)) as got:
            for n, point in enumerate(order):
                await mqtt.send(reading(point, float(n)), ROUTE)
            received = await got
            assert [(t, p) for t, _q, _r, p in received] == [
                (topic(point), f"{n}.0") for n, point in enumerate(order)
            ]
            assert mqtt.status()["topic_aliases"] == 2
            assert mqtt.status()["reconnects"] == 0
        assert [(w.topic, w.alias) for w in proxy.data()] == [
            (topic("a"), 1),
            (topic("b"), 2),
            ("", 1),  # a
            (topic("c"), None),  # no more often than b, the least recently used
            (topic("c"), 2),  # more often than b now: b's alias
            ("", 2),  # c
            (topic("b"), None),  # no more often than a
            ("", 1),  # a
            ("", 2),  # c
        ]


async def test_a_broker_of_no_aliases_gets_full_topics(broker_factory: Any) -> None:
    async with proxied(broker_factory, "max_topic_alias 0") as (broker, proxy):
        mqtt = alias_adapter(proxy.port)
        async with running(mqtt), observer(broker, f"{PREFIX}/#", count=3) as got:
            for n in range(3):
                await mqtt.send(reading("flow", float(n)), ROUTE)
            assert [t for t, _q, _r, _p in await got] == [topic("flow")] * 3
            status = mqtt.status()
            assert (status["topic_aliases"], status["topic_alias_max"]) == (0, 0)
        assert [(w.topic, w.alias) for w in proxy.data()] == [(topic("flow"), None)] * 3


async def test_the_size_check_counts_the_alias(broker_factory: Any) -> None:
    """Maximum Packet Size 100: a reading that fits only as an alias goes; one that is over by
    a byte once its alias is counted is dropped, and the connection stays."""
    async with proxied(broker_factory, "max_packet_size 100\nmax_topic_alias 10") as (b, proxy):
        mqtt = alias_adapter(proxy.port)
        # 90 bytes of payload ("x" * 88, quoted) with an empty topic and an alias: 100 bytes
        fits = "x" * 88
        over = "x" * (88 - len(topic("t")) + 1)  # 101 bytes with its topic and alias
        async with running(mqtt), observer(b, f"{PREFIX}/#", count=3) as got:
            await mqtt.send(reading("s", 1.0), ROUTE)
            await mqtt.send(message(sample("s", fits)), ROUTE)
            await mqtt.send(message(sample("t", over)), ROUTE)
            await mqtt.send(reading("s", 2.0), ROUTE)
            received = await got
            assert [(t, len(p)) for t, _q, _r, p in received] == [
                (topic("s"), 3),
                (topic("s"), 90),
                (topic("s"), 3),
            ]
            status = mqtt.status()
            assert (
                status["too_large"] == 1
                and "'site7/plant/pump-station-3/boiler/t' is 101" in (status["last_error"])
            )
            assert status["reconnects"] == 0 and status["connected"]
        assert [w.size for w in proxy.data()][1] == 100
    assert "oversize" not in broker_log(b)


async def test_a_refusal_names_the_full_topic(acl_broker: Any) -> None:
    """The second publish of a denied topic went with an empty topic: the refusal (and a
    retry, were it one) still has its topic."""
    mqtt = alias_adapter(acl_broker.port, username="gateway", password="s3cret", outbox={})
    denied = MqttRoute(topic="denied/{point}", payload="value", qos=1)
    async with running(mqtt):
        for n in range(2):
            await mqtt.send(reading("temp", float(n)), denied)
        await wait_for(lambda: mqtt.status()["refused"] == 2, 10, message="the refusals")
        assert mqtt.status()["topic_aliases"] == 1
        assert "refused a publish to 'denied/temp'" in mqtt.status()["last_error"]


async def test_a_topic_paho_refuses_takes_no_alias(broker_factory: Any) -> None:
    """paho refuses a topic with a wildcard (an unchecked ``publish``): its alias never
    reached the broker, so the next publish to it must not go as that alias alone."""
    broker = limited(broker_factory, "max_topic_alias 10")
    async with running(alias_adapter(broker.port)) as mqtt:
        async with observer(broker, "ok/#", count=1) as got:
            for _ in range(2):
                mqtt.publish("bad/+", b"1")
            mqtt.publish("ok/after", b"2")
            assert [(t, p) for t, _q, _r, p in await got] == [("ok/after", "2")]
        status = mqtt.status()
        assert status["encode_errors"] == 2 and status["topic_aliases"] == 1
        assert status["reconnects"] == 0 and status["connected"]


# --- what was in flight when the connection was lost --------------------------------------------


@pytest.mark.parametrize("outbox", [{}, None], ids=["outbox", "buffer"])
async def test_in_flight_publishes_go_with_their_topics_after_a_reconnect(
    broker_factory: Any, outbox: Any
) -> None:
    """QoS 1 publishes with aliases (the first of a topic with it, the rest with an empty
    topic) are lost with a connection; paho sends them again after the next CONNACK, with
    their full topics and no alias; what is published after takes new aliases."""
    async with proxied(broker_factory, "max_topic_alias 10") as (broker, proxy):
        mqtt = alias_adapter(proxy.port, outbox=outbox)
        async with running(mqtt), observer(broker, f"{PREFIX}/#", count=8) as got:
            await mqtt.send(reading("level", -1.0), ROUTE)  # alias 1 is the broker's
            await wait_for(lambda: mqtt.status()["inflight"] == 0, 10, message="its PUBACK")
            proxy.freeze()
            for n in range(5):
                await mqtt.send(reading("level" if n % 2 else "flow", float(n)), ROUTE)
            await wait_for(lambda: mqtt.status()["inflight"] == 5, 10, message="5 in flight")
            sent = len(proxy.wire)
            proxy.cut()
            await wait_for(lambda: mqtt.acknowledged == 6, 15, message="6 acknowledged")
            for n in (5, 6):
                await mqtt.send(reading("level", float(n)), ROUTE)
            received = await got
            assert [(t, p) for t, _q, _r, p in received] == [(topic("level"), "-1.0")] + [
                (topic("level" if n % 2 or n > 4 else "flow"), f"{n}.0") for n in range(7)
            ]
            status = mqtt.status()
            assert status["reconnects"] == 1 and status["connected"]
            assert status["topic_aliases"] == 1
        after = [(w.topic, w.alias) for w in proxy.wire[sent:] if w.topic != mqtt.status_topic]
        assert after == [(topic("level" if n % 2 else "flow"), None) for n in range(5)] + [
            (topic("level"), 1),
            ("", 1),
        ]
        assert proxy.connections == 2
    assert "protocol error" not in broker_log(broker).lower()


async def test_in_flight_publishes_go_with_their_topics_to_a_failover_broker(
    broker_factory: Any,
) -> None:
    first = limited(broker_factory, "max_topic_alias 10")
    other = limited(broker_factory, "max_topic_alias 10")
    mqtt = alias_adapter(first.port, outbox={}, failover=[{"host": HOST, "port": other.port}])
    async with running(mqtt), observer(other, f"{PREFIX}/#", count=6) as got:
        await mqtt.send(reading("level", -1.0), ROUTE)
        await wait_for(lambda: mqtt.status()["inflight"] == 0, 10, message="its PUBACK")
        assert first.process is not None
        first.process.send_signal(signal.SIGSTOP)  # no PUBACK from here on
        for n in range(5):
            await mqtt.send(reading("level", float(n)), ROUTE)
        await wait_for(lambda: mqtt.status()["inflight"] == 5, 10, message="5 in flight")
        first.process.kill()
        await mqtt.send(reading("level", 5.0), ROUTE)
        received = await got
        assert [(t, p) for t, _q, _r, p in received] == [
            (topic("level"), f"{n}.0") for n in range(6)
        ]
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
        status = mqtt.status()
        assert status["broker"] == f"{HOST}:{other.port}"
        assert status["reconnects"] == 1 and status["connected"]
    assert "protocol error" not in broker_log(other).lower()


async def test_the_outbox_replays_full_topics_after_a_restart(broker_factory: Any) -> None:
    """Rows keep their topics (aliases are chosen as a row goes): publishes in flight with
    aliases when the gateway stops go from the outbox file after the restart, aliased anew."""
    async with proxied(broker_factory, "max_topic_alias 10") as (broker, proxy):
        async with running(alias_adapter(proxy.port, outbox={})) as mqtt:
            await mqtt.send(reading("level", -1.0), ROUTE)
            await wait_for(lambda: mqtt.acknowledged == 1, 10, message="its PUBACK")
            proxy.freeze()
            for n in range(3):
                await mqtt.send(reading("level", float(n)), ROUTE)
            await wait_for(lambda: mqtt.status()["inflight"] == 3, 10, message="3 in flight")
        proxy.cut()
        sent = len(proxy.wire)
        async with observer(broker, f"{PREFIX}/#", count=3) as got:
            async with running(alias_adapter(proxy.port, outbox={})) as again:
                assert [(t, p) for t, _q, _r, p in await got] == [
                    (topic("level"), f"{n}.0") for n in range(3)
                ]
        after = [(w.topic, w.alias) for w in proxy.wire[sent:] if w.topic != again.status_topic]
        assert after == [(topic("level"), 1), ("", 1), ("", 1)]


# --- config ---------------------------------------------------------------------------------------


def test_topic_alias_needs_mqtt_5() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(_endpoint_yaml("    topic_alias: true"))
    text = str(refused.value)
    assert "topic_alias" in text and 'version: "5"' in text
    load_config_text(_endpoint_yaml('    version: "5"\n    topic_alias: true'))
    assert not load_config_text(_endpoint_yaml('    version: "5"')).devices["up"].config.topic_alias  # type: ignore[attr-defined]


async def test_without_the_key_nothing_is_aliased(broker_factory: Any) -> None:
    async with proxied(broker_factory, "max_topic_alias 10") as (_broker, proxy):
        async with running(v5_adapter(proxy.port)) as mqtt:
            for n in range(2):
                await mqtt.send(reading("flow", float(n)), ROUTE)
            await wait_for(lambda: mqtt.acknowledged == 2, 10, message="2 PUBACKs")
            assert mqtt.status()["topic_alias_max"] == 0
        assert [(w.topic, w.alias) for w in proxy.data()] == [(topic("flow"), None)] * 2
