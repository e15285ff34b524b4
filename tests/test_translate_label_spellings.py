"""``translate.examples`` labels read in any spelling `vocab.canonical` knows, in the config
check and at run time; a label that is no Brick class is a config error naming both files.

A regression guard: this already held when it was written (`read_labeled` uses `canonical`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.translate import TranslateConfig
from gateway.plugins import load_registry
from gateway.translator.transform import Translate
from gateway.types import Sample

LABELS = (
    "name,brick_class\n"
    "AHU1_SAT,supply air temperature sensor\n"
    "AHU1_RAT,brick:Return_Air_Temperature_Sensor\n"
    "AHU1_MAT,<https://brickschema.org/schema/Brick#Mixed_Air_Temperature_Sensor>\n"
    "AHU1_ZT,ZONE-AIR-TEMPERATURE-SENSOR\n"
)
CONFIG = (
    "gateway: {name: edge}\n"
    "endpoints:\n"
    "  plant: {protocol: mqtt, host: b, subscriptions: [{topic: 'plant/#', points: keys}]}\n"
    "  up: {protocol: mqtt, host: b}\n"
    "bridges:\n"
    "  - name: up\n"
    "    from: plant\n"
    "    to: up\n"
    "    translate: {mode: auto, examples: labels.csv}\n"
)


def test_any_spelling_of_a_class_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "gw.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "gw.yaml", load_registry())
    options = config.bridges[0].translate
    assert options is not None and options.examples == str(tmp_path / "labels.csv")
    translate = Translate(TranslateConfig(mode="auto", examples=options.examples))
    translate.prepare()
    (out,), _ = translate.route("ahu", (Sample("AHU2_SAT", 1.0),))
    assert out.point == "Supply_Air_Temperature_Sensor.AHU2_SAT"


def test_an_unknown_class_is_left_out_with_a_warning_at_the_config_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As `classify --examples` reads the same file (it was a config error here, so a file
    classify took was refused by validate); a file with no class we know is still an error."""
    (tmp_path / "labels.csv").write_text(LABELS + "AHU1_X,Not_A_Brick_Class\n")
    (tmp_path / "gw.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "gw.yaml", load_registry())
    (warning,) = config.warnings
    assert warning.startswith(f"{tmp_path / 'gw.yaml'}:9:")
    assert "bridges[0].translate.examples" in warning
    assert "left out 1 point whose brick_class is not a Brick point class we know" in warning
    assert "'Not_A_Brick_Class'" in warning
    options = config.bridges[0].translate
    assert options is not None and options.examples is not None
    translate = Translate(TranslateConfig(mode="auto", examples=options.examples))
    with caplog.at_level("WARNING", logger="gateway.translator.transform"):
        translate.prepare()  # the run says it too
    assert "'Not_A_Brick_Class'" in caplog.text
    (tmp_path / "labels.csv").write_text("name,brick_class\nAHU1_X,Not_A_Brick_Class\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "gw.yaml", load_registry())
    (problem,) = info.value.problems
    assert problem.dotted == "bridges[0].translate.examples"
    assert "no point has a Brick point class we know (line 2: 'Not_A_Brick_Class')" in str(problem)
