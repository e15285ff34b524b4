"""Durable uplink under faults, with a real mosquitto: broker outage, gateway SIGKILL.

The subscriber is a paho client with a persistent session (clean_session False, QoS 1) on a
broker with persistence, so whatever the broker accepted reaches it even across the restart;
it drops duplicates by the payload's ``id`` and checks that each device's values arrive in
order, without gaps.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, find_binary, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.types import Message, Sample
from gateway.uplink.outbox import Outbox
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, MqttRoute

ROUTE = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), tmp_path)
    b.config.write_text(
        f"listener {b.port} {HOST}\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp_path}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Subscriber:
    """Counts distinct ids and checks per-device order of the values."""

    def __init__(self, port: int, client_id: str) -> None:
        self.ids: set[str] = set()
        self.last: dict[str, int] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe("plant/#", qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 0.5)
        c.connect(HOST, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        device = msg.topic.split("/")[1]
        with self.lock:
            if body["id"] in self.ids:
                return  # a duplicate after a replay: what the id is for
            self.ids.add(body["id"])
            value = int(body["value"])
            expected = self.last.get(device, -1) + 1
            if value != expected and len(self.errors) < 10:
                self.errors.append(f"{device}: got {value}, expected {expected}")
            self.last[device] = value

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def endpoint(port: int, path: Path, **outbox: Any) -> MqttEndpoint:
    return MqttEndpoint(
        host=HOST,
        port=port,
        reconnect={"initial": 0.1, "max": 0.5},
        outbox={"path": str(path), "drain_rate": 5000, **outbox},
    )


async def test_broker_down_30s_at_1000_per_s_every_sample_arrives_in_order(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, "faults-sub")
    devices = [f"d{i}" for i in range(10)]
    mqtt = MqttAdapter("up", endpoint(broker.port, tmp_path / "o.db"), AdapterContext(Bus(), "gw"))
    sent = 0
    async with mqtt:
        task = asyncio.create_task(mqtt.run())
        await mqtt.wait_connected()

        async def produce(seconds: float) -> None:
            nonlocal sent
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                tick = time.monotonic()
                for _ in range(10):  # 10 devices x 10 per tick x 100 ticks/s = 1000 samples/s
                    n = sent // len(devices)
                    for d in devices:
                        msg = Message.telemetry(d, (Sample.now("v", n),))
                        await mqtt.send(msg, ROUTE)
                    sent += len(devices)
                await asyncio.sleep(max(0.0, 0.01 - (time.monotonic() - tick)))

        await produce(2)
        # mosquitto can lose what it acknowledged but had not yet delivered when it is stopped
        # (its own durability, not the gateway's): let the subscriber catch up first
        await wait_for(lambda: len(sub.ids) >= sent, timeout=10, interval=0.1)
        broker.stop()
        await produce(30)
        assert mqtt.status()["queued"] > 20_000
        broker.start()
        await produce(3)
        try:
            await wait_for(lambda: len(sub.ids) >= sent, timeout=40, interval=0.2)
        except BaseException:
            print("DIAG", sent, len(sub.ids), sub.errors[:3], mqtt.status())
            raise
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sub.close()
    assert len(sub.ids) == sent
    assert sub.errors == []
    assert mqtt.status()["dropped"] == 0


GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.adapter import AdapterContext
    from gateway.bus import Bus
    from gateway.types import Message, Sample
    from protocols.mqtt.client import MqttAdapter
    from protocols.mqtt.config import MqttEndpoint, MqttRoute

    port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    route = MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=1)

    async def main():
        ep = MqttEndpoint(host="127.0.0.1", port=port, reconnect={"initial": 0.1, "max": 0.5},
                          outbox={"path": path, "drain_rate": None})
        mqtt = MqttAdapter("up", ep, AdapterContext(Bus(), "gw"))
        async with mqtt:
            task = asyncio.create_task(mqtt.run())
            await mqtt.wait_connected()
            for n in range(count):
                await mqtt.send(Message.telemetry("d0", (Sample.now("v", n),)), route)
                print(n, flush=True)  # accepted: send() returned, so it is in the file
                if n % 50 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_sigkill_mid_burst_then_restart_delivers_everything_accepted(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, "kill-sub")
    script = tmp_path / "gw.py"
    script.write_text(GATEWAY)
    db = tmp_path / "o.db"
    cmd = [sys.executable, str(script), str(broker.port), str(db)]
    proc = subprocess.Popen([*cmd, "200000"], stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    assert proc.stdout is not None
    accepted = -1
    deadline = time.monotonic() + 20
    while accepted < 3000 and time.monotonic() < deadline:
        accepted = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read().split()
    accepted = int(rest[-1]) if rest else accepted
    box = Outbox(db)  # the file survived the kill intact
    assert box.integrity_check() == "ok"
    box.close()
    again = subprocess.Popen([*cmd, "0"], stdout=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        await wait_for(lambda: len(sub.ids) >= accepted + 1, timeout=30, interval=0.2)
    finally:
        again.kill()
        again.wait()
        sub.close()
    assert sub.errors == []
    assert sub.last["d0"] >= accepted
