"""What the benchmarks share: free ports, peer processes, CPU accounting, percentiles, and a
clean end (`run_bench`, `bench_folder`): whether a run completes, fails or is stopped by Ctrl-C
or SIGTERM, its peer processes are stopped and its temporary folder removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    try:
        return sim, list(json.loads(sim.stdout.readline())["ports"])
    except BaseException:  # interrupted or failed before the caller could stop it
        stop([sim])
        raise


def start_gateway(config: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config), "--log-level", "info"],
        cwd=ROOT,
        text=True,
        stderr=open(log, "w"),  # noqa: SIM115 - lives as long as the process
    )


def stop_gateway(gw: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int | None, float]:
    """SIGTERM ``gw`` and wait: its exit code (None if it outlived ``timeout``) and the
    seconds its shutdown took."""
    start = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    try:
        code: int | None = gw.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - start


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


def modbus_to_coap_yaml(port: int, registers: int, coap_port: int) -> str:
    """A gateway serving device d0's registers (polled every second) on a CoAP server."""
    lines = ["gateway: {name: bench, status_interval: 0}"]
    lines += modbus_devices_yaml([port], registers, 1.0)
    lines += [
        "endpoints:",
        f"  coap: {{protocol: coap, role: server, host: 127.0.0.1, port: {coap_port}}}",
        "bridges:",
        "  - {name: up, from: d0, to: coap}",
    ]
    return "\n".join(lines) + "\n"


def print_result(result: dict[str, object]) -> None:
    """The figures one per line on stderr, then, as the last line on stdout, one JSON object."""
    width = max((len(k) for k in result), default=0)
    for k, v in result.items():
        print(f"  {k:<{width}} {v}", file=sys.stderr)
    print(json.dumps(result))


def run_bench(main: Callable[[], object]) -> int:
    """Run a benchmark's ``main`` so that SIGTERM unwinds it as Ctrl-C does: the ``finally``
    clauses stop its peer processes and its `bench_folder` is removed; then one line on stderr
    and exit code 130 (0 when ``main`` completes)."""
    pid = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != pid:  # a forked worker (multiprocessing.Pool): end as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # As a Ctrl-C: inside asyncio.run that cancels the main task, which unwinds cleanly;
        # a KeyboardInterrupt raised here could land inside any task (one "never retrieved").
        # With SIGINT ignored (a bench started with & by a script) there is no Ctrl-C to give.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: peer processes stopped, temporary folder removed", file=sys.stderr)
        return 130
    return 0


@contextmanager
def bench_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for one run (config, logs, certificates), removed when the run ends,
    however it ends. A run that fails prints the end of each log in it first, since the log
    goes with the folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        folder = Path(name)
        try:
            yield folder
        except KeyboardInterrupt:
            raise
        except BaseException:
            for log in sorted(folder.rglob("*.log")):
                lines = log.read_text(errors="replace").splitlines()[-20:]
                print(f"--- the end of {log.name} ---", *lines, sep="\n", file=sys.stderr)
            raise
