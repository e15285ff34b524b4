"""`gateway status` says whether the gateway runs and what is down (gateway.livestatus).

The end-to-end tests run a real `gateway run` with a Modbus device that is down (nothing listens
on its port) and a broker-less MQTT endpoint, and read its status from another process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, free_port, modbus_device_yaml, reaped, sigterm, wait_for

from gateway import livestatus, runtime
from gateway.config import load_config
from gateway.text import duration
from gateway.uplink.cli import _alive as status_check
from gateway.uplink.cli import _gateway_lines


def running_snapshot(**changes: object) -> dict[str, object]:
    snap = livestatus.snapshot(
        gateway="gw",
        config="/etc/gw.yaml",
        started=time.time() - 100,
        state="running",
        summary="1/2 connected",
        status={"adapters": {"plc": {"connected": False, "last_error": "timeout"}}},
        interval=10.0,
    )
    snap.update(changes)
    return snap


def test_a_written_status_reads_back_with_its_age(tmp_path: Path) -> None:
    path = tmp_path / "status" / "gw.json"
    livestatus.write(path, running_snapshot())
    got = livestatus.read(path, now=time.time() + 3)
    assert got is not None
    assert got["state"] == "running" and got["pid"] == os.getpid() and not got["stale"]
    assert 2.9 < got["age_s"] < 4 and got["summary"] == "1/2 connected"
    assert [p.name for p in path.parent.iterdir()] == ["gw.json"]  # no temporary file left


def test_a_running_file_whose_process_is_gone_reads_as_gone(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    path = tmp_path / "gw.json"
    livestatus.write(path, running_snapshot(pid=int(dead.stdout)))
    got = livestatus.read(path)
    assert got is not None and got["state"] == "gone" and not got["stale"]
    livestatus.write(path, running_snapshot(pid=int(dead.stdout), state="stopped"))
    got = livestatus.read(path)
    assert got is not None and got["state"] == "stopped"  # a clean shutdown says so itself


def test_a_running_file_not_rewritten_for_two_intervals_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "gw.json"
    livestatus.write(path, running_snapshot())
    written = json.loads(path.read_text())["written"]
    grace = livestatus.STALE_GRACE_S
    fresh = livestatus.read(path, now=written + 20 + grace - 0.5)
    stale = livestatus.read(path, now=written + 20 + grace + 0.5)
    assert fresh is not None and not fresh["stale"]
    assert stale is not None and stale["stale"]
    assert status_check(fresh) and not status_check(stale)  # `gateway status --check`
    livestatus.write(path, running_snapshot(interval_s=0))  # no reports: age says nothing
    assert not (livestatus.read(path, now=written + 1e6) or {})["stale"]


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    assert livestatus.read(tmp_path / "none.json") is None
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a status file"):
        livestatus.read(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"written": "yesterday"}')
    with pytest.raises(ValueError, match="not a status file"):
        livestatus.read(tmp_path / "y.json")
    (tmp_path / "z.json").write_text('{"written": 1.0}')  # what a reader needs is missing
    with pytest.raises(ValueError, match="not a status file"):
        livestatus.read(tmp_path / "z.json")


def test_a_refused_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.json"
    path.mkdir()  # renaming a file over a folder fails, as a read-only disk would
    with pytest.raises(OSError):
        livestatus.write(path, running_snapshot())
    assert [p.name for p in tmp_path.iterdir()] == ["gw.json"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0 s"),
        (9.96, "10.0 s"),
        (42.5, "42 s"),
        (200, "3 min 20 s"),
        (7500, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 5, "3 d 4 h"),
    ],
)
def test_duration_reads_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# -- the running gateway ------------------------------------------------------------------------


def write_config(tmp_path: Path, interval: float) -> Path:
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{name: plant-7, status_interval: {interval}}}\n"
        "devices:\n"
        f"{modbus_device_yaml(free_port(), name='plc')}\n"
        "    points:\n"
        "      - {name: temp, table: holding, address: 0, type: int16, poll: fast}\n"
        "endpoints:\n"
        f"  cloud: {{protocol: mqtt, host: {HOST}, port: {free_port()}}}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: cloud}\n"
    )
    return config


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "status", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_state(config: Path, state: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        out = status(config, "--json")
        doc = json.loads(out.stdout)["gateway"] if out.stdout else None
        if doc is not None and doc["state"] == state:
            return dict(doc)
        assert time.monotonic() < deadline, (state, doc, out.stderr)
        time.sleep(0.1)


def test_status_of_a_running_then_stopped_gateway(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=0.5)
    first = status(config)
    assert first.returncode == 0, first.stderr
    assert "gateway plant-7: never run with this state folder" in first.stdout
    assert status(config, "--check").returncode == 1
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    with reaped(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)) as proc:
        doc = wait_for_state(config, "running")
        assert doc["pid"] == proc.pid and doc["interval_s"] == 0.5
        # The device is down from the start: the status says which, and why.
        deadline = time.monotonic() + 20
        while "down: plc (" not in (text := status(config).stdout):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert f"gateway plant-7: running, pid {proc.pid}, up " in text
        assert "connected" in text.splitlines()[1]  # the status line the log has
        assert status(config, "--check").returncode == 0  # running: a device down is no failure
        before = wait_for_state(config, "running")["written"]
        time.sleep(1.2)
        assert wait_for_state(config, "running")["written"] > before  # rewritten each interval
        err = sigterm(proc, timeout=30)
        assert proc.returncode == 0, err
    doc = wait_for_state(config, "stopped", timeout=1)
    text = status(config).stdout
    assert text.startswith("gateway plant-7: stopped (clean shutdown)")
    assert status(config, "--check").returncode == 1 and status(config).returncode == 0
    assert "  was down: plc (" in text and "\n  down: " not in text  # as of the last status
    assert doc["config"] == str(config)


def test_status_of_a_killed_gateway_says_it_is_gone(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=0)  # no status lines: written at start and stop
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    with reaped(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)) as proc:
        doc = wait_for_state(config, "running")
        assert doc["pid"] == proc.pid
        proc.kill()
        proc.wait()
    out = status(config)
    assert out.returncode == 0
    assert out.stdout.startswith(f"gateway plant-7: not running: pid {proc.pid} is gone"), out
    assert status(config, "--check").returncode == 1


def test_status_says_it_cannot_read_a_damaged_status_file(tmp_path: Path) -> None:
    """Not "never run", and not exit 0, when the file is there but unreadable."""
    config = write_config(tmp_path, interval=1)
    config.write_text(config.read_text().split("endpoints:")[0])  # no outbox to report on
    damaged = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "status" / "plant-7.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{not json")
    out = status(config)
    assert out.returncode == 1 and "never run" not in out.stdout, out
    assert out.stderr.startswith("error: gateway plant-7: ") and "cannot read" in out.stderr
    out = status(config, "--json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["gateway"] is None and "cannot read" in doc["gateway_error"]


def test_uptime_counts_to_now_when_the_file_is_only_written_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=0)
    path = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "status" / "plant-7.json"
    snap = running_snapshot(gateway="plant-7", interval_s=0)
    snap.update(started=time.time() - 3700, written=time.time() - 3600)
    livestatus.write(path, snap)
    assert ", up 1 h 1 min; status written 1 h 0 min ago" in status(config).stdout


def test_a_gateway_that_cannot_start_says_so_instead_of_the_last_run(tmp_path: Path) -> None:
    """A port taken by another process: `gateway run` fails, and the status file, which an
    earlier run left saying "stopped", now says it failed and why."""
    config = write_config(tmp_path, interval=1)
    path = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "status" / "plant-7.json"
    livestatus.write(path, running_snapshot(gateway="plant-7", state="stopped", pid=1))
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config.read_text().replace(
            "endpoints:\n",
            f"endpoints:\n  mbs: {{protocol: modbus, role: server, host: {HOST}, port: {port}}}\n",
        )
        config.write_text(text)
        run = subprocess.run(
            [sys.executable, "-m", "gateway", "run", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode != 0 and "could not start" in run.stderr, run.stderr
    doc = wait_for_state(config, "failed", timeout=1)
    assert doc["pid"] not in (1, os.getpid())  # the failed run's own
    assert "endpoint 'mbs'" in str(doc["summary"])
    lines = status(config).stdout.splitlines()
    assert lines[0].startswith("gateway plant-7: not running: it failed; status written ")
    assert lines[1].startswith("  why: endpoint 'mbs' could not start: "), lines


def test_a_run_refused_before_it_starts_says_failed_too(tmp_path: Path) -> None:
    """A bridge's anomaly model that does not load stops the gateway while it is being built,
    before run(): the status file still says failed and why, not the last run's "stopped"."""
    config = write_config(tmp_path, interval=1)
    (tmp_path / "bad.onnx").write_bytes(b"onnx")
    config.write_text(
        config.read_text().replace(
            "  - {name: up, from: plc, to: cloud}\n",
            "  - {name: up, from: plc, to: cloud, anomaly: {model: bad.onnx}}\n",
        )
    )
    path = Path(os.environ["PROTOCOL_BRAIN_STATE_DIR"]) / "status" / "plant-7.json"
    livestatus.write(path, running_snapshot(gateway="plant-7", state="stopped", pid=1))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: bridge 'up' could not start: "), run.stderr
    lines = status(config).stdout.splitlines()
    assert lines[0].startswith("gateway plant-7: not running: it failed; status written "), lines
    assert lines[1].startswith("  why: bridge 'up' could not start: "), lines


