"""Operators shelve the gateway's noisy OPC UA anomaly alarms (Part 9, 5.8.10: TimedShelve,
OneShotShelve, Unshelve): judged by node-opcua's client (tests/interop/node/opcua_events.js,
its ``shelve`` command: ``session.call`` of the ShelvedStateMachineType's method on the
ConditionId) and by asyncua's ``call_method``.

The first test drives a real alarm (a simulated Modbus pump, a bridge with ``anomaly:``) as
tests/test_opcua_alarm_ack.py does; the others send the server what the anomaly stage sends it
at a rise and a clear, which is faster and lets them choose the order. That a shelved alarm's
raise is not sent is judged by order: the client gets a subscription's events in order, so an
event sent after the raise arrives with no raise before it."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.node import Node
from conftest import wait_for
from test_opcua_alarm_ack import (
    OP,
    USERS,
    VIEWER,
    Operator,
    calibrated_pump,
    call,
    logged_in,
    serving,
    state,
)
from test_opcua_alarm_confirm import T0, kept_alarm, refreshed
from test_opcua_anomaly_events import active, event_message, iso

from protocols.modbus.simulator import Simulator
from protocols.opcua.alarmstate import AlarmFile, alarm_file
from protocols.opcua.server import OpcuaServerAdapter

SHELVING = USERS + "\n    alarms: {max_time_shelved: 60}"
OID = ua.ObjectIds
TIMED_SHELVE = ua.NodeId(OID.ShelvedStateMachineType_TimedShelve)
ONE_SHOT_SHELVE = ua.NodeId(OID.ShelvedStateMachineType_OneShotShelve)
UNSHELVE = ua.NodeId(OID.ShelvedStateMachineType_Unshelve)
STATE_IDS = {
    "Unshelved": f"ns=0;i={OID.ShelvedStateMachineType_Unshelved}",
    "TimedShelved": f"ns=0;i={OID.ShelvedStateMachineType_TimedShelved}",
    "OneShotShelved": f"ns=0;i={OID.ShelvedStateMachineType_OneShotShelved}",
}


def shelving(event: dict[str, Any]) -> tuple[str, bool]:
    """(ShelvingState/CurrentState, SuppressedOrShelved) of a node-opcua event, its state's
    Id checked."""
    current = event["ShelvingState.CurrentState"]
    assert event["ShelvingState.CurrentState.Id"] == STATE_IDS[current]
    return current, event["SuppressedOrShelved"]


async def shelve(operator: Operator, event: dict[str, Any], method: str, **more: Any) -> str:
    """``method`` on the condition of ``event`` by node-opcua (``ms``: the ShelvingTime)."""
    args = {"conditionId": event["ConditionId"], "method": method}
    if "ms" in more:
        args["shelvingTime"] = more.pop("ms")
    return await operator.command({"shelve": args, **more})


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["Message"] for e in events]


async def test_node_opcua_shelves_a_real_alarm_and_sees_it_once_unshelved(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    async with calibrated_pump(simulator, tmp_path) as (adapter, operator, pump, stage):
        assert await refreshed(operator) == []  # nothing to show: no event yet
        condition = {"ConditionId": f"ns={adapter.namespace_index};s=pump#anomaly"}
        assert await shelve(operator, condition, "TimedShelve", ms=3_600_000) == "Good"
        (shelved,) = await operator.alarms(1)
        assert shelving(shelved) == ("TimedShelved", True)
        assert shelved["MaxTimeShelved"] == 8 * 3600 * 1000  # the default
        assert 3_500_000 < shelved["ShelvingState.UnshelveTime"] <= 3_600_000
        assert shelved["Message"] == "pump: anomaly alarm shelved by op for 3600 s"
        assert state(shelved) == (False, True, True)  # shelved: kept in the alarm list

        await pump.until(lambda: active(stage), faulty=True, rows=200)
        await wait_for(lambda: adapter.status()["alarm_events_suppressed"] >= 1, timeout=30)
        assert adapter.status()["alarms_shelved"] == 1
        assert await shelve(operator, condition, "Unshelve") == "Good"
        shelved_again, unshelved = await operator.alarms(2)  # the raise never came
        assert shelved_again is shelved
        assert shelving(unshelved) == ("Unshelved", False)
        assert unshelved["Message"] == "pump: anomaly alarm unshelved by op"
        # the raise while shelved is a new occurrence: active, to be acknowledged
        assert state(unshelved) == (True, False, True)
        assert await operator.ack(unshelved, "seen after unshelving") == "Good"
        *_, acked = await operator.alarms(3)
        assert state(acked) == (True, True, True)
        status = adapter.status()
        assert (status["alarm_shelves"], status["alarm_unshelves"]) == (1, 1)
        assert status["alarms_shelved"] == 0
    assert "pump: anomaly alarm shelved by op for 3600 s" in caplog.text


@contextlib.asynccontextmanager
async def with_asyncua(
    simulator: Simulator, tmp_path: Path, server: str = SHELVING
) -> AsyncIterator[tuple[OpcuaServerAdapter, Operator, object, Any]]:
    """`serving`, and asyncua's client logged in as ``op``: the condition's node on it."""
    async with (
        serving(simulator, tmp_path, server) as (adapter, operator, route),
        logged_in(adapter.endpoint_url, OP) as client,
    ):
        on = client.get_node(f"ns={adapter.namespace_index};s=pump#anomaly")
        yield adapter, operator, route, on


async def test_a_timed_shelve_hides_raises_until_it_ends_by_itself(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    async with with_asyncua(simulator, tmp_path) as (adapter, operator, route, on):
        await adapter.send(event_message(True, 9.5, T0), route)
        await adapter.send(event_message(False, 1.0, T0 + 1), route)
        raised, cleared = await operator.alarms(2)
        assert shelving(raised) == ("Unshelved", False) and raised["MaxTimeShelved"] == 60_000
        assert await operator.ack(cleared, "") == "Good"
        await operator.alarms(3)

        # shelved and unshelved at once: its timer goes with it, and ends no later shelve
        assert await call(on, TIMED_SHELVE, 1000.0) == "Good"
        assert await call(on, UNSHELVE) == "Good"
        # asyncua shelves (short: the test waits for it to end), the raise comes right after
        assert await call(on, TIMED_SHELVE, ua.Variant(4000.0, ua.VariantType.Double)) == "Good"
        await adapter.send(event_message(True, 9.0, T0 + 2), route)
        assert adapter.status()["alarm_events_suppressed"] == 1  # it was still shelved
        assert await call(on, TIMED_SHELVE, 1000.0) == "BadConditionAlreadyShelved"
        *_, shelved, ended = await operator.alarms(7)  # no raise between them
        assert iso(ended["Time"]) - iso(shelved["Time"]) >= timedelta(seconds=4)
        assert messages([shelved, ended]) == [
            "pump: anomaly alarm shelved by op for 4 s",
            "pump: anomaly alarm unshelved: its shelving time ended",
        ]
        assert shelving(shelved) == ("TimedShelved", True)
        assert state(shelved) == (False, True, True)
        assert shelving(ended) == ("Unshelved", False)
        assert state(ended) == (True, False, True)  # the raise while shelved, unacknowledged

        # unshelved: the next clear and raise are sent
        await adapter.send(event_message(False, 1.0, T0 + 3), route)
        await adapter.send(event_message(True, 9.9, T0 + 4), route)
        *_, down, up = await operator.alarms(9)
        assert [state(e) for e in (down, up)] == [(False, False, True), (True, False, True)]
        assert [shelving(e) for e in (down, up)] == [("Unshelved", False)] * 2
        status = adapter.status()
        assert (status["alarm_shelves"], status["alarm_unshelves"]) == (2, 2)
        assert (status["alarms_shelved"], status["alarm_events_suppressed"]) == (0, 1)
    assert "pump: anomaly alarm unshelved: its shelving time ended" in caplog.text


async def test_a_one_shot_shelve_ends_when_the_alarm_clears(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(simulator, tmp_path, SHELVING) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        assert await shelve(operator, raised, "OneShotShelve") == "Good"
        _, shelved = await operator.alarms(2)
        assert shelving(shelved) == ("OneShotShelved", True)
        assert (
            shelved["Message"]
            == "pump: anomaly alarm shelved by op until it clears, at most for 60 s"
        )
        assert 0 < shelved["ShelvingState.UnshelveTime"] <= 60_000
        assert await shelve(operator, raised, "OneShotShelve") == "BadConditionAlreadyShelved"
        assert await shelve(operator, raised, "TimedShelve", ms=1000.0) == (
            "BadConditionAlreadyShelved"
        )

        await adapter.send(event_message(False, 1.0, T0 + 1), route)  # the clear ends it
        *_, cleared = await operator.alarms(3)
        assert shelving(cleared) == ("Unshelved", False)
        assert state(cleared) == (False, False, True)
        assert cleared["Message"] == (
            "pump: anomaly cleared (score 1, threshold 3); its one-shot shelving ended"
        )
        await adapter.send(event_message(True, 9.0, T0 + 2), route)
        *_, again = await operator.alarms(4)
        assert shelving(again) == ("Unshelved", False) and state(again) == (True, False, True)

        # shelved while inactive: its next raise is hidden, and the clear after it ends it
        await adapter.send(event_message(False, 1.0, T0 + 3), route)
        *_, down = await operator.alarms(5)
        assert await shelve(operator, down, "OneShotShelve") == "Good"
        await adapter.send(event_message(True, 9.0, T0 + 4), route)
        await adapter.send(event_message(False, 1.0, T0 + 5), route)
        *_, shelved_down, ended = await operator.alarms(7)
        assert shelving(shelved_down) == ("OneShotShelved", True)
        assert shelving(ended) == ("Unshelved", False) and state(ended) == (False, False, True)
        assert ended["Message"].endswith("; its one-shot shelving ended")
        status = adapter.status()
        assert (status["alarm_shelves"], status["alarm_unshelves"]) == (2, 2)
        assert status["alarm_events_suppressed"] == 1


async def test_shelving_calls_are_refused_by_part_9s_rules(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with with_asyncua(simulator, tmp_path) as (adapter, operator, route, on):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        condition = on.nodeid.to_string()
        for user in (None, VIEWER):  # anonymous and read-only: no
            async with logged_in(adapter.endpoint_url, user) as other:
                theirs = other.get_node(condition)
                for method in (TIMED_SHELVE, ONE_SHOT_SHELVE, UNSHELVE):
                    args = (1000.0,) if method == TIMED_SHELVE else ()
                    assert await call(theirs, method, *args) == "BadUserAccessDenied"
        assert await shelve(operator, raised, "OneShotShelve", **{"as": "viewer"}) == (
            "BadUserAccessDenied"
        )

        assert await call(on, UNSHELVE) == "BadConditionNotShelved"
        assert await call(on, TIMED_SHELVE) == "BadArgumentsMissing"
        assert await call(on, TIMED_SHELVE, 1000.0, 2.0) == "BadTooManyArguments"
        assert await call(on, ONE_SHOT_SHELVE, 1.0) == "BadTooManyArguments"
        assert await call(on, TIMED_SHELVE, "1000") == "BadInvalidArgument"
        for ms in (0.0, -5.0, 60_001.0, float("nan")):
            assert await call(on, TIMED_SHELVE, ms) == "BadShelvingTimeOutOfRange"
        server = Node(on.session, ua.NodeId(OID.Server))  # not a condition
        assert await call(server, TIMED_SHELVE, 1000.0) == "BadMethodInvalid"
        assert adapter.status()["alarm_shelves"] == 0

        # AlarmConditionType's ShelvingState methods are the same; the longest time is allowed
        instance = ua.NodeId(OID.AlarmConditionType_ShelvingState_TimedShelve)
        assert await call(on, instance, ua.Variant(60_000, ua.VariantType.UInt32)) == "Good"
        assert await call(on, TIMED_SHELVE, 1000.0) == "BadConditionAlreadyShelved"
        assert await call(on, ONE_SHOT_SHELVE) == "Good"  # timed to one-shot: allowed
        assert await call(on, UNSHELVE) == "Good"
        assert await call(on, UNSHELVE) == "BadConditionNotShelved"
        assert await shelve(operator, raised, "TimedShelve", ms=30_000) == "Good"
        assert await shelve(operator, raised, "Unshelve") == "Good"
        *_, timed, one_shot, unshelved, again, done = await operator.alarms(6)
        assert [shelving(e)[0] for e in (timed, one_shot, unshelved, again, done)] == [
            "TimedShelved",
            "OneShotShelved",
            "Unshelved",
            "TimedShelved",
            "Unshelved",
        ]
        status = adapter.status()
        assert (status["alarm_shelves"], status["alarm_unshelves"]) == (3, 2)


async def test_a_shelve_is_kept_across_a_restart(simulator: Simulator, tmp_path: Path) -> None:
    server = USERS + "\n    alarms: {max_time_shelved: 7200}"
    async with serving(simulator, tmp_path, server) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        assert await shelve(operator, raised, "TimedShelve", ms=3_600_000) == "Good"
        _, shelved = await operator.alarms(2)
    until = json.loads(alarm_file("opcua").read_text())["devices"]["pump"]["unshelve_at"]
    assert 3590 < until - time.time() <= 3600

    async with serving(simulator, tmp_path, server) as (adapter, operator, route):
        (kept,) = await refreshed(operator)
        assert kept["EventId"] == shelved["EventId"]
        assert shelving(kept) == ("TimedShelved", True)
        assert adapter.status()["alarms_shelved"] == 1
        await adapter.send(event_message(False, 1.0, T0 + 1), route)  # still hidden
        assert adapter.status()["alarm_events_suppressed"] == 1
        assert await shelve(operator, kept, "TimedShelve", ms=1000.0) == (
            "BadConditionAlreadyShelved"
        )
        assert await shelve(operator, kept, "Unshelve") == "Good"
        *_, unshelved = await operator.alarms(2)
        assert shelving(unshelved) == ("Unshelved", False)
        assert state(unshelved) == (False, False, True)  # cleared while shelved, unacked


async def test_a_shelve_that_ended_while_the_gateway_was_stopped_ends_at_the_start(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    path = alarm_file("opcua")
    now = time.time()
    record = replace(
        kept_alarm(),
        active=True,
        acked=False,
        shelving="TimedShelved",
        shelving_transition="UnshelvedToTimedShelved",
        shelving_at=now - 600,
        unshelve_at=now - 60,
    )
    AlarmFile(path, "opcua").save({"pump": record})
    async with serving(simulator, tmp_path, SHELVING) as (adapter, operator, route):
        (kept,) = await refreshed(operator)
        assert kept["EventId"] != record.event_id  # a new event: the shelve ended
        assert shelving(kept) == ("Unshelved", False) and state(kept) == (True, False, True)
        assert kept["Message"] == (
            "pump: anomaly alarm unshelved: its shelving ended while stopped"
        )
        status = adapter.status()
        assert (status["alarms_shelved"], status["alarm_unshelves"]) == (0, 1)
        await adapter.send(event_message(False, 1.0, T0 + 1), route)
        *_, cleared = await operator.alarms(2)  # sent: no longer shelved
        assert state(cleared) == (False, False, True)
    assert json.loads(path.read_text())["devices"]["pump"]["shelving"] == "Unshelved"
    assert "its shelving ended while stopped" in caplog.text


async def test_a_kept_shelve_ends_by_itself_after_the_restart(
    simulator: Simulator, tmp_path: Path
) -> None:
    now = time.time()
    record = replace(
        kept_alarm(),
        shelving="OneShotShelved",
        shelving_transition="UnshelvedToOneShotShelved",
        shelving_at=now - 600,
        unshelve_at=now + 10,  # ends while the gateway runs: by its timer
    )
    AlarmFile(alarm_file("opcua"), "opcua").save({"pump": record})
    async with serving(simulator, tmp_path, SHELVING) as (adapter, operator, _):
        await wait_for(lambda: adapter.status()["alarm_unshelves"] == 1, timeout=60)
        *_, ended = await refreshed(operator)  # cleared, unacknowledged: retained
        assert shelving(ended) == ("Unshelved", False)
        assert ended["Message"] == (
            "pump: anomaly alarm unshelved: its longest shelving time (one-shot) ended"
        )


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"shelving": "Forever"}, "field 'shelving': 'Forever'"),
        ({"shelving_transition": "Up"}, "field 'shelving_transition': 'Up'"),
        ({"unshelve_at": "soon"}, "field 'unshelve_at': 'soon'"),
    ],
)
def test_a_kept_shelving_that_makes_no_sense_sets_the_file_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict[str, Any], error: str
) -> None:
    path = alarm_file("opcua", str(tmp_path))
    path.parent.mkdir()
    record = {**asdict(kept_alarm()), **fields}
    path.write_text(json.dumps({"format": 1, "devices": {"pump": record}}))
    with caplog.at_level(logging.WARNING, logger="protocols.opcua.alarmstate"):
        assert AlarmFile(path, "opcua").load() == {}
    assert error in caplog.text and path.with_name("opcua.json.bad").exists()


def test_a_file_from_before_shelving_loads_unshelved(tmp_path: Path) -> None:
    path = alarm_file("opcua", str(tmp_path))
    path.parent.mkdir()
    record = asdict(kept_alarm())
    for name in ("shelving", "shelving_transition", "shelving_at", "unshelve_at"):
        del record[name]
    path.write_text(json.dumps({"format": 1, "devices": {"pump": record}}))
    assert AlarmFile(path, "opcua").load() == {"pump": kept_alarm()}
