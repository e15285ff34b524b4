"""What the MQTT uplink's durable outbox does to the disk, against a real mosquitto.

``outbox.write_delay`` writes the publishes of a short window in one transaction (fewer disk
writes, for SD cards): every publish still arrives once and in order; an alarm or a shadow
reply takes the waiting rows with it at once; a clean shutdown writes what waits, so the next
start sends it; the rows held in memory are bounded. And the file that grew during an outage
is given back to the disk once its backlog has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from test_mqtt_adapter import running  # async with + run() as a task, cancelled at exit

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.optimizer.batch import decode_batch
from gateway.types import Message, MessageKind, Sample
from gateway.uplink import outbox as outbox_module
from gateway.uplink.outbox import Outbox, OutboxConfig, read_status
from protocols.mqtt import client as mqtt_client
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute

ROUTE = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)
BATCH_TOPIC = "protocol-brain/gw1/batch"


class Subscriber:
    """Rows the broker delivers (batches unpacked), with each one's outbox id; subscribed
    before the constructor returns."""

    def __init__(self, port: int) -> None:
        self.rows: list[tuple[str, int]] = []  # topic, id
        self.publishes: list[str] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="delay-sub")
        c.on_message = self._on_message
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_connect = lambda cl, *_: cl.subscribe([("plant/#", 1), (BATCH_TOPIC, 1)])
        c.connect(HOST, port)
        c.loop_start()
        self.client = c
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        items = (
            decode_batch(msg.payload) if msg.topic == BATCH_TOPIC else [(msg.topic, msg.payload)]
        )
        with self.lock:
            self.publishes.append(msg.topic)
            for topic, payload in items:
                self.rows.append((topic, int(json.loads(payload)["id"].rsplit("/", 1)[1])))

    def ids(self) -> list[int]:
        with self.lock:
            return [i for _, i in self.rows]

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def telemetry(value: float, device: str = "press") -> Message:
    now = time.time()
    return Message(
        topic=f"telemetry/{device}",
        kind=MessageKind.TELEMETRY,
        samples=(Sample("p", value, source_ts=now, gateway_ts=now),),
        origin="test",
        device=device,
    )


def alarm(device: str = "press") -> Message:
    return Message(
        topic=f"events/{device}",
        kind=MessageKind.EVENT,
        samples=(Sample("alarm", True, source_ts=time.time()),),
        origin="test",
        device=device,
    )


def adapter(port: int, db: Path, **extra: Any) -> MqttAdapter:
    outbox = {"path": str(db), "write_delay": extra.pop("write_delay")}
    endpoint = MqttEndpoint(
        host=HOST,
        port=port,
        reconnect={"initial": 0.05, "max": 0.2, "multiplier": 2.0},
        outbox=outbox,
        **extra,
    )
    return MqttAdapter("up", endpoint, AdapterContext(Bus(), "gw1"))


def count_appends(mqtt: MqttAdapter) -> list[int]:
    """Rows per outbox transaction that appends, from now on."""
    store = mqtt._store
    assert store is not None
    calls: list[int] = []
    append = store.append

    def counted(items: Any, stamp: Any = None) -> int:
        calls.append(len(items))
        return append(items, stamp)

    store.append = counted  # type: ignore[method-assign]
    return calls


@contextlib.asynccontextmanager
async def counted_uplink(
    port: int, db: Path, *, connected: bool = True, **extra: Any
) -> AsyncIterator[tuple[MqttAdapter, list[int]]]:
    """A running adapter, and the rows of each outbox transaction that appends from then on."""
    mqtt = adapter(port, db, **extra)
    async with running(mqtt, connected=connected):
        yield mqtt, count_appends(mqtt)


async def test_a_burst_is_one_transaction_and_arrives_whole_and_in_order(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    with Subscriber(mosquitto.port) as sub:
        async with counted_uplink(mosquitto.port, tmp_path / "o.db", write_delay=4.0) as (
            mqtt,
            appends,
        ):
            for i in range(40):
                await mqtt.send(telemetry(i), ROUTE)
                await asyncio.sleep(0.002)
            assert appends == [] and mqtt.status()["queued"] == 40  # waiting, and counted
            await wait_for(lambda: len(sub.ids()) == 40, timeout=15, message="40 rows")
            assert appends == [40]
            # acknowledgements wait for the next append, 1.5 x write_delay at most
            await wait_for(lambda: mqtt.status()["outbox"]["backlog"] == 0, timeout=15)
    assert sub.ids() == list(range(1, 41))


async def test_without_a_delay_every_send_is_its_own_transaction(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with counted_uplink(mosquitto.port, tmp_path / "o.db", write_delay=0.0) as (
        mqtt,
        appends,
    ):
        for i in range(5):
            await mqtt.send(telemetry(i), ROUTE)
        assert appends == [1, 1, 1, 1, 1]


async def test_an_alarm_takes_the_waiting_rows_with_it_at_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    with Subscriber(mosquitto.port) as sub:
        async with counted_uplink(mosquitto.port, tmp_path / "o.db", write_delay=5.0) as (
            mqtt,
            appends,
        ):
            for i in range(5):
                await mqtt.send(telemetry(i), ROUTE)
            await mqtt.send(alarm(), ROUTE)
            assert appends == [6]  # one transaction, at once: not 5 s later
            await wait_for(lambda: len(sub.ids()) == 6, timeout=3, message="6 rows")
    assert sub.ids() == list(range(1, 7))
    assert sub.rows[-1] == ("plant/press/alarm", 6)


async def test_with_the_optimizer_only_the_alarm_goes_alone(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    with Subscriber(mosquitto.port) as sub:
        mqtt = adapter(
            mosquitto.port,
            tmp_path / "o.db",
            write_delay=5.0,
            optimizer={"model": "builtin", "interval": 0.25},
        )
        async with running(mqtt):
            for i in range(5):
                await mqtt.send(telemetry(i), ROUTE)
            await mqtt.send(alarm(), ROUTE)
            await wait_for(lambda: len(sub.ids()) == 6, timeout=5, message="6 rows")
    assert sorted(sub.ids()) == list(range(1, 7))
    with sub.lock:
        alarms = [row for row in sub.rows if row[0] == "plant/press/alarm"]
        direct = [t for t in sub.publishes if t != BATCH_TOPIC]
    assert alarms == [("plant/press/alarm", 6)]
    assert direct == ["plant/press/alarm"]  # the telemetry went in batches, the alarm alone


async def test_a_clean_shutdown_writes_what_waits_for_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    mqtt = adapter(free_port(), db, write_delay=5.0)  # no broker there
    async with running(mqtt, connected=False):
        for i in range(10):
            await mqtt.send(telemetry(i), ROUTE)
        assert read_status(db)["backlog"] == 0  # still in memory
    assert read_status(db)["backlog"] == 10
    store = Outbox(db, OutboxConfig(path=str(db)))
    try:
        rows = store.take(100)
    finally:
        store.close()
    assert [r.id for r in rows] == list(range(1, 11))
    assert [json.loads(r.payload)["value"] for r in rows] == list(range(10))


async def test_the_rows_held_in_memory_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_client, "WRITE_ROWS_MAX", 10)
    async with counted_uplink(free_port(), tmp_path / "o.db", connected=False, write_delay=5.0) as (
        mqtt,
        appends,
    ):
        for i in range(25):
            await mqtt.send(telemetry(i), ROUTE)
        assert appends == [10, 10]  # written without waiting for the delay
        assert mqtt.status()["queued"] == 25


@pytest.mark.parametrize("bad", [-0.1, 10.5])
def test_write_delay_out_of_range_is_a_config_error(bad: float) -> None:
    assert OutboxConfig(write_delay=0.5).write_delay == 0.5
    with pytest.raises(ValidationError, match="write_delay"):
        OutboxConfig(write_delay=bad)


async def test_the_file_grown_in_an_outage_shrinks_once_the_backlog_has_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplink.outbox")
    monkeypatch.setattr(outbox_module, "SHRINK_EVERY_S", 0.2)
    monkeypatch.setattr(outbox_module, "SHRINK_FREE_BYTES", 4 << 20)
    broker = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), tmp_path)
    db = tmp_path / "o.db"
    mqtt = adapter(broker.port, db, write_delay=0.0)
    text = "x" * 1000
    try:
        async with running(mqtt, connected=False):
            for _ in range(120):  # the broker is down: 12,000 rows of 1 kB pile up
                now = time.time()
                await mqtt.send(
                    Message(
                        topic="telemetry/press",
                        kind=MessageKind.TELEMETRY,
                        samples=tuple(
                            Sample(f"p{i}", text, source_ts=now, gateway_ts=now) for i in range(100)
                        ),
                        origin="test",
                        device="press",
                    ),
                    ROUTE,
                )
            assert db.stat().st_size > 12e6
            broker.start()
            await wait_for(
                lambda: mqtt.status()["outbox"]["backlog"] == 0,
                timeout=60,
                message="the backlog drained",
            )
            await mqtt.send(telemetry(1.0), ROUTE)  # the flow goes on: the loop looks again
            await wait_for(lambda: db.stat().st_size < 2e6, timeout=10, message="the file shrank")
            assert mqtt._store is not None and mqtt._store.shrunk == 1
    finally:
        broker.stop()
    assert any("shrunk from" in r.getMessage() for r in caplog.records)


async def test_a_publish_made_while_the_adapter_closes_is_not_held_back(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    with Subscriber(mosquitto.port) as sub:
        mqtt = adapter(mosquitto.port, tmp_path / "o.db", write_delay=5.0)
        drain = mqtt._drain

        async def drain_while_a_bridge_sends(loop: asyncio.AbstractEventLoop) -> None:
            await mqtt.send(telemetry(1), ROUTE)  # a bridge still sending during the close
            await drain(loop)

        mqtt._drain = drain_while_a_bridge_sends  # type: ignore[method-assign]
        async with running(mqtt):
            await mqtt.send(telemetry(0), ROUTE)  # waits for its delay
        await wait_for(lambda: len(sub.ids()) == 2, timeout=5, message="both rows")
    assert sub.ids() == [1, 2]


async def test_held_rows_that_cannot_be_written_are_counted_and_the_close_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mqtt = adapter(free_port(), tmp_path / "o.db", write_delay=5.0)
    async with running(mqtt, connected=False):
        for i in range(3):
            await mqtt.send(telemetry(i), ROUTE)
        store = mqtt._store
        assert store is not None

        def failing(items: Any, stamp: Any = None) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        store.append = failing  # type: ignore[method-assign]
    assert mqtt._store is None  # closed all the same: the file and its lock are released
    assert mqtt.status()["lost"] == 3
    assert "3 publishes held by write_delay could not be written" in caplog.text
    Outbox(tmp_path / "o.db").close()  # nobody holds the file
