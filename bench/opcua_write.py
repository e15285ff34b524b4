"""Write latency: OPC UA client -> gateway -> Modbus register, acknowledged.

    python bench/opcua_write.py

An asyncua client writes a variable of the gateway's OPC UA server; the Write returns Good only
once the Modbus device acknowledged the register write, so each write's round trip is the
latency. Two cases, as EMQ Neuron publishes them (3/91/159 ms and 3/52/107 ms min/avg/max):
50 writes to one device, one after the other; and 200 writes spread over 4 devices (4 writers,
one per device, 50 writes each, at the same time).

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_folder,
    free_port,
    modbus_devices_yaml,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
    wait_port,
)

NAMESPACE = "urn:protocol-brain:bench"
USER, PASSWORD = "bench", "bench-password"


def config_text(ports: list[int], opcua_port: int, pki: Path, password_hash: str) -> str:
    lines = ["gateway: {name: bench, status_interval: 0}"]
    lines += modbus_devices_yaml(ports, 4, 1.0, ", access: rw, write_rate: 1000")
    lines += [
        "endpoints:",
        "  opcua:",
        "    protocol: opcua",
        "    role: server",
        "    host: 127.0.0.1",
        f"    port: {opcua_port}",
        f"    namespace: {NAMESPACE}",
        f"    security: {{allow_none: true, pki_dir: '{pki}'}}",
        f"    users: [{{username: {USER}, password_hash: '{password_hash}', access: write}}]",
        "bridges:",
        f"  - {{name: up, from: [{', '.join(f'd{n}' for n in range(len(ports)))}], to: opcua}}",
    ]
    return "\n".join(lines) + "\n"


async def write_series(client: object, node: object, count: int, start: int) -> list[float]:
    from asyncua import ua

    latencies = []
    for i in range(count):
        value = ua.DataValue(ua.Variant((start + i) % 65536, ua.VariantType.UInt16))
        t0 = time.perf_counter()
        await node.write_value(value)  # type: ignore[attr-defined]  # raises unless Good
        latencies.append(1000 * (time.perf_counter() - t0))
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "writes": len(latencies),
        "min_ms": round(min(latencies), 2),
        "avg_ms": round(sum(latencies) / len(latencies), 2),
        "max_ms": round(max(latencies), 2),
    }


async def measure(url: str) -> dict[str, dict[str, float]]:
    from asyncua import Client

    client = Client(url, timeout=10)
    client.set_user(USER)
    client.set_password(PASSWORD)
    async with client:
        ns = await client.get_namespace_index(NAMESPACE)
        nodes = [client.get_node(f"ns={ns};s=d{d}.r0") for d in range(4)]
        await write_series(client, nodes[0], 5, 60000)  # warm-up: sessions, caches
        one = await write_series(client, nodes[0], 50, 0)
        spread = await asyncio.gather(
            *(write_series(client, nodes[d], 50, 1000 * d) for d in range(4))
        )
    return {
        "one_device_50": summary(one),
        "four_devices_200": summary([x for series in spread for x in series]),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    from gateway.passwords import hash_password

    with bench_folder("pb-bench-write-") as workdir:
        procs: list[subprocess.Popen[str]] = []
        try:
            sim, ports = start_simulator(4, 16)
            procs.append(sim)
            opcua_port = free_port()
            config = workdir / "gateway.yaml"
            config.write_text(
                config_text(ports, opcua_port, workdir / "pki", hash_password(PASSWORD))
            )
            gw = start_gateway(config, workdir / "gateway.log")
            procs.append(gw)
            wait_port(opcua_port, 60)
            time.sleep(1.0)  # first polls: the devices are connected
            result = asyncio.run(measure(f"opc.tcp://127.0.0.1:{opcua_port}/protocol-brain"))
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
            for case, figures in result.items():
                print(
                    f"  {case:<18} " + "  ".join(f"{k}={v}" for k, v in figures.items()),
                    file=sys.stderr,
                )
            print(json.dumps({"opcua_to_modbus_write": result, "cores": os.cpu_count()}))
        finally:
            stop(procs)


if __name__ == "__main__":
    sys.exit(run_bench(main))
