"""OPC UA client events and alarms (Part 9): node-opcua's conditions, event filters and
ConditionRefresh (``tests/interop/node/opcua_alarm_server.js``, a peer we did not write) read by
our client; end to end through ``gateway run`` to a real mosquitto, read with ``mosquitto_sub``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from conftest import HOST, NODE_DIR, MosquittoBroker, find_binary, free_port, wait_for
from test_opcua_client import Collector, NodeOpcuaServer, client_config, running

from gateway import livestatus
from gateway.adapter import AdapterContext
from gateway.anomaly.verdict import alarm_samples, is_anomaly_event, served_samples, verdict
from gateway.bus import Bus
from gateway.config import ConfigError, load_config_text
from gateway.runtime import Gateway
from gateway.types import Message, MessageKind, Quality, Sample
from protocols.mqtt.codec import encode
from protocols.mqtt.config import MqttRoute
from protocols.opcua.client import OpcuaClientAdapter
from protocols.opcua.config import OpcuaClient
from protocols.opcua.events import EventFields, extra_fields, filter_problem, where_clause

ALARM_JS = NODE_DIR / "opcua_alarm_server.js"
LEVEL = "ns=1;s=Tank.Level"
GATEWAY = [sys.executable, "-m", "gateway"]
OFF_NORMAL = "i=10637"  # OffNormalAlarmType
ALARM_CONDITION = "i=2915"  # AlarmConditionType: OffNormal is one, SystemEventType is not


class AlarmPeer(NodeOpcuaServer):
    """opcua_alarm_server.js as a child process; ``kill()`` and ``start()`` keep the port."""

    @property
    def url(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}/alarms"

    async def start(self, *, overheat: bool = False, patience: float = 30.0) -> None:  # type: ignore[override]
        argv = ["--port", str(self.port), "--pki", str(self.pki)]
        argv += ["--overheat", "on" if overheat else "off"]
        await self._spawn(ALARM_JS, argv, patience, "node-opcua alarm server")

    async def alarm(
        self, active: bool, severity: int = 700, message: str = "Tank overheat"
    ) -> None:
        answer = await self.command(alarm=active, severity=severity, message=message)
        assert answer["active"] is active, answer

    async def event(self, severity: int, message: str, kind: str = "SystemEventType") -> None:
        await self.command(event=kind, severity=severity, message=message)


@pytest.fixture
async def alarms(shared_pki: Path, tmp_path: Path) -> AsyncIterator[AlarmPeer]:
    server = AlarmPeer(shared_pki, tmp_path / "node.log")
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alarm-pki")


def events_of(collector: Collector) -> list[dict[str, Any]]:
    """The fields of every EVENT the adapter published, in order."""
    return [
        {s.point: s.value for s in m.samples}
        for m in collector.messages
        if m.kind is MessageKind.EVENT
    ]


def level_flows(collector: Collector, value: float) -> Any:
    def check() -> bool:
        s = collector.last("level")
        return s is not None and s.quality is Quality.GOOD and s.value == value

    return check


def with_events(url: str, **events: Any) -> OpcuaClient:
    return client_config(url, [{"name": "level", "node_id": LEVEL}], events=events)


# -- end to end: gateway run -> mosquitto -> mosquitto_sub ------------------------------------


class Tap:
    """``mosquitto_sub -v`` on a topic filter, subscribed (SUBACK seen) before it returns."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.lines: list[tuple[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tap:
        self.process = await asyncio.create_subprocess_exec(
            # line-buffered: the SUBACK line must come out before anything is published
            find_binary("stdbuf"), "-oL", find_binary("mosquitto_sub"), "-h", self.broker.host, "-p", str(self.broker.port),
            "-q", "1", "-t", self.topic, "-v", "-d",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        subscribed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read(subscribed))
        await asyncio.wait_for(subscribed, 10)
        return self

    async def _read(self, subscribed: asyncio.Future[None]) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith(("Client ", "Subscribed (mid")):  # -d: the protocol's chatter
                if "SUBACK" in line and not subscribed.done():
                    subscribed.set_result(None)
                continue
            topic, _, payload = line.partition(" ")
            self.lines.append((topic, json.loads(payload)))

    def on(self, topic: str) -> list[Any]:
        return [p for t, p in self.lines if t == topic]

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None and self._task is not None
        self.process.kill()
        await self.process.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def gateway_yaml(peer: AlarmPeer, broker: MosquittoBroker, pki: Path) -> str:
    device = f"""    protocol: opcua
    url: {peer.url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}"}}
    reconnect: {{initial: 0.1, max: 0.5}}
    subscription: {{publishing_interval: 0.1}}"""
    return f"""
gateway: {{name: edge, status_interval: 0.3}}
devices:
  plc:
{device}
    points: [{{name: level, node_id: "{LEVEL}", sampling_interval: 0}}]
    events: {{}}
  alarms_only:
{device}
    events: {{types: ["{ALARM_CONDITION}"]}}
  severe:
{device}
    events: {{min_severity: 500}}
endpoints:
  broker: {{protocol: mqtt, host: {broker.host}, port: {broker.port}}}
bridges:
  - {{name: uns, from: [plc, alarms_only, severe], to: broker,
     topic: "plant/{{device}}/{{point}}", payload: sample}}
"""


