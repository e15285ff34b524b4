"""Shared fixtures: real peers (mosquitto, the Modbus simulator) on 127.0.0.1 and free ports.

Peers we did not write are never optional: when a binary is missing the test fails and says to
run ``scripts/install-peers.sh``; a skipped interop test would hide exactly the breakage it is
there to catch.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from protocols.modbus.simulator import Simulator

HOST = "127.0.0.1"
INSTALL_HINT = (
    "run scripts/install-peers.sh (installs mosquitto, mosquitto-clients, mbpoll, libcoap3-bin,"
    " curl, node-opcua)"
)
NODE_DIR = Path(__file__).parent / "interop" / "node"

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test keeps gateway state (outbox files...) in its own folder, subprocesses too."""
    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(tmp_path / "state"))


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_PORT_LOW = 10000 if _EPHEMERAL_LOW > 12000 else 1024
_handed_out: set[int] = set()
_pick = random.Random()


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = HOST) -> int:
    """A port free for TCP and UDP now, below the kernel's range for outgoing connections.

    A peer a test stops and starts again must get its port back: the kernel's pick for port 0
    lies in the outgoing range, where any client's connect (the gateway's reconnect attempts
    included) may take it as its local port meanwhile and the restart fails with "Address
    already in use". Ports handed out once are not handed out again in the session.
    """
    span = range(_PORT_LOW, _EPHEMERAL_LOW)
    for _ in range(200):
        port = _pick.choice(span)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    _handed_out.clear()  # a long session used the range up: the oldest tests are long done
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def mqtt_endpoint_yaml(port: int | str, password: str, extra: str = "") -> str:
    """An ``endpoints:`` section with one MQTT endpoint ``broker`` on 127.0.0.1 that logs in
    as ``gateway`` with ``password``; ``extra``: more of its lines (4 spaces in)."""
    return (
        "endpoints:\n"
        "  broker:\n"
        "    protocol: mqtt\n"
        f"    host: {HOST}\n"
        f"    port: {port}\n"
        "    username: gateway\n"
        f"    password: {password}\n"
        f"{extra}"
    )


def modbus_device_yaml(
    port: int,
    *,
    name: str = "pump",
    poll_groups: str = "{fast: {interval: 0.1}}",
    reconnect: bool = True,
) -> str:
    """One Modbus device on the simulator, as the lines under ``devices:`` up to its ``points:``
    (which the test writes itself): 0.3 s timeout, quick reconnects."""
    lines = [
        f"  {name}:",
        "    protocol: modbus",
        f"    host: {HOST}",
        f"    port: {port}",
        "    timeout: 0.3",
        *(["    reconnect: {initial: 0.05, max: 0.2}"] if reconnect else []),
        f"    poll_groups: {poll_groups}",
    ]
    return "\n".join(lines)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc`` for the test's body, killed on the way out if it still runs: a failing test
    leaves no process behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sigterm(proc: subprocess.Popen[str], timeout: float) -> str:
    """Stop ``proc`` as a service manager would (SIGTERM), wait for it; its stderr."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)[1]


def find_binary(name: str, *fallbacks: str) -> str:
    """Path of a peer's binary, or a test failure that says how to install it."""
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if Path(path).is_file():
            return path
    pytest.fail(f"{name} not found on PATH or in {', '.join(fallbacks) or '-'}: {INSTALL_HINT}")


def node_binary() -> str:
    """Node.js, with node-opcua installed for the interop scripts, or a test failure."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node not found on PATH: {INSTALL_HINT}")
    if not (NODE_DIR / "node_modules" / "node-opcua").is_dir():
        pytest.fail(f"node-opcua missing in {NODE_DIR}/node_modules: {INSTALL_HINT}")
    return node


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Fails the test with ``message`` (or the predicate's name) after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {result!r})")
        await asyncio.sleep(interval)


class MosquittoBroker:
    """A real mosquitto on 127.0.0.1; ``stop()`` and ``start()`` keep the same port."""

    def __init__(self, binary: str, directory: Path, host: str = HOST) -> None:
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = self.log.read_text(errors="replace")[-2000:]
                pytest.fail(f"mosquitto did not listen on {self.host}:{self.port}:\n{log_text}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __repr__(self) -> str:
        return f"<MosquittoBroker {self.host}:{self.port} {'up' if self.running else 'down'}>"


@contextmanager
def started_mosquitto(folder: Path) -> Iterator[MosquittoBroker]:
    """A started mosquitto broker (anonymous, no persistence) keeping its files in ``folder``,
    stopped on the way out."""
    broker = MosquittoBroker(find_binary("mosquitto", "/usr/sbin/mosquitto"), folder)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A started mosquitto broker (anonymous, no persistence), stopped at teardown."""
    with started_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A Modbus TCP simulator on 127.0.0.1 with no device yet: ``await simulator.add_device()``."""
    async with Simulator(HOST) as sim:
        yield sim


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the tests run as root in CI: the install scripts use apt-get)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"could not mount a small tmpfs (needs root): {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
