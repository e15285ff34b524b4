"""The anomaly stage at run time: one alarm per fault, not one per sample.

The full path: the Modbus simulator is a pump whose registers the test drives with generated
readings (normal, a fault, normal, a second fault, normal); the gateway polls it, a bridge with
``anomaly:`` scores every reading and publishes to mosquitto, and the shadow records the score.
A bus-level test checks the same with exact control over every message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anomaly_data import series
from conftest import HOST, MosquittoBroker, wait_for
from test_e2e_modbus_mqtt import Collector
from test_translate_runtime import Recorder

from gateway.anomaly.stage import AnomalyStage, anomaly_topic, event_topic
from gateway.bridge import Bridge
from gateway.bus import Bus
from gateway.config import BridgeConfig, load_config_text
from gateway.config.anomaly import AnomalyOptions
from gateway.config.translate import TranslateConfig
from gateway.runtime import Gateway
from gateway.types import Message, MessageKind, Quality, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import Simulator

FAULTS = [(550, 630), (740, 820)]
ROWS = 900
CALIBRATION = 400


def messages(device: str = "pump") -> list[Message]:
    values, _ = series(ROWS, seed=5, faults=FAULTS)
    names = ("flow", "pressure", "temperature", "current")
    out = []
    for i, row in enumerate(values):
        samples = tuple(
            Sample(n, float(v), source_ts=1000.0 + i) for n, v in zip(names, row, strict=True)
        )
        out.append(Message.telemetry(device, samples))
    return out


def test_the_stage_raises_one_alarm_per_fault_and_clears_it() -> None:
    bus = Bus()
    events = bus.subscribe("event/#", maxsize=1000, name="events")
    scores = bus.subscribe("telemetry/+/anomaly", maxsize=10000, name="scores")
    stage = AnomalyStage(AnomalyOptions(calibration=CALIBRATION), bus, "b")
    returned: list[tuple[int, Message]] = []
    scored = []
    for i, message in enumerate(messages()):
        out, evs = stage.process(message)
        returned += [(i, e) for e in evs]
        if i >= CALIBRATION:
            assert isinstance(out.meta["anomaly_score"], float)
            assert set(out.meta["anomaly_points"]) == {"flow", "pressure", "temperature", "current"}
            scored.append(out.meta["anomaly"])
        else:
            assert "anomaly_score" not in out.meta
    raised = [(i, e) for i, e in returned if e.samples[0].value is True]
    cleared = [(i, e) for i, e in returned if e.samples[0].value is False]
    assert len(raised) == len(FAULTS), [(i, e.meta) for i, e in returned]
    assert len(cleared) == len(FAULTS)
    for (start, _end), (i, event) in zip(FAULTS, raised, strict=True):
        assert start <= i < start + 20  # found within 20 samples of the fault's start
        assert event.kind is MessageKind.EVENT and event.topic == event_topic("pump")
        assert event.meta["event"] == "anomaly"
    for (_start, end), (i, _) in zip(FAULTS, cleared, strict=True):
        assert end <= i < end + 60
    assert len(events) == 2 * len(FAULTS)  # the same events went on the bus
    assert len(scores) == ROWS - CALIBRATION
    assert scores.get_nowait().topic == anomaly_topic("pump")
    assert stage.status()["alarms"] == len(FAULTS)
    assert stage.status()["scored_samples"] == 4 * (ROWS - CALIBRATION)


def test_a_fixed_threshold_and_a_named_calibration_period() -> None:
    bus = Bus()
    options = AnomalyOptions.model_validate(
        {"calibration_period": [1000.0 + 100, 1000.0 + 250], "threshold": 50.0}
    )
    stage = AnomalyStage(options, bus, "b")
    for message in messages()[:260]:
        stage.process(message)
    cal = stage.devices["pump"].scorer.cal
    assert cal is not None and cal.threshold == 50.0
    values, _ = series(ROWS, seed=5, faults=FAULTS)
    # calibrated on the rows of the period only
    assert np.allclose(cal.mean, values[100:251].mean(axis=0))


def test_only_good_readings_calibrate(caplog: pytest.LogCaptureFixture) -> None:
    """An excursion above a point's high (Uncertain, value kept) and a failed read (Bad, no
    value: the last one is carried on) during the clean period are left out of it; the period
    waits for Good rows instead. Scoring afterwards takes every reading."""
    caplog.set_level(logging.INFO, logger="gateway.anomaly.stage")
    stream = messages()
    excursion = range(100, 150)
    for i in excursion:  # flow far above its high: no normal to learn from
        m = stream[i]
        samples = tuple(
            replace(s, value=1000.0, quality=Quality.UNCERTAIN, reason="above high 50")
            if s.point == "flow"
            else s
            for s in m.samples
        )
        stream[i] = replace(m, samples=samples)
    m = stream[200]  # pressure's read failed; flow's value is still carried from 199
    stream[200] = replace(
        m,
        samples=tuple(
            replace(s, value=None, quality=Quality.BAD, reason="timeout")
            if s.point == "pressure"
            else s
            for s in m.samples
        ),
    )
    stage = AnomalyStage(AnomalyOptions(calibration=CALIBRATION), Bus(), "b")
    left_out = [*excursion, 200]
    for i, message in enumerate(stream):
        out, _ = stage.process(message)
        assert ("anomaly_score" in out.meta) == (i >= CALIBRATION + len(left_out))
    values, _ = series(ROWS, seed=5, faults=FAULTS)
    kept = [i for i in range(CALIBRATION + len(left_out)) if i not in left_out]
    cal = stage.devices["pump"].scorer.cal
    assert cal is not None and np.allclose(cal.mean, values[kept].mean(axis=0))
    assert "pump calibrated on 400 samples of 4 points, threshold " in caplog.text
    assert "(51 readings not Good left out)" in caplog.text
    assert "left out of its calibration" not in caplog.text  # 51 < 400: no warning


def test_a_point_stuck_out_of_range_while_calibrating_is_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = AnomalyStage(AnomalyOptions(calibration=50), Bus(), "b")
    for message in messages()[:200]:
        samples = tuple(
            replace(s, quality=Quality.UNCERTAIN) if s.point == "current" else s
            for s in message.samples
        )
        stage.process(replace(message, samples=samples))
    assert stage.status()["calibrating"] == ["pump"]
    warned = [r.getMessage() for r in caplog.records if "left out of its" in r.getMessage()]
    assert warned == [
        "anomaly b: pump: 50 readings left out of its calibration: current not Good (out of"
        " range, uncertain or failed); it calibrates on Good readings only"
    ]


def test_a_failing_point_outside_the_row_does_not_hold_calibration_back() -> None:
    """A register that always fails (Bad, no value) never enters the row, so it must not keep
    the device from calibrating on the points that do."""
    stage = AnomalyStage(AnomalyOptions(calibration=60), Bus(), "b")
    for message in messages()[:100]:
        spare = Sample("spare", None, Quality.BAD, message.samples[0].source_ts, reason="exc 02")
        stage.process(replace(message, samples=(*message.samples, spare)))
    dev = stage.devices["pump"]
    assert dev.points == ["flow", "pressure", "temperature", "current"]
    assert dev.calibrated and dev.left_out == 0


def test_a_calibration_period_with_too_few_good_rows_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = AnomalyOptions.model_validate({"calibration_period": [1000.0, 1000.0 + 100]})
    stage = AnomalyStage(options, Bus(), "b")
    for i, message in enumerate(messages()[:300]):
        samples = tuple(
            replace(s, quality=Quality.UNCERTAIN) if s.point == "flow" and 5 < i else s
            for s in message.samples
        )
        stage.process(replace(message, samples=samples))
    assert stage.status()["calibrating"] == ["pump"]
    warned = [
        r.getMessage() for r in caplog.records if "calibration_period is over" in r.getMessage()
    ]
    assert warned == [
        "anomaly b: pump: its calibration_period is over with 6 Good rows of the 42 it needs"
        " (95 readings left out as not Good: flow); it is not scored until it is recalibrated"
        " with another period"
    ]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="start must be before end"):
        AnomalyOptions.model_validate({"calibration_period": ["2024-01-02", "2024-01-01"]})
    with pytest.raises(ValueError):
        AnomalyOptions.model_validate({"window": 30})
    with pytest.raises(ValueError):
        AnomalyOptions.model_validate({"treshold": 3})


CONFIG = """
gateway: {{name: gw, status_interval: 0}}
devices:
  pump:
    protocol: modbus
    host: {host}
    port: {port}
    poll_groups: {{fast: {{interval: 0.01}}}}
    points:
      - {{name: flow, address: 0, type: float32, poll: fast}}
      - {{name: pressure, address: 2, type: float32, poll: fast}}
      - {{name: temperature, address: 4, type: float32, poll: fast}}
      - {{name: current, address: 6, type: float32, poll: fast}}
