"""Draining the outbox after an outage: `strict` keeps each device's order (live waits behind
the backlog); `live_first` sends live data at once and drains the backlog beside it at
`drain_rate`, so live data stays fresh. Real mosquitto, real outage."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, MosquittoBroker, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_uplink_faults import ROUTE, broker, endpoint  # noqa: F401 (fixture)

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.types import Message, Sample
from protocols.mqtt.client import MqttAdapter

RATE = 400  # samples/s produced, and the backlog's drain rate


class Recorder:
    """Every distinct message: (value, source ts, receive time), in arrival order."""

    def __init__(self, port: int) -> None:
        self.seen: dict[str, tuple[int, float, float]] = {}
        self.order: list[tuple[int, float, float]] = []
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="drain-sub", clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe("plant/#", qos=1)
        c.on_message = self._on_message
        # Back before the gateway (0.1 s), so the drain is seen as it happens.
        c.reconnect_delay_set(0.02, 0.05)
        c.connect(HOST, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        ts = time.mktime(time.strptime(body["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        ts += float("0" + body["ts"][19:-1])
        entry = (int(body["value"]), ts, time.time())
        with self.lock:
            if body["id"] not in self.seen:
                self.seen[body["id"]] = entry
                self.order.append(entry)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("order", ["strict", "live_first"])
async def test_drain_after_an_outage(
    broker: MosquittoBroker,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    order: str,
) -> None:
    sub = Recorder(broker.port)
    config = endpoint(broker.port, tmp_path / "o.db", drain_rate=RATE, drain_order=order)
    mqtt = MqttAdapter("up", config, AdapterContext(Bus(), "gw"))
    sent = 0
    async with mqtt:
        task = asyncio.create_task(mqtt.run())
        await mqtt.wait_connected()

        async def produce(seconds: float) -> None:
            nonlocal sent
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                tick = time.monotonic()
                for _ in range(RATE // 100):
                    await mqtt.send(Message.telemetry("d0", (Sample.now("v", sent),)), ROUTE)
                    sent += 1
                await asyncio.sleep(max(0.0, 0.01 - (time.monotonic() - tick)))

        await produce(0.5)
        await wait_for(lambda: len(sub.seen) >= sent, timeout=10, interval=0.05, message="first")
        broker.stop()
        await produce(4.0)  # about 1,600 samples of backlog, 4 s to drain at RATE
        backlog_end = sent
        broker.start()
        await mqtt.wait_connected()
        live_start = sent
        await produce(3.0)
        try:
            await wait_for(lambda: len(sub.seen) >= sent, timeout=30, interval=0.1)
        except BaseException:
            got = {v for v, _, _ in sub.seen.values()}
            print(
                "DIAG",
                sent,
                len(sub.seen),
                backlog_end,
                live_start,
                sorted(set(range(sent)) - got)[:40],
            )
            raise
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sub.close()

    values = sorted(v for v, _, _ in sub.seen.values())
    assert values == list(range(sent))  # every sample arrived, exactly once after dedup
    arrival = [v for v, _, _ in sub.order]
    live_ages = [recv - ts for v, ts, recv in sub.order if v >= live_start]
    live_ages.sort()
    p90 = live_ages[int(0.9 * len(live_ages))]
    if order == "strict":
        assert arrival == sorted(arrival)  # one device, in order throughout
        assert p90 > 1.0  # the price: live data queued behind the backlog
    else:
        backlog = [v for v in arrival if v < backlog_end]
        live = [v for v in arrival if v >= live_start]
        assert backlog == sorted(backlog) and live == sorted(live)  # each lane in order
        assert p90 < 0.5, f"live data was {p90:.2f} s old during the drain"
        # the backlog really drained beside live data, not before it
        first_live = arrival.index(live[0])
        assert any(v < backlog_end for v in arrival[first_live:])


@pytest.mark.parametrize("order", ["strict", "live_first"])
async def test_restart_on_a_delivered_file_sends_new_samples(
    broker: MosquittoBroker,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    order: str,
) -> None:
    """A restart on a file whose rows were all delivered (its cursor starts behind `last_id`:
    the state behind a demo that hung at 100 % CPU, see test_outbox): new samples go out and
    the event loop keeps running. This did not reproduce the hang itself."""
    sub = Recorder(broker.port)
    config = endpoint(broker.port, tmp_path / "o.db", drain_rate=RATE, drain_order=order)
    sent = 0
    for _ in range(2):  # a run that delivers everything, then a restart on the same file
        mqtt = MqttAdapter("up", config, AdapterContext(Bus(), "gw"))
        async with mqtt:
            task = asyncio.create_task(mqtt.run())
            await mqtt.wait_connected()
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            for _ in range(5):
                await mqtt.send(Message.telemetry("d0", (Sample.now("v", sent),)), ROUTE)
                sent += 1
            await wait_for(lambda n=sent: len(sub.seen) >= n, timeout=10, interval=0.05)
            await asyncio.sleep(0.3)
            assert ticks >= 10, "the event loop was starved"
            for t in (ticker, task):
                t.cancel()
            await asyncio.gather(ticker, task, return_exceptions=True)
    sub.close()
    assert sorted(v for v, _, _ in sub.seen.values()) == list(range(sent))