async def test_the_file_says_starting_then_stopped_when_stopped_during_start(
    tmp_path: Path,
) -> None:
    """SIGTERM while a device still starts (a plugin awaiting a peer): the file said
    "starting" meanwhile, not what the last run left there, and says "stopped" after."""
    path = tmp_path / "status" / "plant-7.json"
    livestatus.write(path, running_snapshot(gateway="plant-7", pid=1))  # an earlier run, killed
    gw = runtime.Gateway(load_config(write_config(tmp_path, interval=1)), status_file=path)
    entering = asyncio.Event()

    async def hang() -> None:
        entering.set()
        await asyncio.Event().wait()

    gw.adapters["plc"].__aenter__ = hang  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await asyncio.wait_for(entering.wait(), 10)
    doc = livestatus.read(path)
    assert doc is not None and doc["state"] == "starting" and doc["pid"] == os.getpid()
    lines = _gateway_lines("plant-7", doc)
    assert lines[0].startswith(f"gateway plant-7: starting, pid {os.getpid()}, for "), lines
    assert lines[1] == "  starting 2 adapters"
    stop.set()
    await asyncio.wait_for(task, 10)
    doc = livestatus.read(path)
    assert doc is not None and doc["state"] == "stopped"


async def rewritten_while_running(path: Path, within: float = 5.0) -> dict[str, Any]:
    """The status file once it says running and has been written again since."""
    await wait_for(lambda: (livestatus.read(path) or {}).get("state") == "running")
    first = livestatus.read(path)
    assert first is not None
    await wait_for(lambda: (livestatus.read(path) or {})["written"] > first["written"], within)
    doc = livestatus.read(path)
    assert doc is not None and doc["state"] == "running"
    return doc


