"""Anomaly alarms for OPC UA clients: two variables and an alarm condition per device.

A bridge with ``anomaly:`` sends its target the scored telemetry (``meta["anomaly"]``,
``meta["anomaly_score"]``) and, when a device's alarm rises or clears, an EVENT message
(`gateway.anomaly.stage`). On an OPC UA server each device of such a bridge gets:

- ``<device>.anomaly`` (Boolean, alarm active) and ``<device>.anomaly_score`` (Double), updated
  from every scored message, so a client that polls or monitors values sees the alarm too;
  before the first scored message (the device still calibrates, or goes on from a kept
  calibration and waits for a window of readings) ``anomaly`` is false with
  UncertainInitialValue: no verdict yet, and no alarm either; the score is
  BadWaitingForInitialData, as every variable is before its first value;
- an OffNormalAlarmType event (Part 9) at each rise and clear, fired from the device's object
  (EventNotifier SubscribeToEvents) and from the Server object (a HasNotifier reference to the
  device's object), where most clients subscribe. Both carry the same EventId.

The condition is not an Object in the address space (its ConditionId names no node), which
Part 9 allows: its methods are called with the ConditionId as the ObjectId and the type's
method as the MethodId (node-opcua's ``acknowledgeCondition`` does so when the condition has no
``Acknowledge`` child; asyncua's ``call_method`` with the NodeId). Served (`Alarms.call`):

- Acknowledge (AcknowledgeableConditionType, i=9111) with (EventId, Comment). Each raise sets
  AckedState false; the EventId of that raise or of any later event acknowledges it (an older
  one answers BadEventIdUnknown: the operator acknowledges what they saw, not a raise that
  came after), a known EventId of an acknowledged alarm BadConditionBranchAlreadyAcked, a user
  who may not write BadUserAccessDenied. An acknowledgement sets the Comment and ClientUserId
  and fires a new event (new EventId).
- AddComment (ConditionType, i=9029) with (EventId, Comment): any recent EventId of the
  condition; a new event with the Comment.
- Confirm (AcknowledgeableConditionType, i=9113) with (EventId, Comment), only with the
  server's ``alarms: {confirm: true}``. As in Part 9's example of a server that keeps the
  current state only (Annex B.1.2), ConfirmedState goes false when the alarm is acknowledged
  (active or not) and true again when it is confirmed; a raise leaves it true (the new
  occurrence is acknowledged first). The EventId of the acknowledgement or of any later event
  confirms it; an EventId of the condition while there is nothing to confirm (before the
  acknowledgement, or after the Confirm) answers BadConditionBranchAlreadyConfirmed, Part 9's
  "the EventId does not refer to a state that needs confirmation" (there is no "not acked"
  code); an older or unknown one BadEventIdUnknown, a user who may not write
  BadUserAccessDenied. Without the option Confirm answers BadMethodInvalid and ConfirmedState
  is left out of the events (null): a condition without it needs no confirmation.

- Shelving (Part 9, 5.8.10; rules and codes in `protocols.opcua.shelving`): TimedShelve
  (ShelvingTime, ms), OneShotShelve and Unshelve, the ShelvedStateMachineType's methods (or
  AlarmConditionType's ShelvingState's) called on the ConditionId, as Part 9 lets clients do
  where a server exposes no condition instance; write access needed (BadUserAccessDenied).
  Each shelve and unshelve fires an event. While shelved the alarm's raises and clears are
  tracked (ActiveState, and a raise still sets AckedState false: shelving does not change
  acknowledgement, so a raise while shelved waits to be acknowledged once unshelved) and
  become its latest event, which ConditionRefresh sends with SuppressedOrShelved true, but
  they are not sent (counted: ``alarm_events_suppressed``); events of what operators do
  (Acknowledge, AddComment, Confirm) are sent. A timed shelve ends by itself at its
  UnshelveTime, a one-shot one when the alarm next clears (that clear is sent, unshelved) or
  at the latest after ``max_time_shelved``: an event says so. The ``<device>.anomaly``
  variable is process data, not a notification: it follows the alarm, shelved or not.
  Events carry ShelvingState/CurrentState (and its Id), LastTransition, UnshelveTime (the ms
  left when the event was made), SuppressedOrShelved and MaxTimeShelved.

Enable/Disable are not served (BadMethodInvalid). Retain is true while the alarm is active,
unacknowledged, (with ``confirm``) unconfirmed or shelved, so a cleared alarm nobody
acknowledged stays in the alarm list, and a client that connects later sees what is shelved.
ConditionRefresh and ConditionRefresh2 send the retained conditions (their latest event, same
EventId) again to the caller's subscription between a RefreshStartEvent and a RefreshEndEvent
(asyncua has both methods, but binds them only when asked to, and keeps only one copy of each
condition).

Each condition's latest state is kept across a restart (`protocols.opcua.alarmstate`,
``{state}/alarms/<endpoint>.json``): an alarm still active and acknowledged stays acknowledged
(no new raise), one that cleared unacknowledged (or unconfirmed) is still in the alarm list, and
ConditionRefresh sends the event clients saw last, with its EventId, which Acknowledge and
Confirm still take; a shelve goes on until it would have ended, and one that ended while the
gateway was stopped ends at the start (a new latest event, which ConditionRefresh sends).
Nothing is fired at the start: no client is subscribed yet, and a client that connects calls
ConditionRefresh.

A stage that restarts with an active alarm kept (`gateway.anomaly.store`) sends no event for
it; its first scored message says ``meta["anomaly"]`` true. If that differs from what clients
were told last (nothing, or a clear: the alarm state was not kept) and no EVENT follows that
message (the bridge sends a transition's event right after the message that caused it), the
next scored message fires the raise event, so that clients and ConditionRefresh know the
alarm; the other way round (told active, scored normal with no clear from the stage, whose
calibrations were lost), it fires the clear.

asyncua evaluates a where clause's OfType as "exactly this type": a client that filters on
``OfType BaseEventType`` or ``AlarmConditionType`` (a generic alarm view does) would get
nothing from an OffNormalAlarmType. `install` replaces asyncua's evaluator with one that
accepts subtypes too, as Part 4 says, and lets a refresh's RefreshStart and RefreshEnd
through any where clause (for every asyncua server of the process, like the server's
`_Processor`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from asyncua import ua
from asyncua.common import event_objects
from asyncua.common.events import Event
from asyncua.server import monitored_item_service
from asyncua.server.address_space import AddressSpace, AttributeValue
from asyncua.server.subscription_service import SubscriptionService
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from gateway.anomaly.verdict import ALARM_POINT, SCORE_POINT, verdict
from gateway.conditions import ACKNOWLEDGE, ADD_COMMENT, CONFIRM
from gateway.types import Message
from protocols.opcua.alarmstate import AlarmFile, KeptAlarm, alarm_file, moment, seconds
from protocols.opcua.config import AlarmOptions
from protocols.opcua.events import CONDITION_METHOD_IDS
from protocols.opcua.shelving import METHODS as SHELVING_METHODS
from protocols.opcua.shelving import (
    ONE_SHOT,
    ONE_SHOT_SHELVE,
    TIMED,
    UNSHELVE,
    UNSHELVED,
    Refusal,
    Shelving,
)

log = logging.getLogger(__name__)

ALARM_VARIABLE = ALARM_POINT  # `gateway.anomaly.verdict`: no numpy imported here
SCORE_VARIABLE = SCORE_POINT
CONDITION_NAME = "anomaly"
SEVERITY_RAISED = 700  # Part 5's "high" band (701-1000 is reserved for safety alarms)
SEVERITY_CLEARED = 100
REFRESH_METHODS = (
    ObjectIds.ConditionType_ConditionRefresh,
    ObjectIds.ConditionType_ConditionRefresh2,
)
RECENT_EVENTS = 32  # EventIds of a condition still known to its methods
COMMENT_MAX = 1000  # characters of an operator's comment
VT = ua.VariantType
# asyncua's generated event classes are not annotated: made through these, they are Any.
_OFF_NORMAL: Callable[..., Any] = event_objects.OffNormalAlarm
_REFRESH_START: Callable[..., Any] = event_objects.RefreshStartEvent
_REFRESH_END: Callable[..., Any] = event_objects.RefreshEndEvent


_BUILT_IN = {"NormalState": VT.NodeId}  # else a time: TransitionTime


def _node_id(identifier: int | str) -> ua.NodeId:
    return ua.NodeId(cast("ua.Int32 | ua.String", identifier))


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _dv(value: Any, vtype: ua.VariantType, code: int, ts: float | None) -> ua.DataValue:
    now = cast("ua.DateTime", datetime.now(UTC))
    source = cast("ua.DateTime", _dt(ts)) if ts else now
    return ua.DataValue(
        ua.Variant(value, vtype), ua.StatusCode(cast("ua.UInt32", code)), source, now
    )


async def _set(attr: AttributeValue | None, dv: ua.DataValue) -> None:
    """Set a variable's value and tell its monitored items (as the server's `send` does)."""
    if attr is None:
        return
    attr.value = dv
    for handle, callback in list(attr.datachange_callbacks.items()):
        await callback(handle, dv)


@dataclass(slots=True)
class DeviceAlarm:
    """One device's alarm: its nodes and what clients were told."""

    device: str
    source: ua.NodeId  # the device's object: the events' SourceNode
    source_name: str
    condition: ua.NodeId  # the ConditionId (no node: see the module docstring)
    active_attr: AttributeValue | None = None  # None: a bridged point has the name
    score_attr: AttributeValue | None = None
    input_node: ua.NodeId | None = None
    active: bool | None = None  # the variable's value; None: no scored message yet
    announced: bool | None = None  # the ActiveState of the last event fired
    restored: bool = False  # active at the first scored message, no event yet
    severity: int = SEVERITY_CLEARED
    retained: list[Event] = field(default_factory=list)  # the latest event's, while Retain
    last: Any = None  # the latest event (an asyncua Event), retained or not
    active_at: datetime | None = None  # ActiveState/TransitionTime
    acked: bool = True  # AckedState: false from each raise until acknowledged
    acked_at: datetime | None = None
    confirming: bool = False  # the server's ``alarms: {confirm: true}``
    confirmed: bool = True  # ConfirmedState: false from each acknowledgement until confirmed
    confirmed_at: datetime | None = None
    comment: ua.LocalizedText = field(default_factory=lambda: ua.LocalizedText(""))
    comment_at: datetime | None = None
    client_user: str = ""  # who wrote the comment
    # EventIds that acknowledge it now (its latest raise's and later), that confirm it now
    # (its acknowledgement's and later), and all recent ones
    ackable: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    confirmable: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    shelving: Shelving = field(default_factory=Shelving)
    unshelving: asyncio.Task[None] | None = None  # ends a shelve at its ``until``

    @property
    def retain(self) -> bool:
        """Part 9's Retain: the alarm list keeps it while active, unacknowledged,
        unconfirmed or shelved (a client that connects later sees what is shelved, till when)."""
        return bool(self.announced) or not self.acked or not self.confirmed or self.shelving.shelved

    def answer(self, method: str, event_id: bytes) -> int:
        """The status of calling ``method`` (`ACKNOWLEDGE`, `CONFIRM`, `ADD_COMMENT`) with
        ``event_id``."""
        if method == ADD_COMMENT:
            return StatusCodes.Good if event_id in self.recent else StatusCodes.BadEventIdUnknown
        if method == CONFIRM:
            done, now, already = self.confirmed, self.confirmable, _ALREADY_CONFIRMED
        else:
            done, now, already = self.acked, self.ackable, _ALREADY_ACKED
        if event_id in now:
            return StatusCodes.Good
        if done and event_id in self.recent:
            return already
        return StatusCodes.BadEventIdUnknown

    def keep(self) -> KeptAlarm | None:
        """What a restart needs of it (`protocols.opcua.alarmstate`); None before its first
        event."""
        latest = self.last
        if latest is None:
            return None
        return KeptAlarm(
            active=bool(self.announced),  # None: shelved before its first raise
            active_at=seconds(self.active_at),
            acked=self.acked,
            acked_at=seconds(self.acked_at),
            confirmed=self.confirmed,
            confirmed_at=seconds(self.confirmed_at),
            comment=self.comment.Text or "",
            comment_locale=self.comment.Locale or "",
            comment_at=seconds(self.comment_at),
            client_user=self.client_user,
            event_id=latest.EventId.hex(),
            time=latest.Time.timestamp(),
            message=latest.Message.Text or "",
            last_severity=latest.LastSeverity,
            ackable=[e.hex() for e in self.ackable],
            confirmable=[e.hex() for e in self.confirmable],
            recent=[e.hex() for e in self.recent],
            shelving=self.shelving.state,
            shelving_transition=self.shelving.transition,
            shelving_at=seconds(self.shelving.at),
            unshelve_at=seconds(self.shelving.until),
        )

    def restore(self, kept: KeptAlarm) -> None:
        """Take the state ``kept`` before the restart (the latest event is rebuilt by
        `Alarms.restore`)."""
        self.announced, self.active_at = kept.active, moment(kept.active_at)
        self.acked, self.acked_at = kept.acked, moment(kept.acked_at)
        # kept unconfirmed, but confirm is off now: nothing can confirm it, so nothing waits
        self.confirmed = kept.confirmed or not self.confirming
        self.confirmed_at = moment(kept.confirmed_at)
        self.comment = ua.LocalizedText(kept.comment, kept.comment_locale or None)
        self.comment_at, self.client_user = moment(kept.comment_at), kept.client_user
        self.severity = kept.last_severity
        self.ackable.extend(bytes.fromhex(e) for e in kept.ackable)
        self.confirmable.extend(bytes.fromhex(e) for e in kept.confirmable if self.confirming)
        self.recent.extend(bytes.fromhex(e) for e in kept.recent)
        self.shelving = Shelving(
            kept.shelving, kept.shelving_transition, moment(kept.shelving_at), None
        )
        self.shelving.until = moment(kept.unshelve_at) if self.shelving.shelved else None


