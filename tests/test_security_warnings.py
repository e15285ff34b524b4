"""Write paths and secrets that a config opens without saying so: each is a warning in
``gateway validate`` and at start, and a config without it says nothing. A secret written in the
config (``password``, ``master_secret``, ``master_salt``) is never quoted in a problem.

- a Modbus TCP server with writable points (Modbus has no authentication);
- the shadow's MQTT update topic with shadowed writable points (only broker ACLs guard it);
- an MQTT password sent without TLS to a broker that is not on this machine."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import free_port, wait_for
from test_modbus_server import CONFIG as MODBUS_CONFIG
from test_opcua_server import running_gateway

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.cli import main
from gateway.config import ConfigError, load_config_text
from gateway.config.model import ShadowSection
from gateway.shadow.service import ShadowService
from gateway.types import Access, PointSpec
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator
from protocols.mqtt.client import MqttAdapter
from protocols.mqtt.config import MqttEndpoint, is_loopback


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The warning lines of ``gateway validate`` (which must accept the file)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    capsys.readouterr()
    rc = main(["validate", str(path)])
    said = capsys.readouterr()
    assert rc == 0, said
    return [line for line in (said.out + said.err).splitlines() if line.startswith("warning:")]


def warned(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING
    ]


# -- Modbus TCP server ---------------------------------------------------------------------------

MODBUS = """
devices:
  plc:
    protocol: modbus
    host: 10.0.0.7
    points:
      - {name: temp, address: 1, type: int16}
      - {name: setpoint, address: 2, type: int16, access: rw}
      - {name: pump, table: coil, address: 0, access: rw}
endpoints:
  mb:
    protocol: modbus
    role: server
    port: 5502
bridges:
  - name: serve
    from: plc
    to: mb
    map:
      - {point: temp, address: 0}
      - {point: setpoint, address: 1}
      - {point: pump, table: coil, address: 0}
"""


def test_validate_says_nothing_for_a_read_only_modbus_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_only = MODBUS.replace("    to: mb\n", "    to: mb\n    writable: false\n")
    assert read_only != MODBUS
    assert validate(tmp_path, read_only, capsys) == []
    only_temp = MODBUS.replace("    to: mb\n", "    to: mb\n    points: temp\n")
    only_temp = only_temp.split("      - {point: setpoint")[0]
    assert validate(tmp_path, only_temp, capsys) == []


async def modbus_start_warnings(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, text: str
) -> list[str]:
    device = await simulator.add_device(size=40, name="plc")
    config = text.format(device_port=device.port, server_port=free_port(), server="", map="")
    caplog.set_level(logging.WARNING)
    async with running_gateway(config) as gateway:
        server = gateway.adapters["mb"]
        assert isinstance(server, ModbusServerAdapter)
        await wait_for(lambda: server.status()["map_entries"] == 11)
    return warned(caplog, "protocols.modbus.server")


async def test_a_modbus_server_warns_at_start_only_with_writable_points(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    [line] = await modbus_start_warnings(simulator, caplog, MODBUS_CONFIG)
    # setpoint, level, total and pump are rw (pump twice: one point)
    assert line.startswith("mb: Modbus has no authentication: anyone who can reach 127.0.0.1:")
    assert "can write 4 points" in line
    caplog.clear()
    read_only = MODBUS_CONFIG.replace("    to: mb\n", "    to: mb\n    writable: false\n")
    assert read_only != MODBUS_CONFIG
    assert await modbus_start_warnings(simulator, caplog, read_only) == []


# -- the shadow's MQTT update topic --------------------------------------------------------------

SHADOW = (
    MODBUS.split("endpoints:")[0]
    + """
endpoints:
  broker: {protocol: mqtt, host: broker.example, outbox: null}
shadow:
  path: "{tmp}/shadow.db"
  mqtt: {endpoint: broker, prefix: site}
"""
)


def test_validate_says_nothing_for_a_shadow_without_mqtt_or_writable_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SHADOW.replace("{tmp}", str(tmp_path))
    no_mqtt = text.replace("  mqtt: {endpoint: broker, prefix: site}\n", "")
    assert no_mqtt != text
    assert validate(tmp_path, no_mqtt, capsys) == []
    read_only = text.replace(", access: rw", "")
    assert read_only != text
    assert validate(tmp_path, read_only, capsys) == []
    other = text.replace("  mqtt:", "  devices: [broker]\n  mqtt:")  # plc has no shadow
    assert validate(tmp_path, other, capsys) == []


def router(**access: Access) -> Any:
    points = {
        ("plc", name): PointSpec(f"plc/{name}", name, "int16", access=a)
        for name, a in access.items()
    }
    return SimpleNamespace(points=points)


async def shadow_start_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, points: Any, mqtt: bool = True
) -> list[str]:
    config = ShadowSection.model_validate(
        {"path": str(tmp_path / "s.db"), **({"mqtt": {"endpoint": "broker"}} if mqtt else {})}
    )
    broker = SimpleNamespace(config=MqttEndpoint(host="broker.example", port=1884))
    caplog.set_level(logging.WARNING)
    async with ShadowService(config, Bus(), points, {"broker": broker}):
        pass
    return warned(caplog, "gateway.shadow.service")


async def test_the_shadow_warns_at_start_about_its_update_topic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points = router(temp=Access.READ, setpoint=Access.READ_WRITE, level=Access.WRITE)
    [line] = await shadow_start_warnings(tmp_path, caplog, points)
    assert line.startswith("shadow: anyone who can publish on things/+/shadow/update at broker ")
    assert "broker.example:1884 can write 2 points of 1 device" in line


async def test_the_shadow_does_not_warn_without_mqtt_or_writable_points(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert await shadow_start_warnings(tmp_path, caplog, router(temp=Access.READ)) == []
    writable = router(setpoint=Access.READ_WRITE)
    assert await shadow_start_warnings(tmp_path, caplog, writable, mqtt=False) == []


# -- an MQTT password without TLS ---------------------------------------------------------------

MQTT = """
endpoints:
  cloud: {protocol: mqtt, host: broker.example, username: gw, password: s3cret-pass, outbox: null}
