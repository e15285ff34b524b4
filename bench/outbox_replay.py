"""Replay of a large outbox backlog while live data flows.

    python bench/outbox_replay.py [--messages 40000] [--drain-rate 2000] [--live 200]
    python bench/outbox_replay.py --messages 1000000 --drain-rate 10000   # the long run

An outbox file is filled with ``--messages`` publishes (the backlog an outage leaves behind);
then the MQTT adapter connects to a real mosquitto and drains it at ``--drain-rate`` (default:
the outbox's own default cap) while a producer sends ``--live`` samples per second through it
(`drain_order: live_first`). A paho subscriber counts the backlog and measures each live
sample's age on arrival. The defaults take about 22 s on 2 cores; the long run about 2.5 minutes.

Prints its figures; the last line is one JSON object. SIGTERM stops it as Ctrl-C does:
mosquitto is stopped and the temporary folder removed, and it exits with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_folder,
    free_port,
    mosquitto_binary,
    percentile,
    print_result,
    run_bench,
    stop,
    wait_port,
)

from gateway.adapter import AdapterContext  # noqa: E402
from gateway.bus import Bus  # noqa: E402
from gateway.types import Message, Sample  # noqa: E402
from gateway.uplink.outbox import Outbox, OutboxConfig  # noqa: E402
from protocols.mqtt.client import MqttAdapter  # noqa: E402
from protocols.mqtt.config import MqttEndpoint, MqttRoute  # noqa: E402

ROUTE = MqttRoute(topic="bench/live/{device}/{point}", payload="sample", qos=1)


class Counter:
    def __init__(self, port: int) -> None:
        self.backlog = 0
        self.ages: list[float] = []
        self.backlog_done_at: float | None = None
        self.expected = 0
        self.lock = threading.Lock()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="replay-sub")
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.subscribe("bench/#", qos=1)
        c.loop_start()
        self.client = c

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.startswith("bench/backlog/"):
            with self.lock:
                self.backlog += 1
                if self.backlog == self.expected:
                    self.backlog_done_at = now
            return
        ts = json.loads(msg.payload)["ts"]
        sent = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        with self.lock:
            self.ages.append(now - sent)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def fill(path: Path, n: int) -> float:
    start = time.perf_counter()
    box = Outbox(path, OutboxConfig(synchronous="NORMAL", max_rows=max(n, 1)), name="up")
    batch = 10_000
    for first in range(0, n, batch):
        items = [
            (f"bench/backlog/d{i % 100}", b'{"n":%d}' % i, 1, False)
            for i in range(first, min(n, first + batch))
        ]
        box.append(items)
    box.close()
    return time.perf_counter() - start


async def replay(port: int, path: Path, n: int, rate: float, live: int, sub: Counter) -> float:
    config = MqttEndpoint(
        host="127.0.0.1",
        port=port,
        outbox={
            "path": str(path),
            "drain_rate": rate,
            "drain_order": "live_first",
            "max_rows": max(n, 1) + 100_000,
        },
    )
    mqtt = MqttAdapter("up", config, AdapterContext(Bus(), "bench"))
    sub.expected = n
    async with mqtt:
        task = asyncio.create_task(mqtt.run())
        await mqtt.wait_connected()
        started = time.time()
        sent = 0
        while sub.backlog_done_at is None and time.time() - started < 3600:
            tick = time.monotonic()
            for _ in range(max(1, live // 10)):
                await mqtt.send(Message.telemetry("d0", (Sample.now("v", sent),)), ROUTE)
                sent += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return started


def run(workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    (workdir / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\n"
    )
    procs: list[subprocess.Popen[str]] = []
    sub: Counter | None = None
    try:
        procs.append(
            subprocess.Popen(
                [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        wait_port(port)
        path = workdir / "outbox-up.db"
        fill_s = fill(path, args.messages)
        sub = Counter(port)
        started = asyncio.run(replay(port, path, args.messages, args.drain_rate, args.live, sub))
        done = sub.backlog_done_at
        drain_s = (done - started) if done else float("nan")
        return {
            "messages": args.messages,
            "fill_s": round(fill_s, 1),
            "outbox_mb": round(path.stat().st_size / 2**20, 1),
            "drain_rate_cap": args.drain_rate,
            "drained": sub.backlog,
            "drain_s": round(drain_s, 1),
            "drain_rate_per_s": round(sub.backlog / drain_s) if done else None,
            "live_per_s": args.live,
            "live_received": len(sub.ages),
            "live_p50_ms": round(1000 * percentile(sub.ages, 0.5), 1),
            "live_p99_ms": round(1000 * percentile(sub.ages, 0.99), 1),
            "cores": os.cpu_count(),
        }
    finally:
        if sub is not None:
            sub.close()
        stop(procs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--messages", type=int, default=40_000, help="backlog publishes (1000000: the long run)"
    )
    parser.add_argument(
        "--drain-rate",
        type=float,
        default=OutboxConfig.model_fields["drain_rate"].default,
        help="cap on backlog publishes/s (default: the outbox's default)",
    )
    parser.add_argument("--live", type=int, default=200, help="live samples per second")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    with bench_folder("pb-bench-replay-") as workdir:
        result = run(workdir, args)
    print_result(result)


if __name__ == "__main__":
    sys.exit(run_bench(main))
