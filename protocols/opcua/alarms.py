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
Part 9 allows. It needs no acknowledgement (AckedState true): the alarm follows the scorer and
clears itself; Acknowledge, Confirm, shelving and the other condition methods are not served.
ConditionRefresh and ConditionRefresh2 are: the active alarms are sent again to the caller's
subscription between a RefreshStartEvent and a RefreshEndEvent (asyncua has both methods, but
binds them only when asked to, and keeps only one copy of each condition). Retain is true while
the alarm is active.

A stage that restarts with an active alarm kept (`gateway.anomaly.store`) sends no event for
it; its first scored message says ``meta["anomaly"]`` true. If no EVENT follows that message
(the bridge sends a transition's event right after the message that caused it), the next scored
message fires the raise event, so that clients and ConditionRefresh know the alarm.

asyncua evaluates a where clause's OfType as "exactly this type": a client that filters on
``OfType BaseEventType`` or ``AlarmConditionType`` (a generic alarm view does) would get
nothing from an OffNormalAlarmType. `install` replaces asyncua's evaluator with one that
accepts subtypes too, as Part 4 says, and lets a refresh's RefreshStart and RefreshEnd
through any where clause (for every asyncua server of the process, like the server's
`_Processor`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua
from asyncua.common import event_objects
from asyncua.common.events import Event
from asyncua.server import monitored_item_service
from asyncua.server.address_space import AddressSpace, AttributeValue
from asyncua.server.subscription_service import SubscriptionService
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from gateway.anomaly.verdict import ALARM_POINT, SCORE_POINT, verdict
from gateway.types import Message

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
    retained: list[Event] = field(default_factory=list)  # the active alarm's copies


class Alarms:
    """The alarms of one OPC UA server: id(route) -> device -> `DeviceAlarm`."""

    def __init__(self, name: str, server_object: ua.NodeId) -> None:
        self.name = name
        self.server_object = server_object
        self.devices: dict[int, dict[str, DeviceAlarm]] = {}
        self.subscriptions: SubscriptionService | None = None
        self.events = 0

    def add(self, route: object, alarm: DeviceAlarm) -> bool:
        """Keep ``alarm`` for the messages of ``route``; False if its device has one already
        (an earlier bridge's)."""
        if any(alarm.device in devices for devices in self.devices.values()):
            return False
        self.devices.setdefault(id(route), {})[alarm.device] = alarm
        return True

    def find(self, route: object, device: str) -> DeviceAlarm | None:
        devices = self.devices.get(id(route))
        return devices.get(device) if devices is not None else None

    def start(self, subscriptions: SubscriptionService, aspace: AddressSpace) -> None:
        """Serve the events through ``subscriptions`` and bind ConditionRefresh."""
        self.subscriptions = subscriptions
        for method in REFRESH_METHODS:
            aspace.add_method_callback(_node_id(method), self.condition_refresh)

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
            if alarm.announced is None and alarm.active:
                text = (
                    f"{alarm.device}: anomaly alarm active since before the gateway restarted"
                    f" (score {_g(score)})"
                )
                await self._fire(alarm, True, text, ts)
        if alarm.active is None and active:
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
        event = self._event(alarm, active, text, ts)
        alarm.announced = active
        alarm.severity = event.Severity
        copies = [event, copy.copy(event)]
        copies[1].emitting_node = self.server_object
        alarm.retained = copies if active else []
        self.events += 1
        subscriptions = self.subscriptions
        if subscriptions is None:
            return
        for subscription in list(subscriptions.subscriptions.values()):
            for one in copies:
                await subscription.monitored_item_srv.trigger_event(one)

    def _event(self, alarm: DeviceAlarm, active: bool, text: str, ts: float | None) -> Any:
        severity = SEVERITY_RAISED if active else SEVERITY_CLEARED
        event = _OFF_NORMAL(alarm.source, text, severity)
        now = datetime.now(UTC)
        at = _dt(ts) if ts else now
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
            "Retain": active,
            "EnabledState": ua.LocalizedText("Enabled"),
            "EnabledState/Id": True,
            "Quality": ua.StatusCode(),
            "LastSeverity": alarm.severity,
            "Comment": ua.LocalizedText(""),
            "ClientUserId": "",
            "AckedState": ua.LocalizedText("Acknowledged"),
            "AckedState/Id": True,  # nothing to acknowledge: it clears itself
            "ActiveState": ua.LocalizedText("Active" if active else "Inactive"),
            "ActiveState/Id": active,
            "ActiveState/TransitionTime": at,
            "InputNode": alarm.input_node or ua.NodeId(),
            "SuppressedOrShelved": False,
            "NormalState": ua.NodeId(),
        }
        for name, value in fields.items():
            setattr(event, name, value)
            # asyncua declares some as their DataType's NodeId (UtcTime), which no Variant takes
            if not isinstance(event.data_types.get(name), ua.VariantType):
                event.data_types[name] = _BUILT_IN.get(name.rpartition("/")[2], VT.DateTime)
        return event

    async def condition_refresh(
        self, parent: ua.NodeId, subscription_id: ua.Variant, *rest: ua.Variant
    ) -> ua.StatusCode:
        """ConditionRefresh(SubscriptionId) and ConditionRefresh2(SubscriptionId,
        MonitoredItemId): the active alarms again, between RefreshStart and RefreshEnd."""
        subscriptions = self.subscriptions
        sub = subscriptions.subscriptions.get(subscription_id.Value) if subscriptions else None
        if sub is None:
            return ua.StatusCode(cast("ua.UInt32", StatusCodes.BadSubscriptionIdInvalid))
        items = sub.monitored_item_srv
        mid = rest[0].Value if rest else None
        if mid is not None and mid not in items._monitored_items:
            return ua.StatusCode(cast("ua.UInt32", StatusCodes.BadMonitoredItemIdInvalid))
        # each retained copy goes to the items on its own notifier (for ConditionRefresh2,
        # only if the item is one of them: asyncua would send it there whatever it monitors)
        targets: list[Event] = []
        for emitting in (self.server_object, *self._sources()):
            targets.append(self._marker(ObjectIds.RefreshStartEventType, emitting))
            for devices in self.devices.values():
                for alarm in devices.values():
                    targets += [e for e in alarm.retained if e.emitting_node == emitting]
            targets.append(self._marker(ObjectIds.RefreshEndEventType, emitting))
        for event in targets:
            watching = items._monitored_events.get(event.emitting_node, [])
            if mid is None:
                await items.trigger_event(event)
            elif mid in watching:
                await items.trigger_event(event, mid)
        return ua.StatusCode()

    def _sources(self) -> list[ua.NodeId]:
        return [a.source for devices in self.devices.values() for a in devices.values()]

    def _marker(self, etype: int, emitting: ua.NodeId) -> Any:
        marker = (_REFRESH_START if etype == ObjectIds.RefreshStartEventType else _REFRESH_END)()
        now = datetime.now(UTC)
        marker.emitting_node = emitting
        marker.SourceNode = self.server_object
        marker.SourceName = "Server"
        marker.EventId = os.urandom(16)
        marker.Time = marker.ReceiveTime = now
        return marker

    def status(self) -> dict[str, Any]:
        return {"alarm_events": self.events}


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


def install() -> None:
    """Subtype-aware where clauses for the event monitored items made from now on."""
    monitored_item_service.WhereClauseEvaluator = _WhereClause  # type: ignore[misc]
