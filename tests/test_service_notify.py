"""systemd's notify protocol: READY, STATUS, STOPPING and the watchdog, as a service manager sees
them. The tests bind their own AF_UNIX datagram socket, as systemd does, and point
``$NOTIFY_SOCKET`` at it; the gateway is a real ``gateway run`` subprocess."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, free_port, port_open, reaped

from gateway.sdnotify import Notifier, ping_watchdog, start_watchdog

WATCHDOG_USEC = 400_000  # pings every 0.2 s


class NotifyListener:
    """What systemd's end of the socket receives: each datagram's fields and arrival time."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str = "1") -> list[float]:
        return [t for t, fields in list(self.messages) if fields.get(key) == value]

    def wait(self, key: str, value: str = "1", timeout: float = 30.0) -> float:
        """Arrival time of the first ``key=value``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (found := self.times(key, value)):
            if time.monotonic() > deadline:
                pytest.fail(f"no {key}={value} within {timeout} s; got {self.messages}")
            time.sleep(0.01)
        return found[0]

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for _, fields in list(self.messages) if "STATUS" in fields]

    def close(self) -> None:
        self._closed = True
        self._thread.join(1)
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: an AF_UNIX path has at most 107 bytes, pytest's are long."""
    path = Path(tempfile.mkdtemp(prefix="pb-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(str(short_dir / "notify.sock"))
    yield notify
    notify.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, NotifyListener]]:
    name = f"protocol-brain-test-{uuid.uuid4().hex}"
    notify = NotifyListener(b"\0" + name.encode())
    yield f"@{name}", notify
    notify.close()


def start_gateway(
    config: Path, notify_socket: str, *, wrapper: str | None = None, **env: str
) -> subprocess.Popen[str]:
    """``gateway run CONFIG`` under a pretend systemd: $NOTIFY_SOCKET and $WATCHDOG_USEC."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    environ.update(NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC=str(WATCHDOG_USEC), **env)
    command = ["-c", wrapper, "run"] if wrapper is not None else ["-m", "gateway", "run"]
    with open(config.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, *command, str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True, env=environ,
        )  # fmt: skip


def stop_gateway(proc: subprocess.Popen[str], config: Path) -> tuple[int, str]:
    """SIGTERM, as systemd stops a service; exit code and log."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    return code, config.with_suffix(".log").read_text()


def write_config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    return config


def test_ready_once_the_adapters_are_up_then_watchdog_then_stopping(
    tmp_path: Path, listener: NotifyListener
) -> None:
    port, opcua = free_port(), free_port()
    config = write_config(
        tmp_path,
        "gateway: {name: svc, status_interval: 0.3}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {port}}}\n"
        f"  ua: {{protocol: opcua, role: server, host: {HOST}, port: {opcua}}}\n",
    )
    with reaped(start_gateway(config, str(listener.sock.getsockname()))) as proc:
        listener.wait("READY")
        # READY means started: both servers accept a connection by then (an OPC UA server
        # takes a while to start: READY sent any earlier is caught here).
        assert port_open(HOST, port), "READY=1 came before the Modbus server listened"
        assert port_open(HOST, opcua), "READY=1 came before the OPC UA server listened"
        ready = [f for _, f in listener.messages if f.get("READY") == "1"][0]
        assert ready["STATUS"] == "running: 2 adapters, 0 bridges"
        time.sleep(1.5)
        pings = [t for t in listener.times("WATCHDOG") if t > listener.times("READY")[0]]
        assert len(pings) >= 4, f"{len(pings)} watchdog pings in 1.5 s at a 0.4 s watchdog"
        # Every half interval, give or take: the mean gap, which a listener thread that a
        # loaded box starves (and then receives several pings at once) does not skew.
        mean = (pings[-1] - pings[0]) / (len(pings) - 1)
        assert 0.1 < mean < 0.4, pings
        # The periodic status line goes to systemd too (systemctl status shows it).
        assert any(s.startswith("2/2 connected, ") for s in listener.statuses()), (
            listener.statuses()
        )
        assert not listener.times("STOPPING")
        asked = time.monotonic()
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    stopping = listener.wait("STOPPING", timeout=5)
    assert stopping >= asked
    assert len(listener.times("READY")) == 1


