"""Acknowledgements of re-served alarms go back to the PLC: node-opcua's alarm server
(``tests/interop/node/opcua_alarm_server.js``) is the PLC, the gateway runs in-process (an OPC UA
client device with ``events:`` bridged to our OPC UA server), and node-opcua's client
(``opcua_events.js``, its own ``acknowledgeCondition``/``confirmCondition``) or asyncua's is
the SCADA. The PLC's own state (read from it) judges what arrived; then the stale conditions of
an upstream that restarted without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from conftest import HOST, free_port, wait_for
from test_opcua_alarm_ack import (
    ACKNOWLEDGE,
    ADD_COMMENT,
    OP,
    USERS,
    VIEWER,
    Operator,
    call,
    logged_in,
)
from test_opcua_anomaly_events import Collector, NodeEvents, subscribe_alarms
from test_opcua_client import Collector as BusCollector
from test_opcua_client_events import ALARM_JS, LEVEL, AlarmPeer, shared_pki  # noqa: F401
from test_opcua_server import running_gateway

from gateway.bridge import Bridge
from gateway.bus import Bus
from gateway.commands import CommandRouter, WriteStatus
from gateway.conditions import ACKNOWLEDGE as ACK_NAME
from gateway.conditions import CallResult, ConditionCall, request, serve
from gateway.config import BridgeConfig
from gateway.runtime import Gateway
from gateway.types import Message, MessageKind, Sample
from protocols.opcua.client import OpcuaClientAdapter
from protocols.opcua.events import LiveConditions
from protocols.opcua.served_events import Condition, upstream
from protocols.opcua.server import OpcuaServerAdapter

OVERHEAT = "ns=1;s=Tank.Overheat"


class Plc(AlarmPeer):
    """The alarm server, optionally with ConfirmedState, and its alarm's own state."""

    confirm = False

    async def start(self, *, overheat: bool = False, patience: float = 30.0) -> None:  # type: ignore[override]
        argv = ["--port", str(self.port), "--pki", str(self.pki)]
        argv += ["--overheat", "on" if overheat else "off"]
        argv += ["--confirm", "on" if self.confirm else "off"]
        await self._spawn(ALARM_JS, argv, patience, "node-opcua alarm server")

    async def state(self) -> dict[str, Any]:
        return dict((await self.command(state=True))["state"])


@pytest.fixture
async def plc(shared_pki: Path, tmp_path: Path) -> AsyncIterator[Plc]:  # noqa: F811
    server = Plc(shared_pki, tmp_path / "node.log")
    server.confirm = True
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


def config(plc: Plc, tmp_path: Path) -> str:
    server = f"""    protocol: opcua
    role: server
    host: {HOST}
    security: {{allow_none: true, pki_dir: "{tmp_path}/pki/SERVER"}}{USERS}"""
    return f"""
gateway: {{name: agg}}
devices:
  plc:
    protocol: opcua
    url: {plc.url}
    security: {{policy: "None", mode: "None", pki_dir: "{tmp_path}/pki/plc"}}
    reconnect: {{initial: 0.1, max: 0.5}}
    subscription: {{publishing_interval: 0.05}}
    points: [{{name: level, node_id: "{LEVEL}", sampling_interval: 0}}]
    events: {{}}
endpoints:
  uas:
{server.replace("SERVER", "uas")}
    port: {free_port()}
  ro:
{server.replace("SERVER", "ro")}
    port: {free_port()}
bridges:
  - {{name: aggregate, from: [plc], to: uas}}
  - {{name: read_only, from: [plc], to: ro, writable: false}}
"""