endpoints:
  broker:
    protocol: mqtt
    host: {broker_host}
    port: {broker_port}
    client_id: anomaly-gw
    outbox: null
bridges:
  - name: up
    from: pump
    to: broker
    topic: "gw/{{device}}/{{point}}"
    payload: value
    anomaly: {{model: student, calibration: {calibration}}}
shadow:
  path: {shadow}
"""


async def test_gateway_with_a_modbus_pump_alarms_once_per_fault(
    simulator: Simulator, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    device = await simulator.add_device()
    values, _ = series(ROWS, seed=5, faults=FAULTS)
    text = CONFIG.format(
        host=HOST,
        port=device.port,
        broker_host=mosquitto.host,
        broker_port=mosquitto.port,
        calibration=CALIBRATION,
        shadow=tmp_path / "shadow.db",
    )
    for j, v in enumerate(values[0]):  # the first poll reads a real row, not zeros
        device.set_value("holding", 2 * j, float(v), DataType.FLOAT32)
    gateway = Gateway(load_config_text(text, str(tmp_path / "gw.yaml")))
    mqtt = Collector(mosquitto, "gw/#")
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    bridge = gateway.bridges[0]
    assert bridge.anomaly is not None
    polls: list[int] = []

    def scored() -> int:
        return bridge.anomaly.devices["pump"].scored if "pump" in bridge.anomaly.devices else 0  # type: ignore[union-attr]

    async def drive() -> None:
        # Wait until the gateway has read a row before writing the next (the deadband sends
        # changed values only, so each row is one message).
        for row in values[1:]:
            for j, v in enumerate(row):
                device.set_value("holding", 2 * j, float(v), DataType.FLOAT32)
            before = bridge.forwarded
            await wait_for(lambda b=before: bridge.forwarded >= b + 1, timeout=10)
            polls.append(bridge.forwarded)

    try:
        await asyncio.wait_for(gateway.started.wait(), 20)
        await drive()
        await wait_for(lambda: len(mqtt.on("gw/pump/anomaly")) >= 2 * len(FAULTS), timeout=10)
        await asyncio.sleep(0.5)
        alarms: list[Any] = mqtt.on("gw/pump/anomaly")
        assert alarms == [True, False] * len(FAULTS), alarms
        assert bridge.anomaly.status()["alarms"] == len(FAULTS)
        assert scored() >= ROWS - CALIBRATION - 10  # a row may be read twice or skipped
        assert gateway.shadow is not None
        doc = await wait_for(lambda: gateway.shadow.state("pump"), timeout=5)  # type: ignore[union-attr]
        await wait_for(
            lambda: "anomaly_score" in gateway.shadow.state("pump").reported,  # type: ignore[union-attr]
            timeout=5,
        )
        assert doc is not None
        assert isinstance(gateway.shadow.state("pump").reported["anomaly_score"], float)  # type: ignore[union-attr]
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        mqtt.close()


def test_batches_score_exactly_like_one_message_at_a_time() -> None:
    one = AnomalyStage(AnomalyOptions(calibration=CALIBRATION), Bus(), "one")
    many = AnomalyStage(AnomalyOptions(calibration=CALIBRATION), Bus(), "many")
    stream = messages("a") + messages("b")  # two devices, interleaved below
    stream = [m for pair in zip(stream[:ROWS], stream[ROWS:], strict=True) for m in pair]
    singles = [one.process(m) for m in stream]
    batched = [r for i in range(0, len(stream), 37) for r in many.process_batch(stream[i : i + 37])]
    assert len(singles) == len(batched) == 2 * ROWS
    for (m1, e1), (m2, e2) in zip(singles, batched, strict=True):
        s1, s2 = m1.meta.get("anomaly_score"), m2.meta.get("anomaly_score")
        assert (s1 is None and s2 is None) or s1 == pytest.approx(s2, rel=1e-5)
        assert [e.meta for e in e1] == [e.meta for e in e2]
    assert one.alarms == many.alarms == 2 * len(FAULTS)


@pytest.mark.parametrize("mapped", [("flow",), ("valve",)])  # the pump has no valve
async def test_translate_on_the_same_bridge_does_not_narrow_what_is_scored(
    mapped: tuple[str, ...],
) -> None:
    """The bridge scores its source's points under their own names before translate routes
    them: points translate drops or holds back are scored too, and an alarm reaches the
    target even when none of the message's points is forwarded."""
    bus = Bus()
    target = Recorder()
    translate = TranslateConfig(mode="map", map={p: f"{p}_renamed" for p in mapped})
    config = BridgeConfig(
        "up", ("pump",), ("*",), "t", {}, None, translate, AnomalyOptions(calibration=CALIBRATION)
    )
    bridge = Bridge(config, bus, target)  # type: ignore[arg-type]
    bridge.subscribe()
    task = asyncio.create_task(bridge.run())
    try:
        for message in messages():
            await bus.publish(message)
        stage = bridge.anomaly
        assert stage is not None
        await wait_for(lambda: stage.status()["scored_samples"] == 4 * (ROWS - CALIBRATION), 30)
        await asyncio.sleep(0.1)  # the last message's send
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    events = [m for m in target.sent if m.kind is MessageKind.EVENT]
    forwarded = [m for m in target.sent if m.kind is not MessageKind.EVENT]
    assert [e.samples[0].value for e in events] == [True, False] * len(FAULTS)
    names = {f"{p}_renamed" for p in mapped if p != "valve"}
    assert {s.point for m in forwarded for s in m.samples} == names
    scored = [m for m in forwarded if "anomaly_points" in m.meta]
    assert len(scored) == (ROWS - CALIBRATION if names else 0)
    for m in scored:
        assert set(m.meta["anomaly_points"]) == {"flow", "pressure", "temperature", "current"}


