"""The event-loop stall monitor (gateway.looplag): a plugin that blocks the loop is named in the
log by file, line and function; the standard library and the loop's own frames are not."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import HOST, free_port, port_open, reaped

from gateway.looplag import LoopMonitor, blocking_code

PLUGIN = """\
import threading
import time

from lagvendor import sdk


def block(seconds):
    time.sleep(seconds)


async def run(seconds):
    block(seconds)


async def wait(event):
    event.wait()


async def read(event):
    sdk.read(event)
"""

VENDOR = """\
def read(event):
    event.wait()
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``lagplugin.adapter``: blocking code of a plugin's, in its own file; ``lagvendor.sdk``,
    a blocking library it calls."""
    for package, module, text in (("lagplugin", "adapter", PLUGIN), ("lagvendor", "sdk", VENDOR)):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lagplugin", "lagplugin.adapter", "lagvendor", "lagvendor.sdk"):
        sys.modules.pop(name, None)
    yield importlib.import_module("lagplugin.adapter")
    for name in ("lagplugin", "lagplugin.adapter", "lagvendor", "lagvendor.sdk"):
        sys.modules.pop(name, None)


def line_of(module: ModuleType, text: str) -> int:
    assert module.__file__ is not None
    lines = Path(module.__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def sample_while(coro_factory: object, event: threading.Event) -> str | None:
    """Run a loop in a thread on ``coro_factory(event)``, and name what it is stuck in."""

    coro = coro_factory(event)  # type: ignore[operator]
    thread = threading.Thread(target=asyncio.run, args=(coro,), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # the loop is inside event.wait() by now
        assert thread.ident is not None
        return blocking_code(sys._current_frames()[thread.ident])
    finally:
        event.set()
        thread.join(5)


def test_the_plugins_frame_is_named_not_the_standard_library(plugin: ModuleType) -> None:
    found = sample_while(plugin.wait, threading.Event())
    line = line_of(plugin, "event.wait()")
    assert found == f"lagplugin/adapter.py:{line} wait(): event.wait()"


def test_a_blocking_library_is_named_with_the_plugin_code_that_called_it(
    plugin: ModuleType,
) -> None:
    found = sample_while(plugin.read, threading.Event())
    assert found == (
        "lagvendor/sdk.py:2 read(): event.wait() (called from "
        f"lagplugin/adapter.py:{line_of(plugin, 'sdk.read(event)')} read())"
    )


def test_an_idle_loop_names_nothing() -> None:
    async def idle(event: threading.Event) -> None:
        await asyncio.to_thread(event.wait)  # as a plugin should wait

    assert sample_while(idle, threading.Event()) is None


def test_a_stall_is_one_line_naming_its_place_and_repeats_are_counted(
    plugin: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> LoopMonitor:
        monitor = LoopMonitor(0.3, interval=0.05, check=0.05)
        monitor.start()
        await asyncio.sleep(0.2)
        for _ in range(3):
            await plugin.run(0.7)
            await asyncio.sleep(0.2)
        await monitor.stop()
        return monitor

    with caplog.at_level(logging.WARNING, logger="gateway.looplag"):
        monitor = asyncio.run(main())
    place = f"lagplugin/adapter.py:{line_of(plugin, 'time.sleep(seconds)')} block()"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("event loop blocked for 0.")
    assert f" s in {place}: time.sleep(seconds)" in lines[0]
    assert lines[0].endswith("run it with asyncio.to_thread")
    # the next two, within the minute: counted, said once when the monitor stops
    assert lines[1].startswith("event loop blocked 2 more time(s) for 1."), lines[1]
    assert place in lines[1]
    assert [round(s.length or 0, 1) >= 0.5 for s in monitor.stalls] == [True] * 3


def test_a_long_stall_is_said_while_it_lasts(
    plugin: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    said_during: list[str] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not done.is_set():
                said_during.append(record.getMessage())

    done = threading.Event()

    async def main() -> None:
        monitor = LoopMonitor(0.3, interval=0.05, check=0.05, long_stall=0.6)
        monitor.start()
        await asyncio.sleep(0.2)
        await plugin.run(1.2)
        done.set()
        await asyncio.sleep(0.2)
        await monitor.stop()

    spy = Spy()
    logging.getLogger("gateway.looplag").addHandler(spy)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.looplag"):
            asyncio.run(main())
    finally:
        logging.getLogger("gateway.looplag").removeHandler(spy)
    assert len(said_during) == 1, said_during
    assert said_during[0].startswith("event loop blocked for 0.")
    assert " s so far in lagplugin/adapter.py:" in said_during[0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("event loop ran again after 1."), lines


def test_a_loop_that_keeps_up_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> LoopMonitor:
        monitor = LoopMonitor(0.5, interval=0.05, check=0.05)
        monitor.start()
        for _ in range(20):
            await asyncio.sleep(0.02)
            time.sleep(0.01)  # noqa: ASYNC251 (short blocks are normal)
        await monitor.stop()
        return monitor

    with caplog.at_level(logging.DEBUG, logger="gateway.looplag"):
        monitor = asyncio.run(main())
    assert caplog.records == [] and monitor.stalls == []


def test_stalls_while_not_active_are_not_news(caplog: pytest.LogCaptureFixture) -> None:
    """`gateway run` arms it once the gateway runs: start-up (models, address spaces) and
    shutdown block the loop by design."""
    active = threading.Event()

    async def main() -> LoopMonitor:
        monitor = LoopMonitor(0.3, interval=0.05, check=0.05, long_stall=0.4, active=active.is_set)
        monitor.start()
        await asyncio.sleep(0.1)
        time.sleep(0.6)  # noqa: ASYNC251 (a start-up's block)
        await asyncio.sleep(0.1)
        active.set()
        await asyncio.sleep(0.1)
        time.sleep(0.5)  # noqa: ASYNC251 (a running gateway's block: news)
        await asyncio.sleep(0.1)
        await monitor.stop()
        return monitor

    with caplog.at_level(logging.DEBUG, logger="gateway.looplag"):
        monitor = asyncio.run(main())
    assert len(monitor.stalls) == 1 and 0.35 < (monitor.stalls[0].length or 0) < 0.6
    assert caplog.records  # the running one is said


def test_a_block_that_ends_by_arming_it_is_start_up(caplog: pytest.LogCaptureFixture) -> None:
    """`Gateway.run` ends its start with gc.collect(), then started.set(), in one stretch:
    the heartbeat that wakes after it finds the monitor active, but the stretch was start-up."""
    active = threading.Event()

    async def main() -> LoopMonitor:
        monitor = LoopMonitor(0.3, interval=0.05, check=0.05, long_stall=5, active=active.is_set)
        monitor.start()
        await asyncio.sleep(0.1)
        time.sleep(0.6)  # noqa: ASYNC251 (the start's last stretch ...)
        active.set()  # (... which ends by starting the gateway)
        await asyncio.sleep(0.3)
        await monitor.stop()
        return monitor

    with caplog.at_level(logging.DEBUG, logger="gateway.looplag"):
        monitor = asyncio.run(main())
    assert monitor.stalls == [] and caplog.records == []


# `gateway run` with SIGUSR1 wired to a plugin function that blocks the loop for 1.5 s.
BLOCKING_GATEWAY = """
import asyncio, signal, sys
from gateway.cli import main
from lagplugin.adapter import block