async def test_alarms_and_events_reach_mqtt_as_one_json_object_each_filtered_per_device(
    alarms: AlarmPeer, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_yaml(alarms, mosquitto, tmp_path / "pki"))

    def events_subscribed() -> bool:
        snapshot = livestatus.read(livestatus.status_path("edge")) or {}
        devices = snapshot.get("status", {}).get("adapters", {})
        names = ("plc", "alarms_only", "severe")
        return all((devices.get(n) or {}).get("condition_refreshes") for n in names)

    def messages(device: str) -> list[str]:
        """The messages of the device's events, a repeat of the same state once: node-opcua
        reports the rise of an OffNormalAlarm twice (two EventIds)."""
        out: list[tuple[str, Any]] = []
        for e in tap.on(f"plant/{device}/event"):
            state = (e["event"]["message"], e["event"]["active"])
            if not out or out[-1] != state:
                out.append(state)
        return [m for m, _ in out]

    async with Tap(mosquitto, "plant/#") as tap:
        proc = await asyncio.create_subprocess_exec(*GATEWAY, "run", str(path))
        try:
            await wait_for(lambda: tap.on("plant/plc/level"), timeout=30)
            await wait_for(events_subscribed, timeout=20)  # `gateway status` says so
            await alarms.event(100, "door open")  # low, and no alarm
            await alarms.alarm(True, severity=700, message="Tank overheat")
            await alarms.alarm(False, severity=700)
            await alarms.event(900, "pump tripped")  # severe, and no alarm
            await alarms.command(set="Level", value=42.5)
            await wait_for(lambda: "pump tripped" in messages("plc"), timeout=15)
            await wait_for(lambda: "pump tripped" in messages("severe"), timeout=15)
            # each device's subscription publishes on its own: the alarm's clear may come later
            await wait_for(lambda: len(messages("alarms_only")) >= 2, timeout=15)
            await wait_for(lambda: 42.5 in [p["value"] for p in tap.on("plant/plc/level")])
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0

    assert messages("plc") == [
        "door open",
        "Tank overheat",
        "Tank overheat cleared",
        "pump tripped",
    ]
    plc = tap.on("plant/plc/event")
    raised = next(e for e in plc if e["event"]["active"] is True)
    cleared = next(e for e in plc if e["event"]["active"] is False)
    assert raised["device"] == "plc" and raised["seq"] < cleared["seq"]
    raised, cleared = raised["event"], cleared["event"]
    for alarm in (raised, cleared):
        assert alarm["type"] == OFF_NORMAL and alarm["type_name"] == "OffNormalAlarmType"
        assert alarm["condition"] == "Overheat" and alarm["condition_id"] == "ns=1;s=Tank.Overheat"
        assert alarm["severity"] == 700 and alarm["source_node"] == "ns=1;s=Tank"
        assert alarm["refresh"] is False and len(alarm["id"]) > 8
    assert (raised["active"], raised["retain"]) == (True, True)
    assert (cleared["active"], cleared["retain"]) == (False, False)
    assert raised["id"] != cleared["id"]
    door = plc[0]["event"]  # a plain event: the condition fields are there, and null
    assert door["type_name"] == "SystemEventType" and door["severity"] == 100
    assert door["condition"] is door["active"] is door["acked"] is door["retain"] is None
    assert set(door) == set(raised)
    assert plc[0]["ts"].endswith("Z")

    assert messages("alarms_only") == ["Tank overheat", "Tank overheat cleared"]
    assert messages("severe") == ["Tank overheat", "Tank overheat cleared", "pump tripped"]
    # one publish per event: no field of it on a topic of its own
    assert not [t for t, _ in tap.lines if "/event." in t]


