"""MQTT 5 on the MQTT endpoint (`version: "5"`), against a real mosquitto and its v5 clients.

The broker's own log says which protocol a client connected with (``p5``; ``p2`` is 3.1.1), so a v5
session is checked where it lands, not by what the gateway believes it sent. Reason codes are
mosquitto's: 135 (Not authorized) for a refused login and for a publish its ACL denies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_mqtt_adapter
from conftest import HOST, MosquittoBroker, find_binary, wait_for
from test_mqtt_adapter import (
    FAST_BACKOFF,
    custom_broker,
    endpoint,
    run_cmd,
    running,
    sub_args,
)
from test_mqtt_codec import message, sample

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.commands import WriteRefused, WriteStatus
from gateway.config import load_config_text
from gateway.config.errors import ConfigError
from protocols.mqtt import codec
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute

broker_factory = test_mqtt_adapter.broker_factory  # the fixture: mosquittos of a given config
CLIENT_ID = "protocol-brain-gw1-up"
FORMAT = "%t|%E|%R|%D|%p"  # topic, message expiry, response topic, correlation data, payload


def v5_adapter(port: int, bus: Bus | None = None, **kw: Any) -> MqttAdapter:
    kw.setdefault("version", "5")
    return MqttAdapter("up", endpoint(port, **kw), AdapterContext(bus or Bus(), "gw1"))


def logging_broker(directory: Path, extra: str = "allow_anonymous true") -> MosquittoBroker:
    """A mosquitto that logs every client's CONNECT (protocol version, clean start), not
    started."""
    directory.mkdir(exist_ok=True)
    return custom_broker(directory, f"log_type all\n{extra}")


def connects(broker: MosquittoBroker, client_id: str) -> list[str]:
    """The ``(p5, c1, ...)`` part of each CONNECT of ``client_id`` the broker logged."""
    text = broker.log.read_text(errors="replace")
    return re.findall(rf"as {re.escape(client_id)} \((p\d, c\d)", text)


async def v5_messages(port: int, *topics: str, count: int, extra: tuple[str, ...] = ()) -> list:
    """The next ``count`` messages a v5 subscriber receives, as FORMAT's fields."""
    rc, out, err = await run_cmd(
        *sub_args(port, *topics), "-V", "mqttv5", "-F", FORMAT, "-C", str(count),
        "-W", "15", *extra, limit_s=25,
    )  # fmt: skip
    assert rc == 0, (rc, out, err)
    return [line.split("|") for line in out.splitlines()]


@contextlib.asynccontextmanager
async def v5_subscriber(port: int, *topics: str) -> AsyncIterator[asyncio.Task[list]]:
    """A v5 mosquitto_sub, subscribed once this enters, collecting the next message."""
    task = asyncio.create_task(v5_messages(port, *topics, count=1, extra=("-q", "1")))
    await asyncio.sleep(0.5)  # mosquitto_sub's SUBSCRIBE is in before the test publishes
    try:
        yield task
    finally:
        await cancel(task)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if it still runs, and wait for it to end."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def session(client_id: str) -> tuple[str, ...]:
    """mosquitto_sub options of a persistent MQTT 5 session (kept 10 minutes) at QoS 1."""
    return ("-V", "mqttv5", "-c", "-i", client_id, "-q", "1", "-x", "600")


ROUTE = MqttRoute(topic="plant/{device}/{point}", payload="value", qos=1)


def reading(value: float) -> Any:
    return message(sample("temp", value))


# --- connecting ----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "said"), [("5", "p5, c1"), ("3.1.1", "p2, c1")])
async def test_the_broker_sees_the_version_asked_for(
    tmp_path: Path, version: str, said: str
) -> None:
    broker = logging_broker(tmp_path / "b")
    broker.start()
    try:
        async with running(v5_adapter(broker.port, version=version)) as mqtt:
            assert mqtt.status()["mqtt_version"] == version
        assert connects(broker, CLIENT_ID) == [said]
    finally:
        broker.stop()


async def test_failover_and_the_failback_probe_speak_mqtt_5(tmp_path: Path) -> None:
    first, other = logging_broker(tmp_path / "a"), logging_broker(tmp_path / "b")
    other.start()  # the first is down: the endpoint connects to the other
    mqtt = v5_adapter(
        first.port,
        failover=[{"host": HOST, "port": other.port}],
        failback=0.2,
    )
    try:
        async with running(mqtt):
            assert mqtt.status()["broker"] == f"{HOST}:{other.port}"
            first.start()
            await wait_for(lambda: mqtt.failbacks == 1, 30, message="the move back")
            await asyncio.wait_for(mqtt.wait_connected(), 10)
            assert mqtt.status()["broker"] == f"{HOST}:{first.port}"
        assert connects(other, CLIENT_ID) == ["p5, c1"]
        assert connects(first, f"{CLIENT_ID}-probe")[-1] == "p5, c1"
        assert connects(first, CLIENT_ID) == ["p5, c1"]
    finally:
        first.stop()
        other.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    passwd = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-b", "-c", str(passwd), "gateway", "s3cret"], check=True
    )
    return passwd


