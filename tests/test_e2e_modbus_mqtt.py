"""Modbus TCP -> MQTT end to end: the real `gateway run` process, the Modbus simulator (itself
checked against mbpoll in test_simulator.py) and a real mosquitto broker, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, wait_for

from protocols.modbus.codec import ByteOrder, DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator

GATEWAY = [sys.executable, "-m", "gateway"]


class Collector:
    """A plain paho subscriber on its own thread, recording (time, topic, payload)."""

    def __init__(self, broker: MosquittoBroker, topic: str = "#") -> None:
        self.messages: list[tuple[float, str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="e2e-collector")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe(topic, qos=1),
            self._ready.set(),
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._ready.wait(5), "collector could not connect to mosquitto"

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, payload))

    def on(self, topic: str, since: float = 0.0) -> list[Any]:
        with self._lock:
            return [p for t, top, p in self.messages if top == topic and t >= since]

    def last(self, topic: str) -> Any:
        found = self.on(topic)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(
    path: Path, broker: MosquittoBroker, a: SimulatedDevice, b: SimulatedDevice
) -> Path:
    path.write_text(
        f"""
gateway: {{name: e2e}}
devices:
  pump:
    protocol: modbus
    host: {HOST}
    port: {a.port}
    timeout: 0.3
    reconnect: {{initial: 0.1, max: 0.5}}
    poll_groups: {{fast: {{interval: 0.2}}}}
    points:
      - {{name: temp, table: input, address: 0, type: int16, scale: 0.1, unit: degC, poll: fast}}
      - {{name: flow, table: holding, address: 10, type: float32, byte_order: CDAB, unit: l/min, poll: fast}}
      - {{name: total, table: holding, address: 20, type: uint32, byte_order: DCBA, poll: fast}}
      - {{name: running, table: coil, address: 0, poll: fast}}
      - {{name: fault, table: holding, address: 30, type: bool, bit: 3, poll: fast}}
      - {{name: model, table: holding, address: 40, type: string, length: 4, poll: fast}}
      - {{name: remote, table: holding, address: 0, unit_id: 2, poll: fast}}
  meter:
    protocol: modbus
    host: {HOST}
    port: {b.port}
    timeout: 0.3
    poll_groups: {{fast: {{interval: 0.2}}}}
    points:
      - {{name: count, table: holding, address: 0, poll: fast}}
endpoints:
  broker:
    protocol: mqtt
    host: {broker.host}
    port: {broker.port}
    status_topic: "site/{{gateway}}/status"
bridges:
  - name: per-point
    from: [pump, meter]
    to: broker
    units: {{temp: degF}}
    topic: "site/{{device}}/{{point}}"
    payload: sample
    qos: 1
  - name: snapshot
    from: pump
    points: [temp, flow]
    to: broker
    topic: "snap/{{gateway}}/{{device}}"
    payload: device
    qos: 0
  - name: bare
    from: meter
    to: broker
    topic: "bare/{{device}}/{{point}}"
    payload: value