# -- ConditionRefresh -----------------------------------------------------------------------


async def test_condition_refresh_after_a_reconnect_sends_the_active_alarm_again(
    alarms: AlarmPeer,
) -> None:
    async with running(with_events(alarms.url)) as (adapter, seen):
        await wait_for(lambda: adapter.status()["condition_refreshes"] == 1, timeout=15)
        await alarms.alarm(True, severity=650, message="hot")
        await wait_for(lambda: [e for e in events_of(seen) if e["event.active"]], timeout=10)
        assert {e["event.refresh"] for e in events_of(seen)} == {False}

        # The server restarts with the alarm active: raised before anyone could subscribe,
        # only the refresh after the reconnect tells of it.
        await alarms.kill()
        await wait_for(lambda: not adapter.status()["connected"], timeout=15)
        await alarms.start(overheat=True)
        await wait_for(lambda: adapter.status()["condition_refreshes"] == 2, timeout=20)
        await wait_for(lambda: [e for e in events_of(seen) if e["event.refresh"]], timeout=10)
        refreshed = [e for e in events_of(seen) if e["event.refresh"]][0]
        assert refreshed["event.active"] is True and refreshed["event.retain"] is True
        assert refreshed["event.condition"] == "Overheat" and refreshed["event.severity"] == 700
        # RefreshStart and RefreshEnd bracket it; they are not forwarded
        types = {e["event.type"] for e in events_of(seen)}
        assert types == {OFF_NORMAL}, types
        assert adapter.status()["events"] == len(events_of(seen))
        assert adapter.status()["events_error"] is None


async def test_refresh_off_sends_no_alarm_from_before_the_subscription(
    shared_pki: Path, tmp_path: Path
) -> None:
    peer = AlarmPeer(shared_pki, tmp_path / "node.log")
    await peer.start(overheat=True)
    try:
        async with running(with_events(peer.url, refresh=False)) as (adapter, seen):
            await wait_for(lambda: adapter.status()["items"] == 2, timeout=15)  # level, events
            await peer.event(300, "marker")  # after it, a refresh's events would be in
            await wait_for(lambda: events_of(seen), timeout=15)
            assert [e["event.message"] for e in events_of(seen)] == ["marker"]
            assert adapter.status()["condition_refreshes"] == 0
    finally:
        await peer.kill()


# -- what the server refuses ----------------------------------------------------------------


CANNOT_SERVE = {
    "no_node": ({"node": "ns=1;s=Nope"}, "events: node ns=1;s=Nope: BadNodeIdUnknown"),
    "variable": ({"node": LEVEL}, f"events: node {LEVEL} is no object (it has no EventNotifier)"),
    "no_type": ({"types": ["ns=1;i=99999"]}, "events: event type ns=1;i=99999: BadNodeIdUnknown"),
    "no_notifier": ({"node": "i=85"}, "events: node i=85 is not an event notifier"),
    "not_a_type": ({"types": [LEVEL]}, f"events: event type {LEVEL} is not an ObjectType"),
}


