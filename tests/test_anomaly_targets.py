"""Anomaly alarms reach the Modbus server, the CoAP server and the Sparkplug edge node: a whole
in-process gateway (a simulated Modbus pump -> a bridge with ``anomaly:`` -> our target), read
by mbpoll and a raw Modbus client, by libcoap's coap-client, and by Eclipse Tahu's JS host
(tests/interop/node/sparkplug_host.js) on a real mosquitto.

The alarm is driven as in test_opcua_anomaly_events.py (whose helpers these are): one row of
readings per poll, normal until the device is calibrated, faulty until the alarm rises, normal
until it clears."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import HOST, MosquittoBroker, free_port, wait_for
from sparkplug_peers import GROUP, NODE, Host
from test_coap_server import coap_client, run_coap_client
from test_opcua_anomaly_events import (
    CALIBRATION,
    CONFIG,
    THRESHOLD,
    Pump,
    active,
    calibrated,
    event_message,
    scored,
    stage_of,
)
from test_opcua_server import running_gateway
from test_simulator import RawClient, mbpoll, mbpoll_read
from test_sparkplug_interop import host_on

from gateway.anomaly.verdict import Verdict, alarm_samples, verdict
from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from gateway.types import Message, Sample
from protocols.coap.server import CoapServerAdapter
from protocols.modbus.codec import DataType, decode
from protocols.modbus.frames import (
    ExceptionCode,
    FunctionCode,
    ModbusError,
    ReadRequest,
    WriteSingleCoil,
    WriteSingleRegister,
)
from protocols.modbus.server import ModbusServerAdapter
from protocols.modbus.simulator import Simulator
from protocols.sparkplug.node import SparkplugAdapter

ANOMALY = f"{{model: student, calibration: {CALIBRATION}, threshold: {THRESHOLD}}}"

DEVICE = CONFIG[: CONFIG.index("endpoints:")]  # the pump of test_opcua_anomaly_events

MODBUS = """endpoints:
  mb: {{protocol: modbus, role: server, host: {host}, port: 0}}
bridges:
  - name: up
    from: pump
    to: mb{anomaly}
    map:
      - {{point: flow, address: 0, type: float32}}
{map}"""

ALARM_MAP = """      - {point: anomaly, table: coil, address: 0}
      - {point: anomaly, table: discrete, address: 0}
      - {point: anomaly, address: 10, type: uint16}
      - {point: anomaly_score, address: 20, type: float32}
      - {point: anomaly_score, table: input, address: 0, type: int16, scale: 0.01}
"""

SPARKPLUG = """endpoints:
  ignition:
    protocol: sparkplug
    host: {host}
    port: {broker}
    group: {group}
    node: {node}
    keepalive: 5
    reconnect: {{initial: 0.1, max: 0.3}}
bridges:
  - {{name: up, from: pump, to: ignition{anomaly}}}
"""


COAP = """endpoints:
  coap: {{protocol: coap, role: server, host: {host}, port: {port}}}
bridges:
  - {{name: up, from: pump, to: coap{anomaly}}}
