"""Calibrations kept across restarts: a restarted gateway goes on with what it learned.

Without them a restart calibrated every device again on whatever it did at that moment: a pump
that was faulty then was learned as normal and never alarmed, and an alarm that was on was
forgotten. The stage is driven with exact messages (restarts are a new stage on the same file);
one test restarts a whole gateway polling the Modbus simulator; the CLI tests run
``gateway anomaly status|recalibrate`` as a user would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from anomaly_data import series
from conftest import HOST, free_port, modbus_device_yaml, wait_for
from test_anomaly_runtime import CALIBRATION, messages

from gateway.anomaly.stage import AnomalyStage
from gateway.anomaly.store import CalibrationStore, read_records, store_path
from gateway.bus import Bus
from gateway.config import load_config_text
from gateway.config.anomaly import AnomalyOptions
from gateway.runtime import Gateway
from gateway.types import Message, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

NAMES = ("flow", "pressure", "temperature", "current")
GATEWAY = [sys.executable, "-m", "gateway"]


def rows_to_messages(values: np.ndarray, *, names: tuple[str, ...] = NAMES) -> list[Message]:
    return [
        Message.telemetry(
            "pump",
            tuple(
                Sample(n, float(v), source_ts=5000.0 + i) for n, v in zip(names, row, strict=True)
            ),
        )
        for i, row in enumerate(values)
    ]


def stage(path: Path, **options: object) -> AnomalyStage:
    return AnomalyStage(
        AnomalyOptions.model_validate({"calibration": CALIBRATION, **options}),
        Bus(),
        "up",
        store=path,
    )


def feed(s: AnomalyStage, stream: list[Message]) -> list[bool]:
    """Alarm transitions in order (True raised, False cleared)."""
    out = []
    for m in stream:
        _, events = s.process(m)
        out += [bool(e.samples[0].value) for e in events]
    return out


def calibrated(path: Path) -> AnomalyStage:
    """A stage that calibrated on the clean start of the test series and then stopped."""
    s = stage(path)
    assert feed(s, messages()[: CALIBRATION + 50]) == []
    s.close()
    return s


def test_a_restart_goes_on_with_the_calibration_and_alarms_on_a_fault_present_at_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "up.json"
    first = calibrated(path)
    threshold = first.devices["pump"].scorer.cal.threshold  # type: ignore[union-attr]
    records = read_records(path)
    assert list(records) == ["pump"] and records["pump"].rows == CALIBRATION

    # The pump is already faulty when the gateway comes back.
    faulty, _ = series(600, seed=9, faults=[(0, 600)])
    second = stage(path)
    transitions = []
    raised_at = None
    for i, m in enumerate(rows_to_messages(faulty)):
        _, events = second.process(m)
        transitions += [bool(e.samples[0].value) for e in events]
        if events and raised_at is None:
            raised_at = i
    dev = second.devices["pump"]
    assert second.status()["restored"] == ["pump"] and second.status()["calibrating"] == []
    assert dev.scorer.cal is not None and dev.scorer.cal.threshold == threshold
    assert transitions == [True]  # one alarm, for the fault it was never calibrated on
    assert raised_at is not None and raised_at < 32 + 20  # a window of readings, then found

    # Without the kept calibration the fault is learned as normal: no alarm at all.
    fresh = AnomalyStage(AnomalyOptions(calibration=CALIBRATION), Bus(), "up")
    assert feed(fresh, rows_to_messages(faulty)) == []


def test_an_alarm_active_at_shutdown_clears_once_after_the_restart(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    first = stage(path)
    values, _ = series(600, seed=5, faults=[(450, 600)])
    assert feed(first, rows_to_messages(values)) == [True]
    first.close()
    assert read_records(path)["pump"].alarm is True

    second = stage(path)
    normal, _ = series(200, seed=11)
    assert feed(second, rows_to_messages(normal)) == [False]  # cleared, not raised again
    assert second.status()["active"] == []
    second.close()
    assert read_records(path)["pump"].alarm is False


def test_a_counter_raises_no_alarm_after_a_restart(tmp_path: Path) -> None:
    """An energy counter climbs steadily: a slow point, judged against a running mean that lags
    it by what calibration measured. The restarted stage began that mean at its first fresh
    reading, with no lag, and alarmed on every counter for about a hundred readings (the gap
    of each reload and restart); continuing without a restart raises nothing."""
    rng = np.random.default_rng(3)
    t = np.arange(CALIBRATION + 1200)
    values = np.stack([1000 + 2.0 * t + rng.normal(0, 0.3, len(t)), rng.normal(0, 1, len(t))], 1)
    names = ("energy", "vibration")
    path = tmp_path / "up.json"
    first = stage(path)
    assert feed(first, rows_to_messages(values[: CALIBRATION + 600], names=names)) == []
    assert first.devices["pump"].scorer.cal.slow.tolist() == [True, False]  # type: ignore[union-attr]
    first.close()

    second = stage(path)  # back after a gap of 300 readings
    assert feed(second, rows_to_messages(values[CALIBRATION + 900 :], names=names)) == []
    assert second.status()["restored"] == ["pump"]


def test_a_calibration_of_other_options_or_points_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "up.json"
    calibrated(path)
    caplog.set_level(logging.INFO, logger="gateway.anomaly.stage")

    other = stage(path, smooth=5)
    feed(other, messages()[:100])
    assert other.status()["calibrating"] == ["pump"] and other.status()["restored"] == []
    assert "pump calibrates again: smooth changed since it was calibrated" in caplog.text
    other.close()

    values, _ = series(100, seed=5)
    renamed = stage(path)
    feed(renamed, rows_to_messages(values, names=("flow", "pressure", "temperature", "amps")))
    assert renamed.status()["calibrating"] == ["pump"]
    assert "its points changed (new: amps; gone: current)" in caplog.text
    renamed.close()
    # The old record stays until the device has a new calibration to replace it.
    assert read_records(path)["pump"].points == list(NAMES)


def test_a_new_margin_or_fixed_threshold_applies_to_the_kept_calibration(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    first = calibrated(path)
    threshold = first.devices["pump"].scorer.cal.threshold  # type: ignore[union-attr]
    for options, expected in (({"margin": 3.0}, threshold * 2), ({"threshold": 7.5}, 7.5)):
        s = stage(path, **options)
        feed(s, messages()[:40])
        assert s.status()["restored"] == ["pump"]  # no new clean period needed
        alarm = s.devices["pump"].scorer.alarm
        assert alarm is not None and alarm.threshold == pytest.approx(expected)
        s.close()


def test_points_in_another_order_use_the_same_calibration(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    first = calibrated(path)
    cal = first.devices["pump"].scorer.cal
    assert cal is not None
    values, _ = series(60, seed=3)
    order = (3, 0, 2, 1)
    second = stage(path)
    feed(second, rows_to_messages(values[:, order], names=tuple(NAMES[j] for j in order)))
    got = second.devices["pump"].scorer.cal
    assert second.status()["restored"] == ["pump"] and got is not None
    assert np.array_equal(got.mean, cal.mean[list(order)])
    assert np.array_equal(got.error_scale, cal.error_scale[list(order)])


def test_an_unreadable_file_is_set_aside_and_the_devices_calibrate_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "up.json"
    path.write_text('{"format": 1, "devices": {"pump": {"points": ["flow"]}}}')
    caplog.set_level(logging.WARNING)
    s = stage(path)
    feed(s, messages()[: CALIBRATION + 10])
    assert "cannot read the stored calibrations" in caplog.text
    assert path.with_name("up.json.bad").exists()
    assert s.status()["calibrating"] == [] and s.status()["restored"] == []
    assert read_records(path)["pump"].rows == CALIBRATION  # a good file again


def test_a_full_disk_is_logged_and_scoring_goes_on(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_disk / "anomaly" / "up.json"
    filler = small_disk / "filler"
    caplog.set_level(logging.WARNING)
    s = stage(path)
    feed(s, messages()[:10])  # the store is opened (and its folder made) at the first message
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    for chunk in (65536, 4096, 1):  # to the last byte
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
    os.close(fd)
    values, _ = series(600, seed=5, faults=[(450, 600)])
    assert feed(s, rows_to_messages(values)[10:]) == [True]  # calibrated, scored, alarmed
    assert "cannot write" in caplog.text and not path.exists()
    filler.unlink()
    assert s.save() and read_records(path)["pump"].alarm is True
    s.close()


def test_a_second_process_on_the_same_file_scores_without_keeping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "up.json"
    holder = CalibrationStore(path)
    holder.open()
    caplog.set_level(logging.WARNING)
    s = stage(path)
    feed(s, messages()[: CALIBRATION + 5])
    assert "in use by another gateway process" in caplog.text
    assert s.status()["calibrating"] == [] and not path.exists()
    holder.close()


POINTS = "\n".join(
    f"      - {{name: {n}, address: {2 * j}, type: float32, poll: fast}}"
    for j, n in enumerate(NAMES)
)


def gateway_yaml(port: int, coap_port: int) -> str:
    """The pump on the simulator, scored by a bridge to a CoAP server (any target would do)."""
    return "\n".join(
        [
            "gateway: {name: gw, status_interval: 0}",
            "devices:",
            modbus_device_yaml(port, poll_groups="{fast: {interval: 0.01}}"),
            "    points:",
            POINTS,
            "endpoints:",
            f"  cloud: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}}}",
            "bridges:",
            "  - {name: up, from: pump, to: cloud, anomaly: {calibration: 50}}",
        ]
    )


async def test_a_restarted_gateway_goes_on_without_calibrating(
    simulator: Simulator, tmp_path: Path
) -> None:
    device = await simulator.add_device()
    text = gateway_yaml(device.port, free_port())
    values, _ = series(200, seed=5)

    async def run(rows: np.ndarray) -> dict[str, object]:
        gateway = Gateway(load_config_text(text, str(tmp_path / "gw.yaml")))
        bridge = gateway.bridges[0]
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        try:
            await asyncio.wait_for(gateway.started.wait(), 20)
            for row in rows:
                for j, v in enumerate(row):
                    device.set_value("holding", 2 * j, float(v), DataType.FLOAT32)
                before = bridge.forwarded
                await wait_for(lambda b=before: bridge.forwarded >= b + 1, timeout=10)
            assert bridge.anomaly is not None
            return bridge.anomaly.status()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    first = await run(values[:60])
    assert first["calibrating"] == [] and first["restored"] == []
    assert read_records(store_path("up"))["pump"].rows == 50
    second = await run(values[60:100])  # fewer rows than a calibration takes
    assert second["calibrating"] == [] and second["restored"] == ["pump"]
    assert int(second["scored_samples"]) > 0  # type: ignore[call-overload]


CLI_CONFIG = """
gateway: {name: gw}
devices:
  pump: {protocol: modbus, host: 127.0.0.1, port: 1502,
         points: [{name: flow, address: 0, type: float32}]}
  tank: {protocol: modbus, host: 127.0.0.1, port: 1503,
         points: [{name: level, address: 0, type: float32}]}