def test_a_dead_device_does_not_hold_back_ready_abstract_socket(
    tmp_path: Path, abstract_listener: tuple[str, NotifyListener]
) -> None:
    address, listener = abstract_listener
    closed = free_port()  # nothing listens: the device is down the whole time
    config = write_config(
        tmp_path,
        "gateway: {name: svc, status_interval: 0.3}\n"
        "devices:\n"
        f"  plc: {{protocol: modbus, host: {HOST}, port: {closed}, timeout: 0.3,"
        " reconnect: {initial: 0.1, max: 0.5}, points: [{name: t, address: 0}]}\n",
    )
    with reaped(start_gateway(config, address)) as proc:
        listener.wait("READY", timeout=30)
        assert not port_open(HOST, closed)
        listener.wait("WATCHDOG")
        deadline = time.monotonic() + 10
        while not any("down: plc" in s for s in listener.statuses()):
            assert time.monotonic() < deadline, listener.statuses()
            time.sleep(0.05)
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    listener.wait("STOPPING", timeout=5)


# Runs `gateway run` with SIGUSR1 wired to a callback that blocks its event loop for 1.5 s
# (time.sleep in the loop's thread, as a blocking call in a plugin would).
BLOCKING_GATEWAY = """
import asyncio, signal, sys, time
from gateway.cli import main

real_run = asyncio.run

def run(coro, **kwargs):
    async def with_blocker():
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, time.sleep, 1.5)
        return await coro
    return real_run(with_blocker(), **kwargs)

asyncio.run = run
sys.exit(main(sys.argv[1:]))
"""


def test_a_blocked_event_loop_stops_the_pings(tmp_path: Path, listener: NotifyListener) -> None:
    config = write_config(
        tmp_path,
        "gateway: {name: svc, status_interval: 0}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {free_port()}}}\n",
    )
    address = str(listener.sock.getsockname())
    with reaped(start_gateway(config, address, wrapper=BLOCKING_GATEWAY)) as proc:
        listener.wait("READY")
        time.sleep(0.5)
        before = len(listener.times("WATCHDOG"))
        assert before >= 2
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)  # the loop picks the signal up and blocks
        blocked_from = time.monotonic()
        time.sleep(0.9)
        blocked_until = time.monotonic()
        # A ping sent just before the block may be received late on a loaded box: 0.3 s grace.
        during = [t for t in listener.times("WATCHDOG") if blocked_from + 0.3 <= t < blocked_until]
        assert during == [], "the watchdog was pinged while the event loop was blocked"
        time.sleep(1.5)  # the block ends and the pings resume
        after = [t for t in listener.times("WATCHDOG") if t >= blocked_until]
        assert len(after) >= 2
        code, log = stop_gateway(proc, config)
    assert code == 0, log


# The module on its own.


def test_without_notify_socket_everything_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x") and not notifier.status("x") and not notifier.watchdog()
    assert start_watchdog(notifier) is None
    assert notifier.sent == notifier.failed == 0
    assert caplog.records == []


def test_a_socket_that_does_not_exist_is_logged_once_and_never_raises(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(short_dir / "gone.sock"))
    with caplog.at_level(logging.DEBUG, logger="gateway.sdnotify"):
        for _ in range(5):
            assert notifier.ready("running") is False
            assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "gone.sock" in warnings[0].getMessage()
    assert notifier.failed == 10
    notifier.close()