"""


def anomaly_key(anomaly: str | None) -> str:
    return f"\n    anomaly: {anomaly}" if anomaly is not None else ""


@contextlib.asynccontextmanager
async def running(
    simulator: Simulator, target: str, extra: str = ""
) -> AsyncIterator[tuple[Gateway, Pump]]:
    device = await simulator.add_device(name="pump")
    text = DEVICE.format(host=HOST, port=device.port, extra=extra) + target
    async with running_gateway(text) as gateway:
        pump = Pump(device, gateway.bridges[0])
        pump.write()  # the first poll reads a real row, not zeros
        yield gateway, pump


# -- the shared helper -------------------------------------------------------------------------


def test_the_verdict_of_scored_messages_and_events() -> None:
    assert verdict(scored(True, 7.0, 5.0)) == Verdict(True, 7.0, 5.0, False)
    up = verdict(event_message(True, 9.5, 6.0))
    assert up is not None and (up.active, up.score, up.ts, up.event, up.threshold) == (
        True,
        9.5,
        6.0,
        True,
        3.0,
    )
    plain = Message.telemetry("pump", (Sample("flow", 1.0),))
    assert verdict(plain) is None and alarm_samples(plain) == ()
    samples = alarm_samples(scored(False, 1.25, 5.0))
    assert [(s.point, s.value, s.source_ts) for s in samples] == [
        ("anomaly", False, 5.0),
        ("anomaly_score", 1.25, 5.0),
    ]
    assert [s.point for s in alarm_samples(scored(False, 1.25, 5.0), ["anomaly_score"])] == [
        "anomaly_score"
    ]


# -- Modbus server -----------------------------------------------------------------------------


async def read(client: RawClient, function: FunctionCode, address: int, count: int = 1) -> Any:
    return await client.call(ReadRequest(function, address, count))


async def read_code(client: RawClient, function: FunctionCode, address: int) -> ExceptionCode:
    with pytest.raises(ModbusError) as info:
        await read(client, function, address, 2 if address == 20 else 1)
    return info.value.code


async def served(client: RawClient) -> tuple[bool, bool, int, float, float]:
    """The alarm as each entry of ALARM_MAP serves it."""
    coil = (await read(client, FunctionCode.READ_COILS, 0))[0]
    discrete = (await read(client, FunctionCode.READ_DISCRETE_INPUTS, 0))[0]
    register = (await read(client, FunctionCode.READ_HOLDING_REGISTERS, 10))[0]
    words = await read(client, FunctionCode.READ_HOLDING_REGISTERS, 20, 2)
    score = float(decode(words, DataType.FLOAT32))
    scaled = (await read(client, FunctionCode.READ_INPUT_REGISTERS, 0))[0]
    scaled -= 65536 if scaled >= 32768 else 0
    return coil, discrete, register, score, scaled * 0.01


async def test_modbus_entries_serve_the_alarm_and_refuse_writes(simulator: Simulator) -> None:
    target = MODBUS.format(host=HOST, anomaly=anomaly_key(ANOMALY), map=ALARM_MAP)
    async with running(simulator, target) as (gateway, pump):
        server = gateway.adapters["mb"]
        assert isinstance(server, ModbusServerAdapter)
        assert not server.map_errors and len(server.entries) == 6
        stage = stage_of(gateway)
        client = await RawClient.connect(server.port)
        try:
            # calibrating: no verdict yet, answered as a point with no value (0B)
            await wait_for(lambda: bool(pump.bridge.forwarded), timeout=10)
            for function, address in (
                (FunctionCode.READ_COILS, 0),
                (FunctionCode.READ_DISCRETE_INPUTS, 0),
                (FunctionCode.READ_HOLDING_REGISTERS, 10),
                (FunctionCode.READ_HOLDING_REGISTERS, 20),
                (FunctionCode.READ_INPUT_REGISTERS, 0),
            ):
                code = await read_code(client, function, address)
                assert code is ExceptionCode.GATEWAY_TARGET_FAILED, (function, address)
            # read-only, as any entry that is not writable: 02, whatever the table
            with pytest.raises(ModbusError) as info:
                await client.call(WriteSingleCoil(0, True))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS
            with pytest.raises(ModbusError) as info:
                await client.call(WriteSingleRegister(10, 1))
            assert info.value.code is ExceptionCode.ILLEGAL_DATA_ADDRESS

            await pump.until(lambda: calibrated(stage), faulty=False, rows=400)
            coil, discrete, register, score, scaled = await served(client)
            assert (coil, discrete, register) == (False, False, 0)
            assert score >= 0 and abs(scaled - score) <= 0.006

            await pump.until(lambda: active(stage), faulty=True, rows=200)
            coil, discrete, register, score, scaled = await served(client)
            assert (coil, discrete, register) == (True, True, 1)
            assert score > THRESHOLD and abs(scaled - score) <= 0.006
            # a real peer reads it too
            assert await mbpoll_read(server.port, "-0", "-r", "0", "-t", "0") == {0: "1"}

            await pump.until(lambda: not active(stage), faulty=False, rows=400)
            coil, discrete, register, _, _ = await served(client)
            assert (coil, discrete, register) == (False, False, 0)
            rc, out, err = await mbpoll(server.port, "-0", "-r", "0", "-t", "0", HOST, "1")
            assert rc != 0 and "Illegal data address" in err + out
        finally:
            await client.close()


async def test_modbus_alarm_from_the_event_and_a_source_point_named_anomaly(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A source point named ``anomaly`` keeps its entries (the alarm's point of that name is
    left out, with a warning); the EVENT's samples never land in a point's entries."""
    caplog.set_level(logging.WARNING)
    extra = "\n      - {name: anomaly, address: 8, type: int16, poll: fast}"
    anomaly = '{model: student, calibration: 100000, exclude: ["anomaly"]}'
    entries = (
        "      - {point: anomaly, address: 10, type: int16}\n"
        "      - {point: anomaly_score, address: 20, type: float32}\n"
    )
    target = MODBUS.format(host=HOST, anomaly=anomaly_key(anomaly), map=entries)
    async with running(simulator, target, extra) as (gateway, pump):
        pump.device.set_value("holding", 8, 42, DataType.INT16)
        server = gateway.adapters["mb"]
        assert isinstance(server, ModbusServerAdapter)
        route = gateway.bridges[0].config.route
        client = await RawClient.connect(server.port)
        try:

            async def register() -> int | None:
                try:
                    return (await read(client, FunctionCode.READ_HOLDING_REGISTERS, 10))[0]
                except ModbusError:
                    return None

            await wait_for(lambda: register(), timeout=10)
            assert await register() == 42
            await server.send(event_message(True, 9.5, 1_700_000_000.0), route)
            assert await register() == 42  # the event's alarm sample did not land there
            words = await read(client, FunctionCode.READ_HOLDING_REGISTERS, 20, 2)
            assert decode(words, DataType.FLOAT32) == 9.5
        finally:
            await client.close()
    assert "pump has a point named 'anomaly'" in caplog.text