async def test_a_refused_login_names_the_reason_code(
    broker_factory: Any, password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    broker = broker_factory(f"allow_anonymous false\npassword_file {password_file}")
    mqtt = v5_adapter(broker.port, username="gateway", password="wrong")
    async with running(mqtt, connected=False):
        await wait_for(lambda: mqtt.status()["last_error"], 15, message="a refused attempt")
        error = mqtt.status()["last_error"]
        assert "refused the connection: Not authorized (135)" in error
        assert "check username and password" in error
        assert not mqtt.status()["connected"]
    assert any("Not authorized (135)" in r.message for r in caplog.records)


async def test_the_brokers_disconnect_reason_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """mosquitto 2.0 closes without a DISCONNECT where others send one (a session taken over,
    an administrator's kick), so here a few bytes play the broker: CONNACK, then DISCONNECT
    0x87 with a reason string."""
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")

    async def kick(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: accepted, no properties
        await asyncio.sleep(0.3)
        reason = b"banned by admin"
        props = bytes([0x1F, 0, len(reason)]) + reason  # Reason String
        writer.write(bytes([0xE0, 2 + len(props), 0x87, len(props)]) + props)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(kick, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    mqtt = v5_adapter(port)
    said = "sent DISCONNECT: Not authorized (135): banned by admin"
    try:
        async with running(mqtt, connected=False):
            await wait_for(
                lambda: any(said in r.message for r in caplog.records), 15, message="the log"
            )
            await wait_for(lambda: said in (mqtt.status()["last_error"] or ""), 15)
    finally:
        server.close()


async def test_the_window_fits_the_brokers_receive_maximum(broker_factory: Any) -> None:
    broker = broker_factory("allow_anonymous true\nmax_inflight_messages 5")
    async with running(v5_adapter(broker.port)) as mqtt:
        assert mqtt.max_inflight == 5  # mosquitto's Receive Maximum, from its CONNACK
        for value in range(50):
            await mqtt.send(reading(float(value)), ROUTE)
        await wait_for(lambda: mqtt.acknowledged == 50, 15, message="all 50 acknowledged")
    async with running(v5_adapter(broker.port, version="3.1.1")) as mqtt:
        assert mqtt.max_inflight == MqttAdapter.max_inflight  # 3.1.1 has no such limit


# --- message expiry ------------------------------------------------------------------------


async def test_message_expiry_reaches_a_v5_subscriber(mosquitto: MosquittoBroker) -> None:
    async with running(v5_adapter(mosquitto.port, message_expiry=600)) as mqtt:
        async with v5_subscriber(mosquitto.port, "plant/#") as got:
            await mqtt.send(reading(21.5), ROUTE)
            [(topic, expiry, _rt, _cd, payload)] = await got
    assert (topic, payload) == ("plant/boiler/temp", "21.5")
    assert 0 < int(expiry) <= 600


async def test_an_expired_reading_is_not_delivered_to_a_late_subscriber(
    mosquitto: MosquittoBroker,
) -> None:
    # a persistent v5 session that is away while the readings are published
    for sub in ("late", "control"):
        rc, _, err = await run_cmd(*sub_args(mosquitto.port, "plant/#"), *session(sub), "-E")
        assert rc == 0, err
    # 3 s: the control session must come back within the reading's life on a busy machine
    async with running(v5_adapter(mosquitto.port, message_expiry=3)) as mqtt:
        await mqtt.send(reading(1.0), ROUTE)
        await wait_for(lambda: mqtt.acknowledged == 1, 10, message="the PUBACK")
        # the control session reads it while it lives: the broker did keep it for a session
        control = await v5_messages(mosquitto.port, "plant/#", count=1, extra=session("control"))
        assert control[0][-1] == "1.0"
        await asyncio.sleep(5.0)  # the reading's life is over (mosquitto counts whole seconds)
        rc, out, _ = await run_cmd(
            *sub_args(mosquitto.port, "plant/#"), *session("late"), "-C", "1", "-W", "3",
            limit_s=10,
        )  # fmt: skip
    assert out == "", "the broker dropped the expired reading"


async def test_the_outbox_sends_what_is_left_of_the_lifetime_and_drops_the_expired(
    mosquitto: MosquittoBroker,
) -> None:
    """Readings wait in the durable outbox before the first connection: the one still alive
    goes with its lifetime less the wait, the expired one not at all (status 'expired')."""
    short = MqttAdapter(
        "short",
        endpoint(mosquitto.port, version="5", message_expiry=1, outbox={}),
        AdapterContext(Bus(), "gw1"),
    )
    long = MqttAdapter(
        "long",
        endpoint(mosquitto.port, version="5", message_expiry=100, outbox={}),
        AdapterContext(Bus(), "gw1"),
    )
    async with short, long:
        await short.send(reading(1.0), MqttRoute(topic="short/{point}", payload="value"))
        await long.send(reading(2.0), MqttRoute(topic="long/{point}", payload="value"))
        assert short.status()["queued"] == long.status()["queued"] == 1
        await asyncio.sleep(2.5)  # both waited: short's second is over, long lost two at least
        tasks: list[asyncio.Task[None]] = []
        try:
            # the subscriber first: the adapters publish their outbox as soon as they connect
            async with v5_subscriber(mosquitto.port, "long/#", "short/#") as got:
                tasks += [asyncio.create_task(a.run()) for a in (short, long)]
                [(topic, expiry, _rt, _cd, payload)] = await got
            assert (topic, payload) == ("long/temp", "2.0")
            assert 0 < int(expiry) <= 98, "the time in the outbox is taken off"
            await wait_for(lambda: short.status()["expired"] == 1, 10, message="short expired")
            assert short.status()["queued"] == 0 and short.status()["published"] == 0
            assert long.status()["expired"] == 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# --- refused publishes ---------------------------------------------------------------------


@pytest.fixture
def acl_broker(broker_factory: Any, password_file: Path, tmp_path: Path) -> MosquittoBroker:
    """The gateway may publish on ok/# and its status, not on denied/#."""
    acl = tmp_path / "acl"
    acl.write_text(
        "user gateway\ntopic readwrite ok/#\ntopic read denied/#\n"
        "topic readwrite protocol-brain/#\n"
    )
    return broker_factory(  # type: ignore[no-any-return]
        f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl}"
    )


@pytest.mark.parametrize("qos", [1, 2])
async def test_a_refused_publish_is_counted_and_dropped_not_delivered(
    acl_broker: MosquittoBroker, qos: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.mqtt.client")
    mqtt = v5_adapter(acl_broker.port, username="gateway", password="s3cret", outbox={})
    async with running(mqtt):
        await mqtt.send(reading(1.0), MqttRoute(topic="denied/{point}", payload="value", qos=qos))
        await mqtt.send(reading(2.0), MqttRoute(topic="ok/{point}", payload="value", qos=qos))
        await wait_for(lambda: mqtt.status()["refused"] == 1, 10, message="the refusal")
        await wait_for(lambda: mqtt.acknowledged == 1, 10, message="ok/temp acknowledged")
        status = mqtt.status()
        assert "refused a publish to 'denied/temp': Not authorized (135)" in status["last_error"]
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the outbox empty")
    assert any("Not authorized (135)" in r.message for r in caplog.records)


async def test_a_write_the_broker_refuses_says_why(
    acl_broker: MosquittoBroker,
) -> None:
    points = [
        {"name": "sp", "topic": "ok/sp", "access": "rw", "command_topic": "denied/sp/set"},
        {"name": "ok", "topic": "ok/st", "access": "rw", "command_topic": "ok/st/set"},
    ]
    mqtt = v5_adapter(acl_broker.port, username="gateway", password="s3cret", points=points)
    async with running(mqtt):
        with pytest.raises(WriteRefused) as refused:
            await mqtt.write("sp", 7.0)
        assert refused.value.status is WriteStatus.DEVICE_ERROR
        assert "Not authorized (135)" in refused.value.reason
        await mqtt.write("ok", 7.0)  # the same path, allowed: done
        assert mqtt.writes == 1


async def test_quota_exceeded_is_sent_again_not_dropped(
    mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mosquitto never says 0x97 (Quota exceeded): its first PUBACK of a reading is made
    one. The reading waits out a pause and goes again; nothing counts as refused."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from protocols.mqtt import client as module

    faked: list[int] = []
    real = module.MqttAdapter._on_publish

    def quota_once(self: MqttAdapter, client: Any, u: Any, mid: int, code: Any, p: Any) -> None:
        if not faked and mid not in self._internal_mids:
            faked.append(mid)
            code = ReasonCode(PacketTypes.PUBACK, identifier=0x97)
        real(self, client, u, mid, code, p)

    monkeypatch.setattr(module.MqttAdapter, "_on_publish", quota_once)
    mqtt = v5_adapter(mosquitto.port, outbox={}, reconnect=FAST_BACKOFF)
    async with running(mqtt):
        async with v5_subscriber(mosquitto.port, "plant/#") as got:
            await mqtt.send(reading(3.0), ROUTE)
            await wait_for(lambda: faked, 10, message="the faked refusal")
            [(topic, *_rest, payload)] = await got
        assert (topic, payload) == ("plant/boiler/temp", "3.0")
        await wait_for(lambda: mqtt.acknowledged == 1, 10, message="the second PUBACK")
        await wait_for(lambda: mqtt.status()["queued"] == 0, 10, message="the row deleted")
        status = mqtt.status()
        assert status["refused"] == 0 and status["retrying"] == 0
        assert "Quota exceeded (151)" in (status["last_error"] or "")


# --- request / response --------------------------------------------------------------------


async def test_a_reply_goes_to_the_requests_response_topic_with_its_correlation_data(
    mosquitto: MosquittoBroker,
) -> None:
    bus = Bus()
    requests = bus.subscribe("mqtt/up/#", maxsize=10, name="test")
    mqtt = v5_adapter(mosquitto.port, bus, subscriptions=[{"topic": "req/#", "payload": "text"}])
    async with running(mqtt):
        async with v5_subscriber(mosquitto.port, "answers/#", "req/#") as got:
            await run_cmd(
                find_binary("mosquitto_pub"), "-h", HOST, "-p", str(mosquitto.port),
                "-V", "mqttv5", "-t", "req/pump", "-m", "set 7",
                "-D", "publish", "response-topic", "answers/client-9",
                "-D", "publish", "correlation-data", "job-42",
            )  # fmt: skip
            request = await asyncio.wait_for(requests.get(), 10)
            assert request.meta == {
                codec.RESPONSE_TOPIC: "answers/client-9",
                codec.CORRELATION_DATA: b"job-42",
            }
            got.cancel()
        async with v5_subscriber(mosquitto.port, "answers/#", "req/#") as got:
            mqtt.publish("req/pump/accepted", b'{"ok":true}', reply_to=request.meta)
            [(topic, _e, _rt, correlation, payload)] = await got
    assert (topic, correlation, payload) == ("answers/client-9", "job-42", '{"ok":true}')


async def test_without_a_response_topic_the_reply_keeps_its_topic(
    mosquitto: MosquittoBroker,
) -> None:
    bus = Bus()
    requests = bus.subscribe("mqtt/up/#", maxsize=10, name="test")
    for version in ("5", "3.1.1"):
        subs = [{"topic": "req/#", "payload": "text"}]
        async with running(
            v5_adapter(mosquitto.port, bus, version=version, subscriptions=subs)
        ) as mqtt:
            await run_cmd(
                find_binary("mosquitto_pub"), "-h", HOST, "-p", str(mosquitto.port),
                "-t", "req/pump", "-m", "get",
            )  # fmt: skip
            request = await asyncio.wait_for(requests.get(), 10)
            assert request.meta == {}
            async with v5_subscriber(mosquitto.port, "req/pump/accepted") as got:
                mqtt.publish("req/pump/accepted", b"done", reply_to=request.meta)
                [(topic, *_rest, payload)] = await got
            assert (topic, payload) == ("req/pump/accepted", "done")


# --- config --------------------------------------------------------------------------------


def _endpoint_yaml(lines: str) -> str:
    return f"""
endpoints:
  up:
    protocol: mqtt
    host: 127.0.0.1
{lines}
"""


def test_version_5_is_taken_as_a_number_or_as_text() -> None:
    for written in ("5", '"5"'):
        config = load_config_text(_endpoint_yaml(f"    version: {written}"))
        assert config.devices["up"].config.version == "5"  # type: ignore[attr-defined]
    assert MqttEndpoint(host="h").version == "3.1.1"  # what every config had before


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(_endpoint_yaml("    version: 4"))
    assert "version" in str(refused.value)


def test_message_expiry_needs_mqtt_5() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(_endpoint_yaml("    message_expiry: 60"))
    text = str(refused.value)
    assert "message_expiry" in text and 'version: "5"' in text
    load_config_text(_endpoint_yaml('    version: "5"\n    message_expiry: 60'))


def test_remaining_expiry_rounds_up_and_ends() -> None:
    assert codec.remaining_expiry(60, 0.0) == 60
    assert codec.remaining_expiry(60, 0.2) == 60  # never cut short by rounding
    assert codec.remaining_expiry(60, 59.5) == 1
    assert codec.remaining_expiry(60, 60.0) is None
    assert codec.remaining_expiry(60, -5.0) == 60  # a clock step back gives no extra life
