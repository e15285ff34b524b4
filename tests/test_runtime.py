import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from gateway import runtime
from gateway.adapter import raise_if_cancelling
from gateway.config import GatewayConfig
from gateway.config.common import Backoff
from gateway.types import Message


async def test_swallowed_cancellation_is_raised_again() -> None:
    reached = []

    async def worker() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what a library's wait_for race does
        raise_if_cancelling()
        reached.append("after")
        await asyncio.sleep(10)

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert reached == []


async def test_cancel_retries_a_task_that_swallows_the_first_cancel() -> None:
    async def stubborn() -> None:
        for _ in range(3):  # swallows two cancels, then gives in
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(runtime._cancel([task], patience=5), 5)
    assert task.cancelled()


async def test_cancel_gives_up_with_an_error_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = False

    async def immortal() -> None:
        while not done:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    await asyncio.wait_for(runtime._cancel([task], patience=0.5), 5)
    assert "ignore cancellation: immortal" in caplog.text
    done = True  # let it end so the event loop closes cleanly
    task.cancel()
    await asyncio.wait_for(task, 1)


async def test_supervisor_restarts_a_failing_adapter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "SUPERVISOR_BACKOFF", Backoff(initial=0.01, max=0.02))
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("library surprise")
        await asyncio.sleep(10)

    task = asyncio.create_task(runtime._supervise("flaky", flaky))
    for _ in range(100):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(runs) == 3
    assert "flaky failed; restarting it" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_run_whose_task_group_failed_is_restarted_not_taken_for_a_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11: a TaskGroup whose child fails leaves its parent task's cancel request
    counted. The next run, in the same supervisor task, checks ``Task.cancelling()`` (as
    ``raise_if_cancelling`` and libraries' close paths do) and must not see a shutdown."""
    from gateway.adapter import raise_if_cancelling

    monkeypatch.setattr(runtime, "SUPERVISOR_BACKOFF", Backoff(initial=0.01, max=0.02))
    runs = []

    async def fails() -> None:
        raise RuntimeError("device said no")

    async def adapter_run() -> None:
        runs.append(1)
        raise_if_cancelling()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fails())
            tg.create_task(asyncio.sleep(10))

    for _ in range(20):  # one cancel stops it, whenever it lands (in a run, as it fails...)
        runs.clear()
        task = asyncio.create_task(runtime._supervise("plc", adapter_run))
        await wait_for(lambda: len(runs) >= 4, timeout=5)
        assert not task.done()  # still supervising, after three failures
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_a_target_that_rejects_every_message_is_logged_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.bridge import Bridge
    from gateway.bus import Bus
    from gateway.config import BridgeConfig
    from gateway.types import Message, Sample

    down = True
    sent: list[Message] = []

    class Target:
        name = "broker"

        async def send(self, message: Message, route: object) -> None:
            if down:
                raise ConnectionError("broker unreachable")
            sent.append(message)

    bus = Bus()
    bridge = Bridge(BridgeConfig("up", ("plc",), ("*",), "broker", {}, None), bus, Target())  # type: ignore[arg-type]
    bridge.subscribe()
    task = asyncio.create_task(bridge.run())
    try:
        for i in range(50):
            await bus.publish(Message.telemetry("plc", (Sample("t", float(i)),)))
        await wait_for(lambda: bridge.failed == 50, message="50 rejected")
        down = False
        await bus.publish(Message.telemetry("plc", (Sample("t", 99.0),)))
        await wait_for(lambda: sent, message="sent once the target takes it")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.bridge"]
    assert len([m for m in said if "rejected a message" in m]) == 1, said
    assert "broker unreachable" in said[0]
    assert any("works again after 50 failures" in m for m in said), said
    assert bridge.status()["failed"] == 50 and bridge.status()["forwarded"] == 1