def test_validate_takes_the_alarm_points_on_anomaly_bridges_only() -> None:
    device = DEVICE.format(host=HOST, port=5020, extra="")
    with_anomaly = MODBUS.format(host=HOST, anomaly=anomaly_key(ANOMALY), map=ALARM_MAP)
    load_config_text(device + with_anomaly, "plant.yaml")  # no problem
    without = MODBUS.format(host=HOST, anomaly="", map=ALARM_MAP)
    with pytest.raises(ConfigError) as info:
        load_config_text(device + without, "plant.yaml")
    found = {p.dotted: p.found for p in info.value.problems}
    assert set(found) == {f"bridges[0].map[{i}].point" for i in range(1, 6)}
    assert "the bridge carries no point 'anomaly'" in found["bridges[0].map[1].point"]


# -- Sparkplug edge node -----------------------------------------------------------------------


def ddata(host: Host, alias: int) -> list[Any]:
    """Each value of metric ``alias`` in the DDATA the host decoded, in order."""
    return [
        metric.get("value")
        for m in host.messages("DDATA", "pump")
        for metric in m["payload"]["metrics"]
        if metric.get("alias") == alias
    ]


@contextlib.asynccontextmanager
async def edge_node(
    simulator: Simulator, port: int, anomaly: str | None
) -> AsyncIterator[tuple[Host, Gateway, Pump, dict[str, Any]]]:
    """Tahu's JS host, then a gateway whose edge node births the pump: its first DBIRTH."""
    key = f", anomaly: {anomaly}" if anomaly is not None else ""
    target = SPARKPLUG.format(host=HOST, broker=port, group=GROUP, node=NODE, anomaly=key)
    async with host_on(port) as host, running(simulator, target) as (gateway, pump):
        dbirth = await wait_for(
            lambda: next(iter(host.messages("DBIRTH", "pump")), None), timeout=20
        )
        yield host, gateway, pump, dbirth