async def test_an_adapter_whose_status_fails_does_not_stop_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin's status() bug: that adapter is shown as such, every other part as usual, and
    the file is still rewritten each interval."""
    path = tmp_path / "status" / "plant-7.json"
    gw = runtime.Gateway(load_config(write_config(tmp_path, interval=0.2)), status_file=path)

    def broken() -> dict[str, object]:
        raise KeyError("plugin bug")

    gw.adapters["plc"].status = broken  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        doc = await rewritten_while_running(path)
        adapters = doc["status"]["adapters"]
        assert adapters["plc"] == {"status_error": "status() failed: KeyError('plugin bug')"}
        assert adapters["cloud"]["connected"] is False  # the others as usual
        # down, as /ready and the status line count it: a status that failed cannot say up
        lines = _gateway_lines("plant-7", doc)
        assert "  down: plc (status() failed: KeyError('plugin bug'))" in lines
        summary = doc["summary"]
        assert summary.startswith("0/2 connected") and "plc" in summary.split("; down: ")[1]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    # logged once for the run of failures, not every interval
    assert caplog.text.count("plc: status(): failed: KeyError") == 1, caplog.text


def test_a_refused_second_run_leaves_the_running_gateways_status_alone(tmp_path: Path) -> None:
    """The same gateway started twice: the second is refused and must not write "failed"
    over the running one's file."""
    config = write_config(tmp_path, interval=30)
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    with reaped(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)) as first:
        assert wait_for_state(config, "running")["pid"] == first.pid
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert "gateway 'plant-7' could not start: it is already running: " in second.stderr, (
            second.stderr
        )
        assert f"in use by another gateway process (pid {first.pid})" in second.stderr
        assert second.stderr.startswith("error: ") and second.stderr.count("\n") == 1
        doc = wait_for_state(config, "running", timeout=1)
        assert doc["pid"] == first.pid
        assert status(config).stdout.startswith(f"gateway plant-7: running, pid {first.pid}")
        sigterm(first, timeout=30)
    assert wait_for_state(config, "stopped", timeout=1)["pid"] == first.pid


