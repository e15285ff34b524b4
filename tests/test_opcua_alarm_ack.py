"""Operators acknowledge the gateway's OPC UA anomaly alarms (Part 9 Acknowledge, AddComment):
judged by node-opcua's client (tests/interop/node/opcua_events.js, its own
``acknowledgeCondition``)
and by asyncua's ``call_method`` on the ConditionId.

The first test drives a real alarm as tests/test_opcua_anomaly_events.py does (a simulated
Modbus pump, a bridge with ``anomaly:``); the others send the server what the anomaly stage
sends it at a rise and a clear, which is faster and lets them choose the order."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.common.node import Node
from conftest import wait_for
from test_opcua_anomaly_events import (
    CALIBRATION,
    REFRESH_MARKERS,
    THRESHOLD,
    Collector,
    NodeEvents,
    Pump,
    active,
    calibrated,
    event_message,
    gateway_for,
    stage_of,
    subscribe_alarms,
)
from test_opcua_server import SECRET_HASH, VIEWER_HASH

from gateway.anomaly.stage import AnomalyStage
from protocols.modbus.simulator import Simulator
from protocols.opcua.server import OpcuaServerAdapter

USERS = (
    f"\n    users: [{{username: op, password_hash: '{SECRET_HASH}'}},"
    f" {{username: viewer, password_hash: '{VIEWER_HASH}', access: read}}]"
)
OP = {"username": "op", "password": "secret"}
VIEWER = {"username": "viewer", "password": "look"}
SCORED_ONLY = "{model: student, calibration: 100000}"  # no alarm of its own: the test sends them
ACKNOWLEDGE = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
ADD_COMMENT = ua.NodeId(ua.ObjectIds.ConditionType_AddComment)
CONFIRM = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Confirm)


class Operator:
    """tests/interop/node/opcua_events.js: node-opcua's client, told what to acknowledge."""

    def __init__(self, node: NodeEvents) -> None:
        self.node = node
        self.sent = 0

    async def command(self, command: dict[str, Any]) -> str:
        """Send ``command``; the status name of its answer."""
        self.sent += 1
        wanted = self.sent
        await self.node.send({"id": wanted, **command})
        await self.node.wait(lambda: any(ln.get("id") == wanted for ln in self.node.lines))
        return str(next(ln["status"] for ln in self.node.lines if ln.get("id") == wanted))

    async def ack(self, event: dict[str, Any], comment: str = "", **more: Any) -> str:
        """Acknowledge the condition of ``event`` with its EventId (``event_id`` another)."""
        return await self._condition("ack", event, comment, **more)

    async def confirm(self, event: dict[str, Any], comment: str = "", **more: Any) -> str:
        """Confirm the condition of ``event``, as `ack` acknowledges it."""
        return await self._condition("confirm", event, comment, **more)

    async def _condition(self, verb: str, event: dict[str, Any], comment: str, **more: Any) -> str:
        event_id = more.pop("event_id", event["EventId"])
        args = {"conditionId": event["ConditionId"], "eventId": event_id, "comment": comment}
        return await self.command({verb: args, **more})

    async def alarms(self, count: int) -> list[dict[str, Any]]:
        """The alarm events once there are ``count`` of them."""
        await self.node.wait(lambda: len(self.node.alarms()) >= count)
        return self.node.alarms()


def node_plan(adapter: OpcuaServerAdapter) -> dict[str, Any]:
    return {"url": adapter.endpoint_url, "user": OP, "viewer": VIEWER, "interactive": True}


async def started(node: NodeEvents) -> Operator:
    await node.wait(lambda: any("subscribed" in ln for ln in node.lines))
    return Operator(node)


@contextlib.asynccontextmanager
async def serving(
    simulator: Simulator, tmp_path: Path, server: str = USERS
) -> AsyncIterator[tuple[OpcuaServerAdapter, Operator, object]]:
    """A gateway whose OPC UA server the test sends alarms itself (`SCORED_ONLY`), and
    node-opcua subscribed to its events: (the server, the operator, the bridge's route)."""
    async with (
        gateway_for(simulator, tmp_path, SCORED_ONLY, server=server) as (gateway, adapter, _),
        NodeEvents(node_plan(adapter)) as node,
    ):
        yield adapter, await started(node), gateway.bridges[0].config.route


