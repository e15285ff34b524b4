"""Modbus TCP -> gateway -> real mosquitto, at EMQ Neuron's published load.

    python bench/modbus_mqtt.py --devices 500 --registers 30 --interval 1 --duration 60
    python bench/modbus_mqtt.py --devices 100 --registers 10 --changing --shadow  # disk writes
    python bench/modbus_mqtt.py --devices 100 --registers 10 --changing --write-delay 0.5

Three processes besides this one: the Modbus simulator (all devices, one port each), mosquitto,
and `gateway run` on a generated config. Every register is a point published on every poll
(`publish: always`), so tags/s is the polling load, not what happened to change. This process
subscribes to the broker and counts tags and poll-to-publish latency (the sample's source
timestamp, taken when the Modbus response arrived, to the moment the broker delivered it here).
It also reads the bytes the gateway process wrote to disk (Linux: outbox, shadow, log), per tag:
on an SD card that is the wear. ``--shadow`` adds a device shadow with history;
``--changing`` publishes on change (the default deadband) instead of every poll, so that the
shadow's history, which keeps changes only, sees every animated register change.

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as paho
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_folder,
    cpu_seconds,
    free_port,
    modbus_devices_yaml,
    mosquitto_binary,
    percentile,
    print_result,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
    stop_gateway,
    wait_port,
)


def gateway_config(
    ports: list[int],
    registers: int,
    interval: float,
    mqtt_port: int,
    payload: str,
    *,
    shadow: bool = False,
    changing: bool = False,
    synchronous: str = "FULL",
    write_delay: float = 0.0,
) -> str:
    lines = ["gateway: {name: bench, status_interval: 0}"]
    publish = "" if changing else ", publish: always"
    lines += modbus_devices_yaml(ports, registers, interval, publish)
    if shadow:
        lines += [f"shadow: {{path: shadow.db, write_delay: {write_delay}}}"]
    topic = "bench/{device}" if payload == "device" else "bench/{device}/{point}"
    lines += [
        "endpoints:",
        f"  broker: {{protocol: mqtt, host: 127.0.0.1, port: {mqtt_port}, max_queued: 100000,",
        f"           outbox: {{synchronous: {synchronous}, write_delay: {write_delay}}}}}",
        "bridges:",
        f"  - {{name: up, from: [{', '.join(f'd{n}' for n in range(len(ports)))}], to: broker,"
        f" topic: '{topic}', payload: {payload}, qos: 0}}",
    ]
    return "\n".join(lines) + "\n"


def written_bytes(process: psutil.Process) -> int:
    """Bytes the process caused to be written to storage (Linux's write_bytes)."""
    return int(process.io_counters().write_bytes)


class Counter:
    def __init__(self, port: int, payload: str) -> None:
        self.payload = payload
        self.tags = 0
        self.latencies: list[float] = []
        self.measuring = False
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bench/#", qos=0)
        self.client.loop_start()

    def on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        if not self.measuring:
            return
        now = time.time()
        data = json.loads(msg.payload)
        if self.payload == "device":
            n = len(data["values"])
            ts = data["ts"]
        elif self.payload == "sample":
            n, ts = 1, data["ts"]
        else:
            n, ts = 1, None
        with self.lock:
            self.tags += n
            if ts is not None:
                sent = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
                self.latencies.append(now - sent)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--registers", type=int, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--payload", choices=["device", "sample", "value"], default="device")
    parser.add_argument("--shadow", action="store_true", help="a device shadow with history")
    parser.add_argument(
        "--changing", action="store_true", help="publish on change instead of every poll"
    )
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="the outbox's fsync policy (FULL: one per transaction; NORMAL: at checkpoints)",
    )
    parser.add_argument(
        "--write-delay",
        type=float,
        default=0.0,
        help="write_delay of the outbox (and the shadow): seconds written in one transaction",
    )
    args = parser.parse_args()

    mosquitto = mosquitto_binary()
    with bench_folder("pb-bench-") as workdir:
        mqtt_port = free_port()
        (workdir / "mosquitto.conf").write_text(
            f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\n"
        )
        procs: list[subprocess.Popen[str]] = []
        try:
            broker = subprocess.Popen(
                [mosquitto, "-c", str(workdir / "mosquitto.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(broker)
            wait_port(mqtt_port)

            sim, ports = start_simulator(args.devices, max(args.registers, 8), "--animate")
            procs.append(sim)

            config = workdir / "gateway.yaml"
            config.write_text(
                gateway_config(
                    ports,
                    args.registers,
                    args.interval,
                    mqtt_port,
                    args.payload,
                    shadow=args.shadow,
                    changing=args.changing,
                    synchronous=args.synchronous,
                    write_delay=args.write_delay,
                )
            )
            counter = Counter(mqtt_port, args.payload)
            gw = start_gateway(config, workdir / "gateway.log")
            procs.append(gw)
            gw_ps, sim_ps = psutil.Process(gw.pid), psutil.Process(sim.pid)

            print(
                f"{args.devices} devices x {args.registers} registers every {args.interval} s, "
                f"payload {args.payload}; warming up {args.warmup} s, measuring {args.duration} s",
                file=sys.stderr,
            )
            time.sleep(args.warmup)
            me = psutil.Process()
            gw_cpu0, sim_cpu0, me_cpu0 = cpu_seconds(gw_ps), cpu_seconds(sim_ps), cpu_seconds(me)
            written0 = written_bytes(gw_ps)
            counter.measuring = True
            t0 = time.monotonic()
            peak_rss = 0
            while time.monotonic() - t0 < args.duration:
                time.sleep(0.5)
                peak_rss = max(peak_rss, gw_ps.memory_info().rss)
                if gw.poll() is not None:
                    raise SystemExit(
                        f"gateway exited with {gw.returncode} (the end of its log is above)"
                    )
            counter.measuring = False
            wall = time.monotonic() - t0
            gw_cpu = cpu_seconds(gw_ps) - gw_cpu0
            written = written_bytes(gw_ps) - written0
            sim_cpu = cpu_seconds(sim_ps) - sim_cpu0
            me_cpu = cpu_seconds(me) - me_cpu0
            counter.stop()

            gw_rc, shutdown_s = stop_gateway(gw)
            expected = args.devices * args.registers / args.interval
            result = {
                "devices": args.devices,
                "registers": args.registers,
                "interval_s": args.interval,
                "payload": args.payload,
                "duration_s": round(wall, 1),
                "tags_expected_per_s": round(expected),
                "tags_per_s": round(counter.tags / wall),
                "gateway_cpu_pct_of_one_core": round(100 * gw_cpu / wall, 1),
                "gateway_peak_rss_mb": round(peak_rss / 2**20, 1),
                "shadow": args.shadow,
                "outbox_synchronous": args.synchronous,
                "outbox_write_delay_s": args.write_delay,
                "publish": "on change" if args.changing else "always",
                "disk_written_kb_per_s": round(written / wall / 1000, 1),
                "disk_written_bytes_per_tag": round(written / max(counter.tags, 1)),
                "latency_p50_ms": round(1000 * percentile(counter.latencies, 0.5), 1),
                "latency_p99_ms": round(1000 * percentile(counter.latencies, 0.99), 1),
                "simulator_cpu_pct_of_one_core": round(100 * sim_cpu / wall, 1),
                # The measuring subscriber shares the 2 cores; when it lags, latency includes it.
                "subscriber_cpu_pct_of_one_core": round(100 * me_cpu / wall, 1),
                "gateway_exit_code": gw_rc,
                "gateway_shutdown_s": round(shutdown_s, 2),
                "cores": os.cpu_count(),
            }
            print_result(result)
        finally:
            stop(procs)


if __name__ == "__main__":
    sys.exit(run_bench(main))