endpoints:
  cloud: {protocol: coap, role: server, host: 127.0.0.1, port: 5683}
bridges:
  - {name: up, from: [pump, tank], to: cloud, anomaly: {calibration: 400}}
  - {name: plain, from: pump, to: cloud}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BRAIN_STATE_DIR"}
    return subprocess.run(
        [*GATEWAY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_status_of_a_file_kept_before_any_device_calibrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CLI_CONFIG)
    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(tmp_path / ".protocol-brain"))
    store = CalibrationStore(store_path("up"))
    store.open()
    assert store.save({})  # what a run that stopped while every device calibrated leaves
    store.close()
    out = cli("anomaly", "status", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "nothing kept yet" in out.stdout.splitlines()[1]
    out = cli("anomaly", "status", str(config), "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["calibrations"] == [
        {"bridge": "up", "path": str(store_path("up")), "device": None}
    ]


def test_status_and_recalibrate_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CLI_CONFIG)
    out = cli("anomaly", "status", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "nothing kept yet" in out.stdout

    # What gateway run would keep: the state folder next to the config.
    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(tmp_path / ".protocol-brain"))
    s = AnomalyStage(AnomalyOptions(calibration=400), Bus(), "up", store=store_path("up"))
    feed(s, messages("pump")[:410] + messages("tank")[:410])
    s.close()

    out = cli("anomaly", "status", str(config), "--json", cwd=tmp_path)
    rows = json.loads(out.stdout)["calibrations"]
    assert [(r["bridge"], r["device"], r["readings"]) for r in rows] == [
        ("up", "pump", 400),
        ("up", "tank", 400),
    ]
    text = cli("anomaly", "status", str(config), cwd=tmp_path).stdout
    assert "pump" in text and "tank" in text and "400" in text

    holder = CalibrationStore(store_path("up"))
    holder.open()  # a running gateway holds the file
    out = cli("anomaly", "recalibrate", str(config), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert f"held by a running gateway (pid {os.getpid()}); stop it" in out.stderr
    holder.close()

    out = cli("anomaly", "recalibrate", str(config), "--device", "tnak", cwd=tmp_path)
    assert out.returncode == 2 and "no kept calibration for tnak (kept: pump, tank)" in out.stderr
    assert list(read_records(store_path("up"))) == ["pump", "tank"]  # nothing forgotten

    out = cli("anomaly", "recalibrate", str(config), "--device", "tank", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tank will calibrate again at the next start" in out.stdout
    assert list(read_records(store_path("up"))) == ["pump"]

    out = cli("anomaly", "recalibrate", str(config), "--bridge", "plain", cwd=tmp_path)
    assert out.returncode == 2 and "no bridge with anomaly: named plain" in out.stderr