async def test_an_event_item_that_cannot_serve_is_an_error_and_the_points_flow(
    alarms: AlarmPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """node-opcua takes an item on a variable, or a where clause naming no type, and then
    stays silent: the client checks first and says why (one device per case, one server)."""
    caplog.set_level(logging.WARNING, "protocols.opcua.client")
    async with contextlib.AsyncExitStack() as stack:
        devices = {
            name: await stack.enter_async_context(running(with_events(alarms.url, **events), name))
            for name, (events, _) in CANNOT_SERVE.items()
        }
        for name, (adapter, _) in devices.items():
            await wait_for(lambda a=adapter: a.status()["events_error"], timeout=15)
            assert adapter.status()["events_error"] == CANNOT_SERVE[name][1] or (
                adapter.status()["events_error"].startswith(CANNOT_SERVE[name][1])
            ), adapter.status()
        await alarms.alarm(True)
        await alarms.command(set="Level", value=8.5)  # after the alarm in the server's order
        for adapter, seen in devices.values():
            await wait_for(level_flows(seen, 8.5), timeout=10)
            assert events_of(seen) == [] and adapter.status()["events"] == 0
            status = adapter.status()
            assert status["connected"] and status["last_error"] is None and status["items"] == 1
    for name, (_, error) in CANNOT_SERVE.items():
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(name + ":")]
        assert len(said) == 1 and error in said[0] and "the points go on" in said[0], said


async def test_an_event_item_error_is_warned_about_once_across_reconnects(
    alarms: AlarmPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "protocols.opcua.client")

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "events:" in r.getMessage()]

    async with running(with_events(alarms.url, node="ns=1;s=Nope")) as (adapter, _):
        await wait_for(lambda: adapter.status()["events_error"], timeout=15)
        await alarms.kill()
        await alarms.start()
        await wait_for(lambda: len(said()) >= 2, timeout=20)  # found again after reconnecting
        assert adapter.status()["reconnects"] >= 1
    assert [r.levelno for r in said()][:2] == [logging.WARNING, logging.DEBUG]


# -- an OPC UA event is no anomaly alarm ----------------------------------------------------


async def real_event(alarms: AlarmPeer) -> Message:
    async with running(with_events(alarms.url)) as (adapter, seen):
        await wait_for(lambda: adapter.status()["condition_refreshes"], timeout=15)
        await alarms.alarm(True)
        await wait_for(lambda: events_of(seen), timeout=10)
    return next(m for m in seen.messages if m.kind is MessageKind.EVENT)


async def test_an_opcua_alarm_is_not_taken_for_the_anomaly_alarm_even_renamed(
    alarms: AlarmPeer,
) -> None:
    event = await real_event(alarms)
    assert event.meta == {"event": "opcua", "record": "event"} and event.device == "plc"
    assert not is_anomaly_event(event)
    # what a bridge's translate map could make of it: {event.active: anomaly, ...}
    renamed = Message(
        event.topic, event.kind,
        tuple(Sample(
            {"event.active": "anomaly", "event.severity": "anomaly_score"}.get(s.point, s.point),
            s.value, s.quality, s.source_ts, s.gateway_ts,
        ) for s in event.samples),
        event.origin, event.seq, device=event.device, meta=event.meta,
    )  # fmt: skip
    assert any(s.point == "anomaly" and s.value is True for s in renamed.samples)
    assert verdict(renamed) is None and alarm_samples(renamed) == ()
    assert served_samples(renamed, {"anomaly", "anomaly_score"}) == ()
    # the anomaly stage's own event is still its alarm
    stage = Message(
        "event/plc/anomaly", MessageKind.EVENT, (Sample("anomaly", True), Sample("anomaly_score", 9.0)),
        "anomaly:up", device="plc", meta={"event": "anomaly", "threshold": 3.0},
    )  # fmt: skip
    assert is_anomaly_event(stage) and verdict(stage) is not None


