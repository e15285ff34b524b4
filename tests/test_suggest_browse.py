"""``gateway suggest FILE.yaml#device --browse``: a live browse (OPC UA) or sample (MQTT) with the
connection settings of a device in the config, before the device has any points.

Peers: the gateway's own OPC UA server with only a Basic256Sha256 SignAndEncrypt endpoint and
users (it also checks our certificate against its trust list), node-opcua's server (an OPC UA
stack we did not write) with security and a user, and mosquitto with TLS and a password file.
The command runs in a thread (it has its own event loop) while the peers run in the test's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import HOST, find_binary, free_port, mqtt_endpoint_yaml
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_adapter import broker_factory, password_broker, tls_files  # noqa: F401 (fixtures)
from test_opcua_client import NodeOpcuaServer
from test_opcua_security import SECURE
from test_opcua_server import Plant, plant_gateway

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from gateway.cli import main
from gateway.config import load_config
from gateway.translator.browse import BrowseOptions, browse_device
from gateway.translator.tokenize import Point
from protocols.modbus.simulator import Simulator
from protocols.opcua.client import OpcuaClientAdapter
from protocols.opcua.pki import CERT_FILE, ensure_certificate

GATEWAY = "onboard"
CLIENT_URI = f"urn:protocol-brain:{GATEWAY}:plc"  # what the client adapter of device plc names


def opcua_config(tmp_path: Path, url: str, *, password: str = "secret", security: str = "") -> Path:
    """A config with one OPC UA client device ``plc`` and no points (onboarding)."""
    pki = tmp_path / "client-pki"
    security = security or f"{{policy: Basic256Sha256, mode: SignAndEncrypt, pki_dir: {pki}}}"
    path = tmp_path / "plant.yaml"
    path.write_text(
        f"gateway: {{name: {GATEWAY}}}\n"
        "devices:\n"
        "  plc:\n"
        "    protocol: opcua\n"
        f"    url: {url}\n"
        "    username: op\n"
        f"    password: {password}\n"
        "    timeout: 4\n"
        f"    security: {security}\n",
        encoding="utf-8",
    )
    return path


async def suggest(
    capsys: pytest.CaptureFixture[str], folder: Path, source: str, *extra: str
) -> tuple[int, str, Path]:
    """``gateway suggest --source source [extra]`` in a thread, the target list and the bridge in
    ``folder``: (exit code, stderr, the bridge)."""
    out = folder / "bridge.yaml"
    tgt = str(_csv(folder / "t.csv", "temperature", "level_percent"))
    args = ["suggest", "--source", source, "--target", tgt, "--out", str(out), *extra]
    code = await asyncio.to_thread(main, args)
    return code, capsys.readouterr().err, out


async def refused(capsys: pytest.CaptureFixture[str], source: str, *extra: str) -> str:
    """The one line a refused ``--browse`` of ``FILE#device`` prints; exit 2, no bridge."""
    folder = Path(source.partition("#")[0]).parent
    code, err, out = await suggest(capsys, folder, source, "--browse", *extra)
    assert code == 2, err
    named = source.partition("#")[0]  # a problem in the file names the file, line and column
    assert err.startswith(f"error: --source {named}") and err.count("\n") == 1, err
    assert not out.exists()
    return err


def add_points(config: Path, entries: list[str]) -> str:
    """``config`` with ``entries`` (YAML list items) as the points of its last device."""
    config.write_text(config.read_text() + "    points:\n" + "\n".join(entries) + "\n")
    return str(config)


def _csv(path: Path, *names: str) -> Path:
    path.write_text("name\n" + "\n".join(names) + "\n", encoding="utf-8")
    return path


# -- the gateway's own OPC UA server: secure endpoints only, users, a client trust list -------


@pytest.fixture
async def secure_plant(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Plant]:
    """Our OPC UA server (pki in tmp_path/pki) serving a Modbus pump's points with units."""
    async with plant_gateway(simulator, tmp_path, server=SECURE) as plant:
        yield plant


async def trust_both_ways(tmp_path: Path) -> None:
    """What an operator does once: our client trusts the server's certificate, the server ours
    (generated here as the browse would, for the device's application URI)."""
    client_pki = tmp_path / "client-pki"
    (client_pki / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "pki" / CERT_FILE, client_pki / "trusted" / "server.der")
    cert, _ = await ensure_certificate(client_pki, CLIENT_URI, socket.gethostname())
    shutil.copy(cert, tmp_path / "pki" / "trusted" / "plc.der")