"""


@pytest.mark.parametrize(
    "change",
    [
        ("host: broker.example", "host: 127.0.0.1"),
        ("host: broker.example", "host: 127.8.9.10"),
        ("host: broker.example", "host: localhost"),
        ("host: broker.example", "host: '::1'"),
        ("outbox: null", "outbox: null, tls: {}"),
        ("password: s3cret-pass, ", ""),
    ],
    ids=["127.0.0.1", "127/8", "localhost", "::1", "tls", "no password"],
)
def test_validate_says_nothing_for_a_local_broker_tls_or_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str]
) -> None:
    text = MQTT.replace(*change)
    assert text != MQTT
    assert validate(tmp_path, text, capsys) == []


def test_loopback_hosts() -> None:
    assert all(
        map(
            is_loopback,
            [
                "127.0.0.1",
                "127.255.0.3",
                "::1",
                "[::1]",
                "LOCALHOST",
                "a.localhost",
                "::ffff:127.0.0.1",
            ],
        )
    )
    assert not any(
        map(is_loopback, ["10.0.0.1", "broker.example", "::", "0.0.0.0", "localhost.example"])
    )


async def mqtt_start_warnings(caplog: pytest.LogCaptureFixture, **kw: Any) -> list[str]:
    config = MqttEndpoint.model_validate(
        {
            "host": "broker.example",
            "username": "gw",
            "password": "s3cret-pass",
            "outbox": None,
            **kw,
        }
    )
    caplog.set_level(logging.WARNING)
    adapter = MqttAdapter("cloud", config, AdapterContext(Bus(), "gw"))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(adapter)  # no network I/O
    return warned(caplog, "protocols.mqtt.client")


async def test_an_mqtt_password_in_clear_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    [line] = await mqtt_start_warnings(caplog)
    assert line == (
        "MQTT endpoint cloud sends its password unencrypted to broker.example:1883 (anyone on "
        "the path can read it); add tls: (the broker's TLS port, usually 8883)"
    )


async def test_an_mqtt_password_to_a_local_broker_does_not_warn_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert await mqtt_start_warnings(caplog, host="127.0.0.1") == []


# -- gateway validate says each, once ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            MODBUS,
            [
                "endpoints.mb: Modbus has no authentication: anyone who can reach ",
                "0.0.0.0:5502 (every interface) can write 2 points",
                "bind host: to a trusted interface, set writable: false",
                "firewall the port",
            ],
        ),
        (
            SHADOW,
            [
                "shadow.mqtt: anyone who can publish on site/+/shadow/update at broker ",
                "broker.example:1883 can write 2 points of 1 device",
                "restrict that topic with the broker's ACLs",
            ],
        ),
        (
            MQTT,
            [
                "endpoints.cloud.password: MQTT endpoint sends its password unencrypted to ",
                "broker.example:1883",
                "add tls:",
            ],
        ),
    ],
    ids=["modbus server", "shadow update topic", "mqtt password"],
)
def test_validate_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: list[str]
) -> None:
    [line] = validate(tmp_path, text.replace("{tmp}", str(tmp_path)), capsys)
    assert [part for part in said if part not in line] == []
    assert "s3cret-pass" not in line


# -- secrets written in the config are not quoted -----------------------------------------------

SECRETS = """
devices:
  c:
    protocol: coap
    url: coap://10.0.0.5
    security:
      oscore: {sender_id: "01", recipient_id: "02", master_secret: "0102030405060708090a0b0c0d0e0f"}
    points:
      - {name: t, path: temp}
endpoints:
  m: {protocol: mqtt, host: 127.0.0.1, username: u, password: 98765}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return [str(p) for p in info.value.problems]


def test_a_literal_secret_that_fails_validation_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, salt = problems(SECRETS)
    assert (
        "devices.c.security.oscore.master_secret: found a value that is not shown (a secret)"
        in secret
    )
    assert "expected a string of at least 32 characters" in secret
    assert "0102030405060708090a0b0c0d0e0f" not in secret
    assert "endpoints.m.password: found a value that is not shown (a secret), an integer" in salt
    assert "expected a string" in salt and "98765" not in salt
    path = tmp_path / "gateway.yaml"
    path.write_text(SECRETS)
    assert main(["validate", str(path)]) != 0
    said = capsys.readouterr()
    assert "0102030405060708090a0b0c0d0e0f" not in said.out + said.err
    assert "98765" not in said.out + said.err


def test_a_mapping_holding_a_secret_is_not_shown() -> None:
    secret = "a1" * 16
    text = SECRETS.replace('"02"', '"01"').replace("0102030405060708090a0b0c0d0e0f", secret)
    text = text.replace("password: 98765", "password: ok")
    [line] = problems(text)
    assert "devices.c.security.oscore: found a mapping that holds a secret (not shown)" in line
    assert "sender_id and recipient_id must differ" in line
    assert "a1a1" not in line


def test_a_bad_master_salt_is_not_shown() -> None:
    text = SECRETS.replace(
        '"0102030405060708090a0b0c0d0e0f"', '"' + "ab" * 16 + '", master_salt: "zz-secret-salt"'
    ).replace("password: 98765", "password: ok")
    [line] = problems(text)
    assert "master_salt: found a value that is not shown (a secret), a string" in line
    assert "zz-secret-salt" not in line
