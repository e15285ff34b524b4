"""``gateway suggest`` names a source's points as ``gateway run`` will, so an approved map
forwards what it maps.

MQTT: points are named by the running endpoint's own decoders (``points: keys`` and ``names:``
of its subscriptions, declared ``points:``), whether the source is ``FILE.yaml#endpoint
--browse``, ``mqtt://host:port/filter`` or a sample file. The judge is a real run: suggest from
a live mosquitto, approve the map as the file says, run the gateway in-process with that bridge,
publish with mosquitto_pub and read what the target publishes.

OPC UA: a browse the server refuses (anonymous login) or cannot have (unreachable) is one line,
exit code 2; a URL without a port is OPC UA's 4840. The peer is the gateway's own OPC UA server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from conftest import HOST, MosquittoBroker, find_binary, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_opcua_server import WRITER, Plant, fill, plant_config, plant_gateway, running_gateway

from gateway.cli import main
from protocols.modbus.simulator import Simulator

GATEWAY = "gw"
TS = "2026-01-01T00:00:00Z"
# What the plant publishes: JSON with a timestamp, a gateway `sample` payload, a bare value, a
# payload that is not JSON; and (retained) a gateway's status, outside the subscriptions.
READINGS = {
    "site/ahu1": {"SAT": 21.5, "ts": TS},
    "site/vav12/zone_temp": {"value": 22.5, "quality": "good", "ts": TS, "unit": "degC"},
    "site/vav12/damper": 42,
}
NOT_JSON = ("site/raw", "on")
STATUS = ("protocol-brain/other/status", {"state": "online", "ts": TS, "cpu_load": 0.1})
TARGETS = ["AHU1_SAT", "VAV12_ZN_T", "VAV12_DMPR_POS", "ZN_T_UNIT", "ZN_T_QUALITY"]

# The names gateway run gives those readings (codec.KeyDecoder), by `names:`; `ts` is a time.
BY_TOPIC = {  # names: topic on site/#: the levels # matched, then the key
    "ahu1.SAT": 21.5,
    "vav12.zone_temp.value": 22.5,
    "vav12.zone_temp.quality": "good",
    "vav12.zone_temp.unit": "degC",
    "vav12.damper": 42,
}
BY_KEY = {"SAT": 21.5, "value": 22.5, "quality": "good", "unit": "degC", "damper": 42}


class Publisher:
    """mosquitto_pub in a loop (as the audit did), until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.binary = find_binary("mosquitto_pub", "/usr/bin/mosquitto_pub")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        args = [self.binary, "-h", HOST, "-p", str(self.port), "-t", topic, "-m", payload]
        subprocess.run([*args, *(["-r"] if retain else [])], check=True, timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for topic, value in READINGS.items():
                self.publish(topic, json.dumps(value))
            self.publish(*NOT_JSON)
            self._stop.wait(0.2)

    def __enter__(self) -> Publisher:
        self.publish(STATUS[0], json.dumps(STATUS[1]), retain=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def endpoints_yaml(port: int, subscription: str, plant: str = "") -> str:
    """The plant (source, ``plant``: more of its settings) and scada (target) MQTT endpoints
    on one broker."""
    return (
        f"gateway: {{name: {GATEWAY}}}\n"
        "endpoints:\n"
        f"  plant:\n    protocol: mqtt\n    host: {HOST}\n    port: {port}\n"
        "    outbox: null\n"
        f"    subscriptions: [{subscription}]\n"
        f"{plant}"
        f"  scada:\n    protocol: mqtt\n    host: {HOST}\n    port: {port}\n"
        "    outbox: null\n"
    )


def suggest(source: str, folder: Path, *extra: str) -> tuple[int, str, str]:
    """``gateway suggest --source source`` against the scada point list: (exit code, the
    bridge written or "", stderr is read by the caller's capsys)."""
    target = write(folder / "scada.csv", "name\n" + "\n".join(TARGETS) + "\n")
    out = folder / "bridge.yaml"
    args = ["suggest", "--source", source, "--target", str(target), "--out", str(out), *extra]
    code = main(args)
    return code, out.read_text(encoding="utf-8") if out.exists() else "", str(out)


ENTRY = re.compile(r'^\s+(?:# REVIEW )?"([^"]+)": ')


def suggested_names(bridge: str) -> set[str]:
    """Every source name of the map, confident or REVIEW."""
    return {m.group(1) for line in bridge.splitlines() if (m := ENTRY.match(line))}


def approve(bridge: str, source: str, target: str) -> str:
    """What the file's comments say to do: accept REVIEW lines that have a target (delete the
    `# REVIEW ` in front), drop those without one, set `from`/`to` and `approved: true`."""
    lines = []
    for line in bridge.splitlines():
        if "# REVIEW" in line and "no matching target" in line:
            continue
        lines.append(line.replace("# REVIEW ", "", 1) if ENTRY.match(line) else line)
    text = "\n".join(lines) + "\n"
    text = text.replace("from: SOURCE_DEVICE", f"from: {source}")
    return text.replace("to: TARGET_ENDPOINT", f"to: {target}").replace(
        "approved: false", "approved: true"
    )


@contextlib.contextmanager
def subscriber(port: int, topic: str) -> Iterator[dict[str, Any]]:
    """What arrives on ``topic``: the last level (the point) -> the payload's value."""
    got: dict[str, Any] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got[msg.topic.rsplit("/", 1)[-1]] = json.loads(msg.payload)["value"]

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic)
    client.connect(HOST, port)
    client.loop_start()
    try:
        yield got
    finally:
        client.loop_stop()
        client.disconnect()


# -- MQTT: end to end -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, subscription, expected",
    [
        # the audit's case: the endpoint's own subscription, sampled on its filter (not #)
        ("endpoint", '{topic: "site/#", points: keys, names: topic}', BY_TOPIC),
        # a bare URL: named as points: keys with names: key; the endpoint then subscribes so
        ("url", '{topic: "site/#", points: keys}', BY_KEY),
        ("url&names=topic", '{topic: "site/#", points: keys, names: topic}', BY_TOPIC),
    ],
)
async def test_an_approved_map_from_an_mqtt_sample_forwards_every_mapped_point(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    subscription: str,
    expected: dict[str, Any],
) -> None:
    config = write(tmp_path / "plant.yaml", endpoints_yaml(mosquitto.port, subscription))
    if kind == "endpoint":
        source, extra = f"{config}#plant", ("--browse", "--browse-seconds", "2")
    else:
        query = kind.partition("&")[2]
        source = f"mqtt://{HOST}:{mosquitto.port}/site/#?seconds=2" + (f"&{query}" if query else "")
        extra = ()
    with Publisher(mosquitto.port):
        code, bridge, _ = await asyncio.to_thread(suggest, source, tmp_path, *extra)
    err = capsys.readouterr().err
    assert code == 0, err
    # exactly the names gateway run gives: no topic-named points, no ts, no status keys
    assert suggested_names(bridge) == set(expected), bridge
    assert "site/raw" in err and "invalid JSON" in err  # named nothing: said, not invented
    if kind.startswith("url"):  # the naming assumed, said
        assert f"subscription {subscription}" in err and "must subscribe" in err

    approved = approve(bridge, "plant", "scada")
    mapping = yaml.safe_load(approved)["bridges"][0]["translate"]["map"]
    assert mapping, approved
    run_config = write(tmp_path / "run.yaml", config.read_text() + approved)
    with subscriber(mosquitto.port, f"{GATEWAY}/plant/#") as got:
        async with running_gateway(run_config):
            with Publisher(mosquitto.port):
                want = {target: expected[source] for source, target in mapping.items()}
                await wait_for(
                    lambda: all(got.get(t) == v for t, v in want.items()),
                    timeout=20,
                    message=f"the mapped points {want} at the target (got {got})",
                )
    assert set(got) == set(mapping.values())  # the map renames and drops the rest