@contextlib.asynccontextmanager
async def calibrated_pump(
    simulator: Simulator, tmp_path: Path
) -> AsyncIterator[tuple[OpcuaServerAdapter, Operator, Pump, AnomalyStage]]:
    """A real alarm's gateway (a simulated pump, a bridge with ``anomaly:``), node-opcua
    subscribed to its events, once the stage has calibrated: (the server, the operator, the
    pump, the stage)."""
    anomaly = f"{{model: student, calibration: {CALIBRATION}, threshold: {THRESHOLD}}}"
    async with (
        gateway_for(simulator, tmp_path, anomaly, server=USERS) as (gateway, adapter, pump),
        NodeEvents(node_plan(adapter)) as node,
    ):
        operator, stage = await started(node), stage_of(gateway)
        await pump.until(lambda: calibrated(stage), faulty=False, rows=400)
        yield adapter, operator, pump, stage


def state(event: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(ActiveState/Id, AckedState/Id, Retain) of a node-opcua event."""
    return event["ActiveState.Id"], event["AckedState.Id"], event["Retain"]


async def test_node_opcua_acknowledges_a_raised_alarm(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    async with calibrated_pump(simulator, tmp_path) as (adapter, operator, pump, stage):
        await pump.until(lambda: active(stage), faulty=True, rows=200)
        (raised,) = await operator.alarms(1)
        assert state(raised) == (True, False, True)
        assert raised["AckedState"] == "Unacknowledged"
        assert raised["ConditionId"] == f"ns={adapter.namespace_index};s=pump#anomaly"

        assert await operator.ack(raised, "look", **{"as": "viewer"}) == "BadUserAccessDenied"
        wrong = os.urandom(16).hex()
        assert await operator.ack(raised, "x", event_id=wrong) == "BadEventIdUnknown"
        assert adapter.status()["alarm_acks"] == 0
        assert await operator.ack(raised, "valve checked") == "Good"
        _, acked = await operator.alarms(2)
        assert state(acked) == (True, True, True)  # still active: still in the list
        assert (acked["AckedState"], acked["Comment"], acked["ClientUserId"]) == (
            "Acknowledged",
            "valve checked",
            "op",
        )
        assert acked["EventId"] != raised["EventId"]
        assert acked["ConditionId"] == raised["ConditionId"]
        assert acked["Message"] == "pump: anomaly alarm acknowledged by op: valve checked"
        for event in (raised, acked):
            assert await operator.ack(event, "again") == "BadConditionBranchAlreadyAcked"

        await pump.until(lambda: not active(stage), faulty=False, rows=400)
        _, _, cleared = await operator.alarms(3)
        assert state(cleared) == (False, True, False)  # cleared and acknowledged: gone
        assert cleared["Comment"] == "valve checked"  # the occurrence keeps its comment
        assert adapter.status()["alarm_acks"] == 1
    assert "op acknowledged the anomaly alarm of pump (active), comment 'valve checked'" in (
        caplog.text
    )


async def test_a_cleared_alarm_nobody_acknowledged_stays_until_acknowledged(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(simulator, tmp_path) as (adapter, operator, route):
        node = operator.node
        await adapter.send(event_message(True, 9.5, 1_700_000_000.0), route)
        await adapter.send(event_message(False, 1.0, 1_700_000_001.0), route)
        raised, cleared = await operator.alarms(2)
        assert state(raised) == (True, False, True)
        assert state(cleared) == (False, False, True)  # cleared, unacknowledged: kept
        # without ``alarms: {confirm: true}``: no ConfirmedState, and no Confirm
        assert (raised["ConfirmedState"], raised["ConfirmedState.Id"]) == (None, None)
        assert await operator.confirm(cleared, "done") == "BadMethodInvalid"

        # ConditionRefresh sends it again: the same event, between RefreshStart and End
        assert await operator.command({"refresh": True}) == "Good"
        _, _, again = await operator.alarms(3)
        assert again["EventId"] == cleared["EventId"] and state(again) == state(cleared)
        await node.wait(lambda: sum(e["EventType"] in REFRESH_MARKERS for e in node.events()) == 2)

        assert await operator.ack(cleared, "seen it") == "Good"
        *_, acked = await operator.alarms(4)
        assert state(acked) == (False, True, False)  # Retain false: the list drops it
        assert await operator.command({"refresh": True}) == "Good"
        await node.wait(lambda: sum(e["EventType"] in REFRESH_MARKERS for e in node.events()) == 4)
        assert len(node.alarms()) == 4  # nothing retained any more

        # raised again: to be acknowledged again; a raise while unacknowledged: the same
        await adapter.send(event_message(True, 9.0, 1_700_000_002.0), route)
        await adapter.send(event_message(False, 1.0, 1_700_000_003.0), route)
        await adapter.send(event_message(True, 9.9, 1_700_000_004.0), route)
        *_, first, down, second = await operator.alarms(7)
        assert [state(e) for e in (first, down, second)] == [
            (True, False, True),
            (False, False, True),
            (True, False, True),
        ]
        assert second["Comment"] == ""  # a new occurrence: the old comment is not its own
        # the operator acknowledges what they saw: not a raise that came after it
        for seen in (first, down):
            assert await operator.ack(seen, "late") == "BadEventIdUnknown"
        assert await operator.ack(second, "both") == "Good"
        *_, acked = await operator.alarms(8)
        assert state(acked) == (True, True, True)
        assert adapter.status()["alarm_acks"] == 2


async def call(node: Node, method: ua.NodeId, *args: Any) -> str:
    """asyncua's ``call_method``; the status name it answered."""
    try:
        await node.call_method(method, *args)
    except ua.UaStatusCodeError as exc:
        return type(exc).__name__
    return "Good"


def logged_in(url: str, user: dict[str, str] | None) -> Client:
    client = Client(url)
    if user is not None:
        client.set_user(user["username"])
        client.set_password(user["password"])
    return client


async def test_asyncua_acknowledges_through_call_method(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with (
        gateway_for(simulator, tmp_path, SCORED_ONLY, server=USERS) as (gateway, adapter, _),
        logged_in(adapter.endpoint_url, OP) as client,
    ):
        url, route = adapter.endpoint_url, gateway.bridges[0].config.route
        condition = f"ns={adapter.namespace_index};s=pump#anomaly"
        seen = Collector()
        sub = await client.create_subscription(20, seen)
        await subscribe_alarms(sub, client, client.nodes.server, ua.ObjectIds.OffNormalAlarmType)
        await adapter.send(event_message(True, 9.5, 1_700_000_000.0), route)
        await wait_for(lambda: seen.alarms(), timeout=10)
        raised = seen.alarms()[0]
        assert getattr(raised, "AckedState/Id") is False and raised.Retain is True
        text = ua.LocalizedText("checked")

        for user in (None, VIEWER):  # anonymous and read-only: no
            async with logged_in(url, user) as other:
                on = other.get_node(condition)
                assert await call(on, ACKNOWLEDGE, raised.EventId, text) == "BadUserAccessDenied"

        on = client.get_node(condition)
        assert await call(on, ACKNOWLEDGE) == "BadArgumentsMissing"
        assert await call(on, ACKNOWLEDGE, raised.EventId, text, 1) == "BadTooManyArguments"
        assert await call(on, ACKNOWLEDGE, 5, text) == "BadInvalidArgument"
        assert await call(on, ACKNOWLEDGE, raised.EventId, "x" * 1001) == "BadInvalidArgument"
        assert await call(on, ACKNOWLEDGE, b"nope", text) == "BadEventIdUnknown"
        null_id = ua.Variant(None, ua.VariantType.ByteString)
        assert await call(on, ACKNOWLEDGE, null_id, text) == "BadEventIdUnknown"
        assert await call(on, ADD_COMMENT, b"nope", text) == "BadEventIdUnknown"
        assert await call(on, CONFIRM, raised.EventId, text) == "BadMethodInvalid"
        assert await call(client.get_node("i=2253"), ACKNOWLEDGE) == "BadMethodInvalid"

        # AddComment: a new event, still unacknowledged; then acknowledged with that event's id
        assert await call(on, ADD_COMMENT, raised.EventId, ua.LocalizedText("looking")) == "Good"
        await wait_for(lambda: len(seen.alarms()) >= 2, timeout=10)
        noted = seen.alarms()[1]
        assert (noted.Comment.Text, noted.ClientUserId) == ("looking", "op")
        assert getattr(noted, "AckedState/Id") is False and noted.Retain is True
        assert noted.EventId != raised.EventId
        assert await call(on, ACKNOWLEDGE, noted.EventId, "done") == "Good"  # a String too
        await wait_for(lambda: len(seen.alarms()) >= 3, timeout=10)
        acked = seen.alarms()[2]
        assert (acked.Comment.Text, acked.ClientUserId) == ("done", "op")
        assert (getattr(acked, "AckedState/Id"), acked.Retain) == (True, True)
        assert await call(on, ACKNOWLEDGE, acked.EventId, text) == "BadConditionBranchAlreadyAcked"

        await adapter.send(event_message(False, 1.0, 1_700_000_001.0), route)
        await wait_for(lambda: len(seen.alarms()) >= 4, timeout=10)
        cleared = seen.alarms()[3]
        assert (getattr(cleared, "AckedState/Id"), cleared.Retain) == (True, False)
    assert adapter.status()["alarm_acks"] == 1