def test_an_address_that_is_no_unix_socket_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier("relative/notify.sock")
    assert not notifier.enabled
    assert notifier.ready() is False
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_one_datagram_of_newline_separated_fields_to_path_and_abstract_sockets(
    listener: NotifyListener, abstract_listener: tuple[str, NotifyListener]
) -> None:
    address, abstract = abstract_listener
    for notify, where in ((listener, str(listener.sock.getsockname())), (abstract, address)):
        notifier = Notifier(where)
        assert notifier.ready("2/3 connected\nnot a field") is True
        assert notifier.stopping() is True
        deadline = time.monotonic() + 5
        while len(notify.messages) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [fields for _, fields in notify.messages] == [
            {"READY": "1", "STATUS": "2/3 connected not a field"},
            {"STOPPING": "1"},
        ]
        notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4242"}, 0.4),  # ours
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_is_ours_only_when_systemd_says_so(
    env: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x.sock", **env}, pid=4242)
    assert notifier.watchdog_interval == expected


async def test_watchdog_task_pings_only_while_its_loop_turns(listener: NotifyListener) -> None:
    notifier = Notifier(str(listener.sock.getsockname()), watchdog_usec=200_000)
    task = start_watchdog(notifier)
    assert task is not None
    try:
        await asyncio.sleep(0.5)
        assert len(listener.times("WATCHDOG")) >= 3
        blocked_from = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - the point: the loop is blocked
        blocked_until = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
    # One ping may be due the moment the block ends, and one sent just before it may be
    # received late on a loaded box (0.3 s grace); none while it lasts.
    during = [t for t in listener.times("WATCHDOG") if blocked_from + 0.3 < t < blocked_until]
    assert during == []
    assert len([t for t in listener.times("WATCHDOG") if t >= blocked_until]) >= 2


async def test_ping_watchdog_without_a_watchdog_returns_at_once() -> None:
    await asyncio.wait_for(ping_watchdog(Notifier(None)), 1)
    await asyncio.wait_for(ping_watchdog(Notifier("/nonexistent/x.sock")), 1)


def test_the_example_unit_gives_the_gateway_the_time_its_own_timeouts_need() -> None:
    """systemd must not kill a start or a stop that the gateway itself still allows."""
    from gateway import runtime

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(Path(__file__).parents[1] / "examples" / "protocol-brain.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split()[1:3] == ["run", "/etc/protocol-brain/gateway.yaml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # gateway run reloads on SIGHUP
    assert float(service["TimeoutStartSec"]) > runtime.START_TIMEOUT
    assert float(service["TimeoutStopSec"]) > runtime.DRAIN_TIMEOUT + 2 * runtime.CANCEL_TIMEOUT
    state = service["Environment"].removeprefix("PROTOCOL_BRAIN_STATE_DIR=")
    assert state == f"/var/lib/{service['StateDirectory']}" == service["WorkingDirectory"]


def test_the_open_file_limit_is_raised_from_a_low_soft_limit(
    tmp_path: Path, listener: NotifyListener
) -> None:
    """Under systemd's default soft limit (1,024; 256 here) idle connections to one server took
    every descriptor; `gateway run` raises it towards the hard limit, and the unit sets it."""
    import resource

    from gateway import fdlimit

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = fdlimit.WANTED if hard == resource.RLIM_INFINITY else min(fdlimit.WANTED, hard)
    assert wanted > 256, "the hard limit of this box leaves nothing to raise"
    low = (
        "import resource, sys\n"
        "n = resource.RLIMIT_NOFILE\n"
        "resource.setrlimit(n, (256, resource.getrlimit(n)[1]))\n"
        "from gateway.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    config = modbus_server_config(tmp_path, free_port())
    with reaped(start_gateway(config, str(listener.sock.getsockname()), wrapper=low)) as proc:
        listener.wait("READY")
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        (line,) = [x for x in limits if x.startswith("Max open files")]
        assert int(line.split()[3]) == wanted
        stop_gateway(proc, config)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(Path(__file__).parents[1] / "examples" / "protocol-brain.service")
    assert int(unit["Service"]["LimitNOFILE"]) == fdlimit.WANTED


def modbus_server_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        "gateway: {name: svc, status_interval: 0.3}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {port}}}\n",
    )


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_sighup_restarts_from_the_edited_config(tmp_path: Path, listener: NotifyListener) -> None:
    first, second = free_port(), free_port()
    config = modbus_server_config(tmp_path, first)
    with reaped(start_gateway(config, str(listener.sock.getsockname()))) as proc:
        listener.wait("READY")
        assert port_open(HOST, first)
        modbus_server_config(tmp_path, second)  # the integrator edits the file ...
        proc.send_signal(signal.SIGHUP)  # ... and runs `systemctl reload`
        listener.wait("RELOADING")
        wait_for(lambda: len(listener.times("READY")) == 2, "READY=1 after the reload")
        assert port_open(HOST, second), "the reloaded config's server does not listen"
        assert not port_open(HOST, first), "the old config's server still listens"
        reloading = [f for _, f in listener.messages if f.get("RELOADING") == "1"][0]
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert proc.poll() is None
        # Stopping the old run for a reload is not the service stopping.
        assert not listener.times("STOPPING")
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    listener.wait("STOPPING", timeout=5)
    assert "reloading: the config loads" in log


def test_sighup_with_a_broken_config_keeps_the_running_one(
    tmp_path: Path, listener: NotifyListener
) -> None:
    port = free_port()
    config = modbus_server_config(tmp_path, port)
    with reaped(start_gateway(config, str(listener.sock.getsockname()))) as proc:
        listener.wait("READY")
        config.write_text("gateway: {name: svc}\nendpoints:\n  mb: {protocol: modbus, role: \n")
        proc.send_signal(signal.SIGHUP)
        log_file = config.with_suffix(".log")
        wait_for(lambda: "reload refused" in log_file.read_text(), "the refusal in the log")
        assert proc.poll() is None, "a config that does not load stopped the gateway"
        assert port_open(HOST, port)
        assert not listener.times("RELOADING")
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    assert len(listener.times("READY")) == 1


def test_a_reloaded_config_that_cannot_start_falls_back_to_the_last_one(
    tmp_path: Path, listener: NotifyListener
) -> None:
    port = free_port()
    config = modbus_server_config(tmp_path, port)
    with socket.socket() as taken:  # the new config's port is in use
        taken.bind((HOST, 0))
        taken.listen()
        with reaped(start_gateway(config, str(listener.sock.getsockname()))) as proc:
            listener.wait("READY")
            modbus_server_config(tmp_path, taken.getsockname()[1])
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: len(listener.times("READY")) == 2, "READY=1 after the fall-back")
            assert proc.poll() is None
            assert port_open(HOST, port), "the last config's server is not back"
            code, log = stop_gateway(proc, config)
    assert code == 0, log
    assert "the reloaded config could not start" in log
    assert "back to the one before" in log


def test_a_clean_stop_leaves_the_totals_not_a_list_of_devices_down(
    tmp_path: Path, listener: NotifyListener
) -> None:
    config = write_config(
        tmp_path,
        "gateway: {name: svc, status_interval: 0.3}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {free_port()}}}\n"
        "devices:\n"
        f"  plc: {{protocol: modbus, host: {HOST}, port: {free_port()}, timeout: 0.3,"
        " points: [{name: t, address: 0}]}\n",
    )
    state = tmp_path / "state"
    start = start_gateway(
        config, str(listener.sock.getsockname()), PROTOCOL_BRAIN_STATE_DIR=str(state)
    )
    with reaped(start) as proc:
        listener.wait("READY")
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    (status_file,) = state.rglob("svc.json")
    snapshot = json.loads(status_file.read_text())
    assert snapshot["state"] == "stopped"
    assert snapshot["summary"].startswith("stopped: "), snapshot["summary"]
    assert "down" not in snapshot["summary"] and "connected" not in snapshot["summary"]


def test_sighup_with_an_oscore_endpoint_restarts_it(
    tmp_path: Path, listener: NotifyListener
) -> None:
    # The old run's OSCORE context held its folder's lock until collected: the reload's new
    # start found it "in use", the fall-back too, and the gateway exited.
    def write(port: int) -> Path:
        return write_config(
            tmp_path,
            "gateway: {name: svc, status_interval: 0.3}\n"
            "endpoints:\n"
            f"  cs: {{protocol: coap, role: server, host: {HOST}, port: {port},"
            " security: {oscore: {sender_id: '01', recipient_id: '02',"
            f" master_secret: '{'00' * 16}'}}}}}}\n",
        )

    config = write(free_port())
    state = tmp_path / "state"
    start = start_gateway(
        config, str(listener.sock.getsockname()), PROTOCOL_BRAIN_STATE_DIR=str(state)
    )
    with reaped(start) as proc:
        listener.wait("READY")
        for reloads in (2, 3):  # another port each time: the endpoint restarts
            write(free_port())
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=reloads: len(listener.times("READY")) == n, f"READY #{reloads}")
            assert proc.poll() is None, config.with_suffix(".log").read_text()
        code, log = stop_gateway(proc, config)
    assert code == 0, log
    assert log.count("restarted: cs (its settings changed)") == 2, log
    assert "could not start" not in log