class Alarms:
    """The alarms of one OPC UA server: id(route) -> device -> `DeviceAlarm`."""

    def __init__(
        self,
        name: str,
        server_object: ua.NodeId,
        options: AlarmOptions | None = None,
        state: AlarmFile | None = None,
    ) -> None:
        self.name = name
        self.server_object = server_object
        self.options = options if options is not None else AlarmOptions()
        self.state = state if state is not None else AlarmFile(alarm_file(name), name)
        self.devices: dict[int, dict[str, DeviceAlarm]] = {}
        self.conditions: dict[ua.NodeId, DeviceAlarm] = {}
        self.subscriptions: SubscriptionService | None = None
        self.others: dict[str, KeptAlarm] = {}  # kept alarms of devices not served now
        self.events = 0
        self.acks = 0
        self.confirms = 0
        self.shelves = 0
        self.unshelves = 0
        self.suppressed = 0  # events of raises and clears not sent: the alarm was shelved
        self.most_ms = self.options.max_time_shelved * 1000  # MaxTimeShelved

    def add(self, route: object, alarm: DeviceAlarm) -> bool:
        """Keep ``alarm`` for the messages of ``route``; False if its device has one already
        (an earlier bridge's)."""
        if any(alarm.device in devices for devices in self.devices.values()):
            return False
        alarm.confirming = self.options.confirm
        self.devices.setdefault(id(route), {})[alarm.device] = alarm
        self.conditions[alarm.condition] = alarm
        return True

    def find(self, route: object, device: str) -> DeviceAlarm | None:
        devices = self.devices.get(id(route))
        return devices.get(device) if devices is not None else None

    def start(self, subscriptions: SubscriptionService, aspace: AddressSpace) -> None:
        """Serve the events through ``subscriptions``, bind ConditionRefresh, and take the
        alarms' state from before the restart."""
        self.subscriptions = subscriptions
        for method in REFRESH_METHODS:
            aspace.add_method_callback(_node_id(method), self.condition_refresh)
        self.restore()

    def restore(self) -> None:
        """Each alarm as it was before the restart (`protocols.opcua.alarmstate`); the kept
        state of a device no longer served stays in the file."""
        kept = self.state.load()
        served = {a.device: a for devices in self.devices.values() for a in devices.values()}
        for device, record in kept.items():
            alarm = served.get(device)
            if alarm is None:
                self.others[device] = record
                continue
            alarm.restore(record)
            at = datetime.fromtimestamp(record.time, UTC)
            event = self._event(alarm, record.message, at)
            event.EventId, event.ReceiveTime = bytes.fromhex(record.event_id), at
            alarm.severity = event.Severity
            self._latest(alarm, event)
            self._restore_shelving(alarm)
            if alarm.retain:
                log.info(
                    "%s: the anomaly alarm of %s is kept from before the restart (%s, %s%s)",
                    self.name,
                    device,
                    "active" if alarm.announced else "cleared",
                    "acknowledged" if alarm.acked else "unacknowledged",
                    "" if alarm.confirmed else ", unconfirmed",
                )
        if self.others:
            log.info(
                "%s: the alarm state keeps alarms of devices this server does not serve now"
                " (%s): kept as they are",
                self.name,
                ", ".join(sorted(self.others)),
            )

    def _restore_shelving(self, alarm: DeviceAlarm) -> None:
        """A kept shelve goes on until it would have ended; one that ended while the gateway
        was stopped ends now, with a new latest event (sent to nobody: no client is
        subscribed yet; ConditionRefresh sends it)."""
        shelving = alarm.shelving
        if not shelving.shelved:
            return
        now = datetime.now(UTC)
        if shelving.until is not None and shelving.until > now:
            log.info(
                "%s: the anomaly alarm of %s stays shelved (%s) until %s, as before the restart",
                self.name,
                alarm.device,
                shelving.state,
                shelving.until.isoformat(timespec="seconds"),
            )
            self._unshelve_at(alarm)
            return
        shelving.end(UNSHELVED, now)
        self.unshelves += 1
        text = f"{alarm.device}: anomaly alarm unshelved: its shelving ended while stopped"
        log.info("%s: %s", self.name, text)
        self._record(alarm, text, now)
        self.save()

    def close(self) -> None:
        """Stop the timers of shelved alarms (the server stops; their ends are kept)."""
        for devices in self.devices.values():
            for alarm in devices.values():
                if alarm.unshelving is not None:
                    alarm.unshelving.cancel()
                    alarm.unshelving = None

    def save(self) -> None:
        kept = dict(self.others)
        for devices in self.devices.values():
            for alarm in devices.values():
                if (record := alarm.keep()) is not None:
                    kept[alarm.device] = record
        self.state.save(kept)

    # -- messages

    async def scored(self, alarm: DeviceAlarm, message: Message) -> None:
        """A scored telemetry message: the variables, and a kept alarm announced (see the
        module docstring)."""
        found = verdict(message)
        if found is None:
            return
        active, score, ts = found.active, found.score, found.ts
        if score is not None:
            await _set(alarm.score_attr, _dv(score, VT.Double, StatusCodes.Good, ts))
        if active is None:
            return
        if alarm.restored:  # no event followed the message that said so: announce it now
            alarm.restored = False
            now_active = bool(alarm.active)
            if bool(alarm.announced) != now_active:
                why = (
                    "active since before the gateway restarted"
                    if now_active
                    else "cleared while the gateway was stopped"
                )
                text = f"{alarm.device}: anomaly alarm {why} (score {_g(score)})"
                await self._fire(alarm, now_active, text, ts)
        if alarm.active is None and active != bool(alarm.announced):
            alarm.restored = True
        await self._active(alarm, active, ts)

    async def event(self, alarm: DeviceAlarm, message: Message) -> None:
        """An ``event/<device>/anomaly`` message: the alarm rose or cleared."""
        found = verdict(message)
        if found is None or not found.event or found.active is None:
            return
        raised, score, ts, threshold = found.active, found.score, found.ts, found.threshold
        alarm.restored = False
        if score is not None:
            await _set(alarm.score_attr, _dv(score, VT.Double, StatusCodes.Good, ts))
        await self._active(alarm, raised, ts)
        if raised:
            text = f"{alarm.device}: anomaly score {_g(score)} over threshold {_g(threshold)}"
        else:
            text = f"{alarm.device}: anomaly cleared (score {_g(score)}, threshold {_g(threshold)})"
        await self._fire(alarm, raised, text, ts)

    async def _active(self, alarm: DeviceAlarm, active: bool, ts: float | None) -> None:
        if alarm.active is active:
            return  # unchanged: its timestamp stays that of the change
        alarm.active = active
        await _set(alarm.active_attr, _dv(active, VT.Boolean, StatusCodes.Good, ts))

    # -- events

    async def _fire(self, alarm: DeviceAlarm, active: bool, text: str, ts: float | None) -> None:
        at = _dt(ts) if ts else datetime.now(UTC)
        if active:  # a new occurrence: unacknowledged, no comment yet, nothing to confirm
            alarm.acked, alarm.acked_at = False, at
            alarm.comment, alarm.comment_at, alarm.client_user = ua.LocalizedText(""), None, ""
            alarm.ackable.clear()
            if not alarm.confirmed:
                alarm.confirmed, alarm.confirmed_at = True, at
            alarm.confirmable.clear()
        alarm.announced, alarm.active_at = active, at
        shelving = alarm.shelving
        if not active and shelving.state == ONE_SHOT:  # Part 9: shelved until it clears
            self._stop_unshelving(alarm)
            shelving.end(UNSHELVED, at)
            self.unshelves += 1
            text += "; its one-shot shelving ended"
            log.info("%s: %s", self.name, text)
        if shelving.shelved:  # tracked, kept for ConditionRefresh, not sent
            self.suppressed += 1
            log.debug("%s: %s (not sent: the alarm is shelved)", self.name, text)
            self._record(alarm, text, at)
            self.save()
            return
        await self._emit(alarm, text, at)

    async def _emit(self, alarm: DeviceAlarm, text: str, at: datetime) -> None:
        """The condition's state as a new event, from the device's object and the Server."""
        copies = self._record(alarm, text, at)
        self.events += 1
        self.save()
        await trigger(self.subscriptions, copies)

    def _record(self, alarm: DeviceAlarm, text: str, at: datetime) -> list[Event]:
        """The condition's state as its new latest event (not sent): its copies."""
        event = self._event(alarm, text, at)
        alarm.recent.append(event.EventId)
        if not alarm.acked:
            alarm.ackable.append(event.EventId)
        if not alarm.confirmed:
            alarm.confirmable.append(event.EventId)
        alarm.severity = event.Severity
        return self._latest(alarm, event)

    def _latest(self, alarm: DeviceAlarm, event: Any) -> list[Event]:
        """``event`` as the condition's latest: its copies from the device's object and the
        Server, retained for ConditionRefresh while Retain."""
        copies = both(event, self.server_object)
        alarm.last = event
        alarm.retained = copies if alarm.retain else []
        return copies

    def _event(self, alarm: DeviceAlarm, text: str, at: datetime) -> Any:
        active = bool(alarm.announced)
        severity = SEVERITY_RAISED if active else SEVERITY_CLEARED
        event = _OFF_NORMAL(alarm.source, text, severity)
        now = datetime.now(UTC)
        event.add_property("NodeId", alarm.condition, VT.NodeId)  # the ConditionId
        event.emitting_node = alarm.source
        fields: dict[str, Any] = {
            "EventId": os.urandom(16),
            "SourceName": alarm.source_name,
            "Time": at,
            "ReceiveTime": now,
            "LocalTime": ua.TimeZoneDataType(
                Offset=cast("ua.Int16", time.localtime(at.timestamp()).tm_gmtoff // 60),
                DaylightSavingInOffset=bool(time.localtime(at.timestamp()).tm_isdst > 0),
            ),
            "ConditionClassId": _node_id(ObjectIds.ProcessConditionClassType),
            "ConditionClassName": ua.LocalizedText("Process"),
            "ConditionName": CONDITION_NAME,
            "BranchId": ua.NodeId(),
            "Retain": alarm.retain,
            "EnabledState": ua.LocalizedText("Enabled"),
            "EnabledState/Id": True,
            "Quality": ua.StatusCode(),
            "LastSeverity": alarm.severity,
            "Comment": alarm.comment,
            "Comment/SourceTimestamp": alarm.comment_at,
            "ClientUserId": alarm.client_user,
            "AckedState": ua.LocalizedText("Acknowledged" if alarm.acked else "Unacknowledged"),
            "AckedState/Id": alarm.acked,
            "AckedState/TransitionTime": alarm.acked_at,
            **(_confirmed_state(alarm) if alarm.confirming else {}),
            "ActiveState": ua.LocalizedText("Active" if active else "Inactive"),
            "ActiveState/Id": active,
            "ActiveState/TransitionTime": alarm.active_at or at,
            "InputNode": alarm.input_node or ua.NodeId(),
            "NormalState": ua.NodeId(),
        }
        set_fields(event, fields)
        for name, (value, vtype) in alarm.shelving.fields(now, self.most_ms).items():
            event.add_property(name, value, vtype)
        return event

    # -- condition methods

    def serves(self, method: ua.CallMethodRequest) -> bool:
        """Whether `call` answers ``method``, called on one of our ConditionIds (no node)."""
        return method.ObjectId in self.conditions

    async def call(
        self, method: ua.CallMethodRequest, user: str, may_write: bool
    ) -> ua.CallMethodResult:
        """A method of a condition (ObjectId: its ConditionId; see the module docstring),
        called by ``user``."""
        alarm = self.conditions[method.ObjectId]
        shelve = SHELVING_METHODS.get(method.MethodId)
        if shelve is not None:
            return await self._shelve(alarm, shelve, method.InputArguments, user, may_write)
        name = CONDITION_METHODS.get(method.MethodId)
        if name is None or (name == CONFIRM and not alarm.confirming):
            return _result(StatusCodes.BadMethodInvalid)
        if not may_write:
            return _result(StatusCodes.BadUserAccessDenied)
        args = arguments(method.InputArguments)
        if isinstance(args, ua.CallMethodResult):
            return args
        event_id, comment = args
        code = alarm.answer(name, event_id)
        if code != StatusCodes.Good:
            log.info(
                "%s: %s by %s on the anomaly alarm of %s refused: %s",
                self.name,
                name,
                user,
                alarm.device,
                ua.StatusCode(cast("ua.UInt32", code)).name,
            )
            return _result(code)
        now = datetime.now(UTC)
        alarm.comment, alarm.comment_at, alarm.client_user = comment, now, user
        said = f": {comment.Text}" if comment.Text else ""
        if name == ACKNOWLEDGE:
            alarm.acked, alarm.acked_at = True, now
            alarm.ackable.clear()
            if alarm.confirming:  # Part 9 B.1.2: acknowledged, "Confirm required"
                alarm.confirmed, alarm.confirmed_at = False, now
                alarm.confirmable.clear()
            self.acks += 1
        elif name == CONFIRM:
            alarm.confirmed, alarm.confirmed_at = True, now
            alarm.confirmable.clear()
            self.confirms += 1
        done = _DONE[name]
        if name == ADD_COMMENT:
            text = f"{alarm.device}: comment by {user}{said}"
        else:
            text = f"{alarm.device}: anomaly alarm {done} by {user}{said}"
        log.info(
            "%s: %s %s the anomaly alarm of %s (%s), comment %r",
            self.name,
            user,
            done,
            alarm.device,
            "active" if alarm.announced else "cleared",
            comment.Text or "",
        )
        await self._emit(alarm, text, now)
        return _result(StatusCodes.Good)

    async def _shelve(
        self,
        alarm: DeviceAlarm,
        method: str,
        args: list[ua.Variant],
        user: str,
        may_write: bool,
    ) -> ua.CallMethodResult:
        """TimedShelve, OneShotShelve or Unshelve (`protocols.opcua.shelving`)."""
        if not may_write:  # as for Acknowledge: the operator changes what others see
            return _result(StatusCodes.BadUserAccessDenied)
        found = alarm.shelving.answer(method, list(args), self.most_ms)
        if isinstance(found, Refusal):
            log.info(
                "%s: %s by %s on the anomaly alarm of %s refused: %s",
                self.name,
                method,
                user,
                alarm.device,
                ua.StatusCode(cast("ua.UInt32", found.code)).name,
            )
            return _result(found.code, found.args)
        now = datetime.now(UTC)
        self._stop_unshelving(alarm)
        alarm.shelving.move(method, now, found)
        if method == UNSHELVE:
            self.unshelves += 1
            text = f"{alarm.device}: anomaly alarm unshelved by {user}"
        else:
            self.shelves += 1
            self._unshelve_at(alarm)
            until = "until it clears, at most " if method == ONE_SHOT_SHELVE else ""
            text = f"{alarm.device}: anomaly alarm shelved by {user} {until}for {found / 1000:g} s"
        log.info("%s: %s", self.name, text)
        await self._emit(alarm, text, now)
        return _result(StatusCodes.Good)

    def _unshelve_at(self, alarm: DeviceAlarm) -> None:
        """End the shelve of ``alarm`` at its ``until`` (wall clock: it may have been kept
        across a restart)."""
        until = alarm.shelving.until
        delay = (until - datetime.now(UTC)).total_seconds() if until is not None else 0.0
        task = asyncio.get_running_loop().create_task(self._expire(alarm, max(delay, 0.0)))
        alarm.unshelving = task

    def _stop_unshelving(self, alarm: DeviceAlarm) -> None:
        task, alarm.unshelving = alarm.unshelving, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _expire(self, alarm: DeviceAlarm, delay: float) -> None:
        await asyncio.sleep(delay)
        alarm.unshelving = None
        shelving = alarm.shelving
        if not shelving.shelved:
            return
        why = "shelving time" if shelving.state == TIMED else "longest shelving time (one-shot)"
        now = datetime.now(UTC)
        shelving.end(UNSHELVED, now)
        self.unshelves += 1
        text = f"{alarm.device}: anomaly alarm unshelved: its {why} ended"
        log.info("%s: %s", self.name, text)
        try:
            await self._emit(alarm, text, now)
        except Exception:  # a task of its own: nobody else would hear of it
            log.exception("%s: the event of %s's unshelving failed", self.name, alarm.device)

    async def condition_refresh(
        self, parent: ua.NodeId, subscription_id: ua.Variant, *rest: ua.Variant
    ) -> ua.StatusCode:
        """ConditionRefresh(SubscriptionId) and ConditionRefresh2(SubscriptionId,
        MonitoredItemId): the active alarms again, between RefreshStart and RefreshEnd."""
        return await refresh(self, self.subscriptions, subscription_id, *rest)

    def sources(self) -> list[ua.NodeId]:
        """The notifiers the conditions' events come from (besides the Server object)."""
        return [a.source for devices in self.devices.values() for a in devices.values()]

    def retained(self) -> list[Event]:
        """The retained conditions' latest events (each copy), for ConditionRefresh."""
        return [
            e for devices in self.devices.values() for a in devices.values() for e in a.retained
        ]

    def status(self) -> dict[str, Any]:
        return {
            "alarm_events": self.events,
            "alarm_acks": self.acks,
            "alarm_confirms": self.confirms,
            "alarm_shelves": self.shelves,
            "alarm_unshelves": self.unshelves,
            "alarm_events_suppressed": self.suppressed,
            "alarms_shelved": sum(
                a.shelving.shelved for devices in self.devices.values() for a in devices.values()
            ),
        }


CONDITION_METHODS = {_node_id(i): name for name, i in CONDITION_METHOD_IDS.items()}
# methods Part 9 calls on a ConditionId (or on the condition's ShelvingState) only
CONDITION_ONLY = frozenset(CONDITION_METHODS) | frozenset(SHELVING_METHODS)
_DONE = {ACKNOWLEDGE: "acknowledged", CONFIRM: "confirmed", ADD_COMMENT: "commented on"}
_ALREADY_ACKED = StatusCodes.BadConditionBranchAlreadyAcked
_ALREADY_CONFIRMED = StatusCodes.BadConditionBranchAlreadyConfirmed


def _confirmed_state(alarm: DeviceAlarm) -> dict[str, Any]:
    """The ConfirmedState fields of an event (with ``alarms: {confirm: true}`` only)."""
    return {
        "ConfirmedState": ua.LocalizedText("Confirmed" if alarm.confirmed else "Unconfirmed"),
        "ConfirmedState/Id": alarm.confirmed,
        "ConfirmedState/TransitionTime": alarm.confirmed_at,
    }


# -- shared with other event sources of a server (`protocols.opcua.served_events`) ----------


class Refreshable(Protocol):
    """What ConditionRefresh sends again: the notifiers below the Server object, and the
    retained conditions' latest events (one copy per notifier, its ``emitting_node``)."""

    server_object: ua.NodeId

    def sources(self) -> list[ua.NodeId]: ...

    def retained(self) -> list[Event]: ...


def both(event: Any, server_object: ua.NodeId) -> list[Event]:
    """``event`` (from its ``emitting_node``) and a copy from the Server object."""
    copies = [event, copy.copy(event)]
    copies[1].emitting_node = server_object
    return copies


def set_fields(event: Any, fields: dict[str, Any]) -> None:
    """Set an asyncua event's fields, with a Variant type for each."""
    for name, value in fields.items():
        setattr(event, name, value)
        # asyncua declares some as their DataType's NodeId (UtcTime), which no Variant takes
        if not isinstance(event.data_types.get(name), ua.VariantType):
            event.data_types[name] = _BUILT_IN.get(name.rpartition("/")[2], VT.DateTime)


async def trigger(subscriptions: SubscriptionService | None, copies: Sequence[Any]) -> None:
    """Fire ``copies`` to every subscription's event items (each on its notifier's)."""
    if subscriptions is None:
        return
    for subscription in list(subscriptions.subscriptions.values()):
        for one in copies:
            await subscription.monitored_item_srv.trigger_event(one)


async def refresh(
    parts: Refreshable | Sequence[Refreshable],
    subscriptions: SubscriptionService | None,
    subscription_id: ua.Variant,
    *rest: ua.Variant,
) -> ua.StatusCode:
    """ConditionRefresh(SubscriptionId) and ConditionRefresh2(SubscriptionId,
    MonitoredItemId) of ``parts``' retained conditions, between RefreshStart and RefreshEnd."""
    parts = [parts] if not isinstance(parts, Sequence) else parts
    sub = subscriptions.subscriptions.get(subscription_id.Value) if subscriptions else None
    if sub is None or not parts:
        return ua.StatusCode(cast("ua.UInt32", StatusCodes.BadSubscriptionIdInvalid))
    items = sub.monitored_item_srv
    mid = rest[0].Value if rest else None
    if mid is not None and mid not in items._monitored_items:
        return ua.StatusCode(cast("ua.UInt32", StatusCodes.BadMonitoredItemIdInvalid))
    server_object = parts[0].server_object
    retained = [e for part in parts for e in part.retained()]
    # each retained copy goes to the items on its own notifier (for ConditionRefresh2,
    # only if the item is one of them: asyncua would send it there whatever it monitors)
    targets: list[Event] = []
    for emitting in (server_object, *(s for part in parts for s in part.sources())):
        targets.append(_marker(ObjectIds.RefreshStartEventType, emitting, server_object))
        targets += [e for e in retained if e.emitting_node == emitting]
        targets.append(_marker(ObjectIds.RefreshEndEventType, emitting, server_object))
    for event in targets:
        watching = items._monitored_events.get(event.emitting_node, [])
        if mid is None:
            await items.trigger_event(event)
        elif mid in watching:
            await items.trigger_event(event, mid)
    return ua.StatusCode()


def _marker(etype: int, emitting: ua.NodeId, server_object: ua.NodeId) -> Any:
    marker = (_REFRESH_START if etype == ObjectIds.RefreshStartEventType else _REFRESH_END)()
    now = datetime.now(UTC)
    marker.emitting_node = emitting
    marker.SourceNode = server_object
    marker.SourceName = "Server"
    marker.EventId = os.urandom(16)
    marker.Time = marker.ReceiveTime = now
    return marker


def _result(code: int, args: Sequence[int] = ()) -> ua.CallMethodResult:
    return ua.CallMethodResult(
        StatusCode=ua.StatusCode(cast("ua.UInt32", code)),
        InputArgumentResults=[ua.StatusCode(cast("ua.UInt32", c)) for c in args],
    )


def arguments(args: list[ua.Variant]) -> tuple[bytes, ua.LocalizedText] | ua.CallMethodResult:
    """(EventId, Comment) of Acknowledge, Confirm and AddComment, or the result that refuses them.
    A comment may be a String or null too (some clients send one)."""
    if len(args) != 2:
        few = len(args) < 2
        return _result(StatusCodes.BadArgumentsMissing if few else StatusCodes.BadTooManyArguments)
    event_id, comment = args[0].Value, args[1].Value
    if event_id is None and args[0].VariantType == VT.ByteString:
        event_id = b""  # a null EventId: one no event has
    if isinstance(comment, str) or comment is None:
        comment = ua.LocalizedText(comment or "")
    checks = [isinstance(event_id, bytes), isinstance(comment, ua.LocalizedText)]
    if not all(checks):
        codes = [StatusCodes.Good if ok else StatusCodes.BadTypeMismatch for ok in checks]
        return _result(StatusCodes.BadInvalidArgument, codes)
    if len(comment.Text or "") > COMMENT_MAX:
        return _result(
            StatusCodes.BadInvalidArgument, [StatusCodes.Good, StatusCodes.BadOutOfRange]
        )
    return bytes(event_id), comment


def _g(x: object) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) else "?"


