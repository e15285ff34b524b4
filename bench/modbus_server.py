"""Requests per second the gateway's Modbus TCP server answers, and what they cost its CPU.

    python bench/modbus_server.py [--clients 8] [--seconds 5] [--registers 100]

A simulated device (its own process) has ``--registers`` holding registers, polled by the
gateway (its own process) every second and served again by the gateway's Modbus server under a
map of as many uint16 entries. ``--clients`` client processes each open one connection and, like
mbpoll, send one FC 03 read of all the registers, wait for the answer, and send the next, for
``--seconds``. The clients are plain blocking sockets on the project's frame codec, one process
each, so that they are not the bottleneck; the gateway's CPU time over the window is read from
/proc (psutil).

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402
    bench_folder,
    cpu_seconds,
    free_port,
    modbus_devices_yaml,
    percentile,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
    wait_port,
)

from protocols.modbus.frames import (  # noqa: E402
    FrameDecoder,
    FunctionCode,
    ModbusError,
    ReadRequest,
    build_frame,
    encode_request,
    parse_response,
)


def config_text(device_port: int, server_port: int, registers: int) -> str:
    lines = ["gateway: {name: bench, status_interval: 0}"]
    lines += modbus_devices_yaml([device_port], registers, 1.0)
    entries = ", ".join(f"{{point: r{i}, address: {i}}}" for i in range(registers))
    lines += [
        "endpoints:",
        "  mb: {protocol: modbus, role: server, host: 127.0.0.1, "
        f"port: {server_port}, max_connections: 256}}",
        "bridges:",
        f"  - {{name: serve, from: d0, to: mb, map: [{entries}]}}",
    ]
    return "\n".join(lines) + "\n"


class Client:
    """One blocking connection, one request at a time (as mbpoll)."""

    def __init__(self, port: int, registers: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = ReadRequest(FunctionCode.READ_HOLDING_REGISTERS, 0, registers)
        self.pdu = encode_request(self.request)
        self.decoder = FrameDecoder()
        self.tid = 0

    def read(self) -> list[int] | list[bool] | None:
        self.tid = (self.tid + 1) & 0xFFFF
        self.sock.sendall(build_frame(self.tid, 1, self.pdu))
        while (frame := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.decoder.receive_data(data)
        assert frame.transaction_id == self.tid
        return parse_response(self.request, frame.pdu)


def client_process(
    port: int, registers: int, seconds: float, go: Any, out: mp.Queue[object]
) -> None:
    client = Client(port, registers)
    out.put("ready")
    go.wait()
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while (sent := time.perf_counter()) < end:
        client.read()
        latencies.append(time.perf_counter() - sent)
    out.put(latencies)


def wait_served(port: int, registers: int, timeout: float = 30.0) -> None:
    """Until the server answers the read with values (not exception 0B: no first poll yet)."""
    deadline = time.monotonic() + timeout
    client = Client(port, registers)
    while True:
        try:
            client.read()
            return
        except ModbusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--registers", type=int, default=100)
    args = parser.parse_args()

    procs: list[Any] = []
    clients: list[Any] = []
    with bench_folder("pb-bench-modbus-server-") as work:
        try:
            sim, ports = start_simulator(1, args.registers)
            procs.append(sim)
            server_port = free_port()
            config = work / "gateway.yaml"
            config.write_text(config_text(ports[0], server_port, args.registers))
            gateway = start_gateway(config, work / "gateway.log")
            procs.append(gateway)
            wait_port(server_port)
            wait_served(server_port, args.registers)

            ctx = mp.get_context("spawn")
            queue: mp.Queue[object] = ctx.Queue()
            go = ctx.Event()
            clients = [
                ctx.Process(
                    target=client_process,
                    args=(server_port, args.registers, args.seconds, go, queue),
                )
                for _ in range(args.clients)
            ]
            for c in clients:
                c.start()
            for _ in clients:  # every client connected and waiting
                assert queue.get(timeout=60) == "ready"
            gw = psutil.Process(gateway.pid)
            cpu_before, wall_before = cpu_seconds(gw), time.perf_counter()
            go.set()
            results: list[list[float]] = [queue.get(timeout=args.seconds + 60) for _ in clients]  # type: ignore[misc]
            cpu = cpu_seconds(gw) - cpu_before
            wall = time.perf_counter() - wall_before
            for c in clients:
                c.join()
        finally:
            for c in clients:  # still waiting for the start when the run failed or was stopped
                if c.is_alive():
                    c.terminate()
                    c.join()
            stop(procs)

    latencies = [x for r in results for x in r]
    requests = len(latencies)
    figures = {
        "bench": "modbus_server",
        "clients": args.clients,
        "registers_per_read": args.registers,
        "seconds": round(wall, 2),
        "requests": requests,
        "requests_per_s": round(requests / args.seconds),
        "registers_per_s": round(requests * args.registers / args.seconds),
        "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 3),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 3),
        "gateway_cpu_percent": round(100 * cpu / wall, 1),
        "gateway_cpu_us_per_request": round(1e6 * cpu / max(requests, 1), 1),
        "cpu_count": psutil.cpu_count(),
    }
    print(
        f"{requests / args.seconds:,.0f} reads/s of {args.registers} registers from "
        f"{args.clients} clients; latency p50 {figures['latency_ms_p50']} ms, "
        f"p99 {figures['latency_ms_p99']} ms; gateway CPU {figures['gateway_cpu_percent']}% "
        f"of one core ({figures['gateway_cpu_us_per_request']} us per request)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(run_bench(main))
