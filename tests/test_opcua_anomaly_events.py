"""Anomaly alarms reach OPC UA clients: a whole in-process gateway (a simulated Modbus pump ->
a bridge with ``anomaly:`` -> our OPC UA server), judged by node-opcua's event client
(tests/interop/node/opcua_events.js) and asyncua's.

The alarm is driven much as in test_anomaly_runtime.py: the test writes generated readings to the
simulator one row per poll (normal until the device is calibrated, then a fault until the alarm
rises, then normal until it clears), waiting for each row to pass the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.common.events import get_filter_from_event_type
from conftest import HOST, NODE_DIR, free_port, node_binary, wait_for
from test_opcua_server import running_gateway

from gateway.anomaly.stage import AnomalyStage
from gateway.bridge import Bridge
from gateway.runtime import Gateway
from gateway.types import Message, MessageKind, Sample
from protocols.modbus.codec import DataType
from protocols.modbus.simulator import SimulatedDevice, Simulator
from protocols.opcua.server import OpcuaServerAdapter

CALIBRATION = 60
THRESHOLD = 6
OFF_NORMAL = f"ns=0;i={ua.ObjectIds.OffNormalAlarmType}"
REFRESH_MARKERS = {f"ns=0;i={ua.ObjectIds.RefreshStartEventType}", "ns=0;i=2788"}

CONFIG = """
gateway: {{name: plant, status_interval: 0}}
devices:
  pump:
    protocol: modbus
    host: {host}
    port: {port}
    poll_groups: {{fast: {{interval: 0.01}}}}
    points:
      - {{name: flow, address: 0, type: float32, poll: fast}}
      - {{name: pressure, address: 2, type: float32, poll: fast}}
      - {{name: temperature, address: 4, type: float32, poll: fast}}
      - {{name: current, address: 6, type: float32, poll: fast}}{extra}
endpoints:
  opcua:
    protocol: opcua
    role: server
    host: {host}
    port: {opcua}
    anonymous: true{server}
    security: {{allow_none: true, pki_dir: {pki}}}
bridges:
  - {{name: up, from: pump, to: opcua, folder: "Plant/{{device}}"{anomaly}}}
"""


def config(
    device: SimulatedDevice, tmp_path: Path, anomaly: str | None, extra: str = "", server: str = ""
) -> str:
    """The plant's config; ``extra``: more pump points, ``server``: more server settings."""
    return CONFIG.format(
        host=HOST,
        port=device.port,
        opcua=free_port(),
        pki=tmp_path / "pki",
        extra=extra,
        server=server,
        anomaly=f", anomaly: {anomaly}" if anomaly is not None else "",
    )


def steady(rows: int) -> np.ndarray:
    """Readings of a pump in steady state (`anomaly_data.series` without its slow drift, which
    a calibration as short as this test's would take for a fault)."""
    rng = np.random.default_rng(5)
    flow = 30 + rng.normal(0, 0.5, rows)
    pressure = 2 + 0.1 * np.sin(np.arange(rows) / 9.0) + rng.normal(0, 0.03, rows)
    temperature = 60 + rng.normal(0, 0.02, rows)
    current = 1.5 + 0.02 * (flow - 30) + rng.normal(0, 0.01, rows)
    return np.stack([flow, pressure, temperature, current], axis=1)


@dataclass
class Pump:
    """Writes one row of readings per poll and waits until the bridge has sent it on."""

    device: SimulatedDevice
    bridge: Bridge
    values: Any = field(default_factory=lambda: steady(3000))
    row: int = 0

    def write(self, faulty: bool = False) -> None:
        row = self.values[self.row % len(self.values)].copy()
        self.row += 1
        if faulty:  # a valve closes: much less flow, more pressure
            row[0] -= 8.0
            row[1] += 0.6
        for j, v in enumerate(row):
            self.device.set_value("holding", 2 * j, float(v), DataType.FLOAT32)

    async def until(self, done: Callable[[], bool], *, faulty: bool, rows: int) -> None:
        """Rows until ``done()``, at most ``rows`` of them."""
        for _ in range(rows):
            if done():
                return
            before = self.bridge.forwarded
            self.write(faulty)
            await wait_for(lambda b=before: self.bridge.forwarded > b, timeout=10)
        assert done(), f"not done after {rows} rows"


