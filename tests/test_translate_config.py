"""The ``translate:`` key as `gateway validate` reads it."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config_text

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