def test_a_bridge_with_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    text = f"""
devices:
  pump: {{protocol: modbus, host: 127.0.0.1, port: 5020, points: [{{name: flow, address: 0}}]}}
endpoints:
  broker: {{protocol: mqtt, host: 127.0.0.1, port: 1883, client_id: x}}
bridges:
  - {{name: up, from: pump, to: broker, anomaly: {{model: {tmp_path}/none.onnx}}}}
"""
    with pytest.raises(ConfigError, match="none.onnx', which is not a file"):
        load_config_text(text, "gw.yaml")
    config = load_config_text(text.replace(f"{tmp_path}/none.onnx", "teacher"), "gw.yaml")
    options = config.bridges[0].anomaly
    assert options is not None and options.model == "teacher" and options.calibration == 400


def test_a_model_file_is_found_next_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import load_config

    site = tmp_path / "site"
    site.mkdir()
    (site / "pump.onnx").write_bytes(b"onnx")
    (site / "gw.yaml").write_text(
        """
devices:
  pump: {protocol: modbus, host: 127.0.0.1, port: 5020, points: [{name: flow, address: 0}]}
endpoints:
  broker: {protocol: mqtt, host: 127.0.0.1, port: 1883, client_id: x}
bridges:
  - {name: up, from: pump, to: broker, anomaly: {model: pump.onnx}}
"""
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    options = load_config(site / "gw.yaml").bridges[0].anomaly
    assert options is not None and options.model == str(site / "pump.onnx")


GATEWAY_WITH_ANOMALY = """
devices:
  pump: {protocol: modbus, host: 127.0.0.1, port: 5020, points: [{name: flow, address: 0}]}
endpoints:
  broker: {protocol: mqtt, host: 127.0.0.1, port: 1883, client_id: x}
bridges:
  - {name: up, from: pump, to: broker, anomaly: {model: teacher}}
"""


def test_gateway_run_without_onnxruntime_is_one_line_naming_the_bridge_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main
    from gateway.runtime import StartError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    config = load_config_text(GATEWAY_WITH_ANOMALY, "gw.yaml")
    with pytest.raises(StartError, match="pip install 'protocol-brain\\[ml\\]'"):
        Gateway(config)

    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY_WITH_ANOMALY)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: bridge 'up' could not start: anomaly scoring needs onnxruntime: "
        "pip install 'protocol-brain[ml]'"
    )
    assert not any("Traceback" in line for line in err)


