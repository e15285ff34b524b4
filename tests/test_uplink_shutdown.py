"""SIGINT to a real `gateway run` whose MQTT endpoint batches (outbox + optimizer): every
shutdown is orderly. The gateway publishes its own retained offline state (with a ``ts``; the
broker's will has none), logs the disconnect, and what it could not deliver is reported kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from shaping_proxy import ShapingProxy
from test_optimizer_uplink import ROUTE, telemetry

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.runtime import _cancel
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint

GATEWAY = [sys.executable, "-m", "gateway"]
STATUS = "site/shut/status"


class StatusWatcher:
    """The status topic's messages, in order, from a plain paho subscriber."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.states: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="status-watcher")
        client.on_message = self._on_message
        client.on_connect = lambda c, u, f, rc, p: (c.subscribe(STATUS, 1), ready.set())
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert ready.wait(5), "watcher could not connect to mosquitto"
        self.client = client

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.states.append(json.loads(msg.payload))

    def last(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.states[-1]) if self.states else {}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained_status(broker: MosquittoBroker) -> dict[str, Any]:
    """What a client connecting now is told the gateway's state is (the retained message)."""
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        got.append(json.loads(msg.payload))
        done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="status-latecomer")
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(STATUS, 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert done.wait(5), "no retained status"
        return got[0]
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
async def counter(simulator: Simulator) -> AsyncIterator[SimulatedDevice]:
    device = await simulator.add_device(name="meter")

    async def count() -> None:  # changes between polls, so every poll publishes
        n = 0
        while True:
            n += 1
            device.set_registers("holding", 0, [n % 65536, (7 * n) % 65536])
            await asyncio.sleep(0.03)

    task = asyncio.create_task(count())
    yield device
    task.cancel()


def write_config(path: Path, broker: MosquittoBroker, device: SimulatedDevice, model: str) -> Path:
    path.write_text(
        f"""
gateway: {{name: shut}}
devices:
  meter:
    protocol: modbus
    host: {HOST}
    port: {device.port}
    timeout: 0.3
    poll_groups: {{fast: {{interval: 0.1}}}}
    points:
      - {{name: count, table: holding, address: 0, poll: fast}}
      - {{name: other, table: holding, address: 1, poll: fast}}
endpoints:
  cloud:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    status_topic: "site/{{gateway}}/status"
    outbox: {{drain_order: strict}}
    optimizer: {{model: {model}}}
bridges:
  - name: up
    from: meter
    to: cloud
    topic: "site/{{device}}/{{point}}"
    payload: sample
    qos: 1
"""
    )
    return path


@pytest.mark.parametrize("model", ["heuristic", "builtin"])
async def test_sigint_always_shuts_the_batching_uplink_down_in_order(
    tmp_path: Path, mosquitto: MosquittoBroker, counter: SimulatedDevice, model: str
) -> None:
    config = write_config(tmp_path / "gw.yaml", mosquitto, counter, model)
    watcher = StatusWatcher(mosquitto)
    try:
        for run in range(5):
            proc = await asyncio.create_subprocess_exec(
                *GATEWAY, "run", str(config), stderr=asyncio.subprocess.PIPE
            )
            try:
                await wait_for(
                    lambda: watcher.last().get("state") == "online", timeout=20, message="birth"
                )
                await asyncio.sleep(2.0)  # batches of a few polls wait for their deadline
                proc.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(proc.wait(), 20) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode()
            assert "Traceback" not in stderr, stderr
            assert "MQTT cloud: disconnected from" in stderr, f"run {run}:\n{stderr}"
            # the broker is up: what was staged for a batch is delivered before the offline
            # message, nothing waits for the next start
            assert "for the next start" not in stderr, f"run {run}:\n{stderr}"
            assert "from before the restart wait" not in stderr, f"run {run}:\n{stderr}"
            offline = await wait_for(
                lambda: watcher.last().get("state") == "offline" and watcher.last(), timeout=5
            )
            assert "ts" in offline, f"run {run}: the broker's will, not our offline message"
            assert "ts" in await asyncio.to_thread(retained_status, mosquitto), f"run {run}"
    finally:
        watcher.close()


async def test_a_close_slower_than_the_runtime_recancel_still_finishes(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The runtime cancels a sink's run() every 0.2 s until it ends; run() closes the adapter
    in its finally. Behind a 0.4 s link the drain needs longer than that: it must still
    deliver, publish the offline state and disconnect (the next close() waits for it)."""
    watcher = StatusWatcher(mosquitto)
    caplog.set_level(logging.INFO, logger="protocols.mqtt.client")
    try:
        async with ShapingProxy(mosquitto.port, rate=2_000_000, delay=0.4) as proxy:
            endpoint = MqttEndpoint(
                host=HOST,
                port=proxy.port,
                status_topic=STATUS,
                outbox={"drain_order": "strict"},
                optimizer={"model": "heuristic"},
            )
            mqtt = MqttAdapter("slow", endpoint, AdapterContext(Bus(), "gw1"))
            async with mqtt:
                task = asyncio.create_task(mqtt.run(), name="adapter:slow")
                async with asyncio.timeout(10):
                    await mqtt.wait_connected()
                for i in range(5):
                    await mqtt.send(telemetry("press", 2, 2 * i), ROUTE)
                await _cancel([task])
                assert task.done()
            assert mqtt._store is None  # closed, after the drain
        text = caplog.text
        assert "MQTT slow: disconnected from" in text
        assert "for the next start" not in text and "not acknowledged" not in text, text
        offline = await wait_for(
            lambda: watcher.last().get("state") == "offline" and watcher.last(), timeout=5
        )
        assert "ts" in offline, "the broker's will, not the adapter's offline message"
        # the DISCONNECT crossed the slow link too: the broker kept our state, not its will
        assert "ts" in await asyncio.to_thread(retained_status, mosquitto)
    finally:
        watcher.close()