async def test_sparkplug_births_the_alarm_metrics_and_sends_the_alarm(
    simulator: Simulator, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.sparkplug.node")
    async with edge_node(simulator, mosquitto.port, ANOMALY) as (host, gateway, pump, dbirth):
        node = gateway.adapters["ignition"]
        assert isinstance(node, SparkplugAdapter)
        stage = stage_of(gateway)
        born = {m["name"]: m for m in dbirth["payload"]["metrics"]}
        assert born["anomaly"]["type"] == "Boolean"
        assert born["anomaly_score"]["type"] == "Double"
        # born before the first score: null (Tahu's JS decoder shows is_null so), Bad
        for name in ("anomaly", "anomaly_score"):
            assert born[name]["value"] is None, born[name]
            assert born[name]["properties"]["Quality"]["value"] == 0
        alarm, score = born["anomaly"]["alias"], born["anomaly_score"]["alias"]

        await pump.until(lambda: calibrated(stage), faulty=False, rows=400)
        await wait_for(lambda: ddata(host, alarm)[:1] == [False], timeout=10)
        await pump.until(lambda: active(stage), faulty=True, rows=200)
        await wait_for(lambda: ddata(host, alarm)[-1:] == [True], timeout=10)
        scores = ddata(host, score)
        assert scores and max(scores) > THRESHOLD
        await pump.until(lambda: not active(stage), faulty=False, rows=400)
        await wait_for(lambda: ddata(host, alarm)[-1:] == [False], timeout=10)
        # the alarm only when it changes; the score with the readings
        assert ddata(host, alarm) == [False, True, False]
        assert len(host.messages("DBIRTH", "pump")) == 1  # never born again for them
        assert node.writes_refused == 0
        host.command(
            cmd="dcmd",
            device="pump",
            metrics=[{"name": "anomaly", "type": "Boolean", "value": True}],
        )
        await wait_for(lambda: node.writes_refused == 1, timeout=10)
        assert "DCMD pump/anomaly refused: read-only" in caplog.text  # never sent to the pump
        # the pump lost: its readings go Bad and it dies, though the alarm's metrics (which
        # no lost device makes Bad) had values
        assert not host.messages("DDEATH", "pump")
        pump.device.online = False
        await wait_for(lambda: host.messages("DDEATH", "pump"), timeout=20)


async def test_sparkplug_without_anomaly_has_no_alarm_metrics(
    simulator: Simulator, mosquitto: MosquittoBroker
) -> None:
    async with edge_node(simulator, mosquitto.port, None) as (host, gateway, _pump, dbirth):
        names = {m["name"] for m in dbirth["payload"]["metrics"]}
        assert names == {"flow", "pressure", "temperature", "current"}
        node = gateway.adapters["ignition"]
        assert isinstance(node, SparkplugAdapter)
        route = gateway.bridges[0].config.route
        births = node.births
        await node.send(event_message(True, 9.5, 1_700_000_000.0), route)
        await node.send(scored(True, 9.5, 1_700_000_000.0), route)
        assert node.births == births  # an EVENT's samples are no metrics: no rebirth for them
        assert len(host.messages("DBIRTH", "pump")) == 1


# -- CoAP server -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def observing(url: str) -> AsyncIterator[bytearray]:
    """coap-client observing ``url`` (text/plain): what it printed so far, as it comes."""
    proc = await asyncio.create_subprocess_exec(
        coap_client(), "-s", "120", "-A", "0", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(256):
            out.extend(chunk)

    reader = asyncio.create_task(read())
    try:
        yield out
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await asyncio.gather(reader, return_exceptions=True)


async def test_coap_resources_serve_and_notify_the_alarm(simulator: Simulator) -> None:
    coap_client()
    port = free_port()
    target = COAP.format(host=HOST, port=port, anomaly=f", anomaly: {ANOMALY}")
    base = f"coap://{HOST}:{port}"
    async with running(simulator, target) as (gateway, pump):
        server = gateway.adapters["coap"]
        assert isinstance(server, CoapServerAdapter)
        stage = stage_of(gateway)
        _, out = await run_coap_client(f"{base}/.well-known/core")
        links = {link.split(">")[0].lstrip("<"): link for link in out.split(",")}
        flag, score = links["/pump/anomaly"], links["/pump/anomaly_score"]
        assert 'if="core.s"' in flag and ";obs" in flag
        assert 'rt="protocol-brain.point.bool"' in flag
        assert 'rt="protocol-brain.point.float64"' in score and 'if="core.s"' in score
        # no verdict yet: as any point with no value
        _, out = await run_coap_client(f"{base}/pump/anomaly", "-A", "0")
        assert out.startswith("5.03") and "no value yet" in out
        _, out = await run_coap_client(f"{base}/pump/anomaly", "-m", "put", "-e", "1", "-t", "0")
        assert out.startswith("4.05"), out

        await pump.until(lambda: calibrated(stage), faulty=False, rows=400)
        assert await run_coap_client(f"{base}/pump/anomaly", "-A", "0") == (0, "false")
        async with observing(f"{base}/pump/anomaly") as observer:
            await wait_for(lambda: observer == b"false", timeout=10)
            await pump.until(lambda: active(stage), faulty=True, rows=200)
            await wait_for(lambda: observer == b"falsetrue", timeout=10)
            _, out = await run_coap_client(f"{base}/pump/anomaly_score", "-A", "0")
            assert float(out) > THRESHOLD
            await pump.until(lambda: not active(stage), faulty=False, rows=400)
            await wait_for(lambda: observer == b"falsetruefalse", timeout=10)


async def test_coap_without_anomaly_has_no_alarm_resources(simulator: Simulator) -> None:
    coap_client()
    port = free_port()
    target = COAP.format(host=HOST, port=port, anomaly="")
    base = f"coap://{HOST}:{port}"
    async with running(simulator, target) as (gateway, _pump):
        _, out = await run_coap_client(f"{base}/.well-known/core")
        assert "/pump/flow" in out and "anomaly" not in out
        _, out = await run_coap_client(f"{base}/pump/anomaly")
        assert out.startswith("4.04")
        server = gateway.adapters["coap"]
        route = gateway.bridges[0].config.route
        await server.send(event_message(True, 9.5, 1_700_000_000.0), route)
        await server.send(scored(True, 9.5, 1_700_000_000.0), route)
        _, out = await run_coap_client(f"{base}/pump/anomaly")
        assert out.startswith("4.04")
