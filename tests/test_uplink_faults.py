"""Durable uplink under faults, all real processes: the `gateway run` process polling Modbus
devices (our simulator), a real mosquitto, and a paho subscriber. Broker outage, gateway
SIGKILL, a full disk under the outbox.

The subscriber has a persistent session (clean_session False, QoS 1) on a broker with
persistence, so whatever the broker accepted reaches it even across a restart. It drops
duplicates by the payload's ``id`` (``gw/up/<n>``: the outbox numbers every message it accepts,
1, 2, 3... for the life of the file) and checks each device's order. "Every sample arrives"
is then exact: the ids received are 1..last_id, the newest id the outbox file has given out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, find_binary, resize, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplink.outbox import Outbox, read_status
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt.config import MqttEndpoint, MqttRoute

ROUTE = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), tmp_path)
    b.config.write_text(
        f"listener {b.port} {HOST}\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp_path}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        # mosquitto started as root drops to user mosquitto, which cannot write its
        # persistence file here ("Error saving in-memory database"): a restart then lost what it
        # held for the subscriber. Staying root (ignored when not root) keeps the file.
        "user root\n"
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()
    assert "Error saving" not in b.log.read_text(errors="replace"), "mosquitto lost its state"


def endpoint(port: int, path: Path, **outbox: Any) -> MqttEndpoint:
    return MqttEndpoint(
        host=HOST,
        port=port,
        reconnect={"initial": 0.1, "max": 0.5},
        outbox={"path": str(path), "drain_rate": 5000, **outbox},
    )


class Uplink:
    """What a subscriber saw of the gateway's ids: ``ids`` and per-device order.

    Each device's ids must grow (the outbox sends in order per device), and each point's value
    must not go back (the simulator only counts up).
    """

    def __init__(self, port: int, client_id: str) -> None:
        self.ids: set[int] = set()
        self.last_id: dict[str, int] = {}
        self.last_value: dict[str, int] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe("plant/#", qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(0.02, 0.05)  # back before the gateway (see test_uplink_drain)
        c.connect(HOST, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        n = int(body["id"].rsplit("/", 1)[1])
        device = msg.topic.split("/")[1]
        with self.lock:
            if n in self.ids:
                return  # a duplicate after a replay: what the id is for
            self.ids.add(n)
            if n < self.last_id.get(device, 0) and len(self.errors) < 10:
                self.errors.append(f"{device}: id {n} after {self.last_id[device]}")
            self.last_id[device] = max(n, self.last_id.get(device, 0))
            if body.get("quality", "good") == "good" and body.get("value") is not None:
                value = int(body["value"])
                if value < self.last_value.get(msg.topic, -1) and len(self.errors) < 10:
                    self.errors.append(f"{msg.topic}: {value} after {self.last_value[msg.topic]}")
                self.last_value[msg.topic] = value

    def count(self) -> int:
        with self.lock:
            return len(self.ids)

    def missing(self, last_id: int) -> list[int]:
        with self.lock:
            return [n for n in range(1, last_id + 1) if n not in self.ids]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def outbox_last_id(db: Path) -> int:
    """The newest id the outbox gave a stored message, read-only: the newest row's, or
    ``meta.last_id`` once rows were deleted down to none (the outbox writes it only then)."""
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT max(coalesce((SELECT max(id) FROM outbox), 0),"
            " coalesce((SELECT value FROM meta WHERE key = 'last_id'), 0))"
        ).fetchone()
    finally:
        con.close()
    return int(row[0])


DEVICES = 10
POINTS = 10  # x 10 polls/s = 1,000 samples/s, every one a change (the registers count)


@pytest.fixture
async def counting(simulator: Simulator) -> AsyncIterator[Counting]:
    devices = [await simulator.add_device(name=f"d{i}") for i in range(DEVICES)]
    c = Counting(devices)
    c.start()
    try:
        yield c
    finally:
        await c.stop()


class Counting:
    """Every holding register of every device counts up by one every 10 ms (faster than the
    gateway's 100 ms polls, so every poll reads a change) until ``stop``."""

    def __init__(self, devices: list[SimulatedDevice]) -> None:
        self.devices = devices
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    n = 0

    async def _run(self) -> None:
        while True:
            self.n += 1
            for d in self.devices:
                d.set_registers("holding", 0, [self.n % 65536] * POINTS)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def gateway_config(
    path: Path, broker_port: int, devices: list[SimulatedDevice], db: Path, **outbox: Any
) -> Path:
    points = ", ".join(
        f"{{name: p{i}, table: holding, address: {i}, type: uint16}}" for i in range(POINTS)
    )
    device_lines = "".join(
        f"  d{i}: {{protocol: modbus, host: {HOST}, port: {d.port}, timeout: 0.5,"
        f" poll_groups: {{default: {{interval: 0.1}}}}, points: [{points}]}}\n"
        for i, d in enumerate(devices)
    )
    options = {"path": str(db), "drain_rate": 5000, **outbox}
    path.write_text(
        "gateway: {name: gw}\n"
        f"devices:\n{device_lines}"
        "endpoints:\n"
        f"  up: {{protocol: mqtt, host: {HOST}, port: {broker_port},"
        f" reconnect: {{initial: 0.1, max: 0.5}}, outbox: {json.dumps(options)}}}\n"
        "bridges:\n"
        f"  - {{name: all, from: [{', '.join(f'd{i}' for i in range(DEVICES))}], to: up,"
        ' topic: "plant/{device}/{point}", payload: sample, qos: 1}\n'
    )
    return path


class GatewayProcess:
    """``gateway run CONFIG`` as a child process, its log in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for g in started:
        g.kill()


@contextlib.contextmanager
def watching(sub: Uplink, db: Path, gw: GatewayProcess) -> Iterator[None]:
    """Print what the subscriber, the outbox and the gateway's log say if the block fails."""
    try:
        yield
    except BaseException:
        print("DIAG", sub.count(), outbox_last_id(db), sub.errors[:3], gw.tail())
        raise
    finally:
        sub.close()


async def settle(sub: Uplink, db: Path, counting: Counting, within: float) -> int:
    """Stop the devices changing (so nothing new is published), then wait until every id the
    outbox gave out reached the subscriber or is counted as dropped; returns the last id."""
    await counting.stop()
    await asyncio.sleep(0.5)  # the polls already under way
    last = outbox_last_id(db)
    await wait_for(
        lambda: sub.count() + read_status(db)["dropped"] >= last,
        timeout=within,
        interval=0.2,
        message=f"all {last} ids at the subscriber or counted as dropped",
    )
    return last


async def test_broker_down_30s_at_1000_per_s_every_sample_arrives_in_order(
    broker: MosquittoBroker,
    tmp_path: Path,
    counting: Counting,
    gateways: list[GatewayProcess],
) -> None:
    sub = Uplink(broker.port, "outage-sub")
    db = tmp_path / "o.db"
    gw = GatewayProcess(gateway_config(tmp_path / "gw.yaml", broker.port, counting.devices, db))
    gateways.append(gw)
    gw.start()
    with watching(sub, db, gw):
        await wait_for(lambda: sub.count() > 500, timeout=20, message="the first samples")
        await asyncio.sleep(2)
        before = outbox_last_id(db)
        broker.stop()  # with publishes in flight: what it acknowledged it keeps (persistence)
        await asyncio.sleep(30)
        queued = outbox_last_id(db) - before
        assert queued > 20_000, f"{queued} samples during the outage; expected about 30,000"
        broker.start()
        await asyncio.sleep(3)
        last = await settle(sub, db, counting, within=60)
    assert gw.alive, gw.tail()
    assert sub.missing(last) == []
    assert sub.errors == []
    status = read_status(db)
    assert status["dropped"] == 0, status


async def test_sigkill_mid_burst_then_restart_delivers_everything_accepted(
    broker: MosquittoBroker,
    tmp_path: Path,
    counting: Counting,
    gateways: list[GatewayProcess],
) -> None:
    sub = Uplink(broker.port, "kill-sub")
    db = tmp_path / "o.db"
    config = gateway_config(tmp_path / "gw.yaml", broker.port, counting.devices, db)
    first = GatewayProcess(config)
    gateways.append(first)
    first.start()
    with watching(sub, db, first):
        # A burst: the broker is down, so thousands of samples are only in the outbox file.
        await wait_for(lambda: sub.count() > 200, timeout=20, message="the first samples")
        broker.stop()
        await wait_for(lambda: outbox_last_id(db) > 5000, timeout=30, interval=0.1)
        first.kill(signal.SIGKILL)
        accepted = outbox_last_id(db)  # whatever it had accepted is in the file
        box = Outbox(db)  # the file survived the kill intact
        assert box.integrity_check() == "ok"
        box.close()
        broker.start()
        again = GatewayProcess(config)
        gateways.append(again)
        again.start()
        await wait_for(
            lambda: sub.count() >= accepted,
            timeout=40,
            interval=0.2,
            message=f"the {accepted} samples accepted before the kill",
        )
        assert sub.missing(accepted) == []
        last = await settle(sub, db, counting, within=30)
    assert last > accepted  # the restarted gateway went on numbering after the old ids
    assert sub.missing(last) == []
    assert sub.errors == []


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
async def test_disk_full_under_the_outbox_counts_drops_keeps_running_and_recovers(
    broker: MosquittoBroker,
    tmp_path: Path,
    counting: Counting,
    gateways: list[GatewayProcess],
    small_disk: Path,
    policy: str,
) -> None:
    sub = Uplink(broker.port, f"disk-sub-{policy}")
    db = small_disk / "o.db"
    config = gateway_config(tmp_path / "gw.yaml", broker.port, counting.devices, db, policy=policy)
    gw = GatewayProcess(config)
    gateways.append(gw)
    broker.stop()  # everything stays in the outbox, which soon fills the disk
    gw.start()
    with watching(sub, db, gw):
        await wait_for(
            lambda: db.exists() and read_status(db)["dropped_by_reason"]["disk_full"] > 0,
            timeout=40,
            interval=0.2,
            message="disk_full drops in the outbox file",
        )
        await asyncio.sleep(2)  # it goes on polling and counting while the disk is full
        assert gw.alive, gw.tail()
        full = read_status(db)
        assert full["dropped_by_reason"]["disk_full"] > 0
        assert "disk is full" in gw.tail()  # said once, clearly, in the log
        # space returns, then the broker: what was kept is delivered, and new samples again
        resize(small_disk, "64m")
        # the broker only once the outbox has seen the room (it looks once a second), so that
        # no row in flight is dropped: then "missing" and "dropped" must be exactly the same
        await wait_for(lambda: "room again" in gw.tail() or policy == "reject_new", timeout=10)
        broker.start()
        after = outbox_last_id(db)
        await wait_for(
            lambda: outbox_last_id(db) > after + 2000,
            timeout=30,
            interval=0.2,
            message="new samples stored once space returned",
        )
        last = await settle(sub, db, counting, within=60)
    assert gw.alive, gw.tail()
    status = read_status(db)
    missing = sub.missing(last)
    # every id the outbox gave out either arrived or was counted as dropped, never silently lost
    assert len(missing) == status["dropped"], (len(missing), status)
    assert status["dropped_by_reason"]["disk_full"] >= full["dropped_by_reason"]["disk_full"]
    assert not [n for n in missing if n > after]  # nothing lost once space returned
    # drops are of the kind the policy says: the oldest (drop_oldest) or the newest (reject_new)
    first_received = min(sub.ids)
    if policy == "drop_oldest":
        assert max(missing) < first_received
    else:
        assert first_received == 1 and min(missing) > 1
    assert sub.errors == []
