"""The ``translate:`` key as `gateway validate` reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config_text
from gateway.config.translate import TranslateConfig

PLANT = (
    "devices:\n"
    "  pump: {protocol: modbus, host: h, points: [{name: temp, address: 0},"
    " {name: speed_sp, address: 1, access: rw}]}\n"
    "endpoints:\n  broker: {protocol: mqtt, host: h}\n"
    "bridges:\n"
)


def test_two_points_mapped_to_one_name_are_refused_at_the_map() -> None:
    """A write from the target to that name could not tell which of the two to write."""
    text = PLANT + (
        "  - name: up\n    from: pump\n    to: broker\n"
        "    translate: {map: {temp: x, speed_sp: x}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml")
    (p,) = info.value.problems
    assert (p.dotted, p.line) == ("bridges[0].translate.map", 9)
    assert "temp, speed_sp of pump all mapped to 'x'" in str(p)


def test_distinct_names_are_fine() -> None:
    text = (
        PLANT + "  - {name: up, from: pump, to: broker, translate: {map: {temp: t, speed_sp: s}}}\n"
    )
    assert load_config_text(text, "gw.yaml").bridges[0].translate is not None


def test_a_write_to_a_shared_name_reaches_the_point_its_device_has() -> None:
    from gateway.config.translate import TranslateConfig
    from gateway.translator.transform import Translate

    translate = Translate(TranslateConfig(map={"temp": "t", "TEMP_1": "t"}))
    assert translate.source_name("t", {"TEMP_1", "other"}) == "TEMP_1"
    assert translate.source_name("t", {"temp"}) == "temp"
    assert translate.source_name("t", {"x"}) is None


def test_a_map_key_that_names_no_carried_point_is_refused_at_the_key() -> None:
    """A misspelt key passed validate; the run then dropped the point it meant (map mode)
    without a word. Keys of computed points and of any source count; a source that names its
    points at run time (MQTT points: keys) cannot be checked."""
    text = PLANT + (
        "  - name: up\n    from: pump\n    to: broker\n    points: [temp]\n"
        "    computed: [{name: hot, expr: temp > 50}]\n"
        "    translate: {map: {temp: t, tmep: x, hot: h, speed_sp: s}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml")
    first, second = info.value.problems
    assert (first.dotted, first.line) == ("bridges[0].translate.map.tmep", 11)
    assert "'tmep', which is no point the bridge carries" in str(first)
    assert "one of: temp, hot (did you mean 'temp'?)" in str(first)
    assert second.dotted == "bridges[0].translate.map.speed_sp"  # not selected by points:
    fine = text.replace(" tmep: x,", "").replace(", speed_sp: s", "")
    assert load_config_text(fine, "gw.yaml").bridges[0].translate is not None
    keys = (
        "endpoints:\n  plant: {protocol: mqtt, host: h, subscriptions: [{topic: 'p/#',"
        " points: keys}]}\n  broker: {protocol: mqtt, host: h}\n"
        "bridges:\n  - {name: up, from: plant, to: broker, translate: {map: {anything: a}}}\n"
    )
    assert load_config_text(keys, "gw.yaml").bridges[0].translate is not None


def test_a_trained_model_is_used_at_run_time(tmp_path: Path) -> None:
    """``translate: {model: DIR}`` takes what `gateway translator train --out DIR` wrote; there
    was no way to run anything but the shipped model. ``classify --model DIR`` takes the folder
    too (it said "is a directory")."""
    import shutil

    from gateway.cli import main
    from gateway.translator.model import DEFAULT_MODEL
    from gateway.translator.transform import Translate
    from gateway.types import Sample

    site = tmp_path / "site"
    (site / "trained").mkdir(parents=True)
    for name in (DEFAULT_MODEL.name, "meta.json"):
        shutil.copy(DEFAULT_MODEL.with_name(name), site / "trained" / name)
    bridge = "  - {name: up, from: pump, to: broker, translate: {mode: auto, model: %s}}\n"
    config = load_config_text(PLANT + bridge % "trained", str(site / "gw.yaml"))
    options = config.bridges[0].translate
    assert options is not None and options.model == str(site / "trained")
    translate = Translate(options)
    translate.prepare()
    (out,), _ = translate.route("ahu", (Sample("AHU1_SAT", 1.0),))
    assert out.point == "Supply_Air_Temperature_Sensor.AHU1_SAT"
    file = load_config_text(PLANT + bridge % "trained/translator.onnx", str(site / "gw.yaml"))
    assert file.bridges[0].translate.model == str(site / "trained" / "translator.onnx")  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        load_config_text(PLANT + bridge % "nowhere", str(site / "gw.yaml"))
    (p,) = info.value.problems
    assert p.dotted == "bridges[0].translate.model"
    assert "'nowhere', which is neither a model file nor a folder with translator.onnx" in str(p)
    points = site / "points.csv"
    points.write_text("name\nAHU1_SAT\n")
    out_csv = site / "out.csv"
    assert (
        main(["classify", str(points), "--model", str(site / "trained"), "--out", str(out_csv)])
        == 0
    )
    assert "Supply_Air_Temperature_Sensor" in out_csv.read_text()
    assert main(["classify", str(points), "--model", str(tmp_path), "--out", str(out_csv)]) == 2


@pytest.mark.parametrize(
    "entry, side", [('"": x', "source"), ('temp: ""', "target"), ("temp: ' '", "target")]
)
def test_an_empty_name_in_the_map_is_refused(entry: str, side: str) -> None:
    text = PLANT + f"  - {{name: up, from: pump, to: broker, translate: {{map: {{{entry}}}}}}}\n"
    with pytest.raises(ConfigError, match=f"an empty {side} point name; write both names"):
        load_config_text(text, "gw.yaml")


def test_examples_of_a_class_the_model_does_not_score_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trained model whose class list lacks an example's class (trained on another Brick):
    validate passed and the start failed in the few-shot head's ValueError; classify
    --model --examples crashed the same way. Now those examples are left out and said."""
    import json
    import shutil

    from gateway.cli import main
    from gateway.translator.model import DEFAULT_MODEL
    from gateway.translator.transform import Translate
    from gateway.types import Sample

    trained = tmp_path / "trained"
    trained.mkdir()
    shutil.copy(DEFAULT_MODEL, trained / DEFAULT_MODEL.name)
    meta = json.loads(DEFAULT_MODEL.with_name("meta.json").read_text())
    meta["classes"] = ["Renamed_Run_Status" if c == "Run_Status" else c for c in meta["classes"]]
    (trained / "meta.json").write_text(json.dumps(meta))
    examples = tmp_path / "ex.csv"
    examples.write_text(
        "name,brick_class\nAHU1_SAT,Supply_Air_Temperature_Sensor\nAHU1_SF_STS,Run_Status\n"
    )
    options = TranslateConfig(mode="auto", model=str(trained), examples=str(examples))
    translate = Translate(options)
    with caplog.at_level("WARNING", logger="gateway.translator.transform"):
        translate.prepare()
    assert "classes the model does not score: Run_Status" in caplog.text
    (out,), _ = translate.route("ahu", (Sample("AHU2_SAT", 1.0),))
    assert out.point == "Supply_Air_Temperature_Sensor.AHU2_SAT"
    points = tmp_path / "points.csv"
    points.write_text("name\nAHU2_SAT\n")
    args = ["classify", str(points), "--model", str(trained), "--examples", str(examples)]
    assert main(args) == 0
    out_text, err = capsys.readouterr()
    assert "left out the examples of 1 class the model does not score: Run_Status" in err
    assert "Supply_Air_Temperature_Sensor" in out_text