async def test_a_second_run_of_a_config_of_clients_alone_is_refused_before_it_polls(
    tmp_path: Path, simulator: Any
) -> None:
    """No server port and no outbox to collide on: before, the second one started and polled
    (and wrote) the same device a second time beside the first."""
    device = await simulator.add_device()
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {name: plant-7, status_interval: 30}\n"
        "devices:\n"
        f"{modbus_device_yaml(device.port, name='plc')}\n"
        "    points:\n"
        "      - {name: temp, table: holding, address: 0, type: int16, poll: fast}\n"
    )
    cmd = [sys.executable, "-m", "gateway", "run", str(config)]
    started = await asyncio.to_thread(subprocess.Popen, cmd, stderr=subprocess.PIPE, text=True)
    with reaped(started) as first:
        await wait_for(lambda: device.connections == 1, 30)
        most = [0]

        async def watch() -> None:
            while True:
                most[0] = max(most[0], device.connections)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        second = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=60
        )
        watcher.cancel()
        assert second.returncode == 1, second.stderr
        assert "is already running" in second.stderr and "gateway.name" in second.stderr
        assert most[0] == 1  # it never connected to the device
        assert first.poll() is None and device.connections == 1
        await asyncio.to_thread(sigterm, first, 30)


def test_a_reload_onto_the_name_of_a_running_gateway_keeps_the_config_before(
    tmp_path: Path,
) -> None:
    """The fall-back of any reload that cannot start: the name is another process's."""
    taken = write_config(tmp_path, interval=30)  # plant-7
    mine = tmp_path / "mine.yaml"
    mine.write_text(taken.read_text().replace("plant-7", "plant-8").replace("cloud", "edge"))
    run = [sys.executable, "-m", "gateway", "run"]
    with reaped(subprocess.Popen([*run, str(taken)], stderr=subprocess.PIPE, text=True)) as a:
        wait_for_state(taken, "running")
        with reaped(subprocess.Popen([*run, str(mine)], stderr=subprocess.PIPE, text=True)) as b:
            assert wait_for_state(mine, "running")["pid"] == b.pid
            mine.write_text(mine.read_text().replace("plant-8", "plant-7"))
            b.send_signal(signal.SIGHUP)
            time.sleep(3)
            mine.write_text(mine.read_text().replace("plant-7", "plant-8"))
            assert b.poll() is None and a.poll() is None
            assert wait_for_state(mine, "running", timeout=1)["pid"] == b.pid
            assert wait_for_state(taken, "running", timeout=1)["pid"] == a.pid
            err = sigterm(b, timeout=30)
        assert "could not start (gateway 'plant-7' could not start: it is already running" in err
        sigterm(a, timeout=30)