async def test_browse_with_security_and_a_user_yields_variables_with_units(
    secure_plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await trust_both_ways(tmp_path)
    config = opcua_config(tmp_path, secure_plant.url)
    points = await asyncio.to_thread(browse_device, str(config), "plc", BrowseOptions())
    by_name = {p.name: p for p in points}
    assert set(by_name) == {"temp", "setpoint", "level", "count", "enable", "model"}
    assert by_name["temp"] == Point("temp", "oil temperature", "°C", address="ns=1;s=pump.temp")
    assert by_name["setpoint"].unit == "°F"  # the bridge converts it: the served unit
    assert by_name["level"].unit == "%"

    config = opcua_config(tmp_path, secure_plant.url, password="wrong")
    err = await refused(capsys, f"{config}#plc")
    assert f"cannot browse {secure_plant.url}: server refused user 'op'" in err


async def test_untrusted_server_certificate_says_where_to_trust_it(
    secure_plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = opcua_config(tmp_path, secure_plant.url)
    err = await refused(capsys, f"{config}#plc")
    pki = tmp_path / "client-pki"
    assert "server certificate untrusted" in err
    assert f"copy it from {pki / 'rejected'} into {pki / 'trusted'}" in err
    (saved,) = (pki / "rejected").iterdir()  # the operator's copy to move
    assert saved.read_bytes() == (tmp_path / "pki" / CERT_FILE).read_bytes()


async def test_our_certificate_refused_by_the_server_says_which_one(
    secure_plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client_pki = tmp_path / "client-pki"
    (client_pki / "trusted").mkdir(parents=True)
    shutil.copy(tmp_path / "pki" / CERT_FILE, client_pki / "trusted" / "server.der")
    err = await refused(capsys, f"{opcua_config(tmp_path, secure_plant.url)}#plc")
    assert "server refused our certificate" in err and f"({client_pki}/own)" in err
    assert (client_pki / CERT_FILE).is_file()  # generated for the device, to hand over


async def test_suggest_writes_a_bridge_from_the_browsed_device(
    secure_plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await trust_both_ways(tmp_path)
    source = f"{opcua_config(tmp_path, secure_plant.url)}#plc"
    code, err, out = await suggest(capsys, tmp_path, source, "--browse", "--from", "plc")
    assert (code, err) == (0, "")  # nothing on stderr: the pki's log lines stay quiet
    text = out.read_text(encoding="utf-8")
    assert f"#   source: {source} (browsed live)" in text
    assert "from: plc" in text and "approved: false" in text
    for name in ("temp", "setpoint", "level", "count", "enable", "model"):
        assert f'"{name}"' in text  # every browsed variable is mapped or marked REVIEW

    # The device's points come with the bridge, commented out, with the node ids the server
    # gave: pasted under the device, the config is valid and every node id reads.
    snippet = [line[1:] for line in text.split("# devices:\n", 1)[1].splitlines()]
    entries = [line for line in snippet if line.strip().startswith("- {name:")]
    assert len(entries) == 6, snippet
    loaded = load_config(add_points(Path(source.partition("#")[0]), entries))
    plc = loaded.devices["plc"].config
    adapter = OpcuaClientAdapter("plc", plc, AdapterContext(Bus(), GATEWAY))
    async with adapter.connected() as client:
        for point in plc.points:  # type: ignore[attr-defined]
            await client.get_node(point.node_id).read_value()  # raises for a wrong node id


# -- node-opcua's server ----------------------------------------------------------------------


async def test_node_opcua_server_with_security_and_a_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = NodeOpcuaServer(
        tmp_path / "server-pki", tmp_path / "node.log", security=True, users="op:secret"
    )
    await server.start()
    try:
        (tmp_path / "client-pki" / "trusted").mkdir(parents=True)
        shutil.copy(server.certificate, tmp_path / "client-pki" / "trusted" / "peer.pem")
        config = opcua_config(tmp_path, server.url)
        points = await asyncio.to_thread(browse_device, str(config), "plc", BrowseOptions())
        names = {p.name for p in points}
        assert {"Temp", "Counter", "Setpoint", "Level", "Enabled", "Label"} <= names

        config = opcua_config(tmp_path, server.url, password="wrong")
        assert "server refused user 'op'" in await refused(capsys, f"{config}#plc")
    finally:
        await server.kill()


# -- what cannot be browsed, and bad entries: no network needed ----------------------------------


CONFIG = f"""\
devices:
  pump:
    protocol: modbus
    host: {HOST}
    port: 5020
  plc:
    protocol: opcua
    url: opc.tcp://{HOST}:PORT
    security:
      policy: Basic256Sha256
      mode: Sign_and_encrypt
  sensor:
    protocol: coap
    host: {HOST}
endpoints:
  opcua:
    protocol: opcua
    role: server
"""


@pytest.mark.parametrize(
    "device, message",
    [
        (
            "pump",
            "a modbus device (drop --browse to read its points:) cannot be browsed; "
            "--browse connects to OPC UA client devices and MQTT endpoints only",
        ),
        ("sensor", "a coap device (drop --browse to read its points:) cannot be browsed"),
        ("opcua", "an opcua server (this gateway's own server) cannot be browsed"),
        ("nope", "no device 'nope' (has: pump, plc, sensor, opcua)"),
        ("plc", "plant.yaml:11:13: devices.plc.security.mode: found 'Sign_and_encrypt'"),
    ],
)
def test_an_entry_that_cannot_be_browsed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(CONFIG.replace("PORT", str(free_port())), encoding="utf-8")
    err = asyncio.run(refused(capsys, f"{config}#{device}"))
    assert message in err


def test_without_browse_the_device_points_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same FILE#device without --browse still means its points: (none here)."""
    config = opcua_config(tmp_path, f"opc.tcp://{HOST}:{free_port()}")
    code, err, _ = asyncio.run(suggest(capsys, tmp_path, f"{config}#plc"))
    assert code == 2 and "no points with a name found" in err


def test_an_unreachable_server_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"opc.tcp://{HOST}:{free_port()}"  # nothing listens there
    err = asyncio.run(refused(capsys, f"{opcua_config(tmp_path, url)}#plc"))
    assert f"cannot browse {url}: connection refused" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "--browse connects to a device of a config: give --source or --target as"),
        (("--browse-seconds", "2"), "--browse-seconds and --browse-topic go with --browse"),
    ],
)
def test_browse_flags_need_a_config_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    src = _csv(tmp_path / "s.csv", "AHU1_SAT")
    browse = () if extra else ("--browse",)
    code, err, out = asyncio.run(suggest(capsys, tmp_path, str(src), *browse, *extra))
    assert code == 2 and message in err and not out.exists()


# -- MQTT: an endpoint with TLS and a password ----------------------------------------------------


def publish_retained(port: int, ca: Path, messages: dict[str, Any]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.tls_set(ca_certs=str(ca))
    client.username_pw_set("gateway", "s3cret")
    client.connect(HOST, port)
    client.loop_start()
    try:
        for topic, payload in messages.items():
            client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def mqtt_config(tmp_path: Path, port: int, *, password: str, tls: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(mqtt_endpoint_yaml(port, password, f"    tls: {tls}\n"), encoding="utf-8")
    return path


@pytest.fixture
def secure_broker(
    broker_factory: Any,  # noqa: F811
    tls_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> Any:
    """mosquitto with TLS only and user gateway/s3cret, holding two retained topics."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-b", "-c", str(passwd), "gateway", "s3cret"], check=True
    )
    broker = broker_factory(
        f"allow_anonymous false\npassword_file {passwd}\n"
        f"cafile {tls_files['ca.crt']}\n"
        f"certfile {tls_files['server.crt']}\n"
        f"keyfile {tls_files['server.key']}\n"
    )
    publish_retained(
        broker.port,
        tls_files["ca.crt"],
        {"site/ahu1": {"SupplyAirTemp": 13.1, "FanStatus": 1}, "other/x": 1},
    )
    return broker


async def test_mqtt_endpoint_with_tls_and_a_password(
    secure_broker: Any,
    tls_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = secure_broker
    ca = f"{{ca_file: {tls_files['ca.crt']}}}"
    config = mqtt_config(tmp_path, broker.port, password="s3cret", tls=ca)
    options = BrowseOptions(seconds=1, topic="site/#")
    points = await asyncio.to_thread(browse_device, str(config), "broker", options)
    assert {p.name for p in points} == {"SupplyAirTemp", "FanStatus"}

    # '#': nothing of ours, no birth or will published; named as points: keys would (other/x: x)
    everything = BrowseOptions(seconds=1, topic="#")
    points = await asyncio.to_thread(browse_device, str(config), "broker", everything)
    assert {p.name for p in points} == {"SupplyAirTemp", "FanStatus", "x"}
    capsys.readouterr()  # the naming each sample assumed (no points: keys subscription)

    source = f"{mqtt_config(tmp_path, broker.port, password='wrong', tls=ca)}#broker"
    err = await refused(capsys, source, "--browse-seconds", "5", "--browse-topic", "site/#")
    assert "the broker refused the connection" in err
    assert "check the device's username and password" in err

    source = f"{mqtt_config(tmp_path, broker.port, password='s3cret', tls='{}')}#broker"
    err = await refused(capsys, source, "--browse-seconds", "1", "--browse-topic", "site/#")
    assert f"TLS certificate of {HOST}:{broker.port} rejected" in err and "tls.ca_file" in err


async def test_a_relative_tls_file_is_read_next_to_the_config_as_run_reads_it(
    secure_broker: Any,
    tls_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The browse took `ca_file: ca.crt` from the working folder while validate and run took
    it from the config's folder: run from elsewhere it said "no such file"."""
    import shutil

    site, elsewhere = tmp_path / "etc", tmp_path / "var"
    site.mkdir()
    elsewhere.mkdir()
    shutil.copy(tls_files["ca.crt"], site / "ca.crt")
    config = mqtt_config(site, secure_broker.port, password="s3cret", tls="{ca_file: ca.crt}")
    monkeypatch.chdir(elsewhere)
    options = BrowseOptions(seconds=1, topic="site/#")
    points = await asyncio.to_thread(browse_device, str(config), "broker", options)
    assert {p.name for p in points} == {"SupplyAirTemp", "FanStatus"}


async def test_a_broker_url_refused_for_want_of_a_user_points_to_browse(
    password_broker: Any,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"mqtt://{HOST}:{password_broker.port}/site/#?seconds=30"
    code, err, out = await suggest(capsys, tmp_path, url)
    assert code == 2 and not out.exists()
    assert "the broker refused the connection: Not authorized" in err
    assert "use FILE.yaml#device --browse" in err
