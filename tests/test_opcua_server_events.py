"""The OPC UA server re-serves other devices' events (an aggregating server): node-opcua's alarm
server (``tests/interop/node/opcua_alarm_server.js``) -> ``gateway run`` (an OPC UA client device
with ``events:`` bridged to our OPC UA server) -> asyncua's client and node-opcua's
(``tests/interop/node/opcua_events.js``) subscribed to our events.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from conftest import HOST, free_port, wait_for
from test_opcua_anomaly_events import REFRESH_MARKERS, Collector, NodeEvents, alarm_filter
from test_opcua_client_events import LEVEL, AlarmPeer, alarms, shared_pki  # noqa: F401

from gateway import livestatus
from gateway.types import Message, MessageKind, Sample
from protocols.opcua.events import where_clause
from protocols.opcua.served_events import Retained, fields, upstream

GATEWAY = [sys.executable, "-m", "gateway"]
OFF_NORMAL = ua.NodeId(ua.ObjectIds.OffNormalAlarmType)
SYSTEM_EVENT = ua.NodeId(ua.ObjectIds.SystemEventType)
ALARM_CONDITION = ua.ObjectIds.AlarmConditionType
REFRESH = ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh)
ACKNOWLEDGE = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)


def gateway_yaml(peer: AlarmPeer, pki: Path, port: int, quiet_port: int) -> str:
    device = f"""    protocol: opcua
    url: {peer.url}
    security: {{policy: "None", mode: "None", pki_dir: "{pki}/plc"}}
    reconnect: {{initial: 0.1, max: 0.5}}
    subscription: {{publishing_interval: 0.05}}"""
    server = f"""    protocol: opcua
    role: server
    host: {HOST}
    anonymous: true"""
    return f"""
gateway: {{name: agg, status_interval: 0.2}}
devices:
  plc:
{device}
    points: [{{name: level, node_id: "{LEVEL}", sampling_interval: 0}}]
    events: {{}}
  values_only:
{device}
    points: [{{name: level, node_id: "{LEVEL}", sampling_interval: 0}}]
endpoints:
  uas:
{server}
    port: {port}
    security: {{allow_none: true, pki_dir: "{pki}/uas"}}
  quiet:
{server}
    port: {quiet_port}
    security: {{allow_none: true, pki_dir: "{pki}/quiet"}}
bridges:
  - {{name: aggregate, from: [plc, values_only], to: uas}}
  - {{name: values, from: [values_only, plc], to: quiet, points: [level]}}
"""


def status_of(name: str) -> dict[str, Any]:
    snapshot = livestatus.read(livestatus.status_path("agg")) or {}
    return dict(snapshot.get("status", {}).get("adapters", {}).get(name) or {})


@pytest.fixture
async def gateway(
    alarms: AlarmPeer,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> AsyncIterator[tuple[str, str]]:
    """``gateway run`` with the alarm peer as device ``plc``: (our url, the quiet one's)."""
    port, quiet = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_yaml(alarms, tmp_path / "pki", port, quiet))
    proc = await asyncio.create_subprocess_exec(*GATEWAY, "run", str(path))
    try:
        await wait_for(lambda: status_of("plc").get("condition_refreshes"), timeout=30)
        await wait_for(lambda: "endpoint" in status_of("quiet"), timeout=10)
        yield f"opc.tcp://{HOST}:{port}/protocol-brain", f"opc.tcp://{HOST}:{quiet}/protocol-brain"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0


def state(event: Any) -> tuple[Any, ...]:
    """An asyncua event's (EventType, Message, ActiveState/Id, Retain)."""
    return (event.EventType, event.Message.Text, getattr(event, "ActiveState/Id"), event.Retain)