# -- where clauses: OfType with subtypes ------------------------------------------------------


class _WhereClause(monitored_item_service.WhereClauseEvaluator):
    """asyncua's where clause, with OfType true for the type's subtypes too (Part 4, 7.7.3),
    and a ConditionRefresh's RefreshStart and RefreshEnd let through whatever it says (Part 9
    delivers them to every monitored item that receives the refreshed conditions)."""

    def eval(self, event: Any) -> bool:
        if event.EventType in _MARKERS:
            return True
        return bool(super().eval(event))

    def _eval_el(self, index: int, event: Any) -> Any:
        el = self.elements[index]
        if el.FilterOperator != ua.FilterOperator.OfType:
            return super()._eval_el(index, event)
        wanted = self._eval_op(el.FilterOperands[0], event)
        return is_subtype(self._aspace, event.EventType, wanted)


_HAS_SUBTYPE = _node_id(ObjectIds.HasSubtype)
_MARKERS = frozenset(
    _node_id(t) for t in (ObjectIds.RefreshStartEventType, ObjectIds.RefreshEndEventType)
)
_SUPERTYPES: dict[ua.NodeId, tuple[ua.NodeId, ...]] = {}  # types do not change at run time


def is_subtype(aspace: AddressSpace, etype: ua.NodeId, wanted: object) -> bool:
    """Whether ``etype`` is ``wanted`` or one of its subtypes."""
    if etype == wanted:
        return True
    chain = _SUPERTYPES.get(etype)
    if chain is None:
        found: list[ua.NodeId] = []
        node = aspace.get(etype)
        while node is not None and len(found) < 32:
            parent = next(
                (
                    r.NodeId
                    for r in node.references
                    if r.ReferenceTypeId == _HAS_SUBTYPE and not r.IsForward
                ),
                None,
            )
            if parent is None:
                break
            found.append(parent)
            node = aspace.get(parent)
        chain = _SUPERTYPES[etype] = tuple(found)
    return wanted in chain


def install(subscriptions: SubscriptionService | None = None) -> None:
    """Subtype-aware where clauses for the event monitored items made from now on, and for
    those of ``subscriptions`` made before (a server that finds out late that it serves
    events)."""
    monitored_item_service.WhereClauseEvaluator = _WhereClause  # type: ignore[misc]
    for subscription in list(subscriptions.subscriptions.values()) if subscriptions else ():
        for item in subscription.monitored_item_srv._monitored_items.values():
            old = item.where_clause_evaluator
            if old is not None and type(old) is not _WhereClause:
                item.where_clause_evaluator = _WhereClause(
                    old.logger, old._aspace, ua.ContentFilter(Elements=old.elements)
                )