def server_targets_yaml(
    peer: AlarmPeer, pki: Path, opcua_port: int, coap_port: int, broker: MosquittoBroker
) -> str:
    return f"""
gateway: {{name: gw, status_interval: 0}}
devices:
  plc:
    protocol: opcua
    url: {peer.url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}/plc"}}
    reconnect: {{initial: 0.1, max: 0.5}}
    subscription: {{publishing_interval: 0.1}}
    points: [{{name: level, node_id: "{LEVEL}", sampling_interval: 0}}]
    events: {{}}
endpoints:
  uas:
    protocol: opcua
    role: server
    host: {HOST}
    port: {opcua_port}
    security: {{allow_none: true, pki_dir: "{pki}/uas"}}
    anonymous: true
  cos: {{protocol: coap, role: server, host: {HOST}, port: {coap_port}}}
  spb: {{protocol: sparkplug, host: {broker.host}, port: {broker.port}, group: plant, node: gw}}
  mbs: {{protocol: modbus, role: server, host: {HOST}, port: 0}}
bridges:
  - {{name: to-opcua, from: plc, to: uas}}
  - {{name: to-coap, from: plc, to: cos}}
  - {{name: to-sparkplug, from: plc, to: spb}}
  - {{name: to-modbus, from: plc, to: mbs, map: [{{point: level, address: 0, type: float32}}]}}
"""


