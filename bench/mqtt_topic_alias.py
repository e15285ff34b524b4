"""Bytes per publish on the uplink with and without MQTT 5 Topic Aliases (``topic_alias: true``).

    python bench/mqtt_topic_alias.py
    python bench/mqtt_topic_alias.py --pumps 10 --points 12 --polls 20

A pumping station: ``--pumps`` pumps of ``--points`` readings each, published one per MQTT
publish (``payload: value``, QoS 1) on ``site7/plant/pump-station-3/pump<i>/<reading>``, every
reading once per poll, ``--polls`` times. The MQTT adapter runs in this process, through a TCP
proxy to a real mosquitto that reads the gateway's PUBLISH packets as they pass (what a metered
link carries, TCP/IP headers aside; the proxy of tests/test_mqtt_topic_alias.py). Each case: no
aliases; aliases with mosquitto's default ``max_topic_alias 10``; aliases with room for every
topic. Then the same for the topics of one pump (8 readings: fewer topics than 10). The figures
are byte counts: they do not depend on the box.

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import (  # noqa: E402
    bench_folder,
    free_port,
    mosquitto_binary,
    print_result,
    run_bench,
    stop,
    wait_port,
)
from test_mqtt_topic_alias import PREFIX, Proxy  # noqa: E402  # the tests' wire reader

from gateway.adapter import AdapterContext  # noqa: E402
from gateway.bus import Bus  # noqa: E402
from gateway.types import Message, MessageKind, Sample  # noqa: E402
from protocols.mqtt.client import MqttAdapter  # noqa: E402
from protocols.mqtt.config import MqttEndpoint, MqttRoute  # noqa: E402

READINGS = [
    "discharge_pressure", "suction_pressure", "flow_rate", "motor_current", "motor_temperature",
    "bearing_temperature", "vibration_rms", "speed_rpm", "power_kw", "run_hours",
    "valve_position", "seal_leak",
]  # fmt: skip
ROUTE = MqttRoute(topic=PREFIX + "/{device}/{point}", payload="value", qos=1)


async def run_case(
    broker_port: int, *, alias: bool, pumps: int, points: int, polls: int
) -> dict[str, float]:
    proxy = await Proxy(broker_port).__aenter__()
    config = MqttEndpoint(
        host="127.0.0.1",
        port=proxy.port,
        version="5",
        topic_alias=alias,
        outbox=None,
        max_queued=1_000_000,
    )
    mqtt = MqttAdapter("up", config, AdapterContext(Bus(), "gw1"))
    total = pumps * points * polls
    async with mqtt:
        task = asyncio.create_task(mqtt.run())
        await asyncio.wait_for(mqtt.wait_connected(), 10)
        aliases = mqtt.status()["topic_alias_max"]
        for poll in range(polls):
            for pump in range(pumps):
                samples = tuple(
                    Sample(point=READINGS[k % len(READINGS)] + ("" if k < 12 else str(k)),
                           value=round(3.5 + 0.01 * ((poll * 7 + k) % 100), 2))
                    for k in range(points)
                )  # fmt: skip
                message = Message(
                    topic=f"telemetry/pump{pump}",
                    kind=MessageKind.TELEMETRY,
                    samples=samples,
                    origin="modbus1",
                    device=f"pump{pump}",
                )
                await mqtt.send(message, ROUTE)
        deadline = asyncio.get_running_loop().time() + 120
        while mqtt.acknowledged < total:
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"{mqtt.acknowledged} of {total} acknowledged in 120 s")
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await proxy.__aexit__(None, None, None)
    wire = proxy.data()
    n = len(wire)
    return {
        "topic_alias_max": aliases,
        "publishes": n,
        "bytes_per_publish": round(sum(w.size for w in wire) / n, 1),
        "topic_bytes_per_publish": round(sum(len(w.topic.encode()) for w in wire) / n, 1),
    }


def start_broker(folder: Path, max_alias: int) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    conf = folder / f"mosquitto-{max_alias}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_topic_alias {max_alias}\n"
    )
    log = (folder / f"mosquitto-{max_alias}.log").open("w")
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, text=True
    )
    wait_port(port)
    return proc, port


async def bench(args: argparse.Namespace, ports: dict[int, int]) -> dict[str, object]:
    result: dict[str, object] = {}
    every = args.pumps * args.points
    for label, pumps, points in (("station", args.pumps, args.points), ("one_pump", 1, 8)):
        topics = pumps * points
        plain: float | None = None
        for case, broker_max, alias in (
            ("off", every, False),
            ("max_10", 10, True),
            ("max_all", every, True),
        ):
            got = await run_case(
                ports[broker_max], alias=alias, pumps=pumps, points=points, polls=args.polls
            )
            per = got["bytes_per_publish"]
            plain = per if plain is None else plain
            key = f"{label}_{topics}_topics_{case}"
            result[key + "_bytes_per_publish"] = per
            result[key + "_topic_bytes_per_publish"] = got["topic_bytes_per_publish"]
            if case != "off":
                result[key + "_saved_percent"] = round(100 * (plain - per) / plain, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pumps", type=int, default=10)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    procs: list[subprocess.Popen[str]] = []
    with bench_folder("pb-alias-") as folder:
        try:
            ports = {}
            for max_alias in sorted({10, args.pumps * args.points}):
                proc, ports[max_alias] = start_broker(folder, max_alias)
                procs.append(proc)
            print_result(asyncio.run(bench(args, ports)))
        finally:
            stop(procs)


if __name__ == "__main__":
    sys.exit(run_bench(main))