def stage_of(gateway: Gateway) -> AnomalyStage:
    stage = gateway.bridges[0].anomaly
    assert stage is not None
    return stage


def calibrated(stage: AnomalyStage) -> bool:
    dev = stage.devices.get("pump")
    return dev is not None and dev.calibrated and dev.scored >= 5


def active(stage: AnomalyStage) -> bool:
    return "pump" in stage.status()["active"]


@contextlib.asynccontextmanager
async def gateway_for(
    simulator: Simulator, tmp_path: Path, anomaly: str | None, extra: str = "", server: str = ""
) -> AsyncIterator[tuple[Gateway, OpcuaServerAdapter, Pump]]:
    device = await simulator.add_device(name="pump")
    async with running_gateway(config(device, tmp_path, anomaly, extra, server)) as gateway:
        adapter = gateway.adapters["opcua"]
        assert isinstance(adapter, OpcuaServerAdapter)
        pump = Pump(device, gateway.bridges[0])
        pump.write()  # the first poll reads a real row, not zeros
        yield gateway, adapter, pump


class NodeEvents:
    """tests/interop/node/opcua_events.js, its JSON lines read as they come. With
    ``"interactive": true`` in the plan, stdin stays open after it, for `send`."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NodeEvents:
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(),
            "opcua_events.js",
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.plan).encode() + b"\n")
        if not self.plan.get("interactive"):
            self.proc.stdin.close()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.startswith(b"{"):
                self.lines.append(json.loads(line))

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    def events(self) -> list[dict[str, Any]]:
        return [ln["event"] for ln in self.lines if "event" in ln]

    def alarms(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["EventType"] not in REFRESH_MARKERS]

    async def wait(self, predicate: Callable[[], bool], limit: float = 30) -> None:
        async def check() -> bool:
            if any("error" in ln for ln in self.lines):
                err = b""
                if self.proc is not None and self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                pytest.fail(f"node-opcua: {self.lines} {err.decode(errors='replace')[-1000:]}")
            return predicate()

        await wait_for(check, timeout=limit)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class Collector:
    """asyncua subscription handler: events and data changes."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changes: list[tuple[Any, str]] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.changes.append((val, data.monitored_item.Value.StatusCode.name))

    def alarms(self) -> list[Any]:
        return [e for e in self.events if e.EventType == ua.NodeId(ua.ObjectIds.OffNormalAlarmType)]


async def alarm_filter(client: Client, etype: int) -> ua.EventFilter:
    """asyncua's filter for ``etype`` (its where clause OfType ``etype``, and the type's own
    fields), plus ActiveState/Id and AckedState/Id, fields of a field that asyncua does not
    select."""
    evfilter = await get_filter_from_event_type([client.get_node(etype)])
    for state in ("ActiveState", "AckedState"):
        state_id = ua.SimpleAttributeOperand(
            TypeDefinitionId=ua.NodeId(ua.ObjectIds.AlarmConditionType),
            BrowsePath=[ua.QualifiedName(state), ua.QualifiedName("Id")],
            AttributeId=ua.AttributeIds.Value,
        )
        evfilter.SelectClauses.append(state_id)
    return evfilter


async def subscribe_alarms(sub: Any, client: Client, node: Any, etype: int) -> None:
    await sub.subscribe_events(node, etype, evfilter=await alarm_filter(client, etype))


def utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def iso(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_raise_and_clear_reach_node_opcua_and_asyncua(
    simulator: Simulator, tmp_path: Path
) -> None:
    # a fixed threshold: a short calibration's own would be tight enough for false alarms
    anomaly = f"{{model: student, calibration: {CALIBRATION}, threshold: {THRESHOLD}}}"
    async with gateway_for(simulator, tmp_path, anomaly) as (gateway, adapter, pump):
        stage, ns = stage_of(gateway), adapter.namespace_index
        flag, score = f"ns={ns};s=pump.anomaly", f"ns={ns};s=pump.anomaly_score"
        source = ua.NodeId("Plant/pump", ns)
        plan = {
            "url": adapter.endpoint_url,
            "ofType": "AlarmConditionType",  # a supertype: OfType must take subtypes
            "count": 3,  # raise, raise again by ConditionRefresh, clear
            "refreshAfter": 1,
            "timeout": 60000,
        }
        async with NodeEvents(plan) as node, Client(adapter.endpoint_url) as client:
            # before the first scored message: no alarm yet, no verdict either
            dv = await client.get_node(flag).read_data_value(raise_on_bad_status=False)
            assert (dv.Value.Value, dv.StatusCode.name) == (False, "UncertainInitialValue")
            dv = await client.get_node(score).read_data_value(raise_on_bad_status=False)
            assert (dv.Value.Value, dv.StatusCode.name) == (None, "BadWaitingForInitialData")
            assert await client.get_node(flag).read_data_type() == ua.NodeId(ua.ObjectIds.Boolean)
            assert await client.get_node(score).read_data_type() == ua.NodeId(ua.ObjectIds.Double)

            on_server, on_device = Collector(), Collector()
            sub = await client.create_subscription(20, on_server)
            await subscribe_alarms(
                sub, client, client.nodes.server, ua.ObjectIds.OffNormalAlarmType
            )
            await sub.subscribe_data_change(client.get_node(flag))
            device_sub = await client.create_subscription(20, on_device)
            base = ua.ObjectIds.BaseEventType  # OfType must take subtypes
            await subscribe_alarms(device_sub, client, client.get_node(source), base)
            await node.wait(lambda: any("subscribed" in ln for ln in node.lines))

            await pump.until(lambda: calibrated(stage), faulty=False, rows=400)
            dv = await client.get_node(flag).read_data_value()
            assert (dv.Value.Value, dv.StatusCode.name) == (False, "Good")
            before = datetime.now(UTC)
            await pump.until(lambda: active(stage), faulty=True, rows=200)
            raised_at = datetime.now(UTC)
            await wait_for(lambda: on_server.alarms() and on_device.alarms(), timeout=10)
            await node.wait(lambda: len(node.alarms()) >= 2 and "refresh" in str(node.lines))
            dv = await client.get_node(flag).read_data_value()
            assert (dv.Value.Value, dv.StatusCode.name) == (True, "Good")
            value = await client.get_node(score).read_value()
            assert isinstance(value, float) and value > 0

            await pump.until(lambda: not active(stage), faulty=False, rows=400)
            await wait_for(lambda: len(on_server.alarms()) >= 2, timeout=10)
            await wait_for(lambda: len(on_device.alarms()) >= 2, timeout=10)
            await node.wait(lambda: any("done" in ln for ln in node.lines))
            await wait_for(lambda: [v for v, _ in on_server.changes][-1:] == [False], timeout=10)

        # node-opcua, on the Server object, filtered OfType AlarmConditionType
        raised, again, cleared = node.alarms()
        assert [ln["refresh"] for ln in node.lines if "refresh" in ln] == ["Good"]
        markers = [e["EventType"] for e in node.events() if e["EventType"] in REFRESH_MARKERS]
        assert len(markers) == 2  # RefreshStart and RefreshEnd around the resent alarm
        for event in (raised, again, cleared):
            assert event["EventType"] == OFF_NORMAL
            assert event["SourceName"] == "pump"
            assert event["SourceNode"] == source.to_string()
            assert event["ConditionName"] == "anomaly"
            assert event["AckedState.Id"] is False  # nobody acknowledged it
            assert event["ConditionId"] == f"ns={ns};s=pump#anomaly"
        assert raised["Message"].startswith("pump: anomaly score ")
        assert " over threshold " in raised["Message"]
        assert (raised["Severity"], raised["Retain"], raised["ActiveState.Id"]) == (700, True, True)
        assert before <= iso(raised["Time"]) <= raised_at  # the reading's source time
        assert again["EventId"] == raised["EventId"]  # the same event, refreshed
        assert cleared["Message"].startswith("pump: anomaly cleared")
        # cleared, but kept in the alarm list until acknowledged (tests/test_opcua_alarm_ack.py)
        assert (cleared["Severity"], cleared["Retain"], cleared["ActiveState.Id"]) == (
            100,
            True,
            False,
        )

        # asyncua, on the Server object (OfType OffNormalAlarmType) and on the device object
        for seen in (on_server, on_device):
            up, down = seen.alarms()
            assert (up.Severity, up.SourceName, up.SourceNode) == (700, "pump", source)
            assert getattr(up, "ActiveState/Id") is True
            assert (down.Severity, getattr(down, "ActiveState/Id")) == (100, False)
            assert getattr(up, "AckedState/Id") is getattr(down, "AckedState/Id") is False
            assert "over threshold" in up.Message.Text
        assert [e.Retain for e in on_server.alarms()] == [True, True]  # unacknowledged
        assert on_server.alarms()[0].EventId == on_device.alarms()[0].EventId
        # the variable, subscribed: false (calibrating, then scored), true, false
        values = [v for v, _ in on_server.changes]
        deduped = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
        assert deduped == [False, True, False], on_server.changes
        assert on_server.changes[0][1] == "UncertainInitialValue"
        assert adapter.status()["alarm_events"] == 2


async def test_a_server_without_anomaly_bridges_has_no_alarm_nodes(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with (
        gateway_for(simulator, tmp_path, None) as (_, adapter, _pump),
        Client(adapter.endpoint_url) as client,
    ):
        ns = adapter.namespace_index
        folder = client.get_node(ua.NodeId("Plant/pump", ns))
        names = {(await n.read_browse_name()).Name for n in await folder.get_children()}
        assert names == {"flow", "pressure", "temperature", "current"}
        notifier = await folder.read_attribute(ua.AttributeIds.EventNotifier)
        assert notifier.Value.Value == 0
        refs = await client.nodes.server.get_references(ua.ObjectIds.HasNotifier)
        assert refs == []
        assert adapter.alarms is None and "alarm_events" not in adapter.status()


async def test_an_event_to_a_bridge_without_anomaly_never_lands_in_a_point(
    simulator: Simulator, tmp_path: Path
) -> None:
    # an EVENT reaching a server with no alarm for the device (another bridge's, a plugin's)
    extra = "\n      - {name: anomaly, address: 8, type: int16, poll: fast}"
    async with gateway_for(simulator, tmp_path, None, extra) as (gateway, adapter, pump):
        pump.device.set_value("holding", 8, 42, DataType.INT16)
        route = gateway.bridges[0].config.route
        async with Client(adapter.endpoint_url) as client:
            point = client.get_node(f"ns={adapter.namespace_index};s=pump.anomaly")
            await wait_for(lambda: point.read_value(), timeout=10)
            updates = adapter.updates
            await adapter.send(event_message(True, 9.5, 1_700_000_000.0), route)
            assert adapter.updates == updates
            assert await point.read_value() == 42


def event_message(raised: bool, score: float, ts: float) -> Message:
    """What the anomaly stage sends its target when the alarm rises or clears."""
    return Message(
        topic="event/pump/anomaly",
        kind=MessageKind.EVENT,
        samples=(
            Sample("anomaly", raised, source_ts=ts),
            Sample("anomaly_score", score, source_ts=ts),
        ),
        origin="anomaly:up",
        device="pump",
        meta={"event": "anomaly" if raised else "anomaly_cleared", "threshold": 3.0},
    )


def scored(active: bool, score: float, ts: float) -> Message:
    """A scored telemetry message (the stage adds its verdict to the meta)."""
    message = Message.telemetry("pump", (Sample("flow", 30.0, source_ts=ts),))
    return Message(
        topic=message.topic,
        kind=message.kind,
        samples=message.samples,
        origin=message.origin,
        device="pump",
        meta={"anomaly": active, "anomaly_score": score},
    )


async def test_a_point_named_anomaly_keeps_its_node_and_the_events_go_on(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.opcua.server")
    extra = "\n      - {name: anomaly, address: 8, type: int16, poll: fast}"
    anomaly = '{model: student, calibration: 100000, exclude: ["anomaly"]}'
    async with gateway_for(simulator, tmp_path, anomaly, extra) as (gateway, adapter, pump):
        pump.device.set_value("holding", 8, 42, DataType.INT16)
        ns = adapter.namespace_index
        route = gateway.bridges[0].config.route
        async with Client(adapter.endpoint_url) as client:
            point = client.get_node(f"ns={ns};s=pump.anomaly")
            await wait_for(lambda: point.read_value(), timeout=10)
            assert await point.read_data_type() == ua.NodeId(ua.ObjectIds.Int16)
            collector = Collector()
            sub = await client.create_subscription(20, collector)
            await subscribe_alarms(
                sub, client, client.nodes.server, ua.ObjectIds.OffNormalAlarmType
            )
            await adapter.send(event_message(True, 9.5, 1_700_000_000.0), route)
            await wait_for(lambda: collector.alarms(), timeout=10)
            assert await point.read_value() == 42  # the event's sample did not land there
            score = await client.get_node(f"ns={ns};s=pump.anomaly_score").read_value()
            assert score == 9.5
        event = collector.alarms()[0]
        assert event.Message.Text == "pump: anomaly score 9.5 over threshold 3"
        assert utc(event.Time) == datetime.fromtimestamp(1_700_000_000.0, UTC)
        assert event.InputNode == ua.NodeId()  # no alarm variable to point to
    assert "pump has a point named 'anomaly'" in caplog.text


async def test_an_alarm_kept_from_before_a_restart_is_announced(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A stage going on from a kept calibration with its alarm active sends no event; the
    server announces the alarm at the next scored message if no event followed the first."""
    anomaly = "{model: student, calibration: 100000}"
    async with gateway_for(simulator, tmp_path, anomaly) as (gateway, adapter, _pump):
        ns = adapter.namespace_index
        route = gateway.bridges[0].config.route
        async with Client(adapter.endpoint_url) as client:
            collector = Collector()
            sub = await client.create_subscription(20, collector)
            await subscribe_alarms(
                sub, client, client.nodes.server, ua.ObjectIds.OffNormalAlarmType
            )
            flag = client.get_node(f"ns={ns};s=pump.anomaly")
            await adapter.send(scored(True, 7.0, 1_700_000_000.0), route)
            assert await flag.read_value() is True
            await adapter.send(scored(True, 7.5, 1_700_000_001.0), route)
            await wait_for(lambda: collector.alarms(), timeout=10)
            # a rise seen on the first scored message gets its own event only
            await adapter.send(event_message(False, 1.0, 1_700_000_002.0), route)
            await wait_for(lambda: len(collector.alarms()) >= 2, timeout=10)
        assert adapter.status()["alarm_events"] == 2
        up, down = collector.alarms()
        assert "active since before the gateway restarted" in up.Message.Text
        assert getattr(up, "ActiveState/Id") is True and up.Retain is True
        # the server kept no state of this alarm (a fresh state folder): it is unacknowledged
        assert getattr(up, "AckedState/Id") is False
        assert getattr(down, "ActiveState/Id") is False and down.Retain is True