class Agg:
    """The running gateway's parts the tests look at."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        uas, ro, client = (gateway.adapters[n] for n in ("uas", "ro", "plc"))
        assert isinstance(uas, OpcuaServerAdapter) and isinstance(ro, OpcuaServerAdapter)
        assert isinstance(client, OpcuaClientAdapter)
        self.uas, self.ro, self.client = uas, ro, client
        self.condition = f"ns={uas.namespace_index};s=plc#{OVERHEAT}"

    @property
    def calls(self) -> int:
        """Condition methods the gateway called on the PLC."""
        return int(self.client.counters["condition_calls"])


@contextlib.asynccontextmanager
async def aggregating(plc: Plc, tmp_path: Path) -> AsyncIterator[tuple[Agg, BusCollector]]:
    async with running_gateway(config(plc, tmp_path)) as gateway:
        agg = Agg(gateway)
        await wait_for(lambda: agg.client.counters["condition_refreshes"], timeout=30)
        seen = BusCollector(gateway.bus, "plc")
        try:
            yield agg, seen
        finally:
            seen.close()


def upstream_ids(seen: BusCollector) -> list[str]:
    """The upstream EventIds of the plc's events, in order."""
    return [
        next(s.value for s in m.samples if s.point == "event.id")
        for m in seen.messages
        if m.kind is MessageKind.EVENT
    ]


async def served_for(plc: Plc, seen: BusCollector, operator: Operator) -> dict[str, Any]:
    """The event our server served for the PLC's latest (the one its methods take): the
    plc's events and those the SCADA got on the Server object correspond one to one."""
    latest = (await plc.state())["eventId"]
    await wait_for(lambda: latest in upstream_ids(seen), timeout=15)
    index = upstream_ids(seen).index(latest)
    return (await operator.alarms(index + 1))[index]


