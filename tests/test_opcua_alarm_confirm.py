"""Two-step anomaly alarms (Part 9 Confirm, with the server's ``alarms: {confirm: true}``) and
alarm states that outlive a restart (`protocols.opcua.alarmstate`), judged by node-opcua's
client (tests/interop/node/opcua_events.js: its own ``confirmCondition`` and
``acknowledgeCondition``, and ConditionRefresh).

As in tests/test_opcua_alarm_ack.py the server is sent what the anomaly stage sends it (a raise
or clear EVENT, scored telemetry); a restart is the in-process gateway stopped and started
again on the same state folder (the autouse ``_own_state_dir``)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from test_opcua_alarm_ack import SCORED_ONLY, USERS, Operator, serving, state
from test_opcua_anomaly_events import REFRESH_MARKERS, event_message, gateway_for, scored

from protocols.modbus.simulator import Simulator
from protocols.opcua.alarms import Alarms, DeviceAlarm
from protocols.opcua.alarmstate import AlarmFile, KeptAlarm, alarm_file

CONFIRMING = USERS + "\n    alarms: {confirm: true}"
T0 = 1_700_000_000.0


def states(event: dict[str, Any]) -> tuple[bool, bool, bool, bool]:
    """(ActiveState/Id, AckedState/Id, ConfirmedState/Id, Retain) of a node-opcua event."""
    active, acked, retain = state(event)
    return active, acked, event["ConfirmedState.Id"], retain


async def refreshed(operator: Operator) -> list[dict[str, Any]]:
    """The alarm events once a ConditionRefresh has ended (those before it, and its own)."""
    node = operator.node
    markers = sum(e["EventType"] in REFRESH_MARKERS for e in node.events())
    assert await operator.command({"refresh": True}) == "Good"
    await node.wait(
        lambda: sum(e["EventType"] in REFRESH_MARKERS for e in node.events()) == markers + 2
    )
    return node.alarms()


async def test_node_opcua_confirms_an_acknowledged_alarm(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    async with serving(simulator, tmp_path, CONFIRMING) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        # Part 9 B.1.2: a raise has nothing to confirm yet; acknowledged, it has
        assert states(raised) == (True, False, True, True)
        assert raised["ConfirmedState"] == "Confirmed"
        early = await operator.confirm(raised, "early")
        assert early == "BadConditionBranchAlreadyConfirmed"
        assert await operator.ack(raised, "seen") == "Good"
        _, acked = await operator.alarms(2)
        assert states(acked) == (True, True, False, True)
        assert acked["ConfirmedState"] == "Unconfirmed"

        await adapter.send(event_message(False, 1.0, T0 + 1), route)
        *_, cleared = await operator.alarms(3)
        assert states(cleared) == (False, True, False, True)  # unconfirmed: still listed
        assert await operator.confirm(cleared, "x", **{"as": "viewer"}) == "BadUserAccessDenied"
        assert await operator.confirm(raised, "x") == "BadEventIdUnknown"  # older than the ack
        wrong = os.urandom(16).hex()
        assert await operator.confirm(cleared, "x", event_id=wrong) == "BadEventIdUnknown"
        assert adapter.status()["alarm_confirms"] == 0
        assert await operator.confirm(acked, "valve replaced") == "Good"  # the ack's EventId
        *_, confirmed = await operator.alarms(4)
        assert states(confirmed) == (False, True, True, False)  # Retain false: done with
        assert (confirmed["Comment"], confirmed["ClientUserId"], confirmed["Message"]) == (
            "valve replaced",
            "op",
            "pump: anomaly alarm confirmed by op: valve replaced",
        )
        for event in (acked, cleared, confirmed):
            again = await operator.confirm(event, "again")
            assert again == "BadConditionBranchAlreadyConfirmed"
        assert len(await refreshed(operator)) == 4  # nothing retained any more

        # a new occurrence: acknowledged first, then confirmed
        await adapter.send(event_message(True, 9.0, T0 + 2), route)
        *_, second = await operator.alarms(5)
        assert states(second) == (True, False, True, True)
        assert await operator.confirm(second, "") == "BadConditionBranchAlreadyConfirmed"
        assert await operator.ack(second, "") == "Good"
        *_, second_acked = await operator.alarms(6)
        assert states(second_acked) == (True, True, False, True)
        # raised again before anyone confirmed: the new occurrence is acknowledged first
        await adapter.send(event_message(False, 1.0, T0 + 3), route)
        await adapter.send(event_message(True, 9.9, T0 + 4), route)
        *_, third = await operator.alarms(8)
        assert states(third) == (True, False, True, True)
        assert await operator.confirm(second_acked, "") == "BadConditionBranchAlreadyConfirmed"
        assert await operator.ack(third, "") == "Good"
        *_, third_acked = await operator.alarms(9)
        assert await operator.confirm(third_acked, "") == "Good"
        *_, done = await operator.alarms(10)
        assert states(done) == (True, True, True, True)  # confirmed, still active: listed
        status = adapter.status()
        assert (status["alarm_acks"], status["alarm_confirms"]) == (3, 2)
    assert "op confirmed the anomaly alarm of pump (cleared), comment 'valve replaced'" in (
        caplog.text
    )


async def test_an_active_acknowledged_alarm_stays_acknowledged_across_restarts(
    simulator: Simulator, tmp_path: Path
) -> None:
    async with serving(simulator, tmp_path) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        assert await operator.ack(raised, "seen") == "Good"
        _, acked = await operator.alarms(2)

    # the stage goes on with its alarm active: no event, scored messages that say so
    async with serving(simulator, tmp_path) as (adapter, operator, route):
        for n in range(3):
            await adapter.send(scored(True, 8.0, T0 + 10 + n), route)
        (kept,) = await refreshed(operator)  # no raise before the refresh: only the kept event
        assert adapter.status()["alarm_events"] == 0
        assert kept["EventId"] == acked["EventId"] and state(kept) == (True, True, True)
        assert (kept["Comment"], kept["ClientUserId"], kept["Time"]) == (
            "seen",
            "op",
            acked["Time"],
        )
        assert kept["Message"] == acked["Message"]
        assert await operator.ack(kept, "again") == "BadConditionBranchAlreadyAcked"

    # and again, the stage's calibration lost: scored normal, with no clear event of its own
    async with serving(simulator, tmp_path) as (adapter, operator, route):
        for n in range(2):
            await adapter.send(scored(False, 1.0, T0 + 20 + n), route)
        (cleared,) = await operator.alarms(1)
        assert state(cleared) == (False, True, False)
        text = "pump: anomaly alarm cleared while the gateway was stopped (score 1)"
        assert cleared["Message"] == text


async def test_a_cleared_unacknowledged_alarm_survives_a_restart_until_acknowledged(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.opcua.alarms")
    async with serving(simulator, tmp_path) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        await adapter.send(event_message(False, 1.0, T0 + 1), route)
        _, cleared = await operator.alarms(2)

    async with serving(simulator, tmp_path) as (adapter, operator, _):
        (kept,) = await refreshed(operator)
        assert kept["EventId"] == cleared["EventId"] and state(kept) == (False, False, True)
        assert kept["Message"] == "pump: anomaly cleared (score 1, threshold 3)"
        assert await operator.ack(kept, "seen after the restart") == "Good"
        _, acked = await operator.alarms(2)
        assert state(acked) == (False, True, False)  # acknowledged and cleared: gone
        assert adapter.status()["alarm_acks"] == 1
    assert "the anomaly alarm of pump is kept from before the restart (cleared, unack" in (
        caplog.text
    )

    async with serving(simulator, tmp_path) as (_, operator, _):
        assert await refreshed(operator) == []


async def acknowledged_and_cleared(simulator: Simulator, tmp_path: Path) -> dict[str, Any]:
    """A gateway run with ``confirm`` in which the alarm rose, was acknowledged and cleared,
    unconfirmed; its clear event."""
    async with serving(simulator, tmp_path, CONFIRMING) as (adapter, operator, route):
        await adapter.send(event_message(True, 9.5, T0), route)
        (raised,) = await operator.alarms(1)
        assert await operator.ack(raised, "seen") == "Good"
        await adapter.send(event_message(False, 1.0, T0 + 1), route)
        *_, cleared = await operator.alarms(3)
    return cleared


async def test_an_unconfirmed_alarm_survives_a_restart_until_confirmed(
    simulator: Simulator, tmp_path: Path
) -> None:
    cleared = await acknowledged_and_cleared(simulator, tmp_path)

    async with serving(simulator, tmp_path, CONFIRMING) as (adapter, operator, _):
        (kept,) = await refreshed(operator)
        assert kept["EventId"] == cleared["EventId"]
        assert states(kept) == (False, True, False, True)
        assert await operator.ack(kept, "") == "BadConditionBranchAlreadyAcked"
        assert await operator.confirm(kept, "fixed") == "Good"
        _, confirmed = await operator.alarms(2)
        assert states(confirmed) == (False, True, True, False)


async def test_an_unconfirmed_alarm_is_done_with_once_confirm_is_turned_off(
    simulator: Simulator, tmp_path: Path
) -> None:
    await acknowledged_and_cleared(simulator, tmp_path)
    # acknowledged and cleared: nothing could confirm it now, so nothing keeps it listed
    async with serving(simulator, tmp_path) as (_, operator, _):
        assert await refreshed(operator) == []


@pytest.mark.parametrize(
    "damage",
    ["{not json", json.dumps({"format": 1, "devices": {"pump": {"active": "yes"}}})],
    ids=["not-json", "bad-record"],
)
async def test_a_damaged_state_file_is_set_aside(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    caplog.set_level(logging.WARNING, logger="protocols.opcua.alarmstate")
    path = alarm_file("opcua")
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    async with gateway_for(simulator, tmp_path, SCORED_ONLY, server=USERS) as (gateway, adapter, _):
        assert path.with_name("opcua.json.bad").read_text() == damage
        assert f"{path}: cannot read the alarm state" in caplog.text
        assert "alarms start afresh" in caplog.text
        await adapter.send(event_message(True, 9.5, T0), gateway.bridges[0].config.route)
        assert adapter.status()["alarm_events"] == 1
        kept = json.loads(path.read_text())["devices"]["pump"]  # a new file, the alarm in it
        assert (kept["active"], kept["acked"]) == (True, False)


async def test_the_kept_alarms_of_devices_not_served_now_stay_in_the_file(tmp_path: Path) -> None:
    path = alarm_file("opcua", str(tmp_path))
    path.parent.mkdir()
    tank = kept_alarm()
    path.write_text(json.dumps({"format": 1, "devices": {"tank": asdict(tank)}}))
    alarms = Alarms("opcua", ua.NodeId(ua.ObjectIds.Server), state=AlarmFile(path, "opcua"))
    pump = DeviceAlarm("pump", ua.NodeId("Plant/pump", 2), "pump", ua.NodeId("pump#anomaly", 2))
    assert alarms.add("route", pump)
    alarms.restore()  # tank: no such device on this server (a bridge taken out for a while)
    await alarms.event(pump, event_message(True, 9.5, T0))
    kept = AlarmFile(path, "opcua").load()
    assert kept["tank"] == tank and kept["pump"].active is True


def kept_alarm() -> KeptAlarm:
    return KeptAlarm(
        active=False,
        active_at=T0,
        acked=True,
        acked_at=T0 + 1,
        confirmed=False,
        confirmed_at=T0 + 1,
        comment="seen",
        comment_locale="en",
        comment_at=T0 + 1,
        client_user="op",
        event_id="00ff",
        time=T0 + 2,
        message="pump: anomaly cleared",
        last_severity=700,
        ackable=[],
        confirmable=["00ff"],
        recent=["01", "00ff"],
    )


def test_a_state_that_cannot_be_written_is_kept_in_memory_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "alarms"
    blocker.write_text("a file where the folder should be")  # as a full disk: OSError
    state = AlarmFile(alarm_file("opcua", str(tmp_path)), "opcua")
    record = {"pump": kept_alarm()}
    with caplog.at_level(logging.WARNING, logger="protocols.opcua.alarmstate"):
        assert state.save(record) is False
        assert state.save(record) is False
        assert caplog.text.count("cannot write") == 1
        blocker.unlink()
        assert state.save(record) is True
        assert "works again after 2 failures" in caplog.text
    assert state.load() == record
    assert state.path.stat().st_mode & 0o007 == 0  # acknowledging users' names: not for all
