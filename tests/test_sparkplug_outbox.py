"""The Sparkplug edge node's durable backlog (``outbox:``): telemetry held while no broker is
reachable survives a crash of the gateway and reaches a host we did not write (Eclipse Tahu's
JavaScript codec) as historical DDATA after the next start's births; the two backlogs' own
bookkeeping; the adapter sending what it held by this session's aliases; validation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from sparkplug_peers import GATEWAY, Host, Msg, Proxy, running, write_config
from test_sparkplug_adapter import validate

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.types import Message, Quality, Sample
from gateway.uplink.outbox import OutboxConfig, read_status
from protocols.modbus.codec import DataType as ModbusType
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.sparkplug import codec
from protocols.sparkplug.backlog import DurableBacklog, MemoryBacklog
from protocols.sparkplug.config import SparkplugEndpoint, SparkplugRoute
from protocols.sparkplug.node import SparkplugAdapter

# --- the backlogs ---------------------------------------------------------------------------


def test_memory_backlog_drops_the_oldest_and_rewinds_what_was_not_sent() -> None:
    backlog = MemoryBacklog("sp", limit=3)
    for i in range(5):
        backlog.put("plc", bytes([i]))
    assert len(backlog) == 3 and backlog.dropped == 2
    first = backlog.take(2)
    assert [h.payload for h in first] == [b"\x02", b"\x03"]
    backlog.done([first[0].id])
    backlog.put("plc", b"\x05")  # while the second one is out
    backlog.rewind()  # the session ended before it was sent: it goes first again
    assert [h.payload for h in backlog.take(10)] == [b"\x03", b"\x04", b"\x05"]
    assert MemoryBacklog("sp", limit=0).dropped == 0
    none = MemoryBacklog("sp", limit=0)
    none.put("plc", b"x")
    assert len(none) == 0


def test_durable_backlog_keeps_what_was_not_done_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    backlog = DurableBacklog("sp", path, OutboxConfig())
    for i in range(4):
        backlog.put(f"dev{i % 2}", bytes([i]))
    taken = backlog.take(3)
    assert [(h.device, h.payload) for h in taken] == [
        ("dev0", b"\x00"),
        ("dev1", b"\x01"),
        ("dev0", b"\x02"),
    ]
    backlog.done([taken[0].id])  # sent; the other two were taken when the process ended
    backlog.close()
    backlog.put("dev0", b"late")  # after close: refused, counted, nothing raised
    assert backlog.dropped == 1
    again = DurableBacklog("sp", path, OutboxConfig())
    try:
        assert len(again) == 3
        assert [h.payload for h in again.take(10)] == [b"\x01", b"\x02", b"\x03"]
        again.rewind()
        assert len(again.take(10)) == 3
        assert again.status() is not None and again.status()["backlog"] == 3  # type: ignore[index]
    finally:
        again.close()


def test_durable_backlog_follows_the_outbox_bounds(tmp_path: Path) -> None:
    backlog = DurableBacklog("sp", tmp_path / "sp.db", OutboxConfig(max_rows=2))
    try:
        for i in range(5):
            backlog.put("plc", bytes([i]))
        assert len(backlog) == 2 and backlog.dropped == 3
        assert [h.payload for h in backlog.take(5)] == [b"\x03", b"\x04"]
    finally:
        backlog.close()


# --- the adapter: held by name, sent by this session's aliases ------------------------------


class Watcher:
    """A plain paho subscriber on the node's topics: each message decoded by our codec."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, codec.Payload]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.subscribe("spBv1.0/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if "/STATE/" not in msg.topic:
            self.messages.append((msg.topic, codec.decode_payload(msg.payload)))

    def of(self, kind: str, device: str) -> list[codec.Payload]:
        return [p for t, p in self.messages if t.split("/")[2] == kind and t.endswith(device)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(mosquitto: MosquittoBroker) -> Iterator[Watcher]:
    w = Watcher(mosquitto.port)
    try:
        yield w
    finally:
        w.close()


def node(port: int, db: Path, **outbox: Any) -> SparkplugAdapter:
    config = SparkplugEndpoint.model_validate(
        {
            "host": HOST,
            "port": port,
            "group": "g",
            "node": "n",
            "reconnect": {"initial": 0.05, "max": 0.2},
            "outbox": {"path": str(db), **outbox},
        }
    )
    return SparkplugAdapter("sp", config, AdapterContext(Bus(), "gw"))


async def send(adapter: SparkplugAdapter, device: str, *samples: Sample) -> None:
    await adapter.send(Message.telemetry(device, samples), SparkplugRoute())


async def test_held_messages_go_out_by_the_new_sessions_aliases(
    tmp_path: Path, mosquitto: MosquittoBroker, watcher: Watcher
) -> None:
    db = tmp_path / "sp.db"
    first = node(mosquitto.port, db)
    async with first:  # never connected: all of it is held
        await send(first, "plc", Sample("temp", 501, source_ts=1000.0))
        await send(
            first,
            "plc",
            Sample("temp", 502, source_ts=1001.0),
            Sample("gone", 7, source_ts=1001.0),  # the next run has no such metric
        )
        await send(first, "plc", Sample("temp", None, Quality.BAD, 1002.0))
        await send(first, "other", Sample("x", 1, source_ts=1003.0))
        assert first.status()["buffered"] == 4
    # the next run knows temp as a float (a config change) and has no device "other"
    second = node(mosquitto.port, db)
    async with second:
        assert second.status()["buffered"] == 4
        await send(second, "plc", Sample("temp", 20.5, source_ts=2000.0))
        task = asyncio.create_task(second.run())
        try:
            await wait_for(lambda: second.status()["buffered"] == 0, timeout=20)
            await wait_for(lambda: len(watcher.of("DDATA", "plc")) >= 3, timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    births = watcher.of("DBIRTH", "plc")
    assert len(births) == 1
    (temp,) = [m for m in births[0].metrics if m.name == "temp"]
    assert temp.datatype is codec.DataType.DOUBLE and temp.value == 20.5  # births: current
    history = [
        (m.alias, m.value, m.is_null, m.timestamp, m.is_historical, dict(m.properties))
        for p in watcher.of("DDATA", "plc")
        for m in p.metrics
    ]
    bad = {"Quality": codec.PropertyValue(codec.DataType.INT32, codec.QUALITY_BAD)}
    assert history == [
        (temp.alias, 501.0, False, 1_000_000, True, {}),
        (temp.alias, 502.0, False, 1_001_000, True, {}),  # "gone" left out of the message
        (temp.alias, None, True, 1_002_000, True, bad),
        (temp.alias, 20.5, False, 2_000_000, True, {}),  # held by this run before it connected
    ]
    status = second.status()
    assert status["historical"] == 4 and status["left_out"] == 1  # device "other" not born
    assert read_status(db)["backlog"] == 0


async def test_a_replay_cut_by_a_lost_broker_goes_on_in_the_next_session(
    tmp_path: Path, mosquitto: MosquittoBroker, watcher: Watcher
) -> None:
    proxy = Proxy(mosquitto.port)  # the node's way to the broker; the watcher's is direct
    await proxy.up()
    adapter = node(proxy.port, tmp_path / "sp.db", drain_rate=20)  # 2 messages per 0.1 s
    async with adapter:
        for i in range(40):
            await send(adapter, "plc", Sample("v", i, source_ts=1000.0 + i))
        task = asyncio.create_task(adapter.run())
        try:
            await wait_for(lambda: len(watcher.of("DDATA", "plc")) >= 6, timeout=20)
            # mid-replay the link dies without a word: what the node publishes meanwhile is
            # lost on the way, so only what the broker confirmed counts as sent; the rest goes
            # out in the next session, not skipped
            proxy.black_hole = True
            await asyncio.sleep(0.5)  # a few chunks' time
            await proxy.down()
            proxy.black_hole = False
            await wait_for(lambda: not adapter.connected, timeout=10)
            await proxy.up()
            await wait_for(lambda: adapter.status()["buffered"] == 0, timeout=30)
            await wait_for(
                lambda: (
                    {m.value for p in watcher.of("DDATA", "plc") for m in p.metrics}
                    >= set(range(40))
                ),
                timeout=10,
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.down()
    assert adapter.status()["births"] == 4  # NBIRTH and DBIRTH, twice: two sessions


# --- a crash, then a host we did not write ---------------------------------------------------


@pytest.fixture
async def plc(simulator: Simulator) -> SimulatedDevice:
    dev = await simulator.add_device(name="plc")
    dev.set_value("holding", 0, -5, ModbusType.INT16)
    return dev


def outbox_rows(config: Path) -> list[dict[str, Any]]:
    """`gateway status CONFIG --json`'s outboxes, read from their files."""
    out = subprocess.run(
        [*GATEWAY, "status", str(config), "--json"], capture_output=True, text=True, timeout=60
    )
    return list(json.loads(out.stdout)["outboxes"])


def backlog(db: Path) -> int:
    """Rows in the outbox file; 0 before the gateway has made it."""
    try:
        return int(read_status(db)["backlog"])
    except sqlite3.Error:  # not there yet, or its table not yet
        return 0


def historical_temps(host: Host, alias: int) -> list[Msg]:
    return [
        x
        for m in host.messages("DDATA", "plc")
        for x in m["payload"]["metrics"]
        if x.get("isHistorical") and x.get("alias") == alias
    ]


async def test_what_was_held_survives_a_crash_and_reaches_the_host_as_history(
    tmp_path: Path, mosquitto: MosquittoBroker, plc: SimulatedDevice
) -> None:
    db = tmp_path / "state" / "sparkplug.db"
    proxy = Proxy(mosquitto.port)  # not up: the broker cannot be reached
    config = write_config(
        tmp_path / "gw.yaml", proxy.port, plc, keep=f"outbox: {{path: {db}, drain_rate: 50}}"
    )
    async with running(config) as proc:
        await wait_for(lambda: backlog(db) >= 1, timeout=20)
        for value in (501, 502, 503):
            plc.set_value("holding", 0, value, ModbusType.INT16)
            await asyncio.sleep(0.4)
        await wait_for(lambda: backlog(db) >= 4, timeout=10)
        proc.kill()  # no clean stop: what was accepted is in the file already
        await proc.wait()
    (row,) = outbox_rows(config)
    assert row["endpoint"] == "ignition" and row["backlog"] >= 4 and row["path"] == str(db)
    plc.set_value("holding", 0, 600, ModbusType.INT16)
    await proxy.up()
    host = Host(mosquitto.port)
    try:
        await wait_for(host.ready, timeout=15, message="the Tahu JS host to subscribe")
        async with running(config):
            await wait_for(lambda: host.messages("DBIRTH", "plc"), timeout=20)
            birth = host.messages("DBIRTH", "plc")[0]
            temp = next(m for m in birth["payload"]["metrics"] if m["name"] == "temp")
            # the current value comes in the birth, or live after it if no poll had answered
            await wait_for(
                lambda: any(
                    x.get("alias") == temp["alias"]
                    and x.get("value") == 600
                    and not x.get("isHistorical")
                    for m in [birth, *host.messages("DDATA", "plc")]
                    for x in m["payload"]["metrics"]
                ),
                timeout=10,
            )
            await wait_for(lambda: len(historical_temps(host, temp["alias"])) >= 4, timeout=20)
            await wait_for(lambda: backlog(db) == 0, timeout=20)
            held = historical_temps(host, temp["alias"])
            values = [x["value"] for x in held]
            # before the crash, in order; then at most this run's first polls, held before its
            # connection was up
            assert values[:4] == [-5, 501, 502, 503] and set(values[4:]) <= {600}, values
            times = [int(x["timestamp"]) for x in held]
            assert times == sorted(times) and times[3] < int(birth["payload"]["timestamp"])
            kinds = [m["type"] for m in host.messages() if m.get("device") in (None, "plc")]
            assert kinds[:2] == ["NBIRTH", "DBIRTH"], kinds  # history only after the births
    finally:
        host.close()
        await proxy.down()


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        ("    group: g\n    buffer: 10\n    outbox: {}", "buffer beside an enabled outbox"),
        ("    group: g\n    outbox: {write_delay: 1}", "write_delay on a Sparkplug node"),
        ("    group: g\n    outbox: {drain_order: live_first}", "drain_order on a Sparkplug"),
    ],
)
def test_validate_refuses_outbox_settings_that_do_not_apply(
    tmp_path: Path, endpoint: str, said: str
) -> None:
    out = validate(tmp_path, endpoint)
    assert out.returncode != 0 and said in out.stdout + out.stderr, out.stdout + out.stderr


def test_validate_accepts_an_outbox_and_a_disabled_one_beside_a_buffer(tmp_path: Path) -> None:
    for endpoint in (
        "    group: g\n    outbox: {max_rows: 100000, policy: reject_new}",
        "    group: g\n    buffer: 10\n    outbox: {enabled: false}",
    ):
        out = validate(tmp_path, endpoint)
        assert out.returncode == 0, out.stdout + out.stderr