def test_a_model_file_that_does_not_load_is_a_start_error_naming_the_bridge(
    tmp_path: Path,
) -> None:
    from gateway.runtime import StartError

    bad = tmp_path / "pump.onnx"
    bad.write_bytes(b"onnx")
    config = load_config_text(GATEWAY_WITH_ANOMALY.replace("teacher", str(bad)), "gw.yaml")
    with pytest.raises(StartError, match="bridge 'up' could not start: .*not a loadable ONNX"):
        Gateway(config)


def test_points_and_exclude_choose_what_is_scored(caplog: pytest.LogCaptureFixture) -> None:
    """An operator's setpoint step is not a fault: excluded, it raises no alarm."""
    values, _ = series(ROWS, seed=5)
    names = ("flow", "pressure", "temperature", "current")
    stream = []
    for i, row in enumerate(values):
        setpoint = 1000.0 if i < 600 else 1500.0
        samples = [
            Sample(n, float(v), source_ts=1000.0 + i) for n, v in zip(names, row, strict=True)
        ]
        stream.append(Message.telemetry("pump", (*samples, Sample("speed_sp", setpoint))))

    def alarms(**options: object) -> tuple[AnomalyStage, int]:
        stage = AnomalyStage(AnomalyOptions.model_validate(options), Bus(), "b")
        raised = sum(1 for m in stream for e in stage.process(m)[1] if e.samples[0].value is True)
        return stage, raised

    everything, raised = alarms()
    assert everything.devices["pump"].points == [*names, "speed_sp"] and raised == 1
    without, raised = alarms(exclude=["*_sp"])
    assert without.devices["pump"].points == list(names) and raised == 0
    chosen, _ = alarms(points=["flow", "press*"])
    assert chosen.devices["pump"].points == ["flow", "pressure"]
    caplog.set_level(logging.WARNING)
    nothing, raised = alarms(points=["level"])
    assert nothing.devices == {} and raised == 0
    assert caplog.text.count("no numeric point of pump is selected") == 1