real_run = asyncio.run

def run(coro, **kwargs):
    async def with_blocker():
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, block, 1.5)
        return await coro
    return real_run(with_blocker(), **kwargs)

asyncio.run = run
sys.exit(main(sys.argv[1:]))
"""


def test_gateway_run_names_the_plugin_code_that_blocked_its_loop(
    tmp_path: Path, plugin: ModuleType
) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {name: lag, status_interval: 0}\n"
        "endpoints:\n"
        f"  mb: {{protocol: modbus, role: server, host: {HOST}, port: {port}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    log_file = tmp_path / "gateway.log"
    with open(log_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", BLOCKING_GATEWAY, "run", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True, env=env,
            cwd=tmp_path,
        )  # fmt: skip
    with reaped(proc):
        deadline = time.monotonic() + 30
        while " running: " not in log_file.read_text():  # the monitor speaks once it runs
            assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        assert port_open(HOST, port)
        time.sleep(0.3)  # a heartbeat begun after the start
        proc.send_signal(signal.SIGUSR1)
        place = f"lagplugin/adapter.py:{line_of(plugin, 'time.sleep(seconds)')} block()"
        deadline = time.monotonic() + 15
        while "event loop blocked for" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGUSR1)  # once more within the minute: counted, not said
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log = log_file.read_text()
    assert code == 0, log
    blocked = [line for line in log.splitlines() if "event loop blocked" in line]
    assert len(blocked) == 2, log
    assert f" s in {place}: time.sleep(seconds): " in blocked[0], blocked[0]
    assert "blocked for 1." in blocked[0], blocked[0]
    assert "run it with asyncio.to_thread" in blocked[0]
    assert "blocked 1 more time(s)" in blocked[1] and place in blocked[1], blocked[1]


def test_figures_give_the_last_minutes_lag_of_the_running_loop() -> None:
    """The status file's `loop`: the lag of a loop blocked 40 ms at every turn shows in the
    median, one longer block in the most and the stall count; a block while not active
    (start-up, 0.8 s) is not counted."""
    active = threading.Event()

    async def main() -> tuple[dict[str, float | int], dict[str, float | int]]:
        monitor = LoopMonitor(0.2, interval=0.02, check=0.02, report=False, active=active.is_set)
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.8)  # noqa: ASYNC251 (start-up: not counted)
        await asyncio.sleep(0.05)
        before = monitor.figures()
        active.set()
        for _ in range(30):
            await asyncio.sleep(0)
            time.sleep(0.04)  # noqa: ASYNC251 (a busy loop)
        time.sleep(0.3)  # noqa: ASYNC251 (one stall)
        await asyncio.sleep(0.1)
        await monitor.stop()
        return before, monitor.figures()

    before, after = asyncio.run(main())
    assert before == {"stalls": 0}
    assert 20 <= after["lag_ms_p50"] <= 250, after  # a busy loop, not an idle one (~0)
    assert 280 <= after["lag_ms_max"] <= 700 and after["stalls"] == 1, after  # not the 0.8 s