async def test_the_first_status_comes_soon_after_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default 60 s interval, the file written at READY (every client still
    connecting) would stand for a minute; the first report comes after FIRST_REPORT_S."""
    monkeypatch.setattr(runtime, "FIRST_REPORT_S", 0.3)
    states = recorded_writes(monkeypatch)
    path = tmp_path / "status" / "plant-7.json"
    gw = runtime.Gateway(load_config(write_config(tmp_path, interval=60)), status_file=path)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:  # starting, running at READY, then the first report's running
        await wait_for(lambda: states.count("running") >= 2, 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert states == ["starting", "running", "running", "stopped"]


async def test_status_interval_zero_turns_off_the_log_lines_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """status_interval 0 silences the log's status lines; the file must still be refreshed,
    or `gateway status` shows the READY snapshot (everything down) for the whole run."""
    monkeypatch.setattr(runtime, "FIRST_REPORT_S", 0.2)
    monkeypatch.setattr(runtime, "QUIET_STATUS_S", 0.4)
    states = recorded_writes(monkeypatch)
    path = tmp_path / "status" / "plant-7.json"
    gw = runtime.Gateway(load_config(write_config(tmp_path, interval=0)), status_file=path)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="gateway.runtime")
    task = asyncio.create_task(gw.run(stop))
    try:  # starting, running at READY, then reports at 0.2 s and every 0.4 s
        await wait_for(lambda: states.count("running") >= 3, 5)
        doc = livestatus.read(path)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert doc is not None and doc["state"] == "running" and doc["interval_s"] == 0.4
    assert not [r for r in caplog.records if r.getMessage().startswith("status: ")]


def recorded_writes(monkeypatch: pytest.MonkeyPatch, slow_running: float = 0.0) -> list[str]:
    """The states the gateway writes, in the order they land (the reports' running ones
    ``slow_running`` seconds late, as on a busy SD card)."""
    states: list[str] = []
    real = livestatus.write

    def write(path: Path, snapshot: dict[str, Any]) -> None:
        if snapshot["state"] == "running" and "running" in states:
            time.sleep(slow_running)
        real(path, snapshot)
        states.append(snapshot["state"])

    monkeypatch.setattr(livestatus, "write", write)
    return states


async def test_a_slow_status_write_cut_short_by_the_stop_lands_before_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reporter is cancelled at the stop while its write still runs in its thread: that
    write must not land after "stopped" and make a clean stop read as a crash."""
    monkeypatch.setattr(runtime, "FIRST_REPORT_S", 0.1)
    states = recorded_writes(monkeypatch, slow_running=2.0)
    path = tmp_path / "status" / "plant-7.json"
    gw = runtime.Gateway(load_config(write_config(tmp_path, interval=60)), status_file=path)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await wait_for(lambda: states == ["starting", "running"], 10)
    await asyncio.sleep(0.3)  # the first report's write is in its thread now
    stop.set()
    await asyncio.wait_for(task, 30)
    await asyncio.sleep(2.2)  # anything still running in a thread has landed
    assert states == ["starting", "running", "running", "stopped"]
    doc = livestatus.read(path)
    assert doc is not None and doc["state"] == "stopped"


async def test_a_run_beside_the_holder_of_the_file_says_so_once_up_and_leaves_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.uplink.lock import FileLock

    path = tmp_path / "status" / "plant-7.json"
    livestatus.write(path, running_snapshot(gateway="plant-7"))
    before = path.read_text()
    held = FileLock(path)  # as another gateway process of the same name would hold it
    try:
        gw = runtime.Gateway(load_config(write_config(tmp_path, interval=0.2)), status_file=path)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.wait_for(gw.started.wait(), 20)
        await asyncio.sleep(0.5)  # two status intervals
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        held.release()
    assert path.read_text() == before
    assert caplog.text.count("status file not written by this run: ") == 1, caplog.text


async def test_a_clean_stop_lists_as_down_only_what_was_down_before_it(
    tmp_path: Path, simulator: Any
) -> None:
    """The stop disconnects every adapter: the file it leaves said all of them were down."""
    device = await simulator.add_device()
    dead = free_port()
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(
        "gateway: {name: gw}\ndevices:\n"
        f"  live: {{protocol: modbus, host: {HOST}, port: {device.port},"
        " points: [{name: t, address: 0}]}\n"
        f"  dead: {{protocol: modbus, host: {HOST}, port: {dead}, timeout: 0.2,"
        " points: [{name: t, address: 0}]}\n"
    )
    path = tmp_path / "status" / "gw.json"
    gateway = runtime.Gateway(load_config(config_file), status_file=path)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.started.wait(), 10)
    await wait_for(lambda: gateway.status()["adapters"]["live"]["connected"], message="connected")
    stop.set()
    await asyncio.wait_for(run, 30)
    assert gateway.status()["adapters"]["live"]["connected"] is False  # the stop's doing
    doc = livestatus.read(path)
    assert doc is not None and doc["state"] == "stopped"
    adapters = doc["status"]["adapters"]
    assert (adapters["live"]["connected"], adapters["dead"]["connected"]) == (True, False)
    assert adapters["live"]["polls"] >= 1  # the counters are the final ones
    lines = _gateway_lines("gw", doc)
    assert [line for line in lines if "was down" in line] == [
        f"  was down: dead ({adapters['dead']['last_error']})"
    ]
