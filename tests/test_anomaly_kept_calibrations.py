"""Kept calibrations and bridge names: a renamed bridge is told about, and can carry, its past.

Calibrations are kept per bridge name (``{state}/anomaly/<bridge>.json``). Before, renaming a
bridge in the YAML made its devices calibrate again from scratch without a word (alarms off
until then, and normal learned on whatever the devices did at that moment), while the old file
stayed on disk where nothing read it and ``gateway anomaly status`` did not show it. Now the
bridge warns once, naming the calibrations it does not use; ``status`` lists them; ``carry``
moves them to the new name. (A kept calibration that no longer fits the bridge's model, window,
options or points was already refused with its reason: tests/test_anomaly_store.py.)
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pytest
from test_anomaly_runtime import CALIBRATION, messages

from gateway.anomaly.stage import AnomalyStage
from gateway.anomaly.store import CalibrationStore, read_records, store_path
from gateway.bus import Bus
from gateway.cli import main
from gateway.config.anomaly import AnomalyOptions

CONFIG = """
gateway: {name: gw}
devices:
  pump: {protocol: modbus, host: 127.0.0.1, port: 1502,
         points: [{name: flow, address: 0, type: float32}]}
endpoints:
  cloud: {protocol: coap, role: server, host: 127.0.0.1, port: 5683}
bridges:
  - {name: pump-up, from: pump, to: cloud, anomaly: {calibration: 400}}
  - {name: spare, from: pump, to: cloud, anomaly: {calibration: 400}, enabled: false}
"""


def stage(name: str) -> AnomalyStage:
    options = AnomalyOptions(calibration=CALIBRATION)
    return AnomalyStage(options, Bus(), name, store=store_path(name))


def keep(name: str, devices: tuple[str, ...] = ("pump",)) -> None:
    """A bridge ``name`` that calibrated ``devices`` and stopped (its process gone)."""
    s = stage(name)
    for device in devices:
        for m in messages(device)[: CALIBRATION + 5]:
            s.process(m)
    s.close()
    del s
    gc.collect()


def told(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings about calibrations kept under other bridge names."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "no calibration kept" in r.getMessage()
    ]


def test_a_renamed_bridge_warns_once_naming_the_calibrations_it_does_not_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keep("up", ("pump", "tank"))
    caplog.set_level(logging.INFO, logger="gateway.anomaly")
    other = stage("other")  # a second bridge of the running gateway, not yet scoring
    renamed = stage("pump-up")
    for m in messages()[:50]:
        renamed.process(m)
    assert renamed.status()["calibrating"] == ["pump"]  # a new name starts from scratch...
    (said,) = told(caplog)  # ...but says so, once
    assert "anomaly pump-up: no calibration kept under this bridge's name" in said
    assert "up (pump, tank)" in said and "other (" not in said
    assert "gateway anomaly carry CONFIG --from up --to pump-up" in said
    assert str(store_path("up")) in said
    renamed.close()
    other.close()


def test_no_warning_when_every_kept_calibration_belongs_to_a_running_bridge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keep("up")
    caplog.set_level(logging.INFO, logger="gateway.anomaly")
    first, new = stage("up"), stage("new")  # "up" runs on, "new" is a new bridge
    for m in messages()[:50]:
        first.process(m)
        new.process(m)
    assert first.status()["restored"] == ["pump"] and new.status()["calibrating"] == ["pump"]
    assert told(caplog) == []
    first.close()
    new.close()


def run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["anomaly", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_lists_orphaned_calibrations_and_carry_moves_them_to_the_new_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG)
    keep("up")  # the bridge's name before the rename
    keep("spare")  # switched off in the config: not orphaned
    keep("pump-up", ("tank",))  # calibrated under the new name meanwhile

    code, out, _ = run("status", str(config), "--json", capsys=capsys)
    assert code == 0
    doc = json.loads(out)
    assert [(r["bridge"], r["device"]) for r in doc["calibrations"]] == [("pump-up", "tank")]
    assert doc["orphaned"] == [{"bridge": "up", "path": str(store_path("up")), "devices": ["pump"]}]
    code, out, _ = run("status", str(config), capsys=capsys)
    assert "kept for bridges not in the config" in out and str(store_path("up")) in out
    assert f"gateway anomaly carry {config} --from OLD --to NEW" in out

    holder = CalibrationStore(store_path("pump-up"))
    holder.open()  # a running gateway holds the new name's file
    code, _, err = run("carry", str(config), "--from", "up", "--to", "pump-up", capsys=capsys)
    assert code == 1 and "held by a running gateway" in err
    holder.close()
    assert store_path("up").exists()

    code, _, err = run("carry", str(config), "--from", "uq", "--to", "pump-up", capsys=capsys)
    assert code == 2 and f"{store_path('uq')}: no such file" in err
    code, _, err = run("carry", str(config), "--from", "up", "--to", "spare", capsys=capsys)
    assert code == 2 and "no bridge with anomaly: named spare" in err
    code, _, err = run("carry", str(config), "--from", "pump-up", "--to", "pump-up", capsys=capsys)
    assert code == 2 and "bridge pump-up still scores" in err  # its calibrations are in use

    code, out, err = run("carry", str(config), "--from", "up", "--to", "pump-up", capsys=capsys)
    assert code == 0, err
    assert "bridge pump-up: pump will go on with the calibration kept for up" in out
    assert not store_path("up").exists()
    assert sorted(read_records(store_path("pump-up"))) == ["pump", "tank"]
    code, out, _ = run("status", str(config), "--json", capsys=capsys)
    assert json.loads(out)["orphaned"] == []

    renamed = stage("pump-up")  # the next start: no new clean period
    for m in messages()[:40]:
        renamed.process(m)
    assert renamed.status()["restored"] == ["pump"]
    renamed.close()


def test_carried_calibrations_replace_those_learned_under_the_new_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG)
    keep("up")
    old = read_records(store_path("up"))["pump"]
    s = stage("pump-up")  # learns pump again, later than under the old name
    for m in messages()[100 : 100 + CALIBRATION + 5]:
        s.process(m)
    s.close()
    assert read_records(store_path("pump-up"))["pump"].calibrated_at > old.calibrated_at
    code, out, err = run("carry", str(config), "--from", "up", "--to", "pump-up", capsys=capsys)
    assert code == 0, err
    assert "(replacing its own for pump)" in out
    assert read_records(store_path("pump-up"))["pump"].calibrated_at == old.calibrated_at