def test_throttle_keeps_one_record_per_interval_without_its_traceback() -> None:
    import logging

    from gateway.streak import Throttle

    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    logger = logging.getLogger("test.throttle")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    logger.addFilter(throttle)
    logger.propagate = False
    for i in range(100):
        try:
            raise ValueError(f"bad peer {i}")
        except ValueError:
            logger.exception("Exception raised while processing message from %s", "client")
        now[0] += 0.01
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage() == (
        "Exception raised while processing message from client (ValueError('bad peer 0'))"
    )
    now[0] += 10.0
    logger.error("Exception raised while processing message from %s", "100%")
    assert len(records) == 2
    assert records[1].getMessage().endswith("from 100% [99 more like it in the last 10 s]")


@pytest.mark.parametrize(
    "name", ["asyncua.server.internal_session", "asyncua.server.internal_server"]
)
def test_asyncuas_lines_per_session_are_throttled(
    name: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan presenting a new certificate per connection made asyncua log about five INFO
    lines per attempt (717 attempts in 30 s: 4,300 lines); `gateway run` throttles them."""
    import logging

    from gateway.streak import throttle_noisy_loggers

    # A throttle an earlier test installed (a gateway started in this process) keeps its own
    # count of these lines: this test starts from none.
    monkeypatch.setattr(logging.getLogger(name), "filters", [])
    throttle_noisy_loggers()
    caplog.set_level(logging.INFO, logger=name)
    for i in range(50):
        logging.getLogger(name).info("Created internal session %s", f"Sess{i}")
    assert [r.getMessage() for r in caplog.records if r.name == name] == [
        "Created internal session Sess0"
    ]


GATEWAY_WITHOUT = """\
import sys
sys.modules[sys.argv[1]] = None  # `import <it>` fails as if it were not installed
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _gateway_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` in a process where importing ``missing`` fails."""
    return subprocess.run(
        [sys.executable, "-c", GATEWAY_WITHOUT, missing, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _bridge_file(tmp_path: Path, stage: str) -> Path:
    """A Modbus device bridged to a broker (neither answers) through ``stage``."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "devices:\n"
        "  pump: {protocol: modbus, host: 127.0.0.1, port: 1, points: [{name: t, address: 0}]}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: 127.0.0.1, port: 1}\n"
        "bridges:\n"
        f"  - {{name: up, from: pump, to: broker, topic: 'x/{{point}}', {stage}}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("stage", "missing"),
    [
        ("translate: {mode: auto}", "numpy"),
        ("translate: {mode: auto}", "onnxruntime"),
        ("anomaly: {model: student}", "numpy"),
    ],
)
def test_gateway_run_without_a_library_a_bridge_needs_says_so_in_one_line(
    tmp_path: Path, stage: str, missing: str
) -> None:
    # Before, translate auto failed at its first new point, in the bridge's task: a
    # ModuleNotFoundError traceback in the log on every restart, the gateway running on.
    out = _gateway_without(missing, "run", str(_bridge_file(tmp_path, stage)))
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: bridge 'up' could not start: needs {missing}: pip install 'protocol-brain[ml]'"
    )
    assert "Traceback" not in out.stderr


def test_validate_warns_and_run_refuses_without_a_protocol_library(tmp_path: Path) -> None:
    # Before, validate said "ok" on a box where run could not start the device.
    path = _plc_file(tmp_path)
    said = (
        "protocol 'modbus' (from protocol-brain) needs pymodbus: "
        "pip install 'protocol-brain[modbus]'"
    )
    out = _gateway_without("pymodbus", "validate", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"warning: {path}:2:19: devices.plc.protocol: {said} (gateway run will not start "
        "while an enabled entry needs it; enabled: false on this entry runs the rest)"
    ]
    out = _gateway_without("pymodbus", "run", str(path))
    assert out.returncode == 1
    # Once: run does not warn first. (Blocked this way, the import fails at pymodbus.client.)
    assert out.stderr.replace("pymodbus.client", "pymodbus") == f"error: {said}\n"


class _Part:
    """An adapter-like async context manager whose start or close misbehaves."""

    def __init__(self, name: str, *, hang: bool = False, fail_exit: bool = False) -> None:
        self.name, self.hang, self.fail_exit = name, hang, fail_exit
        self.closed = False

    async def __aenter__(self) -> "_Part":
        if self.hang:
            await asyncio.Event().wait()  # a plugin awaiting a peer that never answers
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True
        if self.fail_exit:
            raise RuntimeError("close bug")


async def test_a_start_that_hangs_times_out_or_gives_way_to_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "START_TIMEOUT", 0.2)
    with pytest.raises(runtime.StartError, match="device 'x' could not start: did not finish"):
        await asyncio.wait_for(
            runtime._enter(_Part("x", hang=True), "device 'x'", asyncio.Event()), 5
        )
    monkeypatch.setattr(runtime, "START_TIMEOUT", 60.0)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)  # SIGTERM during start
    entered = await asyncio.wait_for(runtime._enter(_Part("x", hang=True), "x", stop), 5)
    assert entered is None


async def test_a_part_that_fails_to_close_does_not_stop_the_others_closing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, broken = _Part("first"), _Part("broken", fail_exit=True)
    exits = []
    for part in (first, broken):
        exit_ = await runtime._enter(part, f"device {part.name!r}", asyncio.Event())
        assert exit_ is not None
        exits.append(exit_)
    for exit_ in reversed(exits):
        assert await exit_(None, None, None) is False  # no exception left the exit
    assert first.closed and broken.closed  # no exception left the stack
    assert "device 'broken' did not close cleanly: RuntimeError: close bug" in caplog.text


async def test_supervisor_logs_one_traceback_then_one_line_and_calls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "SUPERVISOR_BACKOFF", Backoff(initial=0.01, max=0.02))
    failed: list[BaseException] = []

    async def broken() -> None:
        raise ValueError("plugin read bug")

    async def on_failure(exc: BaseException) -> None:
        failed.append(exc)

    task = asyncio.create_task(runtime._supervise("plc", broken, on_failure=on_failure))
    await wait_for(lambda: len(failed) >= 3, message="three failures")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    records = [r for r in caplog.records if r.name == "gateway.runtime"]
    assert records[0].exc_info is not None and "plugin read bug" in records[0].getMessage()
    assert all(r.exc_info is None for r in records[1:])
    assert "plc failed again (2 times)" in records[1].getMessage()


async def first_message_after_run_ends(
    config: GatewayConfig, run: Callable[[], Awaitable[None]]
) -> Message:
    """The first telemetry of device plc in a gateway whose plc adapter runs ``run``."""
    gw = runtime.Gateway(config)
    gw.adapters["plc"].run = run  # type: ignore[method-assign]
    sub = gw.bus.subscribe("telemetry/plc")
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        return await asyncio.wait_for(sub.get(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_a_crashed_source_marks_its_points_bad(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.types import Quality

    path = tmp_path / "gw.yaml"
    path.write_text(
        "devices:\n"
        "  plc: {protocol: modbus, host: 127.0.0.1, port: 1,\n"
        "        points: [{name: t, address: 0}, {name: sp, address: 1, access: rw}]}\n"
    )

    async def crash() -> None:
        raise RuntimeError("plugin bug")

    message = await first_message_after_run_ends(load_config(path), crash)
    assert {s.point for s in message.samples} == {"t", "sp"}
    assert all(s.quality is Quality.BAD for s in message.samples)
    assert message.samples[0].reason == "adapter failed: RuntimeError"


def test_gateway_run_exits_even_if_a_task_ignores_cancellation(tmp_path: Path) -> None:
    script = """\
import asyncio, logging, sys
from gateway import runtime
from gateway.cli import main

async def immortal():
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()

real_run = runtime.Gateway.run
async def run(self, stop, upcoming=None):
    asyncio.get_running_loop().create_task(immortal(), name="immortal")
    asyncio.get_running_loop().call_later(0.5, stop.set)
    await real_run(self, stop, upcoming)
runtime.Gateway.run = run
runtime.CANCEL_TIMEOUT = 0.5
sys.exit(main(["run", sys.argv[1]]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(_plc_file(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "exiting although 1 task still running: immortal" in out.stderr


def _plc_file(tmp_path: Path) -> Path:
    """A gateway with one Modbus device nobody answers for (port 1)."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "devices:\n"
        "  plc: {protocol: modbus, host: 127.0.0.1, port: 1, points: [{name: t, address: 0}]}\n"
    )
    return path


def _plc_config(tmp_path: Path) -> GatewayConfig:
    from gateway.config import load_config

    return load_config(_plc_file(tmp_path))


def test_an_adapter_constructor_that_raises_is_one_start_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _plc_config(tmp_path)

    class Boom:
        def __init__(self, *args: object) -> None:
            raise ValueError("bad init")

    spec = config.devices["plc"].spec
    monkeypatch.setattr(type(spec), "adapter_class", lambda self, role: Boom)
    with pytest.raises(
        runtime.StartError, match=r"device 'plc' \(modbus\) could not start: bad init"
    ):
        runtime.Gateway(config)


async def test_a_status_bug_does_not_end_the_status_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.runtime")
    gw = runtime.Gateway(_plc_config(tmp_path))
    calls = []

    def status() -> dict[str, object]:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("status bug")
        return {"connected": True}

    gw.adapters["plc"].status = status  # type: ignore[method-assign]
    task = asyncio.create_task(gw._report(0.01))
    await wait_for(lambda: "status: 1/1 connected" in caplog.text, message="a report again")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    failed = [r for r in caplog.records if "status(): failed" in r.getMessage()]
    assert len(failed) == 1 and "RuntimeError('status bug')" in failed[0].getMessage()
    # meanwhile the reports went on, with that adapter down: it cannot say it is up (as
    # /ready and gateway status count it)
    assert "status: 0/1 connected, " in caplog.text and "; down: plc" in caplog.text


def test_a_translate_model_that_cannot_load_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the classifier was loaded at the first new point, inside the bridge's task: the
    # gateway started, then logged a traceback on every bridge restart and forwarded nothing.
    from gateway.config import load_config
    from gateway.translator import model

    def broken(path: str = "") -> model.Translator:
        raise model.ModelError("cannot load the translator model translator.onnx: truncated")

    monkeypatch.setattr(model, "load", broken)
    path = _bridge_file(tmp_path, "translate: {mode: auto}")
    with pytest.raises(runtime.StartError) as caught:
        runtime.Gateway(load_config(path))
    assert str(caught.value) == (
        "bridge 'up' could not start: cannot load the translator model translator.onnx: truncated"
    )


async def test_a_disabled_device_and_bridge_are_not_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.config import load_config

    path = _plc_file(tmp_path)
    path.write_text(
        path.read_text() + "  spare: {protocol: modbus, enabled: false, host: 127.0.0.1, port: 1,"
        " points: [{name: t, address: 0}]}\n"
        "endpoints:\n  broker: {protocol: mqtt, host: 127.0.0.1, port: 1}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: broker, topic: 'x/{point}'}\n"
        "  - {name: spare-up, enabled: false, from: spare, to: broker, topic: 'x/{point}'}\n"
    )
    caplog.set_level("INFO", logger="gateway.runtime")
    gw = runtime.Gateway(load_config(path))
    assert set(gw.adapters) == {"plc", "broker"}
    assert [b.name for b in gw.bridges] == ["up"]
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await asyncio.wait_for(gw.started.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert (
        "gateway protocol-brain running: 2 adapters, 1 bridge; not started (enabled: false): "
        "spare, bridge spare-up"
    ) in caplog.messages


def _uplink_file(tmp_path: Path, model: str) -> Path:
    """`_bridge_file` with a batching endpoint ``cloud`` and a plain one beside it."""
    path = _bridge_file(tmp_path, "qos: 1")
    text = path.read_text().replace(
        "broker: {protocol: mqtt, host: 127.0.0.1, port: 1}",
        "cloud: {protocol: mqtt, host: 127.0.0.1, port: 1, outbox: {drain_order: strict},"
        f" optimizer: {{model: '{model}'}}}}\n"
        "  plain: {protocol: mqtt, host: 127.0.0.1, port: 1}",
    )
    text = text.replace("to: broker", "to: cloud")
    path.write_text(text + "  - {name: copy, from: pump, to: plain, topic: 'y/{point}'}\n")
    return path


@pytest.mark.parametrize(
    ("model", "in_force", "short"),
    [
        ("heuristic", "heuristic", "heuristic"),
        ("builtin", "builtin policy", "builtin"),
        ("bad.onnx", "heuristic (fallback: ", "heuristic (fallback)"),
    ],
)
async def test_the_optimizer_in_force_is_logged_at_start_and_in_the_status_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str, in_force: str, short: str
) -> None:
    from gateway.config import load_config

    caplog.set_level("INFO")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "bad.json").write_text("{}")
    gw = runtime.Gateway(load_config(_uplink_file(tmp_path, model)))
    async with gw.adapters["cloud"], gw.adapters["plain"]:
        started = [m for m in caplog.messages if "uplink optimizer:" in m]
        assert len(started) == 1 and started[0].startswith(
            f"MQTT cloud: uplink optimizer: {in_force}"
        )
        if model == "bad.onnx":
            assert "bad.onnx: trained for other features or action tables" in started[0]
        line = gw.summary()
    assert line.endswith(f"; optimizer cloud: {short}, 0 decisions"), line
    assert "anomaly" not in line and "optimizer plain" not in line


async def test_the_status_line_counts_the_anomaly_alarms(tmp_path: Path) -> None:
    from gateway.config import load_config

    gw = runtime.Gateway(load_config(_uplink_file(tmp_path, "off")))
    scored = [
        {"alarms": 3, "active": ["pump"], "calibrating": ["fan"], "restored": []},
        {"alarms": 1, "active": ["pump", "oven"], "calibrating": [], "restored": []},
    ]
    for bridge, anomaly in zip(gw.bridges, scored, strict=True):
        status = bridge.status

        def with_anomaly(status: Any = status, anomaly: Any = anomaly) -> dict[str, Any]:
            return {**status(), "anomaly": anomaly}  # Bridge.status() with an anomaly stage

        bridge.status = with_anomaly  # type: ignore[method-assign]
    assert "; anomaly: 4 alarms, 2 active (oven, pump), 1 calibrating" in gw.summary()


async def test_the_status_line_counts_polls_skipped_late(tmp_path: Path) -> None:
    from gateway.config import load_config

    gw = runtime.Gateway(load_config(_uplink_file(tmp_path, "off")))
    assert "skipped late" not in gw.summary()
    adapters = list(gw.adapters.values())
    for adapter, missed in zip(adapters, (3, 4), strict=False):
        status = adapter.status

        def late(status: Any = status, missed: int = missed) -> dict[str, Any]:
            return {**status(), "polls_missed": missed}  # a Modbus client that fell behind

        adapter.status = late  # type: ignore[method-assign]
    assert ", 7 polls skipped late" in gw.summary()


async def test_the_status_line_counts_what_the_shadow_dropped(tmp_path: Path) -> None:
    from gateway.config import load_config

    path = _uplink_file(tmp_path, "off")
    path.write_text(path.read_text() + f"shadow: {{path: '{tmp_path / 's.db'}'}}\n")
    gw = runtime.Gateway(load_config(path))
    assert gw.shadow is not None
    assert ", 0 dropped in the shadow" in gw.summary()
    status = gw.shadow.status

    def behind() -> dict[str, Any]:  # a store that fell behind on a disk below its floor
        return {**status(), "dropped": 7, "history_paused": True}

    gw.shadow.status = behind  # type: ignore[method-assign]
    line = gw.summary()
    assert ", 7 dropped in the shadow (history paused: disk below shadow.history.min_free)" in line

    def lower() -> dict[str, Any]:  # below the outbox's room: documents wait in memory too
        return {**behind(), "documents_paused": True, "documents_unsaved": 3}

    gw.shadow.status = lower  # type: ignore[method-assign]
    assert "shadow (disk low: 3 documents kept in memory)" in gw.summary()
    assert "merge failing" not in gw.summary()
    assert {"history_staged", "history_merges", "history_merge_failing"} <= status().keys()

    def unmerged() -> dict[str, Any]:  # merges fail (a lock): rows wait in the staging table
        return {**status(), "history_merge_failing": True, "history_staged": 1200}

    gw.shadow.status = unmerged  # type: ignore[method-assign]
    assert "shadow (history merge failing: 1200 rows staged)" in gw.summary()
    assert "max_bytes" not in gw.summary()

    def capped() -> dict[str, Any]:  # the file reached shadow.history.max_bytes
        return {**status(), "history_capped": 20000}

    gw.shadow.status = capped  # type: ignore[method-assign]
    assert "shadow (history over max_bytes: 20000 oldest rows deleted)" in gw.summary()


async def test_a_source_whose_run_returns_says_so_in_its_points_reason(tmp_path: Path) -> None:
    from gateway.config import load_config

    path = tmp_path / "gw.yaml"
    path.write_text(
        "devices:\n  plc: {protocol: modbus, host: 127.0.0.1, port: 1,"
        " points: [{name: t, address: 0}]}\n"
    )

    async def returns() -> None:
        return None

    message = await first_message_after_run_ends(load_config(path), returns)
    # what consumers see (MQTT, OPC UA): not the supervisor's private exception class
    assert message.samples[0].reason == "adapter failed: run() returned by itself"


async def test_the_status_has_the_loop_monitors_figures(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.looplag import LoopMonitor

    config = load_config(_uplink_file(tmp_path, "off"))
    assert "loop" not in runtime.Gateway(config).status()
    monitor = LoopMonitor()
    monitor.stall_count = 2
    assert runtime.Gateway(config, loop_monitor=monitor).status()["loop"] == {"stalls": 2}


async def test_an_adapter_waiting_to_restart_is_down_with_what_its_run_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own status() cannot say so (its run is what failed): before, a plugin's adapter in a
    crash loop read as connected in the status line and `gateway status`, and its points' reason
    said only `ExceptionGroup` when its run was a TaskGroup, as the plugin guide's is."""
    from gateway.backoff import BackoffTimer
    from gateway.types import Quality

    delays = iter([1.5])
    monkeypatch.setattr(BackoffTimer, "next_delay", lambda self: next(delays, 60.0))
    gw = runtime.Gateway(_plc_config(tmp_path))
    runs: list[int] = []

    async def fails() -> None:
        raise ValueError("plugin read bug")

    async def run() -> None:
        runs.append(1)
        if len(runs) == 1:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fails())
                tg.create_task(asyncio.sleep(10))
        await asyncio.sleep(60)

    gw.adapters["plc"].run = run  # type: ignore[method-assign]
    gw.adapters["plc"].status = lambda: {"polls": 3}  # type: ignore[method-assign]
    sub = gw.bus.subscribe("telemetry/plc")
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        message = await asyncio.wait_for(sub.get(), 10)
        assert message.samples[0].quality is Quality.BAD
        assert message.samples[0].reason == "adapter failed: ValueError"
        status = gw.status()["adapters"]["plc"]
        assert status["connected"] is False and status["polls"] == 3
        assert status["last_error"] == "run() failed, restarting: ValueError: plugin read bug"
        assert status["run_failures"] == 1
        assert gw.summary().startswith("0/1 connected")
        await wait_for(lambda: len(runs) == 2, timeout=5)  # restarted, running since
        status = gw.status()["adapters"]["plc"]
        assert "connected" not in status and status["run_failures"] == 1
        assert status["last_run_error"] == "ValueError: plugin read bug"
        assert gw.summary().startswith("1/1 connected")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