# -- MQTT: how each source is named ------------------------------------------------------------


def test_a_sample_file_is_named_as_a_keys_subscription_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.translator.sources import read_mqtt_sample

    lines = [f"{topic} {json.dumps(value)}" for topic, value in READINGS.items()]
    lines += [" ".join(NOT_JSON), json.dumps({"topic": "site/ahu2", "payload": {"a": {"b": 1}}})]
    sample = write(tmp_path / "sample.txt", "\n".join(lines) + "\n")
    names = [p.name for p in read_mqtt_sample(str(sample))]
    assert names == [*BY_KEY, "a.b"]
    err = capsys.readouterr().err
    assert "site/raw: invalid JSON" in err
    assert "points: keys" in err and "must subscribe" in err


def test_a_key_on_several_topics_is_said_and_names_topic_keeps_them_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gateway sample payloads on many topics all name the points value/quality/unit (as
    gateway run names them under names: key): said, with the way out; ``?names=topic`` after
    a sample file names them by topic. A line with a topic alone names a point again (it was
    refused as invalid JSON after the runtime naming came in)."""
    from gateway.cli import main

    sample = write(
        tmp_path / "sample.txt",
        'site/ahu1/sat {"value": 13.5, "quality": "good", "unit": "degC"}\n'
        'site/ahu1/rat {"value": 22.0, "quality": "good", "unit": "degC"}\n'
        "site/ahu1/fan_status\n",
    )
    code, bridge, _ = suggest(str(sample), tmp_path)
    err = capsys.readouterr().err
    assert code == 0 and suggested_names(bridge) == {"value", "quality", "unit", "fan_status"}
    assert "3 points named alike on several topics (value: site/ahu1/sat, site/ahu1/rat" in err
    assert "?names=topic after an mqtt:// URL or a sample file" in err
    code, bridge, _ = suggest(f"{sample}?names=topic", tmp_path)
    err = capsys.readouterr().err
    assert code == 0 and "named alike" not in err and "names: topic" in err
    assert {"site.ahu1.sat.value", "site.ahu1.rat.value", "site.ahu1.fan_status"} <= (
        suggested_names(bridge)
    )
    out = tmp_path / "b.yaml"
    assert main(["suggest", "--source", f"{sample}?names=both", "--target", str(sample),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "only ?names=key or ?names=topic" in capsys.readouterr().err


async def test_endpoint_declared_points_keep_their_names_and_other_topics_are_said(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.translator.browse import BrowseOptions, browse_device

    declared = "    points:\n      - {name: DMPR_POS, topic: site/vav12/damper, unit: percent}\n"
    text = endpoints_yaml(mosquitto.port, '{topic: "site/+", points: keys}', declared)
    config = write(tmp_path / "plant.yaml", text)
    with Publisher(mosquitto.port):
        # its own filters by default: site/+ (keys) and the declared point's topic
        points = await asyncio.to_thread(
            browse_device, str(config), "plant", BrowseOptions(seconds=2)
        )
        assert {p.name: p.unit for p in points} == {"DMPR_POS": "percent", "SAT": ""}
        # --browse-topic samples elsewhere; what the endpoint does not read is said
        options = BrowseOptions(seconds=2, topic="site/#")
        points = await asyncio.to_thread(browse_device, str(config), "plant", options)
    assert {p.name for p in points} == {"DMPR_POS", "SAT"}
    err = capsys.readouterr().err
    assert "site/vav12/zone_temp" in err and "left out" in err


async def test_an_endpoint_that_reads_no_points_needs_a_filter(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "plant.yaml", endpoints_yaml(mosquitto.port, '{topic: "site/#"}'))
    with Publisher(mosquitto.port):
        code, bridge, _ = await asyncio.to_thread(
            suggest, f"{config}#plant", tmp_path, "--browse", "--browse-seconds", "1"
        )
        err = capsys.readouterr().err
        assert code == 2 and not bridge
        assert err.count("\n") == 1 and "reads no points" in err and "--browse-topic" in err
        # with a filter it is named as a points: keys subscription on it would, and says so
        code, bridge, _ = await asyncio.to_thread(
            suggest,
            f"{config}#plant",
            tmp_path,
            "--browse",
            "--browse-seconds",
            "2",
            "--browse-topic",
            "site/#",
        )
    err = capsys.readouterr().err
    assert code == 0, err
    assert suggested_names(bridge) == set(BY_KEY)
    assert 'subscription {topic: "site/#", points: keys}' in err


def test_a_broker_url_names_by_key_or_topic_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, bridge, _ = suggest(f"mqtt://{HOST}:1/site/#?names=levels", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and not bridge and "names must be key or topic, not 'levels'" in err


# -- OPC UA ----------------------------------------------------------------------------------


async def test_an_opcua_server_refusing_anonymous_is_one_line(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with plant_gateway(simulator, tmp_path, server=WRITER) as plant:
        code, bridge, _ = await asyncio.to_thread(suggest, plant.url, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and not bridge
    assert err.startswith(f"error: --source {plant.url}: ") and err.count("\n") == 1, err
    assert "refused an anonymous session" in err and "FILE.yaml#device --browse" in err


def test_an_opcua_url_without_a_port_is_port_4840() -> None:
    from gateway.translator.sources import opcua_url

    assert opcua_url("opc.tcp://plc.local") == "opc.tcp://plc.local:4840"
    assert opcua_url("opc.tcp://plc.local/UA/Server") == "opc.tcp://plc.local:4840/UA/Server"
    assert opcua_url("opc.tcp://plc.local:4841/x") == "opc.tcp://plc.local:4841/x"


async def test_a_browse_without_a_port_reaches_the_default_port(
    simulator: Simulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end, with the default moved to a free port (4840 itself may be taken on a
    developer's machine): before, a URL without a port connected to port 0."""
    from gateway.translator import sources

    port = free_port()
    monkeypatch.setattr(sources, "OPCUA_PORT", port)
    # nothing there yet: one line naming where it tried and what to check
    code, bridge, _ = await asyncio.to_thread(suggest, f"opc.tcp://{HOST}", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and not bridge and err.count("\n") == 1, err
    assert err.startswith(f"error: --source opc.tcp://{HOST}: cannot browse")
    assert f"opc.tcp://{HOST}:{port}" in err and "is the server running" in err

    device = await simulator.add_device(name="pump")
    fill(device)
    async with running_gateway(plant_config(device.port, port, tmp_path / "pki")) as gateway:
        plant = Plant(gateway, device, simulator)
        assert f":{port}/" in plant.url
        code, bridge, _ = await asyncio.to_thread(suggest, f"opc.tcp://{HOST}", tmp_path)
    assert code == 0
    assert {"temp", "setpoint", "level"} <= suggested_names(bridge)