async def test_server_targets_serve_the_values_and_count_the_events_they_drop(
    alarms: AlarmPeer,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    opcua_port, coap_port = free_port(), free_port()
    yaml = server_targets_yaml(alarms, tmp_path / "pki", opcua_port, coap_port, mosquitto)
    config = load_config_text(yaml, "gw.yaml")
    gateway = Gateway(config)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        await asyncio.wait_for(gateway.started.wait(), 20)
        plc = gateway.adapters["plc"]
        await wait_for(lambda: plc.status()["condition_refreshes"], timeout=15)
        await alarms.alarm(True)
        await alarms.alarm(False)
        await alarms.command(set="Level", value=33.0)
        coap, spb, mbs, uas = (gateway.adapters[n] for n in ("cos", "spb", "mbs", "uas"))
        await wait_for(lambda: plc.status()["events"] >= 2, timeout=15)
        for target in (coap, spb, mbs):
            await wait_for(lambda t=target: t.status()["events_dropped"] == plc.status()["events"])
        # the OPC UA server re-serves them (tests/test_opcua_server_events.py)
        await wait_for(lambda: uas.status()["events_served"] == plc.status()["events"])
        assert uas.status()["events_dropped"] == 0
        async with Client(f"opc.tcp://{HOST}:{opcua_port}/protocol-brain") as client:
            ns = await client.get_namespace_index("urn:protocol-brain:gw")
            level = client.get_node(f"ns={ns};s=plc.level")
            await wait_for(lambda: level.read_value(), timeout=10)
            assert await level.read_value() == 33.0
            folder = client.get_node(f"ns={ns};s=plc")
            names = {(await n.read_browse_name()).Name for n in await folder.get_children()}
            assert names == {"level"}, names  # no variable for an event's fields
        failed = {b: s["failed"] for b, s in gateway.status()["bridges"].items()}
        assert failed == {"to-opcua": 0, "to-coap": 0, "to-sparkplug": 0, "to-modbus": 0}, failed
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    said = [r.getMessage() for r in caplog.records if "drops the events of plc" in r.getMessage()]
    assert len(said) == 3, said  # once per target, not per event
    assert {"CoAP server cos", "Sparkplug node spb", "Modbus server mbs"} == {
        m.partition(":")[0] for m in said
    }, said


# -- pure parts -----------------------------------------------------------------------------


def test_the_where_clause_ors_the_refresh_brackets_with_the_types_and_the_severity() -> None:
    assert where_clause([], 0).Elements == [] and where_clause([], 1).Elements == []
    types = [ua.NodeId(2915), ua.NodeId(1001, 2)]
    elements = where_clause(types, 500).Elements
    root = elements[0]
    assert root.FilterOperator == ua.FilterOperator.Or

    def leaves(index: int) -> list[Any]:
        element = elements[index]
        if element.FilterOperator in (ua.FilterOperator.Or, ua.FilterOperator.And):
            return [element.FilterOperator.name, *(leaves(o.Index) for o in element.FilterOperands)]
        if element.FilterOperator == ua.FilterOperator.OfType:
            return [element.FilterOperands[0].Value.Value.to_string()]
        (field, literal) = element.FilterOperands
        return [element.FilterOperator.name, field.BrowsePath[0].Name, literal.Value.Value]

    assert leaves(0) == [
        "Or",
        ["Or", ["Or", ["i=2787"], ["i=2788"]], ["i=3035"]],
        ["And", ["Or", ["i=2915"], ["ns=2;i=1001"]], ["GreaterThanOrEqual", "Severity", 500]],
    ]
    no_severity = where_clause(types, 0).Elements  # 0 (or 1): no severity element at all
    assert "GreaterThanOrEqual" not in [e.FilterOperator.name for e in no_severity]
    only_severity = where_clause([], 2).Elements
    assert [e.FilterOperator.name for e in only_severity].count("OfType") == 3


def test_a_refused_where_clause_names_the_part() -> None:
    event_filter = EventFields("plc").event_filter([ua.NodeId(1001, 2)], 0)
    good = ua.StatusCode(ua.StatusCodes.Good)
    assert filter_problem(good, ua.EventFilterResult(), event_filter) is None
    refused = ua.StatusCode(ua.StatusCodes.BadEventFilterInvalid)
    said = filter_problem(refused, None, event_filter)
    assert said == "the server refused the event item: BadEventFilterInvalid"
    results = [
        ua.ContentFilterElementResult(StatusCode=good) for _ in event_filter.WhereClause.Elements
    ]
    of_type = next(
        i for i, e in enumerate(event_filter.WhereClause.Elements)
        if e.FilterOperator == ua.FilterOperator.OfType
        and e.FilterOperands[0].Value.Value == ua.NodeId(1001, 2)
    )  # fmt: skip
    results[of_type] = ua.ContentFilterElementResult(
        StatusCode=ua.StatusCode(ua.StatusCodes.BadFilterOperandInvalid)
    )
    result = ua.EventFilterResult(WhereClauseResult=ua.ContentFilterResult(ElementResults=results))
    assert filter_problem(good, result, event_filter) == (
        "where clause refused: event type ns=2;i=1001: BadFilterOperandInvalid"
    )


def test_extra_fields_are_selected_after_the_standard_ones_and_named_by_their_path() -> None:
    fields = EventFields("plc", extra_fields(["2:Limits/2:High", "Comment"]))
    clauses = fields.event_filter([], 0).SelectClauses
    assert [q.to_string() for q in clauses[-2].BrowsePath] == ["2:Limits", "2:High"]
    assert [f.sample for f in fields.fields[-2:]] == ["event.Limits.High", "event.Comment"]
    values = [ua.Variant(None)] * len(fields.fields)
    message = fields.message(values, refresh=False, now=5.0)
    assert message is not None and message.samples[-1].point == "event.refresh"
    assert {s.point for s in message.samples} >= {"event.Limits.High", "event.type_name"}
    assert fields.message(values[:-1], refresh=False) is None  # a field list cut short
    for bad in ("Message", "x:Name", "a//b", "Comment,Comment"):
        with pytest.raises(ValueError):
            extra_fields(bad.split(","))


def test_an_event_is_one_json_object_whatever_the_payload_mode() -> None:
    fields = EventFields("plc")
    values = [ua.Variant(None)] * len(fields.fields)
    values[6] = ua.Variant(700, ua.VariantType.UInt16)  # severity
    values[7] = ua.Variant(ua.LocalizedText("hot"))
    message = fields.message(values, refresh=True, now=1_700_000_000.5)
    assert message is not None
    for payload, template, topic in [
        ("sample", "p/{device}/{point}", "p/plc/event"),
        ("value", "p/{kind}/{point}", "p/event/event"),
        ("device", "p/{device}/{kind}", "p/plc/event"),
    ]:
        route = MqttRoute(topic=template, payload=payload)  # type: ignore[arg-type]
        ((got_topic, raw),) = encode(message, route, "gw")
        doc = json.loads(raw)
        assert got_topic == topic
        assert doc["device"] == "plc" and doc["ts"] == "2023-11-14T22:13:20.500Z"
        assert doc["event"]["severity"] == 700 and doc["event"]["message"] == "hot"
        assert doc["event"]["refresh"] is True and doc["event"]["active"] is None


@pytest.mark.parametrize(
    ("events", "where", "expected"),
    [
        ("{node: 'garbage'}", "events.node", "a node id such as"),
        ("{types: ['i=2915', 'ns=x;i=1']}", "events.types", "'ns=x;i=1'"),
        ("{types: ['i=2915', 'i=2915']}", "events.types", "given twice"),
        ("{min_severity: 1001}", "events.min_severity", "1000"),
        ("{min_severity: -1}", "events.min_severity", "0"),
        ("{fields: ['Message']}", "events.fields", "selected anyway"),
        ("{fields: ['3x:Name']}", "events.fields", "bad field"),
        ("{nodes: 'i=2253'}", "events.nodes", ""),
    ],
)
def test_validate_checks_the_events_option(events: str, where: str, expected: str) -> None:
    text = (
        f"devices:\n  plc:\n    protocol: opcua\n    url: opc.tcp://h:4840\n    events: {events}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml")
    (p,) = info.value.problems
    assert p.dotted.startswith(f"devices.plc.{where}") and p.line == 5, str(p)
    assert expected in p.expected + p.found, str(p)


def test_an_events_only_device_is_valid_and_a_device_needs_points_or_events() -> None:
    head = "devices:\n  plc:\n    protocol: opcua\n    url: opc.tcp://h:4840\n"
    config = load_config_text(head + "    events: {min_severity: 200}\n", "gw.yaml")
    assert config.devices["plc"].config.events.min_severity == 200  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="points, events, or both"):
        load_config_text(head, "gw.yaml")
    with pytest.raises(ConfigError) as info:
        load_config_text(
            head + "    events: {}\n    points: [{name: event.x, node_id: 'i=2258'}]\n", "gw.yaml"
        )
    assert "not starting with 'event.'" in str(info.value)


