"""The `gateway` command as a user runs it: a real subprocess, its exit code and output."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def gateway(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_validate_accepts_the_shipped_example() -> None:
    out = gateway("validate", "examples/modbus_to_mqtt.yaml")
    assert out.returncode == 0, out.stderr
    assert "ok (2 devices and endpoints, 7 points, 2 bridges)" in out.stdout


def test_validate_reports_every_problem_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n"
        "  plc:\n"
        "    protocol: modbus\n"
        "    host: 10.0.0.1\n"
        "    points: [{name: t, address: 70000}]\n"
        "bridges:\n"
        "  - {name: b, from: plc, to: nowhere}\n"
    )
    out = gateway("validate", str(bad))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{bad}:5:" in out.stderr and "devices.plc.points[0].address" in out.stderr
    assert f"{bad}:7:" in out.stderr and "bridges[0].to: found 'nowhere'" in out.stderr
    assert "2 problems" in out.stderr


def test_validate_counts_one_of_a_kind_in_the_singular(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(
        "devices:\n"
        "  plc: {protocol: modbus, host: 10.0.0.1, points: [{name: t, address: 0}]}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: 10.0.0.2}\n"
        "bridges:\n"
        "  - {name: b, from: plc, to: broker, topic: 'x/{point}'}\n"
    )
    out = gateway("validate", str(one))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{one}: ok (2 devices and endpoints, 1 point, 1 bridge)"
    alone = tmp_path / "alone.yaml"
    alone.write_text("endpoints:\n  broker: {protocol: mqtt, host: 10.0.0.2}\n")
    out = gateway("validate", str(alone))
    assert out.stdout.strip() == f"{alone}: ok (1 device or endpoint, 0 points, 0 bridges)"
    alone.write_text("endpoints:\n  broker: {protocol: mqtt, host: h, port: 0}\n")
    out = gateway("validate", str(alone))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"{alone}: 1 problem"


def test_validate_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    out = gateway("validate", str(tmp_path / "nope.yaml"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "nope.yaml" in out.stderr


def test_run_refuses_a_bad_file_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [1, 2]\n")
    out = gateway("run", str(bad))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "bad.yaml:1:" in out.stderr


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_run_names_a_server_whose_port_is_taken_in_one_line(tmp_path: Path, protocol: str) -> None:
    # A valid file that cannot work on this machine: one line naming the device, exit 1.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    busy = tmp_path / "busy.yaml"
    busy.write_text(
        f"devices:\n  plc: {{protocol: {protocol}, role: server, host: 127.0.0.1, port: {port}}}\n"
    )
    try:
        out = gateway("run", str(busy))
    finally:
        taken.close()
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: device 'plc' could not start: "), out.stderr
    assert "address already in use" in last and "Traceback" not in out.stderr


def test_run_names_an_unreadable_certificate_in_one_line(tmp_path: Path) -> None:
    cert = tmp_path / "tls.yaml"
    cert.write_text(
        "devices:\n"
        f"  plc: {{protocol: modbus, host: 127.0.0.1, port: {free_port()},"
        " points: [{name: a, address: 0}]}\n"
        "endpoints:\n"
        f"  cloud: {{protocol: mqtt, host: 127.0.0.1, port: 9, tls: {{ca_file: {tmp_path}/no.pem}}}}\n"
        "bridges:\n"
        "  - {name: up, from: plc, to: cloud}\n"
    )
    out = gateway("run", str(cert))
    assert out.returncode == 1
    assert out.stderr.startswith("error: endpoint 'cloud' could not start: "), out.stderr
    assert f"tls.ca_file {tmp_path}/no.pem: no such file" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["schema"], ["validate", "examples/modbus_to_mqtt.yaml"]])
def test_output_on_a_full_disk_is_one_line(args: list[str]) -> None:
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        out = subprocess.run(
            [*GATEWAY, *args], stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60
        )
    assert out.returncode == 1
    assert out.stderr == "error: [Errno 28] No space left on device\n", out.stderr


def test_schema_is_json_schema_covering_the_protocols() -> None:
    out = gateway("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    text = json.dumps(schema)
    assert "2020-12" in schema.get("$schema", "")
    assert '"modbus"' in text and '"mqtt"' in text
    assert "poll_groups" in text and "status_topic" in text


def test_plugins_lists_roles_and_capabilities() -> None:
    out = gateway("plugins")
    assert out.returncode == 0
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "client" in lines["modbus"] and "read,poll,write" in lines["modbus"]
    assert "publish" in lines["mqtt"] and lines["mqtt"].rstrip().endswith("ok")


def test_plugins_table_is_as_wide_as_the_longest_protocol_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    import gateway.plugins
    from gateway.cli import main
    from gateway.plugins import Registry, load_registry

    registry = load_registry()
    long = dataclasses.replace(registry.get("mqtt"), name="industrial-ethernet-ip")
    specs = {**registry.specs, long.name: long}
    errors = {"a-very-long-broken-plugin": "failed to import"}
    monkeypatch.setattr(gateway.plugins, "load_registry", lambda: Registry(specs, errors))
    assert main(["plugins"]) == 1  # the broken plugin
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(specs) + 1
    # Every column starts where the header's does, whatever the length of a name.
    starts = [lines[0].index(title) for title in ("roles", "capabilities", "status")]
    assert starts[0] == len("a-very-long-broken-plugin") + 1
    for line in lines[1:]:
        assert all(line[at - 1] == " " and line[at] != " " for at in starts), lines


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("gateway",)
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command line, top-level and nested, with its command words."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_option_and_argument_says_what_it_is() -> None:
    from gateway.cli import build_parser

    missing = []
    commands = dict(_parsers(build_parser()))
    for command, parser in commands.items():
        parser.format_help()  # a bad %-placeholder in a help string would fail here
        if not parser.description:
            missing.append(f"{command}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest: choice.help for choice in action._choices_actions}
                missing += [
                    f"{command} {sub}: no help" for sub in action.choices if not listed.get(sub)
                ]
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(
                    f"{command} {'/'.join(action.option_strings) or action.dest}: no help"
                )
    assert missing == []
    # The walk reaches the feature commands and the nested ones.
    assert {"gateway validate", "gateway shadow get", "gateway translator train"} <= set(commands)
    assert {"gateway optimizer evaluate", "gateway anomaly train", "gateway status"} <= set(
        commands
    )


def test_demo_help_names_what_it_serves() -> None:
    from gateway.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = next(choice.help for choice in commands._choices_actions if choice.dest == "demo")
    for text in (listed, commands.choices["demo"].description):
        assert "MQTT" in text and "OPC UA" in text and "shadow" in text, text


def test_anomaly_help_names_every_anomaly_command() -> None:
    from gateway.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = next(c.help for c in commands._choices_actions if c.dest == "anomaly")
    for name in ("train", "evaluate", "status", "recalibrate", "carry"):
        assert name in listed and name in commands.choices["anomaly"].description, name


def test_demo_shows_readings_that_made_the_round_trip() -> None:
    out = gateway("demo", "--duration", "4", "--mqtt-port", str(free_port()), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    readings = [line for line in out.stdout.splitlines() if "plant/boiler/" in line]
    points = {line.split()[1] for line in readings}
    assert {"plant/boiler/temperature", "plant/boiler/cycles", "plant/boiler/pressure"} <= points
    assert "stopped:" in out.stdout


def test_demo_without_amqtt_says_so_in_one_line() -> None:
    blocked = (
        "import sys; sys.modules['amqtt'] = None; from gateway.cli import main; "
        f"sys.exit(main(['demo', '--duration', '1', '--mqtt-port', '{free_port()}', "
        "'--opcua-port', '0']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 1
    assert (
        out.stderr == "error: the embedded broker needs amqtt: pip install 'protocol-brain[demo]'\n"
    )


def test_demo_names_the_gateway_command_as_it_can_be_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo import gateway_command

    script = Path(sys.executable).parent / "gateway"  # the virtualenv's console script
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert gateway_command() == str(script)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "gateway" / "__main__.py"), "demo"])
    assert gateway_command() == f"{sys.executable} -m gateway"


def test_hash_password_reads_stdin_and_verifies() -> None:
    from gateway.passwords import verify_password

    out = subprocess.run(
        [*GATEWAY, "hash-password"], input="s3cret-pw\n", capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    stored = out.stdout.strip()
    assert stored.startswith("scrypt$")
    assert verify_password("s3cret-pw", stored) and not verify_password("s3cret-pw ", stored)
    empty = subprocess.run([*GATEWAY, "hash-password"], input="\n", capture_output=True, text=True)
    assert empty.returncode == 1 and "empty password" in empty.stderr
    short = subprocess.run(
        [*GATEWAY, "hash-password"], input="s3cret\n", capture_output=True, text=True
    )
    assert short.returncode == 1 and "at least 8 characters" in short.stderr and not short.stdout
    binary = subprocess.run(
        [*GATEWAY, "hash-password"], input=b"\xff\xfe\x00bad\n", capture_output=True
    )
    assert binary.returncode == 1 and binary.stderr == b"error: the password is not UTF-8 text\n"


@pytest.mark.parametrize(
    ("option", "value"), [("--duration", "nan"), ("--duration", "-1"), ("--mqtt-port", "70000")]
)
def test_demo_refuses_bad_options_before_starting(option: str, value: str) -> None:
    out = gateway("demo", option, value, timeout=20)
    assert out.returncode == 2 and f"argument {option}: must be" in out.stderr
    assert "Traceback" not in out.stderr and "Protocol Brain demo" not in out.stdout


def test_every_shipped_example_validates() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 6
    for path in examples:
        out = gateway("validate", str(path))
        assert out.returncode == 0, f"{path.name}: {out.stderr}"


async def test_demo_serves_the_device_over_opcua_with_write_back() -> None:
    import asyncio

    from asyncua import Client, ua

    opcua_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "demo",
        "--duration",
        "20",
        "--mqtt-port",
        str(free_port()),
        "--opcua-port",
        str(opcua_port),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        while b"Readings that reached" not in await asyncio.wait_for(proc.stdout.readline(), 30):
            pass
        await wait_for(lambda: port_open("127.0.0.1", opcua_port), timeout=20)
        client = Client(f"opc.tcp://127.0.0.1:{opcua_port}/protocol-brain", timeout=10)
        client.set_user("demo")
        client.set_password("demo")
        async with client:
            ns = await client.get_namespace_index("urn:protocol-brain:demo")
            temp = client.get_node(f"ns={ns};s=boiler.temperature")
            for _ in range(50):
                dv = await temp.read_data_value(raise_on_bad_status=False)
                if dv.StatusCode.is_good():
                    break
                await asyncio.sleep(0.1)
            assert 14 < dv.Value.Value < 26  # degC: the OPC UA bridge converts no units
            setpoint = client.get_node(f"ns={ns};s=boiler.setpoint")
            await setpoint.write_value(ua.DataValue(ua.Variant(55.0, ua.VariantType.Float)))
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await setpoint.write_value(ua.DataValue(ua.Variant(95.0, ua.VariantType.Float)))
            assert refused.value.code == ua.StatusCodes.BadOutOfRange
            for _ in range(50):
                if (await setpoint.read_value()) == 55.0:
                    break
                await asyncio.sleep(0.1)
            assert await setpoint.read_value() == 55.0
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_status_command_the_demo_prints_finds_its_outboxes() -> None:
    import asyncio
    import os

    from gateway.paths import STATE_ENV

    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}  # as a user runs them
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "demo",
        "--duration",
        "30",
        "--mqtt-port",
        str(free_port()),
        "--opcua-port",
        "0",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        status: list[str] = []
        line = ""
        while "plant/boiler/" not in line:  # a reading made the round trip: outboxes are open
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            words = shlex.split(line)
            if words[1:2] == ["status"] or words[2:4] == ["gateway", "status"]:
                status = words
        assert status, "the demo does not print its status command"
        # Run as printed, from a shell whose PATH lacks the virtualenv (a fresh terminal).
        out = await asyncio.to_thread(
            subprocess.run,
            [*status, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["gateway"]["state"] == "running" and doc["gateway"]["pid"] == proc.pid
        rows = {r["endpoint"]: r for r in doc["outboxes"]}
        assert set(rows) == {"broker", "watch"}
        for row in rows.values():
            assert not row.get("missing"), row  # read from the demo's own outbox files
            assert row["backlog"] is not None
    finally:
        proc.terminate()
        await proc.wait()


def test_schema_covers_the_shadow_section() -> None:
    schema = json.loads(gateway("schema").stdout)
    shadow = json.dumps(schema["properties"]["shadow"]) + json.dumps(schema["$defs"])
    assert "poll_interval" in shadow and "max_rows" in shadow


def test_any_command_names_the_extra_of_a_missing_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import main

    monkeypatch.setitem(sys.modules, "numpy", None)  # import of it fails as if not installed
    argv = ["optimizer", "traces", "--kind", "walk", "--count", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == "error: needs numpy: pip install 'protocol-brain[ml]'\n"


def test_validate_reports_disabled_ends_second_entries_and_periods_in_one_run(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n"
        "  plc: {protocol: modbus, host: h, points: [{name: t, address: 0}]}\n"
        "  spare: {protocol: modbus, enabled: false, host: h, points: [{name: t, address: 0}]}\n"
        "endpoints:\n"
        "  broker: {protocol: mqtt, host: h}\n"
        "  plc: {protocol: mqtt, host: h, port: 0}\n"
        "bridges:\n"
        "  - {name: up, from: [plc, spare], to: broker, topic: 'x/{point}',\n"
        "     anomaly: {calibration_period: [2024-05-01T00:00:00]}}\n"
    )
    out = gateway("validate", str(bad))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{bad}:6:3: endpoints.plc: found the name 'plc' again (first in devices at line 2); "
        "expected names used once across devices and endpoints",
        f"{bad}:6:40: endpoints.plc.port: found 0; expected a number >= 1",
        f"{bad}:8:28: bridges[0].from[1]: found 'spare', which is disabled (enabled: false at "
        "line 3); expected an enabled device or endpoint, or enabled: false on bridge 'up' too",
        f"{bad}:9:36: bridges[0].anomaly.calibration_period: found [2024-05-01 00:00:00]; "
        "expected two times [start, end] (ISO 8601, e.g. [2024-05-01T00:00:00, "
        "2024-05-08T00:00:00]), not one",
        f"{bad}: 4 problems",
    ]
    fixed = bad.read_text().replace("{name: up,", "{name: up, enabled: false,")
    fixed = fixed.replace("  plc: {protocol: mqtt, host: h, port: 0}\n", "").replace(
        "[2024-05-01T00:00:00]", "[2024-05-01T00:00:00, 2024-05-02T00:00:00]"
    )
    bad.write_text(fixed)
    out = gateway("validate", str(bad))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{bad}: ok (2 devices and endpoints, 1 point, 0 bridges; disabled: 1 device or "
        "endpoint, 1 bridge)"
    )


@pytest.mark.parametrize(
    ("level", "info", "warning"),
    [("info", False, True), ("debug", True, True), ("error", False, False)],
)
def test_asyncua_logs_only_warnings_unless_debugging(level: str, info: bool, warning: bool) -> None:
    """asyncua's INFO (a line per monitored item, two a second per subscribed client) is not
    in the gateway's log at info level; with log_level debug it is, and at error its warnings
    are not either (a record is filtered by its own logger's level, not by the root's)."""
    from gateway.cli import _set_log_level

    names = ("", "asyncua")
    before = [logging.getLogger(n).level for n in names]
    try:
        _set_log_level(level)
        library = logging.getLogger("asyncua.server.subscription_service")
        assert library.isEnabledFor(logging.INFO) is info
        assert library.isEnabledFor(logging.WARNING) is warning
        assert logging.getLogger("gateway").isEnabledFor(logging.INFO) is (level != "error")
    finally:
        for name, was in zip(names, before, strict=True):
            logging.getLogger(name).setLevel(was)
