"""Config loading: the good file becomes typed objects; each bad file is refused with its
line, its key path and what was found / expected."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field, field_validator

from gateway.config import (
    Backoff,
    ConfigError,
    GatewayConfig,
    LocatedProblem,
    load_config,
    load_config_text,
)
from gateway.config.schema import json_schema
from gateway.config.yamlmarks import parse_yaml
from gateway.plugins import ProtocolSpec, Registry, load_registry
from protocols.modbus.config import ModbusDevice
from protocols.mqtt.config import MqttEndpoint, MqttRoute

CONFIGS = Path(__file__).parent / "configs"
ADAPTER = "protocols.modbus.client:ModbusClientAdapter"  # a real one, for a made-up spec


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def problems_of(name: str, registry: Registry) -> list[LocatedProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / name, registry)
    problems = info.value.problems
    assert problems, "a ConfigError without problems"
    return problems


def problems_in(text: str, file: Path) -> list[LocatedProblem]:
    """The problems of config ``text`` read as ``file``."""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(file))
    return info.value.problems


def the_problem(name: str, registry: Registry) -> LocatedProblem:
    problems = problems_of(name, registry)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def at(problems: list[LocatedProblem], dotted: str) -> LocatedProblem:
    found = [p for p in problems if p.dotted == dotted]
    assert len(found) == 1, f"{dotted} in:\n" + "\n".join(map(str, problems))
    return found[0]


# -- the good file ------------------------------------------------------------------------------


def test_good_config_loads_into_typed_objects(registry: Registry) -> None:
    config = load_config(CONFIGS / "good.yaml", registry)
    assert isinstance(config, GatewayConfig)
    assert config.path == str(CONFIGS / "good.yaml")
    assert (config.gateway.name, config.gateway.log_level) == ("edge-1", "debug")

    assert list(config.devices) == ["boiler", "chiller", "broker"]
    boiler, chiller, broker = (config.devices[n] for n in ("boiler", "chiller", "broker"))
    assert (boiler.section, broker.section) == ("devices", "endpoints")
    assert (boiler.protocol, boiler.role, boiler.spec.name) == ("modbus", "client", "modbus")
    assert isinstance(boiler.config, ModbusDevice)
    assert [p.name for p in boiler.config.points][:2] == ["supply_temp", "return_temp"]
    assert boiler.config.points[0].scale == 0.1
    assert set(boiler.config.poll_groups) == {"default", "fast"}
    # the merge key copies boiler; chiller's own port wins
    assert isinstance(chiller.config, ModbusDevice)
    assert (chiller.config.host, chiller.config.port) == ("127.0.0.1", 5021)
    assert chiller.config.points == boiler.config.points
    assert boiler.config.port == 5020
    # the alias shares the anchored backoff
    assert isinstance(broker.config, MqttEndpoint)
    assert broker.config.reconnect == Backoff.model_validate({"initial": 1, "max": 10})
    assert boiler.config.reconnect == broker.config.reconnect

    temps, snapshot = config.bridges
    assert temps.name == "temps"
    assert temps.sources == ("boiler", "chiller")
    assert temps.points == ("*_temp", "flow")
    assert temps.target == "broker"
    assert temps.units == {"*_temp": "degF"}
    assert temps.route == MqttRoute(topic="plant/{device}/{point}", payload="sample", qos=0)
    assert snapshot.sources == ("boiler",)
    assert snapshot.points == ("*",)
    assert snapshot.units == {}
    assert isinstance(snapshot.route, MqttRoute)
    assert (snapshot.route.payload, snapshot.route.qos) == ("device", 1)


def test_the_shipped_example_loads(registry: Registry) -> None:
    example = Path(__file__).parent.parent / "examples" / "modbus_to_mqtt.yaml"
    config = load_config(example, registry)
    assert [b.name for b in config.bridges] == ["boiler-telemetry", "boiler-snapshot"]


def test_yaml_values_have_the_types_safe_load_gives() -> None:
    text = (CONFIGS / "good.yaml").read_text()
    assert parse_yaml(text).data == yaml.safe_load(text)
    odd = "a: [1, 1.5, yes, ~, '2', 2001-12-14, 0x1F, .inf]\n"
    assert parse_yaml(odd).data == yaml.safe_load(odd)


def test_positions_of_keys_and_values() -> None:
    doc = parse_yaml("devices:\n  plc1:\n    host: 10.0.0.1\n    points:\n      - {name: a}\n")
    assert (
        doc.marks.keys[("devices", "plc1", "host")].line,
        doc.marks.keys[("devices", "plc1", "host")].column,
    ) == (3, 5)
    assert doc.marks.values[("devices", "plc1", "host")].column == 11
    name = doc.marks.values[("devices", "plc1", "points", 0, "name")]
    assert (name.line, name.column) == (5, 16)
    # a path that was not written falls back to its nearest ancestor
    assert doc.marks.value(("devices", "plc1", "port")) == doc.marks.values[("devices", "plc1")]


def test_keys_are_names_even_when_yaml_would_read_numbers_or_booleans() -> None:
    assert parse_yaml("1: a\non: b\n").data == {"1": "a", "on": "b"}


# -- one bad file per kind of mistake -----------------------------------------------------------


def test_unknown_key_suggests_the_closest(registry: Registry) -> None:
    problems = problems_of("unknown_key.yaml", registry)
    p = at(problems, "devices.plc1.hots")
    assert (p.line, p.column) == (4, 5)  # the key itself
    assert p.found == "unknown key 'hots'"
    assert "did you mean 'host'?" in p.expected
    assert "port" in p.expected and "role" in p.expected
    missing = at(problems, "devices.plc1")  # and host is then missing
    assert missing.line == 2
    assert missing.found == "no 'host' key"


# file, line, column, dotted path, a phrase of found, a phrase of expected
ONE_PROBLEM = [
    ("wrong_type.yaml", 5, 11, "devices.plc1.port", "'abc' (a string)", "an integer"),
    ("missing_key.yaml", 2, 3, "devices.plc1", "no 'host' key", "key 'host'"),
    ("undefined_device.yaml", 13, 11, "bridges[0].from", "'plc9'", "one of: plc1, broker"),
    ("address_range.yaml", 9, 18, "devices.plc1.points[1].address", "65536", "a number <= 65535"),
    # two bits of one register (points 2 and 3) do not overlap
    (
        "overlap.yaml",
        7,
        32,
        "devices.plc1.points[1].address",
        "'level' at holding 11 overlaps 'flow'",
        "points that do not share registers",
    ),
    (
        "topic_placeholder.yaml",
        15,
        12,
        "bridges[0].topic",
        "'plant/{site}/{point}'",
        "unknown placeholder {site}",
    ),
    (
        "topic_wildcard.yaml",
        15,
        12,
        "bridges[0].topic",
        "'plant/+/{point}'",
        "cannot contain the wildcards + or #",
    ),
    (
        "unknown_protocol.yaml",
        3,
        15,
        "devices.plc1.protocol",
        "unknown protocol 'modbsu'",
        "(did you mean 'modbus'?)",  # the list of installed protocols grows
    ),
    (
        "duplicate_yaml_key.yaml",
        7,
        5,
        "devices.plc1.host",
        "key 'host' appears twice (first at line 4)",
        "each key once",
    ),
    ("syntax_error.yaml", 6, 1, "", "invalid YAML: expected ',' or ']'", "well-formed YAML"),
    (
        "bad_enum.yaml",
        8,
        15,
        "devices.plc1.points[0].type",
        "'float33'",
        "one of 'bool', 'int16', 'uint16', 'int32'",
    ),
    (
        "poll_group.yaml",
        9,
        41,
        "devices.plc1.points[1].poll",
        "'slow'",
        "one of the poll_groups: fast",
    ),
    (
        "string_length.yaml",
        7,
        9,
        "devices.plc1.points[1]",
        "{name: 'serial', address: 10",
        "a string point needs length",
    ),
    ("empty.yaml", 1, 1, "", "an empty file", "a mapping with devices, endpoints and bridges"),
    ("top_list.yaml", 1, 1, "", "a list", "a mapping with devices, endpoints and bridges"),
    (
        "not_target.yaml",
        15,
        9,
        "bridges[0].to",
        "'plc2', a modbus client device",
        "can be a bridge target; modbus client cannot yet",
    ),
    (
        "points_glob.yaml",
        15,
        24,
        "bridges[0].points[1]",
        "'presure*', which matches no point of plc1",
        "some of: supply_temp, return_temp",
    ),
    (
        "duplicate_bridge.yaml",
        15,
        11,
        "bridges[1].name",
        "'up' again",
        "a bridge name not already used (bridges[0] at line 12)",
    ),
    (
        "no_to.yaml",
        12,
        5,
        "bridges[0]",
        "no 'to' key",
        "key 'to' naming the device or endpoint to send to (one of: broker)",
    ),
]


@pytest.mark.parametrize(
    ("name", "line", "column", "dotted", "found", "expected"),
    ONE_PROBLEM,
    ids=[case[0].removesuffix(".yaml") for case in ONE_PROBLEM],
)
def test_bad_file_reports_its_problem(
    registry: Registry,
    name: str,
    line: int,
    column: int,
    dotted: str,
    found: str,
    expected: str,
) -> None:
    p = the_problem(name, registry)
    assert (p.line, p.column) == (line, column), str(p)
    assert p.dotted == dotted
    assert found in p.found
    assert expected in p.expected
    assert "Value error" not in p.expected
    prefix = f"{name}:{p.line}:{p.column}: " + (f"{dotted}: " if dotted else "")
    assert str(p).endswith(f"{prefix}found {p.found}; expected {p.expected}")


def test_protocol_whose_plugin_failed_names_the_extra() -> None:
    broken = Registry(specs={}, errors={"modbsu": "install it with: pip install 'x[modbsu]'"})
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "unknown_protocol.yaml", broken)
    (p,) = info.value.problems
    assert "did not load" in p.found
    assert "pip install 'x[modbsu]'" in p.expected


def test_syntax_error_says_where_the_open_bracket_was(registry: Registry) -> None:
    assert "started at line 5" in the_problem("syntax_error.yaml", registry).found


def test_bad_and_unconvertible_units(registry: Registry) -> None:
    problems = problems_of("bad_unit.yaml", registry)
    assert len(problems) == 2, "\n".join(map(str, problems))
    unknown = at(problems, "bridges[0].units.temp")
    assert unknown.line == 17
    assert unknown.found == "'furlongs_per_fortnight_squared_x'"
    assert "known unit" in unknown.expected
    wrong = at(problems, "bridges[0].units.flow")
    assert wrong.line == 18
    assert wrong.found == "'kPa' for 'flow' (l/min)"
    assert "converts to" in wrong.expected


def test_unknown_unit_on_a_converted_point_points_at_the_point() -> None:
    text = (CONFIGS / "bad_unit.yaml").read_text().replace("unit: degC", "unit: degc_oops")
    text = text.replace("temp: furlongs_per_fortnight_squared_x", "temp: degF")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "units.yaml")
    p = at(info.value.problems, "devices.plc1.points[0].unit")
    assert p.line == 6
    assert p.found == "'degc_oops'"
    assert "a known unit" in p.expected


def test_units_glob_matching_no_selected_point() -> None:
    text = (CONFIGS / "points_glob.yaml").read_text().replace(
        '["*_temp", "presure*"]', '["supply_*"]'
    ) + "    units: {return_temp: degF}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "units.yaml")
    (p,) = info.value.problems
    assert (p.line, p.dotted) == (17, "bridges[0].units.return_temp")
    assert "matches no point the bridge selects" in p.found


def test_every_problem_of_a_file_is_reported_in_line_order(registry: Registry) -> None:
    problems = problems_of("many.yaml", registry)
    by_path = {p.dotted: p for p in problems}
    assert set(by_path) == {
        "gateway.name",
        "devices.plc1.port",
        "devices.plc2.role",
        "endpoints.plc1",
        "uplinks",
        "bridges[0].from",
        "bridges[0].to",
    }
    assert by_path["gateway.name"].line == 3
    assert by_path["devices.plc1.port"].found == "70000"
    assert by_path["devices.plc2.role"].expected.startswith("one of: client")
    assert by_path["endpoints.plc1"].line == 18
    assert "first in devices at line 5" in by_path["endpoints.plc1"].found
    assert by_path["uplinks"].found == "unknown key 'uplinks'"
    assert "modbus client cannot yet" in by_path["bridges[0].to"].expected
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    lines = str(ConfigError(problems)).splitlines()
    assert len(lines) == 7
    assert lines[0].endswith(
        "many.yaml:3:9: gateway.name: found 'edge 1'; expected a string matching ^[A-Za-z0-9_-]+$"
    )


# -- files that are not even YAML ---------------------------------------------------------------


def test_unreadable_paths_are_config_errors(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml", registry)
    with pytest.raises(ConfigError, match="found a directory"):
        load_config(tmp_path, registry)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # open() would wait for a writer forever
    for special in (fifo, Path("/dev/zero")):  # /dev/zero: a read would never end
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(special, registry)
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(17 * 1024 * 1024)
    with pytest.raises(ConfigError, match="a config under"):
        load_config(big, registry)


def test_non_utf8_file_names_the_line(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("gateway:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    (p,) = info.value.problems
    assert (p.line, p.column) == (2, 12)
    assert "0xe9" in p.found and p.expected == "UTF-8 text"


@pytest.mark.parametrize(
    ("text", "line", "found"),
    [
        ("a: \x01\n", 1, "#x0001"),
        ("[" * 3000, 1, "nested too deeply"),
        ("a: " + "[" * 30000 + "]" * 30000, 1, "nested too deeply"),  # libyaml: SIGSEGV before
        ("a: '" + "[" * 30000 + "'", 1, "unknown key 'a'"),  # brackets in a string: text
        ("a: &x [*x]\n", 1, "inside its own anchor"),
        ("a: !include other.yaml\n", 1, "constructor for the tag '!include'"),
        ("a: 1\n---\nb: 2\n", 2, "another document"),
        ("devices: 3\n", 1, "3 (an integer)"),
        ("devices:\n  plc1:\n", 2, "an empty value"),
        ("devices:\n  plc1: {role: client}\n", 2, "no 'protocol' key"),
        ("devices:\n  plc/1: {protocol: mqtt, host: h}\n", 2, "the name 'plc/1'"),
        ("bridges: {}\n", 1, "a mapping"),
        ("bridges:\n  - just a string\n", 2, "'just a string' (a string)"),
    ],
)
def test_odd_documents_are_config_errors(text: str, line: int, found: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "odd.yaml")
    assert any(p.line == line and found in p.found for p in info.value.problems), str(info.value)


def test_bridge_keys_of_the_wrong_shape() -> None:
    text = (
        "devices:\n  plc1: {protocol: modbus, host: h, points: [{name: a, address: 0}]}\n"
        "endpoints:\n  b: {protocol: mqtt, host: h, status_topic: 'x/{gat'}\n"
        "bridges:\n"
        "  - {name: x, from: [plc1, 3], to: b}\n"
        "  - {name: y, from: 5, to: b}\n"
        "  - {name: z, from: [], to: b}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "shapes.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "shapes.yaml:4:46: endpoints.b.status_topic: found 'x/{gat'; "
        "expected '}' before end of string",
        # the list member of `str | list[str]` fits: its error, not "expected a string" at from
        "shapes.yaml:6:28: bridges[0].from[1]: found 3 (an integer); expected a string",
        "shapes.yaml:7:21: bridges[1].from: found 5 (an integer); expected a string or a list",
        "shapes.yaml:8:21: bridges[2].from: found an empty list; "
        "expected at least one device or endpoint name",
    ]


def test_one_wrong_key_does_not_hide_the_other_problems_of_its_section(tmp_path: Path) -> None:
    # Before, a bridge whose own keys (to, translate, ...) or target options did not validate
    # was dropped before its from, name, points and anomaly were checked; a shadow section
    # before its devices; an endpoint before its optimizer model file.
    text = (
        "devices:\n"
        "  boiler: {protocol: modbus, host: h, points: [{name: temp, address: 0}]}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: h}\n"
        "  cloud: {protocol: mqtt, host: h, port: 0, optimizer: {model: p.onnx}}\n"
        "shadow: {poll_interval: 0, devices: [boilr]}\n"
        "bridges:\n"
        "  - {name: up, from: boilr, to: brokr, translate: {mode: map}}\n"
        "  - {name: two, from: boiler, to: broker, qos: 5, points: [nope*],"
        " anomaly: {model: none.onnx}}\n"
        "  - {name: up, from: boiler, to: broker, anomaly: {window: 3}}\n"
    )
    problems = problems_in(text, tmp_path / "all.yaml")
    assert [p.dotted for p in problems] == [
        "endpoints.cloud.port",
        "endpoints.cloud.optimizer.model",
        "shadow.poll_interval",
        "shadow.devices[0]",
        "bridges[0].from",
        "bridges[0].to",
        "bridges[0].translate",
        "bridges[1].qos",
        "bridges[1].points[0]",
        "bridges[1].anomaly.model",
        "bridges[2].name",
        "bridges[2].anomaly.window",
    ], "\n".join(map(str, problems))
    assert "did you mean 'boiler'?" in at(problems, "bridges[0].from").expected
    assert at(problems, "bridges[2].name").found == "'up' again"


def test_a_misspelt_key_does_not_hide_the_checks_across_its_entrys_fields(tmp_path: Path) -> None:
    # Before, an entry with an unknown key was not checked further: its points' poll groups,
    # and a bridge from it, came one validate run later (an audit).
    text = (
        "devices:\n"
        "  plc:\n"
        "    protocol: modbus\n"
        "    host: h\n"
        "    timout: 1.0\n"
        "    poll_groups: {fast: {interval: 1}}\n"
        "    points:\n"
        "      - {name: a, address: 0, poll: fastt}\n"
        "      - {name: b, address: 1, poll: fast, typ: int16}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: h}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: broker, points: [nope]}\n"
    )
    problems = problems_in(text, tmp_path / "typo.yaml")
    assert [p.dotted for p in problems] == [
        "devices.plc.timout",
        "devices.plc.points[0].poll",
        "devices.plc.points[1].typ",
    ], "\n".join(map(str, problems))
    assert "did you mean 'timeout'?" in at(problems, "devices.plc.timout").expected
    assert "fast" in at(problems, "devices.plc.points[0].poll").expected
    # with the typo its only problem, the bridges from the entry are checked against it too
    text = text.replace("poll: fastt", "poll: fast").replace(", typ: int16", "")
    assert [p.dotted for p in problems_in(text, tmp_path / "typo.yaml")] == [
        "devices.plc.timout",
        "bridges[0].points[0]",
    ]


def test_no_edit_of_the_good_file_escapes_as_another_exception(registry: Registry) -> None:
    lines = (CONFIGS / "good.yaml").read_text().splitlines(keepends=True)
    refused = 0
    for i in range(len(lines)):
        for text in (
            "".join(lines[:i] + lines[i + 1 :]),
            "".join(lines[:i]),
            "".join(lines[:i]) + lines[i][: len(lines[i]) // 2],
        ):
            try:
                load_config_text(text, "edited.yaml", registry)
            except ConfigError as exc:
                refused += 1
                assert exc.problems and all(p.line >= 1 for p in exc.problems)
    assert refused > len(lines)  # most edits break something, and say so


# -- plugins that misbehave ---------------------------------------------------------------------


class _Crashy(BaseModel):
    protocol: str = "crashy"
    host: str = Field(min_length=1)

    @field_validator("host")
    @classmethod
    def _boom(cls, v: str) -> str:
        raise NotImplementedError("a plugin bug, on purpose: the loader must report it")


class _NoProtocolField(BaseModel):
    host: str


def test_a_crashing_plugin_model_is_a_problem_of_its_entry() -> None:
    spec = ProtocolSpec("crashy", "crashes", _Crashy, {"client": ADAPTER})
    registry = Registry({"crashy": spec}, {})
    with pytest.raises(ConfigError) as info:
        load_config_text("devices:\n  c:\n    protocol: crashy\n    host: h\n", "c.yaml", registry)
    (p,) = info.value.problems
    assert (p.line, p.dotted) == (3, "devices.c")
    assert "NotImplementedError" in p.found


def test_a_plugin_model_without_a_protocol_field_does_not_get_one() -> None:
    spec = ProtocolSpec("plain", "plain", _NoProtocolField, {"client": ADAPTER})
    registry = Registry({"plain": spec}, {})
    text = "devices:\n  p:\n    protocol: plain\n    host: h\n"
    config = load_config_text(text, "p.yaml", registry)
    assert config.devices["p"].config == _NoProtocolField(host="h")


# -- JSON Schema --------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_json_schema_covers_every_protocol_and_route(registry: Registry) -> None:
    schema = json_schema(registry)
    json.dumps(schema)  # serializable
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    one_of = [defs[r["$ref"].removeprefix("#/$defs/")] for r in defs["entry"]["oneOf"]]
    consts = {e["properties"]["protocol"]["const"] for e in one_of}
    assert consts == set(registry.specs)
    modbus = defs["modbus.client.entry"]
    assert modbus["required"][0] == "protocol"
    assert modbus["anyOf"] == [{"required": ["host"]}, {"required": ["serial"]}]
    assert modbus["properties"]["role"]["enum"] == ["client"]
    assert modbus["additionalProperties"] is False
    bridge = defs["bridge"]
    assert {"name", "from", "to", "points", "units", "topic", "payload", "qos"} <= set(
        bridge["properties"]
    )
    assert {"name", "from", "to"} <= set(bridge["required"])
    assert bridge["additionalProperties"] is False
    assert set(schema["properties"]) == {"gateway", "devices", "endpoints", "bridges", "shadow"}


def test_nan_and_infinite_numbers_are_refused() -> None:
    text = (
        "gateway: {status_interval: 1e400}\n"
        "devices:\n"
        "  plc:\n"
        "    protocol: modbus\n"
        "    host: 127.0.0.1\n"
        "    points:\n"
        "      - {name: t, address: 0, scale: .nan, low: .inf}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "c.yaml")
    said = str(err.value)
    assert "c.yaml:1:28: gateway.status_interval: found '1e400'; expected a finite number" in said
    assert "c.yaml:7:38: devices.plc.points[0].scale: found nan; expected a finite number" in said
    assert "devices.plc.points[0].low: found inf; expected a finite number" in said


def test_an_optimizer_model_path_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    import shutil

    from gateway.optimizer.policy import builtin_path

    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    text = (
        "endpoints:\n"
        "  cloud:\n"
        "    protocol: mqtt\n"
        "    host: 127.0.0.1\n"
        "    optimizer: {{model: {model}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config_text(text.format(model="models/p.onnx"), str(site / "gw.yaml"))
    said = str(err.value)
    assert "endpoints.cloud.optimizer.model: found 'models/p.onnx', but there is no file" in said
    assert str(site / "models" / "p.onnx") in said  # where it looked: next to the config
    shutil.copy(builtin_path(), site / "models" / "p.onnx")
    with pytest.raises(ConfigError, match=r"no file .*p\.json"):  # the .json goes beside it
        load_config_text(text.format(model="models/p.onnx"), str(site / "gw.yaml"))
    shutil.copy(builtin_path().with_suffix(".json"), site / "models" / "p.json")
    config = load_config_text(text.format(model="models/p.onnx"), str(site / "gw.yaml"))
    assert config.devices["cloud"].config.optimizer.model == str(site / "models" / "p.onnx")  # type: ignore[attr-defined]
    for word in ("builtin", "heuristic", "off"):  # a bare off is false in YAML: still the word
        config = load_config_text(text.format(model=word), str(site / "gw.yaml"))
        assert config.devices["cloud"].config.optimizer.model == word  # type: ignore[attr-defined]


def test_counts_in_problems_are_singular_for_one() -> None:
    from pydantic import ValidationError

    from gateway.config.errors import translate

    class Lists(BaseModel):
        pair: list[int] = Field(min_length=2)
        single: list[int] = Field(max_length=1)
        code: str = Field(max_length=1)

    data = {"pair": [1], "single": [1, 2], "code": "ab"}
    with pytest.raises(ValidationError) as info:
        Lists.model_validate(data)
    said = {f.path: (f.found, f.expected) for f in translate(info.value.errors(), data, Lists)}
    assert said == {
        ("pair",): ("1 item", "at least 2 items"),
        ("single",): ("2 items", "at most 1 item"),
        ("code",): ("'ab'", "a string of at most 1 character"),
    }


def only_problem(text: str, registry: Registry) -> LocatedProblem:
    """The one problem of config ``text`` (as gw.yaml)."""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml", registry)
    (p,) = info.value.problems
    return p


# -- enabled: false -----------------------------------------------------------------------------

PUMP = "  pump: {protocol: modbus, host: h, points: [{name: t, address: 0, unit: degC}]}\n"
BROKER = "endpoints:\n  broker: {protocol: mqtt, host: h}\n"


def test_a_disabled_device_is_checked_then_left_out(registry: Registry) -> None:
    text = (
        f"devices:\n{PUMP}"
        "  spare: {protocol: modbus, enabled: false, host: h, points: [{name: t, address: 0}]}\n"
        f"{BROKER}"
        "bridges:\n"
        "  - {name: up, from: pump, to: broker, topic: 'x/{point}'}\n"
        "  - {name: spare-up, enabled: false, from: spare, to: broker, topic: 'x/{point}'}\n"
    )
    config = load_config_text(text, "gw.yaml", registry)
    assert list(config.devices) == ["pump", "broker"]
    assert [b.name for b in config.bridges] == ["up"]
    assert (config.disabled, config.disabled_bridges) == (("spare",), ("spare-up",))
    assert config.warnings == ()
    # Still checked: its settings, and the disabled bridge's too.
    bad = text.replace("host: h, points", "host: h, port: 70000, points").replace(
        "to: broker, topic: 'x/{point}'}\n", "to: broker, topic: 'x/{point}', qos: 7}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(bad, "gw.yaml", registry)
    assert [p.dotted for p in info.value.problems] == [
        "devices.pump.port",
        "devices.spare.port",
        "bridges[0].qos",
        "bridges[1].qos",
    ]


def test_enabled_is_true_or_false(registry: Registry) -> None:
    text = f"devices:\n{PUMP.replace('modbus,', 'modbus, enabled: maybe,')}"
    p = only_problem(text, registry)
    assert (p.dotted, p.found, p.expected) == (
        "devices.pump.enabled",
        "'maybe' (a string)",
        "true or false",
    )


def test_a_bridge_from_or_to_a_disabled_device_must_be_disabled_too(registry: Registry) -> None:
    text = (
        f"devices:\n{PUMP}"
        "  spare: {protocol: modbus, enabled: false, host: h, points: [{name: t, address: 0}]}\n"
        "endpoints:\n  broker: {protocol: mqtt, host: h, enabled: false}\n"
        "  other: {protocol: mqtt, host: h}\n"
        "bridges:\n"
        "  - {name: up, from: [pump, spare], to: other, topic: 'x/{point}'}\n"
        "  - {name: out, from: pump, to: broker, topic: 'x/{point}'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml", registry)
    source, target = info.value.problems
    assert (source.line, source.dotted) == (8, "bridges[0].from[1]")
    assert source.found == "'spare', which is disabled (enabled: false at line 3)"
    assert source.expected == (
        "an enabled device or endpoint, or enabled: false on bridge 'up' too"
    )
    assert (target.dotted, target.found) == (
        "bridges[1].to",
        "'broker', which is disabled (enabled: false at line 5)",
    )
    assert "enabled: false on bridge 'out' too" in target.expected
    both = text.replace("{name: up,", "{name: up, enabled: false,").replace(
        "{name: out,", "{name: out, enabled: false,"
    )
    config = load_config_text(both, "gw.yaml", registry)
    assert config.bridges == [] and config.disabled_bridges == ("up", "out")


def test_a_disabled_device_of_a_protocol_that_is_not_there_is_a_warning() -> None:
    registry = load_registry()
    failed = "protocol plugin 'ldjson' from ldjson-protocol failed to import (No module named x)"
    broken = Registry(registry.specs, {"ldjson": failed})
    text = (
        f"devices:\n{PUMP}"
        "  old: {protocol: ldjson, enabled: false, whatever: 1}\n"
        "  older: {protocol: modbsu, enabled: false}\n"
    )
    config = load_config_text(text, "gw.yaml", broken)
    assert list(config.devices) == ["pump"] and config.disabled == ("old", "older")
    plugin, old, older = config.warnings
    assert plugin == failed  # once: the device's own line does not repeat it
    assert old.startswith("gw.yaml:3:19: devices.old.protocol: 'ldjson', whose plugin did not ")
    assert "disabled (enabled: false), so it is not started" in old and failed not in old
    assert older.startswith("gw.yaml:4:21: devices.older.protocol: unknown protocol 'modbsu'")
    assert "(did you mean 'modbus'?)" in older
    # Enabled, it is a problem that quotes the plugin's error, and no warning says it again.
    with pytest.raises(ConfigError) as info:
        load_config_text(text.replace("ldjson, enabled: false", "ldjson"), "gw.yaml", broken)
    (p,) = info.value.problems
    assert (p.dotted, p.expected) == ("devices.old.protocol", failed)
    assert len(info.value.warnings) == 1 and info.value.warnings[0].startswith("gw.yaml:4:21:")


def test_a_refused_plugin_that_no_entry_uses_is_a_warning(registry: Registry) -> None:
    refused = "protocol plugin 'modbus' from evil-modbus (evil:SPEC) is refused: ..."
    config = load_config_text(
        f"devices:\n{PUMP}", "gw.yaml", Registry(registry.specs, {"modbus": refused})
    )
    assert config.warnings == (refused,)
    assert config.devices["pump"].spec.dist == "protocol-brain"


def test_the_shadow_of_a_disabled_device(registry: Registry) -> None:
    text = (
        f"devices:\n{PUMP}"
        "  spare: {protocol: modbus, enabled: false, host: h, points: [{name: t, address: 0}]}\n"
        "endpoints:\n  broker: {protocol: mqtt, host: h, enabled: false}\n"
        "shadow: {devices: [pump, spare]}\n"
    )
    shadow = load_config_text(text, "gw.yaml", registry).shadow
    assert shadow is not None and shadow.devices == ["pump"]  # none while it is off
    with pytest.raises(ConfigError) as info:
        load_config_text(
            text.replace("spare]}", "spare], mqtt: {endpoint: broker}}"), "gw.yaml", registry
        )
    (p,) = info.value.problems
    assert (p.dotted, p.expected) == ("shadow.mqtt.endpoint", "an enabled MQTT client endpoint")
    assert "disabled (enabled: false at line 5)" in p.found


def test_a_name_used_twice_has_its_second_entry_checked_too(registry: Registry) -> None:
    text = f"devices:\n{PUMP}endpoints:\n  pump: {{protocol: mqtt, hots: h, port: 0}}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml", registry)
    assert [(p.dotted, p.found) for p in info.value.problems] == [
        ("endpoints.pump", "the name 'pump' again (first in devices at line 2)"),
        ("endpoints.pump", "no 'host' key"),
        ("endpoints.pump.hots", "unknown key 'hots'"),
        ("endpoints.pump.port", "0"),
    ]


@pytest.mark.parametrize(
    ("period", "given"),
    [("['2024-05-01T00:00:00']", "one"), ("2024-05-01", "one"), ("[]", "none"), ("[1, 2, 3]", "3")],
)
def test_a_calibration_period_is_two_times(registry: Registry, period: str, given: str) -> None:
    text = (
        f"devices:\n{PUMP}{BROKER}bridges:\n"
        f"  - {{name: up, from: pump, to: broker, anomaly: {{calibration_period: {period}}}}}\n"
    )
    p = only_problem(text, registry)
    assert p.dotted == "bridges[0].anomaly.calibration_period"
    assert p.expected == (
        "two times [start, end] (ISO 8601, e.g. [2024-05-01T00:00:00, 2024-05-08T00:00:00]), "
        f"not {given}"
    )


def test_the_schema_knows_enabled(registry: Registry) -> None:
    schema = json_schema(registry)
    enabled = schema["$defs"]["modbus.client.entry"]["properties"]["enabled"]
    assert enabled["anyOf"][0]["type"] == "boolean"  # or a ${...} reference: anyOf[1]
    assert schema["$defs"]["bridge"]["properties"]["enabled"]["default"] is True


# -- point globs where the points are known ------------------------------------------------------

SUBSCRIBED = "  site: {protocol: mqtt, host: h, subscriptions: [{topic: 'site/#'}]}\n"


def test_a_source_with_only_subscriptions_is_not_a_bridge_source(registry: Registry) -> None:
    """Its messages go on the bus as mqtt/<endpoint>/<topic>; bridges carry telemetry points."""
    text = f"{BROKER}{SUBSCRIBED}bridges:\n  - {{name: up, from: site, to: broker}}\n"
    p = only_problem(text, registry)
    assert (p.dotted, p.found) == ("bridges[0].from", "site, which declares no points")
    assert "subscriptions: go on the bus as mqtt/<endpoint>/<topic>, not to bridges" in p.expected


def test_the_refusal_names_the_keys_option(registry: Registry) -> None:
    text = f"{BROKER}{SUBSCRIBED}bridges:\n  - {{name: up, from: site, to: broker}}\n"
    assert "a subscription with points: keys" in only_problem(text, registry).expected


KEYED = "  site: {protocol: mqtt, host: h, subscriptions: [{topic: 'site/#', points: keys}]}\n"


def test_a_source_with_a_keys_subscription_is_a_bridge_source(registry: Registry) -> None:
    """Its points are JSON keys named at run time: globs (the bridge's, its units', its
    anomaly scorer's) cannot be checked against them, so none is refused."""
    text = (
        f"{BROKER}{KEYED}bridges:\n"
        "  - name: up\n    from: site\n    to: broker\n    points: ['AHU*']\n"
        "    units: {'*_T': degC}\n    anomaly: {points: ['*_SAT'], exclude: ['*_SP']}\n"
    )
    config = load_config_text(text, "gw.yaml", registry)
    (bridge,) = config.bridges
    assert (bridge.sources, bridge.points) == (("site",), ("AHU*",))
    site = config.devices["site"].config
    assert isinstance(site, MqttEndpoint) and site.points_at_run_time
    (sub,) = site.subscriptions
    assert sub.points == "keys"


def test_points_keys_reads_json_only(registry: Registry) -> None:
    text = (
        "endpoints:\n  site: {protocol: mqtt, host: h, subscriptions:"
        " [{topic: 'site/#', points: keys, payload: text}]}\n"
    )
    p = only_problem(text, registry)
    assert p.dotted.startswith("endpoints.site.subscriptions[0]")
    assert "points: keys reads JSON payloads" in f"{p.found} {p.expected}"


def test_a_source_without_points_or_subscriptions_still_selects_nothing(
    registry: Registry,
) -> None:
    text = f"{BROKER}  empty: {{protocol: mqtt, host: h}}\nbridges:\n  - {{name: up, from: empty, to: broker}}\n"
    p = only_problem(text, registry)
    assert (p.dotted, p.found) == ("bridges[0].from", "empty, which declares no points")


PUMP_SP = (
    "  pump: {protocol: modbus, host: h, points: [{name: temp, address: 0},"
    " {name: speed_sp, address: 1}, {name: flow, address: 2}]}\n"
)


@pytest.mark.parametrize(
    ("options", "dotted", "glob"),
    [
        ("{points: ['nomatch*']}", "bridges[0].anomaly.points[0]", "nomatch*"),
        ("{points: [temp], exclude: ['*_sp', '*_SP']}", "bridges[0].anomaly.exclude[1]", "*_SP"),
        # scored after the bridge's own globs: a point it does not carry is not there
        ("{points: ['flow']}", "bridges[0].anomaly.points[0]", "flow"),
    ],
)
def test_anomaly_globs_that_match_no_point_the_bridge_carries(
    registry: Registry, options: str, dotted: str, glob: str
) -> None:
    text = (
        f"devices:\n{PUMP_SP}{BROKER}bridges:\n"
        f"  - {{name: up, from: pump, to: broker, points: ['temp', 'speed*'], anomaly: {options}}}\n"
    )
    p = only_problem(text, registry)
    assert (p.dotted, p.line) == (dotted, 6)
    assert p.found == f"{glob!r}, which matches no point bridge 'up' carries"
    assert p.expected == "a glob matching some of: temp, speed_sp"


@pytest.mark.parametrize(
    "extra",
    [
        "anomaly: {points: [temp, kw], exclude: [speed_sp]}, translate: {map: {temp: supply,"
        " speed_sp: sp}}, computed: [{name: kw, expr: 'flow * 2'}]",
        "anomaly: {points: ['temp*']}, translate: {mode: auto}",
    ],
)
def test_anomaly_globs_see_source_and_computed_names(registry: Registry, extra: str) -> None:
    """The bridge scores before translate, by the source's own names (docs/anomaly.md)."""
    text = (
        f"devices:\n{PUMP_SP}{BROKER}bridges:\n"
        f"  - {{name: up, from: pump, to: broker, points: ['temp', 'speed*'], {extra}}}\n"
    )
    assert load_config_text(text, "gw.yaml", registry).bridges[0].anomaly is not None


def test_anomaly_globs_by_translated_names_match_nothing(registry: Registry) -> None:
    text = (
        f"devices:\n{PUMP_SP}{BROKER}bridges:\n"
        "  - {name: up, from: pump, to: broker, points: ['temp', 'speed*'],"
        " anomaly: {points: [supply]}, translate: {map: {temp: supply, speed_sp: sp}}}\n"
    )
    p = only_problem(text, registry)
    assert p.dotted == "bridges[0].anomaly.points[0]"
    assert p.expected == "a glob matching some of: temp, speed_sp"


def test_validate_warns_about_tls_and_certificate_files_that_are_not_here(
    tmp_path: Path, registry: Registry
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA bundle")
    missing = tmp_path / "nope"
    text = (
        "endpoints:\n"
        f"  broker: {{protocol: mqtt, host: h, tls: {{ca_file: {missing}/ca.pem,"
        f" cert_file: {ca}, key_file: {missing}/key.pem}}}}\n"
        "  opcua: {protocol: opcua, role: server,"
        f" security: {{certificate: {missing}/cert.der, private_key: {ca}}}}}\n"
        "devices:\n"
        "  plc: {protocol: opcua, url: 'opc.tcp://h:4840', points: [{name: t, node_id: 'i=1'}],"
        f" security: {{certificate: {missing}/c.der, private_key: {missing}/k.pem}}}}\n"
        "  spare: {protocol: opcua, url: 'opc.tcp://h:4840', points: [{name: t, node_id: 'i=1'}],"
        f" security: {{policy: None, mode: None, certificate: {missing}/c.der,"
        f" private_key: {missing}/k.pem}}}}\n"
    )
    # gateway run opens them itself and says which one is missing: only validate warns
    assert load_config_text(text, "gw.yaml", registry).warnings == ()
    warnings = load_config_text(text, "gw.yaml", registry, check_adapters=True).warnings
    keys = [w.split(": ")[1] for w in warnings]
    assert keys == [
        "devices.plc.security.certificate",
        "devices.plc.security.private_key",
        "endpoints.broker.tls.ca_file",
        "endpoints.broker.tls.key_file",
        "endpoints.opcua.security.certificate",
    ]  # not spare: with policy None the client loads no certificate
    ca_line = warnings[2]
    assert ca_line.startswith("gw.yaml:2:")
    assert f"tls.ca_file {missing}/ca.pem: no such file on this machine (gateway run" in ca_line


def test_a_relative_tls_file_is_looked_for_next_to_the_config(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gateway run's working folder (a unit's WorkingDirectory) need not be the config's:
    a relative path is relative to the config file, as shadow.path and model files are."""
    site, elsewhere = tmp_path / "etc", tmp_path / "var"
    (site / "certs").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = "endpoints:\n  broker: {protocol: mqtt, host: h, tls: {ca_file: certs/ca.pem}}\n"
    (warning,) = load_config_text(
        text, str(site / "gw.yaml"), registry, check_adapters=True
    ).warnings
    assert (
        f"tls.ca_file {site}/certs/ca.pem: no such file on this machine (gateway run refuses"
        in warning
    )
    (site / "certs" / "ca.pem").write_text("a CA bundle")
    (elsewhere / "certs").mkdir()  # the old reading (the working folder) finds nothing here
    config = load_config_text(text, str(site / "gw.yaml"), registry, check_adapters=True)
    assert config.warnings == ()
    assert config.devices["broker"].config.tls.ca_file == str(site / "certs" / "ca.pem")  # type: ignore[attr-defined]


def test_two_outboxes_or_an_outbox_and_the_shadow_in_one_file_are_refused(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One path for two state files passed validate; at run the second outbox found the file
    locked, or the outbox wrote its tables into the shadow store's file."""
    monkeypatch.delenv("PROTOCOL_BRAIN_STATE_DIR", raising=False)
    site = tmp_path / "site"
    text = (
        "endpoints:\n"
        "  a: {protocol: mqtt, host: h, outbox: {path: '{state}/same.db'}}\n"
        f"  b: {{protocol: mqtt, host: h, outbox: {{path: '{site}/.protocol-brain/same.db'}}}}\n"
        "  c: {protocol: mqtt, host: h, outbox: {path: history.db}}\n"
        "  d: {protocol: mqtt, host: h}\n"  # {state}/outbox-d.db
        "  e: {protocol: mqtt, host: h, outbox: {enabled: false, path: history.db}}\n"
        "shadow: {path: history.db}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(site / "gw.yaml"), registry)
    found = {".".join(map(str, p.path)): p.found for p in info.value.problems}
    assert set(found) == {"endpoints.b.outbox.path", "endpoints.c.outbox.path"}
    assert found["endpoints.b.outbox.path"].endswith("the file of endpoints.a.outbox.path too")
    assert found["endpoints.c.outbox.path"] == (f"'{site}/history.db', the file of shadow.path too")


def test_every_path_key_of_the_protocols_is_relative_to_the_config(
    registry: Registry, tmp_path: Path
) -> None:
    """TLS files, OPC UA certificates, keys, pki and trust folders, OSCORE state folders and
    outbox files: relative ones next to the config, absolute, ~ and {state} ones as written."""
    secret = "00" * 16
    text = (
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: h, outbox: {path: spool/out.db},"
        " tls: {ca_file: ca.pem, cert_file: /abs/c.pem, key_file: ~/k.pem}}\n"
        "  ua: {protocol: opcua, role: server, security: {certificate: s.der, private_key: s.pem,"
        " pki_dir: 'pki/{name}', trusted_clients: trust}}\n"
        "  res: {protocol: coap, role: server, security: {oscore: {sender_id: '01',"
        f" recipient_id: '02', master_secret: '{secret}', state_dir: 'oscore/{{name}}'}}}}}}\n"
        "devices:\n"
        "  plc: {protocol: opcua, url: 'opc.tcp://h:4840', points: [{name: t, node_id: 'i=1'}],"
        " security: {trusted_servers: servers}}\n"
        "  meter: {protocol: coap, url: 'coap://h', points: [{name: p, path: a}],"
        f" security: {{oscore: {{sender_id: '02', recipient_id: '01', master_secret: '{secret}'}}}}}}\n"
    )
    site = tmp_path / "site"
    site.mkdir()
    config = load_config_text(text, str(site / "gw.yaml"), registry)
    got = {name: entry.config for name, entry in config.devices.items()}
    broker, ua, res, plc, meter = (got[n] for n in ("broker", "ua", "res", "plc", "meter"))
    assert broker.outbox.path == f"{site}/spool/out.db"  # type: ignore[attr-defined]
    tls = broker.tls  # type: ignore[attr-defined]
    assert (tls.ca_file, tls.cert_file) == (f"{site}/ca.pem", "/abs/c.pem")
    assert tls.key_file == os.path.expanduser("~/k.pem")
    sec = ua.security  # type: ignore[attr-defined]
    assert (sec.certificate, sec.private_key) == (f"{site}/s.der", f"{site}/s.pem")
    assert (sec.pki_dir, sec.trusted_clients) == (f"{site}/pki/{{name}}", f"{site}/trust")
    assert res.security.oscore.state_dir == f"{site}/oscore/{{name}}"  # type: ignore[attr-defined]
    assert plc.security.trusted_servers == f"{site}/servers"  # type: ignore[attr-defined]
    assert plc.security.pki_dir == "{state}/pki/{name}"  # type: ignore[attr-defined]
    assert meter.security.oscore.state_dir == "{state}/oscore/{name}"  # type: ignore[attr-defined]
    assert got["broker"].tls.insecure is False  # type: ignore[attr-defined]  # the rest as loaded


def test_a_plugin_config_declares_its_path_keys() -> None:
    """`Strict.local_paths` is how a plugin's own file keys get the same reading, in
    nested models, lists and dicts of them."""
    from gateway.config.common import Strict, with_local_paths

    class Cert(Strict):
        local_paths = ("file",)
        file: str | None = None
        label: str = "x"

    class Plugin(Strict):
        local_paths = ("map_file", "spool", "extra")
        state_paths = ("spool",)
        map_file: str
        spool: str = "spool"
        extra: list[str] = []
        other: str = "keep.csv"
        certs: list[Cert] = []
        pair: tuple[Cert, ...] = ()
        named: dict[str, Cert] = {}

    config = Plugin(
        map_file="map.csv",
        extra=["a.csv", "b.csv"],
        certs=[Cert(file="a.pem"), Cert()],
        pair=(Cert(file="t.pem"),),
        named={"b": Cert(file="/b.pem")},
    )
    told: list[tuple[object, str]] = []
    got = with_local_paths(
        config, lambda name: f"/site/{name}", lambda where, value: told.append((where, value))
    )
    assert isinstance(got, Plugin)
    assert (got.map_file, got.spool, got.other) == ("/site/map.csv", "/site/spool", "keep.csv")
    assert got.extra == ["/site/a.csv", "/site/b.csv"]
    assert [c.file for c in got.certs] == ["/site/a.pem", None]
    assert got.pair == (Cert(file="/site/t.pem"),)
    assert got.named["b"].file == "/site//b.pem"  # what ``local`` does with it is its own call
    assert told == [(("spool",), "spool")]  # only state paths, where ``local`` changed them
    assert with_local_paths(Cert(label="y"), lambda name: name) == Cert(label="y")


@pytest.mark.parametrize(
    "entry, key, value, left",
    [
        ("endpoints", ("outbox", "path"), "outbox-{name}.db", "outbox-cloud.db"),
        ("endpoints", ("security", "oscore", "state_dir"), "oscore/{name}", "oscore/cloud"),
        ("endpoints", ("security", "pki_dir"), "pki/{name}", "pki/cloud"),
    ],
)
def test_state_left_in_the_working_folder_is_refused_until_moved(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry: str,
    key: tuple[str, ...],
    value: str,
    left: str,
) -> None:
    """Before 2026-11-22 a relative state path was read from the working folder. Starting
    afresh next to the config would restart OSCORE sequence numbers under the same keys
    (nonce reuse), leave an outbox's backlog behind, or make a new OPC UA certificate."""
    site, work = tmp_path / "etc", tmp_path / "var"
    site.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    secret = "00" * 16
    body = {
        ("outbox", "path"): f"{{protocol: mqtt, host: h, outbox: {{path: '{value}'}}}}",
        ("security", "oscore", "state_dir"): "{protocol: coap, role: server, security: {oscore:"
        f" {{sender_id: '01', recipient_id: '02', master_secret: '{secret}',"
        f" state_dir: '{value}'}}}}}}",
        (
            "security",
            "pki_dir",
        ): f"{{protocol: opcua, role: server, security: {{pki_dir: '{value}'}}}}",
    }[key]
    text = f"{entry}:\n  cloud: {body}\n"
    config = site / "gw.yaml"
    assert load_config_text(text, str(config), registry).devices  # nothing anywhere: fine
    (work / left).parent.mkdir(parents=True, exist_ok=True)
    (work / left).write_text("state")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(config), registry)
    (p,) = info.value.problems
    assert p.dotted == ".".join((entry, "cloud", *key))
    assert f"now read next to the config file ({site / left}), but what it holds is at" in str(p)
    assert f"mv {work / left} {site / left}" in str(p)
    (site / left).parent.mkdir(parents=True, exist_ok=True)
    (work / left).rename(site / left)
    assert load_config_text(text, str(config), registry).devices  # moved: fine


def test_state_in_the_shadow_path_is_the_state_folder(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{state}`` in shadow.path (as the example unit says) was taken as a folder named
    "{state}" next to the config."""
    monkeypatch.setenv("PROTOCOL_BRAIN_STATE_DIR", str(tmp_path / "state"))
    text = (
        "devices:\n  plc: {protocol: modbus, host: h, points: [{name: t, address: 0}]}\n"
        "shadow: {path: '{state}/shadow.db'}\n"
    )
    config = load_config_text(text, str(tmp_path / "gw.yaml"), registry)
    assert config.shadow is not None
    assert config.shadow.file() == str(tmp_path / "state" / "shadow.db")
    plain = load_config_text(text.replace("{state}/", "db/"), str(tmp_path / "gw.yaml"), registry)
    assert plain.shadow is not None and plain.shadow.file() == str(tmp_path / "db" / "shadow.db")


# -- point keys checked the same way for every protocol -------------------------------------------

POINT_OF = {  # a device of each protocol whose points take the keys below; {point} is the point
    "modbus": "{{protocol: modbus, host: 127.0.0.1, points: [{{name: p, address: 0{point}}}]}}",
    "opcua": "{{protocol: opcua, url: 'opc.tcp://h:4840', points: [{{name: p, node_id: 'i=2258'"
    "{point}}}]}}",
    "coap": "{{protocol: coap, url: 'coap://h', points: [{{name: p, path: a{point}}}]}}",
    "mqtt": "{{protocol: mqtt, host: 127.0.0.1, points: [{{name: p, topic: a/b{point}}}]}}",
}


def _one_point(protocol: str, keys: str) -> str:
    section = "endpoints" if protocol == "mqtt" else "devices"
    return f"{section}:\n  d: {POINT_OF[protocol].format(point=', ' + keys)}\n"


@pytest.mark.parametrize("protocol", sorted(POINT_OF))
def test_an_unknown_unit_is_refused_on_modbus_and_warned_on_the_others(
    protocol: str, registry: Registry
) -> None:
    """A Modbus point's scaling is written for its unit: pint must know it. On the others a
    unit is also a site's label (%RH, NTU), passed on as written: validate warns."""
    load_config_text(_one_point(protocol, "unit: degC"), "gw.yaml")  # a known one loads
    text = _one_point(protocol, "unit: blorps")
    section = "endpoints" if protocol == "mqtt" else "devices"
    if protocol == "modbus":
        with pytest.raises(ConfigError) as info:
            load_config_text(text, "gw.yaml")
        (p,) = info.value.problems
        assert p.dotted == f"{section}.d.points[0].unit", str(p)
        assert p.found == "'blorps'" and "a known unit" in p.expected, str(p)
        return
    config = load_config_text(text, "gw.yaml", registry, check_adapters=True)
    assert config.devices["d"].config.points[0].unit == "blorps"
    (warning,) = config.warnings
    assert f": {section}.d.points[0].unit: 'blorps' is not a unit pint knows: " in warning


def test_an_unknown_unit_of_a_computed_point_is_warned(registry: Registry) -> None:
    """A computed point's unit went out unchecked (``kw`` for ``kW``), where a device point's
    is warned about."""
    text = (
        _one_point("mqtt", "unit: kW")
        + "  broker: {protocol: mqtt, host: h}\n"
        + "bridges:\n"
        + "  - {name: up, from: d, to: broker, topic: 'x/{point}', computed: ["
        + "{name: a, expr: 'p * 2', unit: kw}, {name: b, expr: 'p * 3', unit: W}]}\n"
    )
    config = load_config_text(text, "gw.yaml", registry, check_adapters=True)
    (warning,) = config.warnings
    assert ": bridges[0].computed[0].unit: 'kw' is not a unit pint knows: " in warning


@pytest.mark.parametrize("node_id", ["garbage", "ns=x;i=3", "ns=2;q=1", "g=not-a-guid"])
def test_a_malformed_opcua_node_id_is_refused_at_its_key(node_id: str) -> None:
    text = (
        "devices:\n"
        "  plc:\n"
        "    protocol: opcua\n"
        "    url: opc.tcp://h:4840\n"
        "    points:\n"
        "      - {name: t, node_id: 'ns=2;s=Boiler.Temp'}\n"
        f"      - {{name: u, node_id: '{node_id}'}}\n"
    )
    load_config_text(text.replace(node_id, "i=2258"), "gw.yaml")  # well-formed ones load
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml")
    (p,) = info.value.problems
    assert p.dotted == "devices.plc.points[1].node_id" and p.line == 7, str(p)
    assert p.found == repr(node_id) and "a node id such as" in p.expected, str(p)


@pytest.mark.parametrize("protocol", sorted(POINT_OF))
def test_low_above_high_is_said_at_low(protocol: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(_one_point(protocol, "low: 15, high: 4"), "gw.yaml")
    (p,) = info.value.problems
    section = "endpoints" if protocol == "mqtt" else "devices"
    assert p.dotted == f"{section}.d.points[0].low", str(p)
    assert str(p).endswith("found 15.0; expected a number not above high (4.0)"), str(p)


def test_a_name_yaml_reads_as_a_boolean_says_to_quote_it() -> None:
    text = "devices:\n  plc: {protocol: modbus, host: h, points: [{name: on, address: 0}]}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "on.yaml")
    assert str(info.value).splitlines()[0] == (
        "on.yaml:2:52: devices.plc.points[0].name: found true (a boolean); "
        "expected a string (on/off/yes/no unquoted are booleans in YAML: put it in quotes)"
    )


def test_a_misspelt_role_is_one_problem_not_the_other_roles_settings() -> None:
    # Before: the role's error, and three more from checking a server's keys as a client's.
    text = "endpoints:\n  mb: {protocol: modbus, role: servr, host: 127.0.0.1, port: 1502}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "role.yaml")
    assert str(info.value).splitlines() == [
        "role.yaml:2:32: endpoints.mb.role: found 'servr'; expected one of: client, server "
        "(modbus has no other role)"
    ]


def test_points_left_to_a_missing_default_poll_group_are_one_problem(
    tmp_path: Path, registry: Registry
) -> None:
    """A device whose one poll group is named other than `default` left every point without
    `poll:` an error of its own (1,000 lines for 1,000 points): one problem names them all,
    and a point naming a group that does not exist is still its own."""
    points = "\n".join(f"      - {{name: p{i}, address: {i}}}" for i in range(40))
    path = tmp_path / "groups.yaml"
    path.write_text(
        "devices:\n  plc1:\n    protocol: modbus\n    host: 127.0.0.1\n"
        "    poll_groups: {fast: {interval: 0.5}}\n    points:\n"
        f"{points}\n      - {{name: typo, address: 99, poll: fats}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    problems = info.value.problems
    assert len(problems) == 2, "\n".join(map(str, problems))
    first = at(problems, "devices.plc1.points[0].poll")
    assert "40 points without poll: (p0, p1" in first.found and "(40 in all)" in first.found
    assert "a poll group named default" in first.expected
    assert at(problems, "devices.plc1.points[40].poll").found == "'fats'"