def test_a_bridge_may_select_the_event_fields_and_carry_an_events_only_device() -> None:
    device = "devices:\n  plc:\n    protocol: opcua\n    url: opc.tcp://h:4840\n"
    level = "    points: [{name: level, node_id: 'i=2258'}]\n"
    tail = "endpoints:\n  up: {protocol: mqtt, host: h}\nbridges:\n  - {name: b, from: plc, to: up%s}\n"
    events = "    events: {fields: ['2:Limits/2:High']}\n"
    selects = ", points: [level, 'event.severity', 'event.Limits.*']"
    load_config_text(device + level + events + tail % selects, "gw.yaml")
    load_config_text(device + events + tail % "", "gw.yaml")  # events only
    with pytest.raises(ConfigError, match="'event.severity', which matches no point of plc"):
        load_config_text(device + level + tail % selects, "gw.yaml")  # no events: none


async def test_word_of_lost_events_and_a_malformed_field_list_are_counted_not_forwarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """node-opcua never overflows its event queues, so the server's EventQueueOverflow event
    is handed to the adapter as a publish would hand it."""
    bus = Bus()
    adapter = OpcuaClientAdapter("plc", with_events("opc.tcp://h:1"), AdapterContext(bus, "gw"))
    seen = bus.subscribe("telemetry/plc", maxsize=10)
    fields = EventFields("plc").fields
    overflow = [ua.Variant(None)] * len(fields)
    overflow[1] = ua.Variant(ua.NodeId(3035), ua.VariantType.NodeId)  # EventQueueOverflowEventType
    handle = 1  # after the one point's
    await adapter._on_event(ua.EventFieldList(ClientHandle=handle, EventFields=overflow))
    await adapter._on_event(ua.EventFieldList(ClientHandle=handle, EventFields=overflow[:3]))
    await adapter._on_event(ua.EventFieldList(ClientHandle=0, EventFields=overflow))  # a point's
    assert adapter.status()["events_dropped"] == 2 and adapter.status()["events"] == 0
    assert seen.get_nowait() is None
    assert "event queue overflowed" in caplog.text and "instead of the" in caplog.text
    plain = [ua.Variant(None)] * len(fields)
    plain[1] = ua.Variant(ua.NodeId(2130), ua.VariantType.NodeId)  # SystemEventType
    await adapter._on_event(ua.EventFieldList(ClientHandle=handle, EventFields=plain))
    forwarded = seen.get_nowait()
    assert forwarded is not None and forwarded.kind is MessageKind.EVENT
    assert adapter.status()["events"] == 1