"""
    )
    return path


@pytest.fixture
async def plant(simulator: Simulator) -> AsyncIterator[tuple[SimulatedDevice, SimulatedDevice]]:
    a = await simulator.add_device(unit_ids=(1, 2), name="pump")
    b = await simulator.add_device(name="meter")
    a.set_value("input", 0, 215, DataType.INT16)  # 21.5 degC
    a.set_value("holding", 10, 12.5, DataType.FLOAT32, ByteOrder.CDAB)
    a.set_value("holding", 20, 70000, DataType.UINT32, ByteOrder.DCBA)
    a.set_bits("coil", 0, [True])
    a.set_registers("holding", 30, [0b1000])
    a.set_value("holding", 40, "PB-7", DataType.STRING, length=4)
    a.set_registers("holding", 0, [42], unit=2)

    async def count() -> None:  # the meter's value changes every 50 ms, so every poll publishes
        n = 0
        while True:
            n += 1
            b.set_registers("holding", 0, [n % 65536])
            await asyncio.sleep(0.05)

    task = asyncio.create_task(count())
    yield a, b
    task.cancel()


@pytest.fixture
async def gateway_run(
    tmp_path: Path, mosquitto: MosquittoBroker, plant: tuple[SimulatedDevice, SimulatedDevice]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Collector]]:
    collector = Collector(mosquitto)
    config = write_config(tmp_path / "gw.yaml", mosquitto, *plant)
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, "run", str(config), stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc, collector
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        collector.close()


async def test_values_arrive_with_configured_topics_and_payloads(
    gateway_run: tuple[asyncio.subprocess.Process, Collector],
) -> None:
    proc, mqtt = gateway_run
    await wait_for(lambda: mqtt.last("site/pump/remote"), timeout=10, message="first values")

    temp = mqtt.last("site/pump/temp")
    assert temp["value"] == pytest.approx(70.7)  # 21.5 degC converted to degF by the bridge
    assert temp["unit"] == "degF" and temp["quality"] == "good"
    assert temp["ts"].endswith("Z")
    assert mqtt.last("site/pump/flow")["value"] == pytest.approx(12.5)
    assert mqtt.last("site/pump/flow")["unit"] == "l/min"
    assert mqtt.last("site/pump/total")["value"] == 70000
    assert mqtt.last("site/pump/running")["value"] is True
    assert mqtt.last("site/pump/fault")["value"] is True
    assert mqtt.last("site/pump/model")["value"] == "PB-7"
    assert mqtt.last("site/pump/remote")["value"] == 42  # unit id 2 on the same connection

    snap = await wait_for(lambda: mqtt.last("snap/e2e/pump"))
    assert snap["device"] == "pump"
    assert set(snap["values"]) <= {"temp", "flow"}  # the bridge's point filter
    assert "quality" not in snap

    bare = await wait_for(lambda: mqtt.last("bare/meter/count"))
    assert isinstance(bare, int)

    # Deadband default: unchanged values are not re-sent, changing ones are.
    await asyncio.sleep(1.0)
    assert len(mqtt.on("site/pump/temp")) == 1
    assert len(mqtt.on("site/meter/count")) >= 3

    assert mqtt.last("site/e2e/status")["state"] == "online"


async def test_sigterm_shuts_down_cleanly(
    gateway_run: tuple[asyncio.subprocess.Process, Collector],
) -> None:
    proc, mqtt = gateway_run
    await wait_for(lambda: mqtt.last("site/meter/count"), timeout=10)
    proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(proc.wait(), 15)
    assert rc == 0
    stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr
    assert "stopped" in stderr
    # The clean shutdown publishes the retained offline state itself (not the broker's will).
    await wait_for(lambda: (mqtt.last("site/e2e/status") or {}).get("state") == "offline")


async def test_dead_device_is_bad_recovers_and_never_slows_the_other(
    gateway_run: tuple[asyncio.subprocess.Process, Collector],
    simulator: Simulator,
    plant: tuple[SimulatedDevice, SimulatedDevice],
) -> None:
    proc, mqtt = gateway_run
    pump, _meter = plant
    await wait_for(lambda: mqtt.last("site/pump/temp"), timeout=10)
    await wait_for(lambda: len(mqtt.on("site/meter/count")) >= 5)

    await simulator.stop_device(pump)
    bad = await wait_for(
        lambda: (mqtt.last("site/pump/temp") or {}).get("quality") == "bad", timeout=5
    )
    assert bad
    assert mqtt.last("site/pump/temp")["reason"]
    assert mqtt.last("site/pump/temp")["value"] is None

    # While the pump is down the meter keeps its 5 polls per second.
    t0 = time.monotonic()
    await asyncio.sleep(2.0)
    during = len(mqtt.on("site/meter/count", since=t0))
    assert during >= 7, f"meter published {during} values in 2 s while the pump was down"

    await simulator.start_device(pump)
    await wait_for(
        lambda: (mqtt.last("site/pump/temp") or {}).get("quality") == "good",
        timeout=10,
        message="pump recovering by itself",
    )
    assert mqtt.last("site/pump/temp")["value"] == pytest.approx(70.7)


async def test_slow_device_times_out_without_delaying_the_other(
    gateway_run: tuple[asyncio.subprocess.Process, Collector],
    plant: tuple[SimulatedDevice, SimulatedDevice],
) -> None:
    proc, mqtt = gateway_run
    pump, _meter = plant
    await wait_for(lambda: mqtt.last("site/pump/temp"), timeout=10)
    pump.delay = 1.0  # answers after 1 s; the config's timeout is 0.3 s
    await wait_for(
        lambda: (mqtt.last("site/pump/temp") or {}).get("reason") == "timeout", timeout=5
    )
    t0 = time.monotonic()
    await asyncio.sleep(2.0)
    during = len(mqtt.on("site/meter/count", since=t0))
    assert during >= 7, f"meter published {during} values in 2 s while the pump was slow"
    pump.delay = 0.0
    await wait_for(lambda: (mqtt.last("site/pump/temp") or {}).get("quality") == "good", timeout=10)


async def test_status_line_names_the_device_that_is_down(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    simulator: Simulator,
    plant: tuple[SimulatedDevice, SimulatedDevice],
) -> None:
    pump, meter = plant
    config = write_config(tmp_path / "gw.yaml", mosquitto, pump, meter)
    config.write_text(
        config.read_text().replace(
            "gateway: {name: e2e}", "gateway: {name: e2e, status_interval: 0.5}"
        )
    )
    await simulator.stop_device(pump)
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, "run", str(config), stderr=asyncio.subprocess.PIPE
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        # Wait for the line itself: under load the gateway may take seconds to start.
        async with asyncio.timeout(30):
            while not any("status:" in ln and "down: pump" in ln for ln in seen):
                line = await proc.stderr.readline()
                assert line, "gateway exited early: " + "".join(seen)
                seen.append(line.decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    seen.append((await proc.stderr.read()).decode())  # type: ignore[union-attr]
    stderr = "".join(seen)
    status = [line for line in stderr.splitlines() if "status:" in line and "down: pump" in line]
    assert "2/3 connected" in status[-1]
    assert "cannot connect to 127.0.0.1" in stderr  # reported once, by the adapter, not a traceback
    assert "Traceback" not in stderr