async def test_node_opcua_acknowledges_and_confirms_the_plc_alarm_through_the_gateway(
    plc: Plc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.server")
    async with aggregating(plc, tmp_path) as (agg, seen):
        plan = {"url": agg.uas.endpoint_url, "user": OP, "viewer": VIEWER, "interactive": True}
        async with NodeEvents(plan) as node:
            await node.wait(lambda: any("subscribed" in ln for ln in node.lines))
            operator = Operator(node)
            await plc.alarm(True, message="Tank overheat")
            raised = await served_for(plc, seen, operator)
            assert raised["ConditionId"] == agg.condition
            assert (raised["ActiveState.Id"], raised["AckedState.Id"]) == (True, False)

            # a viewer may not: refused here, nothing sent to the PLC
            for _ in range(2):
                viewer = await operator.ack(raised, "no", **{"as": "viewer"})
                assert viewer == "BadUserAccessDenied"
            assert agg.calls == 0
            # an EventId the PLC does not know: its own answer
            assert await operator.ack(raised, "x", event_id="ab" * 16) == "BadEventIdUnknown"
            assert agg.calls == 1
            assert (await plc.state())["acked"] is False

            assert await operator.ack(raised, "valve checked") == "Good"
            state = await plc.state()
            assert (state["acked"], state["confirmed"], state["comment"]) == (
                True,
                False,
                "valve checked",
            )
            # the PLC's next event (acknowledged) updates the condition on our server
            acked = await served_for(plc, seen, operator)
            assert (acked["AckedState.Id"], acked["ActiveState.Id"]) == (True, True)
            assert acked["ConditionId"] == agg.condition and acked["EventId"] != raised["EventId"]

            assert await operator.confirm(acked, "done") == "Good"
            assert (await plc.state())["confirmed"] is True
            confirmed = await served_for(plc, seen, operator)
            assert (
                await operator.confirm(confirmed, "twice") == "BadConditionBranchAlreadyConfirmed"
            )
        status = agg.uas.status()
        assert (status["acks_forwarded"], status["acks_refused"]) == (2, 4)
        assert agg.calls == 4
    warned = [
        found[1]
        for r in caplog.records
        if r.levelno == logging.WARNING and (found := re.search(r"refused: (Bad\w+)", r.message))
    ]
    # each refusal logged at warning level once per status (the viewer's second at debug)
    assert sorted(warned) == [
        "BadConditionBranchAlreadyConfirmed",
        "BadEventIdUnknown",
        "BadUserAccessDenied",
    ]


@contextlib.asynccontextmanager
async def watched(plc: Plc, tmp_path: Path) -> AsyncIterator[tuple[Agg, Client, Collector, int]]:
    """The gateway, and asyncua's client (user op) subscribed to the alarms on our Server
    object, which has seen the PLC's alarm raised: (..., its subscription's id)."""
    async with (
        aggregating(plc, tmp_path) as (agg, seen),
        logged_in(agg.uas.endpoint_url, OP) as scada,
    ):
        events = Collector()
        sub = await scada.create_subscription(20, events)
        await subscribe_alarms(sub, scada, scada.nodes.server, ua.ObjectIds.OffNormalAlarmType)
        await plc.alarm(True, message="Tank overheat")
        latest = (await plc.state())["eventId"]
        await wait_for(lambda: latest in upstream_ids(seen), timeout=15)
        await wait_for(lambda: len(events.alarms()) == len(upstream_ids(seen)), timeout=15)
        yield agg, scada, events, sub.subscription_id


async def test_asyncua_comments_and_the_refusals_that_never_reach_the_plc(
    plc: Plc, tmp_path: Path
) -> None:
    async with watched(plc, tmp_path) as (agg, scada, events, _):
        raised = events.alarms()[-1]
        on = scada.get_node(agg.condition)
        enable = ua.NodeId(ua.ObjectIds.ConditionType_Enable)  # not served
        assert await call(on, enable) == "BadMethodInvalid"
        assert await call(on, ADD_COMMENT, raised.EventId, ua.LocalizedText("looking")) == "Good"
        assert (await plc.state())["comment"] == "looking"
        assert agg.calls == 1

        # the same alarm on a server whose bridge does not let clients write: not forwarded
        await wait_for(lambda: agg.ro.status()["events_served"], timeout=15)
        async with logged_in(agg.ro.endpoint_url, OP) as other:
            ro_ns = await other.get_namespace_index("urn:protocol-brain:agg")
            on_ro = other.get_node(f"ns={ro_ns};s=plc#{OVERHEAT}")
            assert await call(on_ro, ACKNOWLEDGE, raised.EventId, "x") == "BadNotExecutable"
        assert agg.calls == 1 and agg.ro.status()["acks_refused"] == 1

        # the PLC down: refused at once with the write path's status, nothing sent
        await plc.kill()
        await wait_for(lambda: not agg.client.status()["connected"], timeout=30)
        assert await call(on, ACKNOWLEDGE, raised.EventId, "x") == "BadCommunicationError"
        assert agg.calls == 1
        assert (agg.uas.status()["acks_forwarded"], agg.uas.status()["acks_refused"]) == (1, 2)


async def test_conditions_gone_from_a_restarted_plc_leave_our_alarm_list(
    plc: Plc, tmp_path: Path
) -> None:
    async with watched(plc, tmp_path) as (agg, scada, events, subscription_id):
        assert events.alarms()[-1].Retain is True
        refreshes = agg.client.counters["condition_refreshes"]

        # the PLC restarts without the alarm (cleared while we were away)
        await plc.kill()
        await wait_for(lambda: not agg.client.status()["connected"], timeout=30)
        before = len(events.alarms())
        await plc.start(overheat=False)
        await wait_for(lambda: agg.client.counters["condition_refreshes"] > refreshes, timeout=30)
        await wait_for(lambda: len(events.alarms()) > before, timeout=15)
        gone = events.alarms()[-1]
        assert gone.Retain is False and gone.ConditionName == "Overheat"
        assert agg.client.counters["conditions_gone"] == 1

        # and ConditionRefresh on our server no longer sends it
        count = len(events.events)
        refresh = ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh)
        await scada.nodes.server.call_method(
            refresh, ua.Variant(subscription_id, ua.VariantType.UInt32)
        )
        end = ua.NodeId(ua.ObjectIds.RefreshEndEventType)
        await wait_for(lambda: any(e.EventType == end for e in events.events[count:]), timeout=10)
        start = ua.NodeId(ua.ObjectIds.RefreshStartEventType)
        assert [e.EventType for e in events.events[count:]] == [start, end]


# -- pure parts -------------------------------------------------------------------------------


def condition_event(key: str, retain: bool, event_id: str | None = "01") -> Message:
    values = {"id": event_id, "condition": key, "condition_id": f"ns=1;s={key}",
              "retain": retain, "refresh": False}  # fmt: skip
    samples = tuple(Sample(f"event.{k}", v, source_ts=1.0) for k, v in values.items())
    meta = {"event": "opcua", "record": "event"}
    return Message("telemetry/plc", MessageKind.EVENT, samples, "plc", device="plc", meta=meta)


def fields(message: Message) -> dict[str, Any]:
    return {s.point: s.value for s in message.samples}