def deduped(states: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """node-opcua reports the rise of an OffNormalAlarm twice (two EventIds): once each."""
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


async def everything(client: Client) -> ua.EventFilter:
    """AlarmConditionType's fields, and no where clause: every event."""
    evfilter = await alarm_filter(client, ALARM_CONDITION)
    evfilter.WhereClause = ua.ContentFilter()
    return evfilter


async def test_upstream_events_and_alarms_are_re_served_with_their_fields(
    alarms: AlarmPeer,  # noqa: F811
    gateway: tuple[str, str],
) -> None:
    url, quiet_url = gateway
    async with Client(url) as client:
        ns = await client.get_namespace_index("urn:protocol-brain:agg")
        plc = client.get_node(ua.NodeId("plc", ns))
        on_server, on_device = Collector(), Collector()
        sub = await client.create_subscription(20, on_server)
        await sub.subscribe_events(client.nodes.server, evfilter=await everything(client))
        # one OfType of a supertype (asyncua's client would OfType every subtype): the server's
        # where clauses take subtypes
        early = Collector()
        early_filter = await alarm_filter(client, ALARM_CONDITION)
        early_filter.WhereClause = where_clause([ua.NodeId(ALARM_CONDITION)], 0)
        early_sub = await client.create_subscription(20, early)
        await early_sub.subscribe_events(client.nodes.server, evfilter=early_filter)

        # plc's object is a notifier from the start (its bridge carries its events): a client
        # may subscribe to it before its first event
        notifier = await plc.read_attribute(ua.AttributeIds.EventNotifier)
        assert notifier.Value.Value == ua.EventNotifier.SubscribeToEvents.mask
        below = await client.nodes.server.get_referenced_nodes(ua.ObjectIds.HasNotifier)
        assert plc in below
        device_sub = await client.create_subscription(20, on_device)
        alarm_only = await alarm_filter(client, ALARM_CONDITION)  # OfType: a supertype
        await device_sub.subscribe_events(plc, ALARM_CONDITION, evfilter=alarm_only)
        await alarms.event(100, "door open")  # a plain event
        await wait_for(lambda: on_server.events, timeout=15)
        plan = {"url": url, "node": f"ns={ns};s=plc", "ofType": "AlarmConditionType"}
        async with NodeEvents({**plan, "interactive": True}) as node:
            await node.wait(lambda: any("subscribed" in ln for ln in node.lines))
            await alarms.alarm(True, severity=700, message="Tank overheat")
            await alarms.alarm(False, severity=700)
            await alarms.event(900, "pump tripped")
            await alarms.alarm(True, severity=800, message="hot again")
            await wait_for(lambda: "pump tripped" in [e.Message.Text for e in on_server.events])
            await wait_for(lambda: any(e.Severity == 800 for e in on_device.events))
            await node.wait(lambda: any(e["Severity"] == 800 for e in node.alarms()))

            # ConditionRefresh on our server: the active upstream alarm again, bracketed
            before = len(node.events())
            await node.send({"id": 1, "refresh": True})
            await node.wait(lambda: any(ln.get("id") == 1 for ln in node.lines))
            await node.wait(lambda: len(node.events()) >= before + 3)
            # Acknowledge goes to the PLC, but not for an anonymous client (read only)
            raised = next(e for e in node.alarms() if e["Severity"] == 800)
            await node.send(
                {
                    "id": 2,
                    "ack": {
                        "conditionId": raised["ConditionId"],
                        "eventId": raised["EventId"],
                        "comment": "",
                    },
                }
            )
            await node.wait(lambda: any(ln.get("id") == 2 for ln in node.lines))
            answers = {ln["id"]: ln["status"] for ln in node.lines if "id" in ln}
            assert answers == {1: "Good", 2: "BadUserAccessDenied"}, answers
            refreshed = node.events()[before:]

        # asyncua on the Server object: every event, as the upstream sent it
        door, *rest = on_server.events
        assert (door.EventType, door.Message.Text, door.Severity) == (
            SYSTEM_EVENT,
            "door open",
            100,
        )
        assert (door.SourceName, door.SourceNode) == ("Tank", plc.nodeid)
        assert door.ConditionName is None and door.Retain is None
        assert deduped([state(e) for e in rest]) == [
            (OFF_NORMAL, "Tank overheat", True, True),
            (OFF_NORMAL, "Tank overheat cleared", False, False),
            (SYSTEM_EVENT, "pump tripped", None, None),
            (OFF_NORMAL, "hot again", True, True),
        ]
        up = rest[0]
        assert (up.ConditionName, up.Severity, up.SourceNode) == ("Overheat", 700, plc.nodeid)
        assert up.SourceName == "1:Tank" and up.Time < up.ReceiveTime  # node-opcua's name
        assert getattr(up, "AckedState/Id") is False
        # on the device object, OfType AlarmConditionType: the alarms only, the same events
        assert deduped([state(e) for e in on_device.events]) == [
            s for s in deduped([state(e) for e in rest]) if s[0] == OFF_NORMAL
        ]
        assert on_device.events[0].EventId == up.EventId
        assert [state(e) for e in early.events] == [state(e) for e in on_device.events]
        assert early.events  # not nothing, as asyncua's exact OfType would give

        # asyncua's ConditionRefresh on its Server subscription
        count = len(on_server.events)
        await client.nodes.server.call_method(  # any object: asyncua binds the type's method
            REFRESH, ua.Variant(sub.subscription_id, ua.VariantType.UInt32)
        )
        await wait_for(lambda: len(on_server.events) >= count + 3, timeout=10)
        again = on_server.events[count:]
        assert [e.EventType for e in again[:1] + again[-1:]] == [
            ua.NodeId(ua.ObjectIds.RefreshStartEventType),
            ua.NodeId(ua.ObjectIds.RefreshEndEventType),
        ]
        middle = again[1:-1]
        assert [state(e) for e in middle] == [(OFF_NORMAL, "hot again", True, True)]
        last_raise = [e for e in on_server.events[:count] if e.Severity == 800][-1]
        assert middle[0].EventId == last_raise.EventId  # the same event, sent again

    # node-opcua on the device object, OfType AlarmConditionType
    seen = [(e["EventType"], e["Message"], e["ActiveState.Id"], e["Retain"]) for e in node.alarms()]
    off_normal = "ns=0;i=10637"
    assert deduped(seen)[:3] == [
        (off_normal, "Tank overheat", True, True),
        (off_normal, "Tank overheat cleared", False, False),
        (off_normal, "hot again", True, True),
    ]
    first = node.alarms()[0]
    assert first["ConditionName"] == "Overheat" and first["SourceName"] == "1:Tank"
    assert first["SourceNode"] == f"ns={ns};s=plc" and first["AckedState.Id"] is False
    assert first["ConditionId"] == f"ns={ns};s=plc#ns=1;s=Tank.Overheat"
    assert [e["EventType"] for e in refreshed[:1] + refreshed[-1:]] == sorted(REFRESH_MARKERS)
    assert [(e["Message"], e["ActiveState.Id"]) for e in refreshed[1:-1]] == [("hot again", True)]

    status = status_of("uas")
    assert status["events_dropped"] == 0 and status["events_served"] == status_of("plc")["events"]
    # the other server, whose bridge carries no events (of plc, its points: leave them out):
    # none served, its objects no notifiers
    assert status_of("quiet")["events_served"] == 0
    async with Client(quiet_url) as client:
        ns = await client.get_namespace_index("urn:protocol-brain:agg")
        for name in ("values_only", "plc"):
            device = client.get_node(ua.NodeId(name, ns))
            assert (await device.read_attribute(ua.AttributeIds.EventNotifier)).Value.Value == 0
        assert await client.nodes.server.get_referenced_nodes(ua.ObjectIds.HasNotifier) == []


async def test_an_alarm_raised_before_our_client_subscribed_is_refreshed_to_it(
    alarms: AlarmPeer,  # noqa: F811
    gateway: tuple[str, str],
) -> None:
    """A client that connects after the upstream alarm rose (a SCADA started later) gets it
    from our ConditionRefresh."""
    await alarms.alarm(True, severity=650, message="too hot")
    await wait_for(lambda: status_of("uas").get("events_served"), timeout=15)
    async with NodeEvents({"url": gateway[0], "interactive": True}) as node:
        await node.wait(lambda: any("subscribed" in ln for ln in node.lines))
        await node.send({"id": 1, "refresh": True})
        await node.wait(lambda: len(node.events()) >= 3)
        assert [ln["status"] for ln in node.lines if "id" in ln] == ["Good"]
    start, *alarm, end = node.events()
    assert [start["EventType"], end["EventType"]] == sorted(REFRESH_MARKERS)
    assert [(e["ConditionName"], e["ActiveState.Id"], e["Retain"]) for e in alarm] == [
        ("Overheat", True, True)
    ]
    assert (alarm[0]["Severity"], alarm[0]["Message"]) == (650, "too hot")
    assert alarm[0]["EventType"] == "ns=0;i=10637"


# -- pure parts -----------------------------------------------------------------------------


def event_message(**values: Any) -> Message:
    samples = tuple(Sample(f"event.{k}", v, source_ts=1_700_000_000.0) for k, v in values.items())
    meta = {"event": "opcua", "record": "event"}
    return Message("telemetry/plc", MessageKind.EVENT, samples, "plc", device="plc", meta=meta)


def test_the_upstream_type_is_kept_when_standard_else_base_event_type() -> None:
    standard = upstream(event_message(type="i=10637", type_name="OffNormalAlarmType"))
    vendor = upstream(event_message(type="ns=3;i=5001", type_name=None, severity=5000))
    assert standard is not None and vendor is not None
    assert standard.event_type == OFF_NORMAL
    assert vendor.event_type == ua.NodeId(ua.ObjectIds.BaseEventType)
    assert vendor.severity == 1000 and vendor.source_name == "plc"  # clamped; the device's name
    assert standard.time.timestamp() == 1_700_000_000.0
    source = ua.NodeId("plc", 2)
    plain = fields(vendor, source, None)
    assert "ConditionName" not in plain and plain["SourceNode"] == source
    anomaly = Message("event/plc/anomaly", MessageKind.EVENT, (), "a", meta={"event": "anomaly"})
    assert upstream(anomaly) is None


def test_only_retained_conditions_are_kept_for_refresh_per_device() -> None:
    kept = Retained()

    def one(condition: str | None, retain: bool, device: str = "plc") -> None:
        message = event_message(condition=condition, condition_id=f"ns=1;s={condition}",
                                retain=retain, active=retain)  # fmt: skip
        event = upstream(message)
        assert event is not None
        kept.update(replace(event, device=device), (device, condition, retain))

    one("A", True)
    one("A", True, device="other")  # the same upstream id on another device: its own
    one("B", True)
    one(None, True)  # a plain event: no condition to keep
    one("A", False)  # A of plc cleared, not retained: dropped
    assert sorted(kept) == [("other", "A", True), ("plc", "B", True)] and len(kept) == 2
