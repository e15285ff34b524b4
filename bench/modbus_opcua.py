"""Modbus TCP -> gateway -> OPC UA server, measured by a node-opcua subscriber.

    python bench/modbus_opcua.py [--points 1000,10000] [--duration 30]

For each size: the simulator (100 holding registers per device, every one counting up each
second, so every point changes every poll), `gateway run` polling every device each second and
serving every point as an OPC UA variable, and node-opcua (not our stack) subscribed to all of
them. Reported: data-change notifications per second at the client, gateway CPU, and the age
of each notification at the client (receive time - SourceTimestamp, the Modbus response).

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NODE_MODULES,
    ROOT,
    bench_folder,
    cpu_seconds,
    free_port,
    modbus_devices_yaml,
    node_binary,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
    wait_port,
)

REGISTERS = 100
NAMESPACE = "urn:protocol-brain:bench"


def config_text(ports: list[int], opcua_port: int, pki: Path) -> str:
    lines = ["gateway: {name: bench, status_interval: 0}"]
    lines += modbus_devices_yaml(ports, REGISTERS, 1.0)
    lines += [
        "endpoints:",
        "  opcua:",
        "    protocol: opcua",
        "    role: server",
        "    host: 127.0.0.1",
        f"    port: {opcua_port}",
        f"    namespace: {NAMESPACE}",
        f"    security: {{allow_none: true, pki_dir: '{pki}'}}",
        "    anonymous: true",
        "bridges:",
        f"  - {{name: up, from: [{', '.join(f'd{n}' for n in range(len(ports)))}], to: opcua}}",
    ]
    return "\n".join(lines) + "\n"


def run_size(points: int, duration: float, warmup: float, publishing_ms: int) -> dict[str, object]:
    devices = max(1, points // REGISTERS)
    with bench_folder("pb-bench-opcua-") as workdir:
        procs: list[subprocess.Popen[str]] = []
        try:
            sim, ports = start_simulator(devices, REGISTERS, "--count-all")
            procs.append(sim)
            opcua_port = free_port()
            config = workdir / "gateway.yaml"
            config.write_text(config_text(ports, opcua_port, workdir / "pki"))
            gw = start_gateway(config, workdir / "gateway.log")
            procs.append(gw)
            wait_port(opcua_port, 60)
            nodes = [f"s=d{d}.r{r}" for d in range(devices) for r in range(REGISTERS)]
            gw_ps = psutil.Process(gw.pid)
            request = {
                "url": f"opc.tcp://127.0.0.1:{opcua_port}/protocol-brain",
                "namespace": NAMESPACE,
                "nodes": nodes,
                "warmup_s": warmup,
                "duration_s": duration,
                "publishing_ms": publishing_ms,
            }
            env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
            (workdir / "request.json").write_text(json.dumps(request))
            client = subprocess.Popen(
                [
                    node_binary(),
                    str(ROOT / "bench" / "opcua_subscriber.js"),
                    str(workdir / "request.json"),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(client)
            assert client.stdout is not None
            time.sleep(warmup)  # the subscriber measures after the same warm-up
            cpu0, t0 = cpu_seconds(gw_ps), time.monotonic()
            out = client.stdout.read()
            cpu = cpu_seconds(gw_ps) - cpu0
            wall = time.monotonic() - t0
            lines = [ln for ln in out.splitlines() if ln.startswith('{"updates"')]
            if client.wait() != 0 or not lines:
                raise SystemExit("subscriber failed (the end of the gateway's log is above)")
            seen = json.loads(lines[-1])  # node-opcua prints notes of its own on stdout
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
            return {
                "points": devices * REGISTERS,
                "devices": devices,
                "expected_updates_per_s": devices * REGISTERS,
                "updates_per_s": round(seen["updates_per_s"]),
                "gateway_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
                "latency_p50_ms": seen["p50_ms"],
                "latency_p99_ms": seen["p99_ms"],
                "latency_max_ms": seen["max_ms"],
                "publishing_interval_ms": publishing_ms,
            }
        finally:
            stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", default="1000,10000")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--publishing-ms", type=int, default=50)
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.points.split(",")):
        r = run_size(n, args.duration, args.warmup, args.publishing_ms)
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()), file=sys.stderr)
        results.append(r)
    print(json.dumps({"modbus_to_opcua": results, "cores": os.cpu_count()}))


if __name__ == "__main__":
    sys.exit(run_bench(main))
