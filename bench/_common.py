"""What the benchmarks share: free ports, peer processes, CPU accounting, percentiles."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "interop" / "node" / "node_modules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def start_simulator(
    devices: int, registers: int, *extra: str
) -> tuple[subprocess.Popen[str], list[int]]:
    """The Modbus simulator as its own process; returns it and its ports."""
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protocols.modbus.simulator",
            "--devices",
            str(devices),
            "--registers",
            str(registers),
            "--base-port",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert sim.stdout is not None
    return sim, list(json.loads(sim.stdout.readline())["ports"])


def start_gateway(config: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config), "--log-level", "info"],
        cwd=ROOT,
        text=True,
        stderr=open(log, "w"),  # noqa: SIM115 - lives as long as the process
    )


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise SystemExit("mosquitto not found: run scripts/install-peers.sh")
    return found


def node_binary() -> str:
    found = shutil.which("node")
    if found is None or not NODE_MODULES.is_dir():
        raise SystemExit("node or node-opcua missing: run scripts/install-peers.sh")
    return found


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def modbus_devices_yaml(
    ports: list[int], registers: int, interval: float, *extra: str
) -> list[str]:
    """`devices:` entries d0.. with holding registers r0.. as uint16 points."""
    points = ", ".join(f"{{name: r{i}, address: {i}{''.join(extra)}}}" for i in range(registers))
    lines = ["devices:"]
    for n, port in enumerate(ports):
        lines += [
            f"  d{n}:",
            "    protocol: modbus",
            "    host: 127.0.0.1",
            f"    port: {port}",
            "    timeout: 1.0",
            f"    poll_groups: {{default: {{interval: {interval}}}}}",
            f"    points: [{points}]",
        ]
    return lines