def test_a_refresh_removes_the_retained_conditions_it_did_not_send_once_it_ends() -> None:
    live = LiveConditions()
    for key in ("A", "B", "C", "D"):
        live.note(condition_event(key, True))
    live.note(condition_event("C", False))  # cleared: no longer retained
    assert live.end() == []  # no refresh started: nothing is known to be gone
    live.start()  # a refresh that never ends (the connection lost again): removes nothing...
    live.note(condition_event("B", True))
    live.start()  # ...and the next one starts afresh: B must come again
    live.note(condition_event("A", True, event_id="02"))
    live.note(condition_event("D", False))  # cleared during the refresh: gone anyway
    live.note(condition_event("E", True))  # new
    removed = live.end(now=5.0)
    assert [fields(m)["event.condition"] for m in removed] == ["B"]
    out = fields(removed[0])
    assert (out["event.retain"], out["event.refresh"], out["event.id"]) == (False, True, None)
    assert {s.source_ts for s in removed[0].samples} == {5.0}
    assert live.end() == []  # said once
    live.start()
    assert [fields(m)["event.condition"] for m in live.end()] == ["A", "E"]


def test_our_event_ids_stand_for_the_upstream_ones() -> None:
    kept = Condition("plc", "ns=1;s=A", object())
    for n in range(40):
        event = upstream(condition_event("A", True, event_id=f"{n:02x}"))
        assert event is not None
        kept.served(bytes([100 + n]), event)
    assert kept.upstream_event(bytes([139])) == bytes([39])
    assert kept.upstream_event(bytes([108])) == bytes([8])
    assert kept.upstream_event(bytes([100])) == bytes([100])  # forgotten: unchanged
    assert kept.upstream_event(b"ours") == b"ours"


async def test_a_call_nobody_takes_or_answers_in_time_fails_and_is_never_made_late() -> None:
    bus = Bus()
    call = ConditionCall(ACK_NAME, "ns=1;s=A", b"\x01", "", "test")
    assert (await request(bus, "plc", call)).status is WriteStatus.UNREACHABLE
    made: list[ConditionCall] = []
    release = asyncio.Event()

    async def slow(c: ConditionCall) -> CallResult:
        made.append(c)
        await release.wait()
        return CallResult(WriteStatus.GOOD)

    task = asyncio.create_task(serve(bus, "plc", slow))
    await wait_for(lambda: any(s.pattern == "condition/plc" for s in bus.subscriptions()))
    first = asyncio.create_task(request(bus, "plc", call, 2.0))
    await wait_for(lambda: made)  # being made, and held: the next one queues behind it
    late = await request(bus, "plc", replace_comment(call, "queued"), 0.5)
    assert late.status is WriteStatus.TIMEOUT and (await first).status is WriteStatus.TIMEOUT
    release.set()
    answered = await request(bus, "plc", replace_comment(call, "now"), 5)
    assert answered.ok
    assert [c.comment for c in made] == ["", "now"]  # the queued one was dropped
    task.cancel()


def replace_comment(call: ConditionCall, comment: str) -> ConditionCall:
    return ConditionCall(call.method, call.condition, call.event_id, comment, call.origin)


async def test_a_bridge_forwards_calls_only_for_the_devices_whose_events_it_carries() -> None:
    bus = Bus()
    call = ConditionCall(ACK_NAME, "ns=1;s=A", b"\x01", "", "test")
    events = {"plc": ["event.id", "event.condition_id"]}

    def bridge(points: tuple[str, ...]) -> Bridge:
        config = BridgeConfig("up", ("plc",), points, "uas", {}, None)
        return Bridge(config, bus, object(), router=CommandRouter(bus), events=events)  # type: ignore[arg-type]

    values_only = await bridge(("level",)).call_condition("plc", call)
    assert values_only.status is WriteStatus.UNKNOWN_POINT and "events" in values_only.reason
    other = await bridge(("*",)).call_condition("pump", call)
    assert other.status is WriteStatus.UNKNOWN_POINT
    # carried: to the bus, where nobody takes it here
    carried = await bridge(("level", "event.*")).call_condition("plc", call)
    assert carried.status is WriteStatus.UNREACHABLE
