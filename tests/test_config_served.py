"""``gateway validate`` refuses what a server target would refuse or serve wrongly at start:
the Modbus server's map checks (the server's own code, `protocols.modbus.server.check_map`),
units that cannot convert, a server as a bridge source, and points named only at run time."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.server_config import ModbusServerRoute

BASE = """
devices:
  plc:
    protocol: modbus
    host: 127.0.0.1
    points:
      - {name: temp, address: 0, type: int16, unit: degC}
      - {name: label, address: 1, type: string, length: 2}
      - {name: sw, table: coil, address: 0, access: rw}
      - {name: cnt, address: 3, type: uint16}
endpoints:
  mb: {protocol: modbus, role: server, port: 1502}
  broker:
    protocol: mqtt
    host: localhost
    subscriptions: [{topic: "a/#", points: keys}]
  ua: {protocol: opcua, role: server}
bridges:
"""


def problems(bridges: str) -> dict[str, tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + bridges, "gw.yaml")
    return {p.dotted: (p.found, p.expected) for p in info.value.problems}


def bridge(body: str, name: str = "serve", source: str = "plc", to: str = "mb") -> str:
    return f"  - name: {name}\n    from: {source}\n    to: {to}\n" + body


def test_a_map_point_the_bridge_does_not_carry() -> None:
    found = problems(bridge("    map: [{point: tmp, address: 0}]\n"))
    assert list(found) == ["bridges[0].map[0].point"]
    what, expected = found["bridges[0].map[0].point"]
    assert "carries no point 'tmp'" in what and "temp, label, sw, cnt" in expected


def test_a_map_point_the_bridge_globs_or_translation_leave_out() -> None:
    body = "    points: [t*]\n    map: [{point: cnt, address: 0}]\n"
    assert list(problems(bridge(body))) == ["bridges[0].map[0].point"]
    body = "    translate: {map: {temp: t}}\n    map: [{point: temp, address: 0}]\n"
    assert list(problems(bridge(body))) == ["bridges[0].map[0].point"]
    ok = "    translate: {map: {temp: t}}\n    map: [{point: t, address: 0}]\n"
    load_config_text(BASE + bridge(ok))


def test_b_two_bridges_mapping_one_register() -> None:
    found = problems(
        bridge("    map: [{point: cnt, address: 10}]\n", "one")
        + bridge("    map: [{point: temp, address: 10}]\n", "two")
    )
    assert list(found) == ["bridges[1].map[0].address"]
    assert "holding 10 is taken by plc/cnt" in found["bridges[1].map[0].address"][0]
    # other unit ids and tables are other registers
    load_config_text(
        BASE.replace("port: 1502", "port: 1502, unit_ids: [1, 2]")
        + bridge("    map: [{point: cnt, address: 10}]\n", "one")
        + bridge("    unit_id: 2\n    map: [{point: temp, address: 10}]\n", "two")
        + bridge("    map: [{point: temp, address: 10, table: input}]\n", "three")
    )


def test_c_a_unit_id_the_server_does_not_serve() -> None:
    found = problems(bridge("    unit_id: 9\n    map: [{point: temp, address: 0}]\n"))
    assert list(found) == ["bridges[0].unit_id"]
    assert "9, which is not one of the server's unit_ids [1]" in found["bridges[0].unit_id"][0]


def test_d_e_a_string_point_as_a_number_or_a_coil() -> None:
    found = problems(
        bridge(
            "    map:\n"
            "      - {point: label, address: 0, type: float32}\n"
            "      - {point: label, table: coil, address: 0}\n"
            "      - {point: label, address: 4, type: string, length: 2}\n"
        )
    )
    assert list(found) == ["bridges[0].map[0].type", "bridges[0].map[1].table"]
    assert "label is a string" in found["bridges[0].map[1].table"][0]


def test_f_units_for_a_string_is_an_error_for_a_point_without_a_unit_a_warning() -> None:
    """A string never converts. A point without a unit in the config may get one from its
    readings (SenML's u, a device's own): that is said, not refused."""
    found = problems(bridge("    units: {cnt: degF, label: degF}\n", to="broker"))
    assert set(found) == {"bridges[0].units.label"}
    assert "label is a string" in found["bridges[0].units.label"][0]
    config = load_config_text(BASE + bridge("    units: {cnt: degF}\n", to="broker"), "gw.yaml")
    (warning,) = [w for w in config.warnings if "units" in w]
    assert "cnt has no unit in the config: converted to degF only when its readings" in warning
    load_config_text(BASE + bridge("    units: {temp: degF}\n", to="broker"))


def test_f_a_wide_units_glob_only_warns_about_what_it_cannot_convert() -> None:
    """``units: {'*': degF}`` meant the points it converts; the others are said, not refused."""
    config = load_config_text(BASE + bridge("    units: {'*': degF}\n", to="broker"), "gw.yaml")
    warnings = [w for w in config.warnings if "bridges[0].units['*']: " in w]
    assert len(warnings) == 2
    assert "sw, cnt have no unit in the config" in warnings[0]
    assert "label is a string: not converted" in warnings[1]


def test_g_a_server_endpoint_is_no_source() -> None:
    found = problems(bridge("", source="mb", to="broker") + bridge("", "b", "ua", "broker"))
    assert set(found) == {"bridges[0].from", "bridges[1].from"}
    assert "'mb', a modbus server endpoint" in found["bridges[0].from"][0]


def test_h_points_named_at_run_time_reach_no_server() -> None:
    found = problems(bridge("", source="broker", to="ua"))
    assert list(found) == ["bridges[0].from"]
    assert "points: keys" in found["bridges[0].from"][0]
    # declared points too: those are served, a warning says the others are not
    with_points = BASE.replace(
        'subscriptions: [{topic: "a/#", points: keys}]',
        'subscriptions: [{topic: "a/#", points: keys}]\n    points: [{name: p, topic: b}]',
    )
    config = load_config_text(with_points + bridge("", source="broker", to="ua"), "gw.yaml")
    assert any("bridges[0].from" in w and "not served" in w for w in config.warnings)


def test_the_run_refuses_a_map_entry_in_the_words_of_validate() -> None:
    config = load_config_text(BASE + bridge("    map: [{point: temp, address: 0}]\n"))
    wrong = ModbusServerRoute.model_validate({"map": [{"point": "tmp", "address": 0}]})
    config = dataclasses.replace(
        config, bridges=[dataclasses.replace(config.bridges[0], route=wrong)]
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + bridge("    map: [{point: tmp, address: 0}]\n"))
    [said] = info.value.problems
    server = Gateway(config).adapters["mb"]
    assert isinstance(server, ModbusServerAdapter)
    assert server.map_errors == [f"bridge serve map[0].point: found {said.found}; expected "
                                 f"{said.expected}"]  # fmt: skip
